"""DLS on DeepLesion: pairs from the real test.json, PNG -> NIfTI on archives the tests write in
DeepLesion's format, the head-feet check, archive downloads from a local server, and the plan of
configs/paper-dls.yaml."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import REPO, LocalHTTPServer, planned_jobs

from lesiontrack.data import dls
from lesiontrack.download import DownloadError
from lesiontrack.evaluate import dls_tables
from lesiontrack.io import InputError
from lesiontrack.tables import DLS_PAIR_COLUMNS

SPACING = (0.7, 0.8, 2.5)  # sx, sy, sz in mm (sx != sy so that a swapped axis shows)
ROWS, COLS = 24, 32
SERIES = "000042_01_02"


def write_archive(path: Path, slices: dict[int, np.ndarray], series: str = SERIES) -> Path:
    """A DeepLesion-format archive: Images_png/<series>/<NNN>.png, 16-bit, value = HU + 32768."""
    with zipfile.ZipFile(path, "w") as zf:
        for number, hu in slices.items():
            zf.writestr(f"Images_png/{series}/{number:03d}.png", dls.hu_to_png(hu))
    return path


def write_dl_info(path: Path, rows: list[tuple[str, int, int, tuple[float, float, float]]]) -> Path:
    """DL_info.csv with the columns the converter reads (File_name, Slice_range, Spacing_mm_px_)."""
    records = [{"File_name": f"{series}_{key:03d}.png", "Patient_index": int(series[:6]),
                "Slice_range": f"{first}, {last}", "Spacing_mm_px_": ", ".join(f"{v:g}" for v in spacing)}
               for series, first, last, spacing in rows for key in [(first + last) // 2]]
    pd.DataFrame(records).to_csv(path, index=False)
    return path


def test_real_test_json_gives_960_directed_pairs(test_data, tmp_path):
    pairs = dls.pairs_table({"test": test_data / "dls" / "test.json"}, tmp_path / "pairs.csv")
    assert len(pairs) == 960 and pairs["pair_id"].nunique() == 480
    assert list(pairs.columns) == DLS_PAIR_COLUMNS
    assert pairs["dls_entry"].tolist()[:3] == ["0001", "0002", "0003"]
    assert pairs.groupby(["pair_id", "direction"]).size().eq(1).all()  # each pair once in each direction
    first, second = pairs.iloc[0], pairs.iloc[1]
    assert (first["direction"], second["direction"]) == ("forward", "backward")
    assert (first["source_image"], first["target_image"]) == (second["target_image"], second["source_image"])
    # The radius is the evaluation's; distances between points of one image equal the DLT evaluator's.
    truth, _ = dls_tables(test_data / "dls" / "test.json", "predict target center")
    assert np.allclose(pairs["target_radius_mm"], truth["target_radius_mm"])
    entry = json.loads((test_data / "dls" / "test.json").read_text())["0001"]
    target = dls.dls_voxel_to_world(entry["target center"], entry["target"], entry["target spacing"])[0]
    assert np.allclose(first[["target_x", "target_y", "target_z"]].to_numpy(float), target)
    both = dls.pairs_table({"test": test_data / "dls" / "test.json", "valid": test_data / "dls" / "valid.json"})
    assert both.groupby("split").size().to_dict() == {"test": 960, "valid": 906}
    point = both[["target_x", "target_y", "target_z"]].to_numpy()
    assert np.all(point >= both[[f"target_box_min_{a}" for a in "xyz"]].to_numpy() - 1e-6)  # box in world mm too
    assert np.all(point <= both[[f"target_box_max_{a}" for a in "xyz"]].to_numpy() + 1e-6)
    # DLS z is the 0-based slice offset inside the sub-volume: the RECIST slice PNG of every entry is FFF + z.
    for entry in json.loads((test_data / "dls" / "test.json").read_text()).values():
        for end in ("source", "target"):
            volume, z = dls.VolumeName.parse(entry[end]), round(entry[f"{end} center"][2])
            assert entry[f"{end} recist slice"] == f"{volume.series_id}/{volume.first + z:03d}.png"
    # z runs towards the feet: a larger slice offset is a smaller (more inferior) world z.
    assert dls.dls_voxel_to_world([0, 0, 1], entry["target"], [1, 1, 2.0])[0, 2] < \
        dls.dls_voxel_to_world([0, 0, 0], entry["target"], [1, 1, 2.0])[0, 2]


def test_marker_lands_at_dls_voxel_and_pairs_world_point(tmp_path):
    """A marker painted at DLS [x, y, z] is in the NIfTI at that voxel and at pairs.csv's world point."""
    air = np.full((ROWS, COLS), -1000, np.int16)
    slices = {n: air + 10 * n for n in (3, 4, 5, 6, 9, 10, 11)}  # a gap after 6 splits the series
    x, y, z = 21, 7, 2  # column, row, slice offset into 000042_01_02_003-006 (slice 5)
    slices[5] = slices[5].copy()
    slices[5][y, x] = 1234
    archive = write_archive(tmp_path / "Images_png_01.zip", slices)
    dl_info = write_dl_info(tmp_path / "DL_info.csv", [(SERIES, 3, 6, SPACING)])
    index = dls.archive_index([archive], tmp_path / "index.csv")
    assert index[["series_id", "n_slices", "first_slice", "last_slice"]].values.tolist() == [[SERIES, 7, 3, 11]]
    table = dls.convert(tmp_path / "index.csv", dl_info, [SERIES], tmp_path / "images", tmp_path / "images.csv")
    assert table["image_id"].tolist() == [f"{SERIES}_003-006", f"{SERIES}_009-011"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        f"{SERIES}_003-006.nii.gz", f"{SERIES}_009-011.nii.gz"]
    image = sitk.ReadImage(str(tmp_path / "images" / f"{SERIES}_003-006.nii.gz"))
    assert image.GetSize() == (COLS, ROWS, 4) and image.GetSpacing() == pytest.approx(SPACING)
    assert image.GetPixelID() == sitk.sitkInt16
    assert image.GetPixel(x, y, z) == 1234
    array = sitk.GetArrayFromImage(image)  # (slices, rows, cols)
    assert array[0, 0, 0] == -1000 + 30 and array[3, 0, 0] == -1000 + 60  # HU = PNG value - 32768, in order
    later = sitk.ReadImage(str(tmp_path / "images" / f"{SERIES}_009-011.nii.gz"))
    assert later.GetSize()[2] == 3 and sitk.GetArrayFromImage(later)[0, 0, 0] == -1000 + 90
    # Both sub-volumes share the series' world frame: slice n at z = -(n - 1) * sz.
    assert later.TransformIndexToPhysicalPoint((0, 0, 0))[2] == pytest.approx(-8 * SPACING[2])

    name = f"{SERIES}_003-006.nii.gz"
    entry = {"source": name, "target": name, "source center": [x, y, z], "target center": [x, y, z],
             "source spacing": list(SPACING), "target spacing": list(SPACING), "source box": [x - 2, y - 2, z, 4, 4, 1],
             "target box": [x - 2, y - 2, z - 1, 4, 4, 2], "target recist diameter": [6.0, 4.0],
             "source recist diameter": [6.0, 4.0]}
    (tmp_path / "test.json").write_text(json.dumps({"0001": entry, "0002": entry}))
    dls.pairs_table({"test": tmp_path / "test.json"}, tmp_path / "pairs.csv")
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    point = pairs.loc[0, ["target_x", "target_y", "target_z"]].to_numpy(float)
    assert image.TransformPhysicalPointToIndex(point.tolist()) == (x, y, z)
    assert np.allclose(image.TransformIndexToPhysicalPoint((x, y, z)), point, atol=1e-5)
    assert pairs.loc[0, "target_radius_mm"] == pytest.approx(3.0 * SPACING[0])
    assert pairs["pair_id"].tolist() == [1, 1] and pairs["direction"].tolist() == ["forward", "backward"]
    box_min = pairs.loc[0, [f"target_box_min_{a}" for a in "xyz"]].to_numpy(float)
    box_max = pairs.loc[0, [f"target_box_max_{a}" for a in "xyz"]].to_numpy(float)
    assert np.all(box_min <= point) and np.all(point <= box_max)


def test_spacings_come_from_the_dls_json_and_are_checked_against_dl_info(tmp_path):
    """Evaluation volumes convert without DL_info.csv (their spacing from the DLS JSON, the marker at
    its voxel); with DL_info.csv a spacing that disagrees stops it, naming the series; a series
    that no JSON names needs DL_info.csv."""
    slices = {n: np.full((ROWS, COLS), -1000 + 10 * n, np.int16) for n in (3, 4, 5, 6)}
    slices[5] = slices[5].copy()
    slices[5][7, 21] = 1234
    archive = write_archive(tmp_path / "Images_png_01.zip", slices)
    dls.archive_index([archive], tmp_path / "index.csv")
    name = f"{SERIES}_003-006.nii.gz"
    entry = {"source": name, "target": name, "source center": [21, 7, 2], "target center": [21, 7, 2],
             "source spacing": list(SPACING), "target spacing": list(SPACING)}
    (tmp_path / "test.json").write_text(json.dumps({"0001": entry, "0002": entry}))
    dls.convert(tmp_path / "index.csv", None, [SERIES], tmp_path / "images", check=False,
                split_jsons=[tmp_path / "test.json"])
    image = sitk.ReadImage(str(tmp_path / "images" / name))
    assert image.GetSpacing() == pytest.approx(SPACING) and image.GetPixel(21, 7, 2) == 1234
    assert dls.checked_spacings([tmp_path / "test.json"], write_dl_info(
        tmp_path / "DL_info.csv", [(SERIES, 3, 6, SPACING)]))[SERIES] == pytest.approx(SPACING)
    write_dl_info(tmp_path / "DL_info.csv", [(SERIES, 3, 6, (0.7, 0.8, 5.0))])
    with pytest.raises(InputError, match=rf"DL_info\.csv: series {SERIES} spacing \[0\.7, 0\.8, 5\.0\] mm "
                                         r"disagrees with the DLS annotations' \[0\.7, 0\.8, 2\.5\] mm"):
        dls.convert(tmp_path / "index.csv", tmp_path / "DL_info.csv", [SERIES], tmp_path / "again", check=False,
                    split_jsons=[tmp_path / "test.json"])
    assert not (tmp_path / "again").exists()
    (tmp_path / "other.json").write_text(json.dumps({"0001": {**entry, "target spacing": [0.7, 0.8, 1.0]}}))
    with pytest.raises(InputError, match=rf"other\.json: entry 1 target spacing \[0\.7, 0\.8, 1\.0\] for series "
                                         rf"{SERIES}, but .*other\.json entry 1 gives \[0\.7, 0\.8, 2\.5\]"):
        dls.json_spacings([tmp_path / "other.json"])
    with pytest.raises(InputError, match=rf"DL_info\.csv \(not given: dls\.dl_info_url unset\): no spacing for "
                                         rf"series {SERIES}, which no DLS annotation file names"):
        dls.convert(tmp_path / "index.csv", None, [SERIES], tmp_path / "images", check=False)


def test_without_dl_info_pretraining_draws_on_the_valid_split_patients(tmp_path):
    """Series plan without DL_info.csv: test patients' series are evaluation data, the valid-only
    patients' series pretraining data; with pretraining off, all are evaluation data."""
    def entry(a, b):
        return {"source": a, "target": b, "source spacing": list(SPACING), "target spacing": list(SPACING)}
    (tmp_path / "test.json").write_text(json.dumps({"0001": entry("000001_01_01_001-010.nii.gz",
                                                                 "000001_02_01_001-010.nii.gz")}))
    (tmp_path / "valid.json").write_text(json.dumps({"0001": entry("000001_01_01_001-010.nii.gz",
                                                                  "000001_03_01_001-010.nii.gz"),
                                                     "0002": entry("000002_01_01_001-010.nii.gz",
                                                                   "000002_02_01_001-010.nii.gz")}))
    index = pd.DataFrame({"series_id": ["000001_01_01", "000001_02_01", "000001_03_01", "000002_01_01",
                                        "000002_02_01", "000003_01_01"], "archive": "a.zip"})
    jsons = [tmp_path / "test.json", tmp_path / "valid.json"]
    plan = dls.plan_series(index, None, jsons, shard_size=4)
    assert dict(zip(plan["series_id"], plan["role"], strict=True)) == {
        "000001_01_01": "dls", "000001_02_01": "dls", "000001_03_01": "dls",
        "000002_01_01": "pretrain", "000002_02_01": "pretrain"}  # 000003: in no JSON, no DL_info.csv
    assert set(dls.plan_series(index, None, jsons, shard_size=4, pretraining=False)["role"]) == {"dls"}


def chest_to_abdomen(n_lung: int = 3, n_liver: int = 3) -> np.ndarray:
    """(slices, rows, cols) HU: a body with air-filled lungs in the first slices, liver density after."""
    rr, cc = np.mgrid[:ROWS, :COLS]
    body = ((rr - ROWS / 2) / (ROWS * 0.45)) ** 2 + ((cc - COLS / 2) / (COLS * 0.45)) ** 2 < 1
    lung = body & (np.abs(cc - COLS / 2) > 3) & (np.abs(rr - ROWS / 2) < ROWS * 0.3)
    stack = []
    for k in range(n_lung + n_liver):
        hu = np.where(body, 30, -1000).astype(np.int16)
        if k < n_lung:
            hu[lung] = -850
        else:
            hu[body & (cc > COLS / 2)] = 60
        stack.append(hu)
    return np.stack(stack)


def test_head_feet_check_rejects_flipped_stack(tmp_path):
    stack = chest_to_abdomen()
    assert dls.head_feet_check(stack, "ok.nii.gz") == "confirmed"
    assert dls.head_feet_check(stack[3:], "liver-only.nii.gz") == "inconclusive"
    slices = {n + 1: hu for n, hu in enumerate(stack[::-1])}  # feet first: liver at small slice numbers
    archive = write_archive(tmp_path / "Images_png_02.zip", slices)
    dl_info = write_dl_info(tmp_path / "DL_info.csv", [(SERIES, 1, 6, SPACING)])
    dls.archive_index([archive], tmp_path / "index.csv")
    with pytest.raises(InputError, match=rf"{SERIES}_001-006\.nii\.gz.*head-feet check failed"):
        dls.convert(tmp_path / "index.csv", dl_info, [SERIES], tmp_path / "images")
    assert not (tmp_path / "images").exists() or not list((tmp_path / "images").iterdir())
    write_archive(archive, {n + 1: hu for n, hu in enumerate(stack)})
    table = dls.convert(tmp_path / "index.csv", dl_info, [SERIES], tmp_path / "images")
    assert table["head_feet"].tolist() == ["confirmed"]
    # Slabs far apart, one lung only, one liver only: each inconclusive, the series decides.
    (tmp_path / "images" / f"{SERIES}_001-006.nii.gz").unlink()
    write_archive(archive, {**{n: stack[0] for n in (1, 2, 3)}, **{n: stack[5] for n in (10, 11, 12)}})
    table = dls.convert(tmp_path / "index.csv", dl_info, [SERIES], tmp_path / "images")
    assert table["head_feet"].tolist() == ["confirmed-series", "confirmed-series"]
    for path in (tmp_path / "images").iterdir():
        path.unlink()
    write_archive(archive, {**{n: stack[5] for n in (1, 2, 3)}, **{n: stack[0] for n in (10, 11, 12)}})
    with pytest.raises(InputError, match=rf"{SERIES}_010-012\.nii\.gz \(series {SERIES}\): head-feet check failed"):
        dls.convert(tmp_path / "index.csv", dl_info, [SERIES], tmp_path / "images")
    assert list((tmp_path / "images").iterdir()) == []


def test_a_conversion_is_all_or_nothing(tmp_path):
    """Two series, the second feet first: the first one's NIfTI is not left behind (it was)."""
    stack = chest_to_abdomen()
    later = "000043_01_01"
    archives = [write_archive(tmp_path / "Images_png_01.zip", {n + 1: hu for n, hu in enumerate(stack)}),
                write_archive(tmp_path / "Images_png_02.zip", {n + 1: hu for n, hu in enumerate(stack[::-1])}, later)]
    dl_info = write_dl_info(tmp_path / "DL_info.csv", [(SERIES, 1, 6, SPACING), (later, 1, 6, SPACING)])
    dls.archive_index(archives, tmp_path / "index.csv")
    with pytest.raises(InputError, match=rf"{later}_001-006\.nii\.gz.*head-feet check failed"):
        dls.convert(tmp_path / "index.csv", dl_info, [SERIES, later], tmp_path / "images", tmp_path / "images.csv")
    assert not (tmp_path / "images").exists() and not (tmp_path / "images.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DL_info.csv", "Images_png_01.zip", "Images_png_02.zip",
                                                          "index.csv"]
    table = dls.convert(tmp_path / "index.csv", dl_info, [SERIES], tmp_path / "images", tmp_path / "images.csv")
    assert table["path"].tolist() == [str(tmp_path / "images" / f"{SERIES}_001-006.nii.gz")]
    assert sitk.ReadImage(table["path"].iloc[0]).GetSize() == (COLS, ROWS, 6)


def test_bad_names_and_spacing_name_the_value(tmp_path):
    with pytest.raises(InputError, match=r"'000042_01_02_006-003\.nii\.gz'"):
        dls.VolumeName.parse("000042_01_02_006-003.nii.gz")
    pd.DataFrame([{"File_name": f"{SERIES}_004.png", "Slice_range": "3, 6", "Spacing_mm_px_": "0.7, x, 2"}]).to_csv(
        tmp_path / "DL_info.csv", index=False)
    with pytest.raises(InputError, match=r"DL_info\.csv: row 2 Spacing_mm_px_ = '0\.7, x, 2'"):
        dls.load_dl_info(tmp_path / "DL_info.csv")
    with pytest.raises(InputError, match=r"missing\.json: no such DLS annotation file \(split 'test'\)"):
        dls.pairs_table({"test": tmp_path / "missing.json"})


def test_pretraining_volumes_exclude_dls_patients(test_data, tmp_path):
    entries = json.loads((test_data / "dls" / "test.json").read_text())
    dls_patient = entries["0001"]["source"][:6]
    dl_info = write_dl_info(tmp_path / "DL_info.csv", [
        (f"{dls_patient}_01_01", 1, 20, SPACING), ("999990_01_01", 5, 40, SPACING), ("999990_02_01", 1, 9, SPACING)])
    volumes = dls.pretraining_volumes(dl_info, [test_data / "dls" / "test.json", test_data / "dls" / "valid.json"])
    assert volumes["image_id"].tolist() == ["999990_01_01_005-040", "999990_02_01_001-009"]
    assert len(dls.archive_urls()) == 56 and len(set(dls.archive_urls())) == 56
    assert dls.archive_urls() == [line for line in (test_data / "deeplesion" / "images_png_urls.txt").read_text()
                                  .splitlines() if line.strip() and not line.startswith("#")]


def test_archive_download_resumes_and_rejects_corrupt_archive(tmp_path):
    archive = write_archive(tmp_path / "src.zip", {n: np.random.default_rng(n).integers(-1000, 1000, (ROWS, COLS))
                                                   .astype(np.int16) for n in range(1, 40)}).read_bytes()
    corrupt = bytearray(archive)
    corrupt[len(archive) // 3] ^= 0xFF  # one flipped byte inside a member: the CRC test fails
    cfg = {"annotation_urls": {}, "dl_info_url": None, "archives": [1, 2]}
    with LocalHTTPServer({"/a/Images_png_01.zip": archive, "/a/Images_png_02.zip": bytes(corrupt)},
                         drop_after=len(archive) // 2) as server:
        cfg["archive_urls"] = [f"{server.url}/a/Images_png_01.zip", f"{server.url}/a/Images_png_02.zip"]
        url = dls.archive_url(1, cfg["archive_urls"])
        path = dls.fetch(url, tmp_path / "out" / "Images_png_01.zip", "archive 1", progress=False)
        assert server.requests == [None, f"bytes={len(archive) // 2}-"]
        with pytest.raises(DownloadError, match=r"Images_png_02\.zip: zip member .* fails its CRC check"):
            dls.fetch(dls.archive_url(2, cfg["archive_urls"]), tmp_path / "out" / "Images_png_02.zip", "archive 2",
                      progress=False)
    assert path.read_bytes() == archive
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["Images_png_01.zip"]
    # without dls.dl_info_url the annotations and archives come, and no DL_info.csv is asked for
    with LocalHTTPServer({"/a/Images_png_01.zip": archive}) as server:
        cfg["archive_urls"] = [f"{server.url}/a/Images_png_01.zip"]
        paths = dls.download_all({**cfg, "archives": [1]}, tmp_path / "plain", progress=False)
    assert [p.name for p in paths] == ["Images_png_01.zip"]


def test_closed_port_fails_with_one_message_and_no_file(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = {"annotation_urls": {"test": f"http://127.0.0.1:{port}/data/test.json"}, "archives": [1]}
    with pytest.raises(DownloadError) as failure:
        dls.download_all(cfg, tmp_path / "dls", progress=False, retries=2, backoff_s=0.01)
    message = str(failure.value)
    assert message.startswith(f"http://127.0.0.1:{port}/data/test.json: failed after 3 attempts")
    assert "refused" in message.lower()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_paper_dls_config_plans_offline_to_the_checkpoint(tmp_path):
    """`snakemake -n --configfile configs/paper-dls.yaml configs/paper-model.yaml` plans from download
    on; with dls.dl_info_url unset (its default) without DL_info.csv, saying in one line what
    pretraining on DeepLesion needs."""
    configs = [REPO / "configs" / "paper-dls.yaml", REPO / "configs" / "paper-model.yaml"]
    with planned_jobs(tmp_path, configs, REPO / "Snakefile") as jobs:
        rules = pd.Series([job.rule.name for job in jobs]).value_counts().to_dict()
        archive_jobs = [job for job in jobs if job.rule.name == "dls_archive"]
        urls = sorted(job.params.url for job in archive_jobs)
        annotation_urls = sorted(job.params.url for job in jobs if job.rule.name == "dls_annotations")
    # the command as a user types it (a subprocess: snakemake's logging keeps the streams it found)
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--quiet", "-s", str(REPO / "Snakefile"), "-d",
                          str(tmp_path / "plan"), "--configfile", *map(str, configs)],
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    notice = [line for line in dry.stderr.splitlines() if "dl_info_url" in line]
    assert len(notice) == 1 and "pretraining on the DeepLesion volumes outside the DLS splits needs " \
        "DL_info.csv" in notice[0] and "https://nihcc.app.box.com/v/DeepLesion" in notice[0]
    assert rules["dls_archive"] == 56 and rules["dls_annotations"] == 2
    assert "dls_info" not in rules and rules["dls_archive_index"] == 1 and rules["dls_pairs"] == 1
    assert rules["download_dlt_predictions"] == 1
    # after the checkpoint's jobs: pretraining on the DLS training volumes, tracking with every
    # method, their evaluation and the table beside DLT's published rows
    assert rules["pretrain"] == 1 and rules["track"] == 8
    assert rules["evaluate"] == 8 and rules["evaluate_published"] == 2 and rules["table"] == 1
    assert rules["figures"] == 1 and rules["training_figure"] == 1 and rules["landmark_figure"] == 1
    assert urls == sorted(dls.archive_urls())
    assert annotation_urls == [f"https://raw.githubusercontent.com/JimmyCai91/DLT/master/data/{s}.json"
                               for s in ("test", "valid")]
    assert not list(tmp_path.rglob("*.zip"))  # a plan, nothing fetched


def _dls_files(tmp_path: Path) -> tuple[dict[str, bytes], str, str]:
    """Files of a local DLS + DeepLesion server: one annotated series, one pretraining series."""
    stack = chest_to_abdomen()
    other = "000777_01_01"  # a patient outside the DLS splits: pretraining data
    archive1 = write_archive(tmp_path / "a1.zip", {n + 1: hu for n, hu in enumerate(stack)}).read_bytes()
    archive2 = write_archive(tmp_path / "a2.zip", {n: stack[3] for n in (7, 8)}, series=other).read_bytes()
    write_dl_info(tmp_path / "DL_info.csv", [(SERIES, 1, 6, SPACING), (other, 7, 8, SPACING)])
    name = f"{SERIES}_001-006.nii.gz"
    entry = {"source": name, "target": name, "source center": [5, 6, 1], "target center": [7, 8, 4],
             "source spacing": list(SPACING), "target spacing": list(SPACING), "target box": [5, 6, 3, 4, 4, 2],
             "target recist diameter": [4.0, 2.0]}
    annotations = json.dumps({"0001": entry, "0002": {**entry, "source center": [7, 8, 4],
                                                      "target center": [5, 6, 1]}}).encode()
    files = {"/dlt/test.json": annotations, "/dlt/valid.json": annotations,
             "/nih/DL_info.csv": (tmp_path / "DL_info.csv").read_bytes(),
             "/nih/1.zip": archive1, "/nih/2.zip": archive2}
    return files, other, name


def test_workflow_runs_dls_from_local_server(tmp_path):
    """The DLS rules end to end, every URL on a local server: download, checkpoint index, conversion, pairs."""
    from conftest import copy_workflow, run_workflow

    files, other, name = _dls_files(tmp_path)
    workdir = copy_workflow(tmp_path / "repo")
    overlay = tmp_path / "overlay.yaml"
    with LocalHTTPServer(files) as server:
        overlay.write_text(
            "datasets:\n  synthetic: {enabled: false}\n  dls: {enabled: true, download: true}\n"
            f"dls:\n  annotation_urls: {{test: {server.url}/dlt/test.json, valid: {server.url}/dlt/valid.json}}\n"
            f"  dl_info_url: {server.url}/nih/DL_info.csv\n"
            f"  archive_urls: [{server.url}/nih/1.zip, {server.url}/nih/2.zip]\n  archives: [1, 2]\n")
        run_workflow(workdir, [overlay], targets=["results/dls/images.csv", "results/dls/pairs.csv"])
    results = workdir / "results" / "dls"
    index = pd.read_csv(results / "archive_index.csv", dtype=str)
    assert index[["series_id", "archive"]].values.tolist() == [
        [SERIES, "results/dls/archives/Images_png_01.zip"], [other, "results/dls/archives/Images_png_02.zip"]]
    images = pd.read_csv(results / "images.csv", dtype={"n_slices": int, "subject_id": str})
    assert images[["image_id", "n_slices", "head_feet"]].values.tolist() == [
        [f"{SERIES}_001-006", 6, "confirmed"], [f"{other}_007-008", 2, "inconclusive"]]
    # the DLS volume is evaluated (its pairs are in test and valid: test wins); the other patient's
    # volume is pretraining data
    assert images[["subject_id", "split"]].values.tolist() == [["000042", "test"], ["000777", "train"]]
    pairs = pd.read_csv(results / "pairs.csv", dtype={"dls_entry": str})
    assert len(pairs) == 4 and sorted(set(pairs["split"])) == ["test", "valid"]
    image = sitk.ReadImage(str(results / "images" / name))
    assert image.TransformPhysicalPointToIndex(pairs.loc[0, ["target_x", "target_y", "target_z"]].tolist()) == (7, 8, 4)
    assert sorted(p.name for p in (results / "archives").iterdir()) == ["Images_png_01.zip", "Images_png_02.zip"]


def test_cli_download_convert_pairs_dls_from_local_server(tmp_path, capsys):
    """`lesiontrack download | convert | pairs --dataset dls`, every URL on a local server."""
    from lesiontrack.cli import main

    files, other, name = _dls_files(tmp_path)
    out = tmp_path / "dls"
    overlay = tmp_path / "overlay.yaml"
    with LocalHTTPServer(files) as server:
        overlay.write_text(
            f"dls:\n  annotation_urls: {{test: {server.url}/dlt/test.json, valid: {server.url}/dlt/valid.json}}\n"
            f"  dl_info_url: {server.url}/nih/DL_info.csv\n"
            f"  archive_urls: [{server.url}/nih/1.zip, {server.url}/nih/2.zip]\n  archives: [1, 2]\n")
        assert main(["download", "--dataset", "dls", "--config", str(overlay), "--out-dir", str(out)]) == 0
    assert "2 series in 2 archive(s); 2 to convert (1 DLS, 1 pretraining)" in capsys.readouterr().out
    assert main(["convert", "--dataset", "dls", "--index", str(out / "archive_index.csv"), "--dl-info",
                 str(out / "DL_info.csv"), "--plan", str(out / "series.csv"), "--shard", "0",
                 "--images-dir", str(out / "images"), "--table", str(out / "images-000.csv")]) == 0
    images = pd.read_csv(out / "images-000.csv")
    assert sorted(images["image_id"]) == [f"{SERIES}_001-006", f"{other}_007-008"]
    assert main(["pairs", "--dataset", "dls", "--test", str(out / "annotations" / "test.json"), "--out-dir",
                 str(out)]) == 0
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 2 and set(pairs["source_image"]) == {name.removesuffix(".nii.gz")}

