"""``lesiontrack check``: the preflight passes a sound download and fails, with one line naming the
file, series or value, on a missing archive, a corrupt archive, a flipped head-feet series, a
spacing disagreement and an undecided NLSTx slice convention."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from test_dls import SERIES, SPACING, chest_to_abdomen, write_archive, write_dl_info
from test_nlst import NODULE, _write_series

from lesiontrack import check
from lesiontrack.cli import main

OTHER = "000099_01_01"  # a second DLS series, in the second archive


def _dls_download(folder: Path, flipped: bool = False) -> Path:
    """A DLS download in the workflow's layout: two archives, each with one series the annotations name."""
    stack = chest_to_abdomen()
    (folder / "archives").mkdir(parents=True)
    write_archive(folder / "archives" / "Images_png_01.zip", {n + 1: hu for n, hu in enumerate(stack)})
    second = stack[::-1] if flipped else stack  # liver slices first: the slice number runs to the head
    write_archive(folder / "archives" / "Images_png_02.zip", {n + 1: hu for n, hu in enumerate(second)}, series=OTHER)
    entries = {}
    for k, series in enumerate((SERIES, OTHER)):
        name = f"{series}_001-006.nii.gz"
        entries[f"{2 * k + 1:04d}"] = {"source": name, "target": name, "source spacing": list(SPACING),
                                       "target spacing": list(SPACING)}
    (folder / "annotations").mkdir()
    (folder / "annotations" / "test.json").write_text(json.dumps(entries))
    return folder


def _overlay(tmp_path: Path, text: str) -> str:
    path = tmp_path / "overlay.yaml"
    path.write_text(text)
    return str(path)


def _run(tmp_path, capsys, folder, dataset="dls", overlay="dls: {archives: [1, 2]}\n") -> tuple[int, str, str]:
    code = main(["check", "--dataset", dataset, "--dir", str(folder), "--config", _overlay(tmp_path, overlay),
                 "--json", str(tmp_path / "check.json")])
    out = capsys.readouterr()
    return code, re.sub(" +", " ", out.out), out.err  # the report's columns padded to one space


def test_a_sound_dls_download_passes(tmp_path, capsys):
    folder = _dls_download(tmp_path / "dls")
    write_dl_info(folder / "DL_info.csv", [(SERIES, 1, 6, SPACING), (OTHER, 1, 6, SPACING)])
    code, out, _ = _run(tmp_path, capsys, folder)
    assert code == 0, out
    assert "passed (0 failed" in out and "2 of 2 configured archives" in out
    assert "2 of the 2 series the annotations name are in the archives" in out
    assert "2 of 2 sampled series confirmed" in out and "with " + str(folder / "DL_info.csv") in out
    assert json.loads((tmp_path / "check.json").read_text())["passed"] is True


def test_a_missing_archive_fails(tmp_path, capsys):
    folder = _dls_download(tmp_path / "dls")
    code, out, err = _run(tmp_path, capsys, folder, overlay="dls: {archives: [1, 2, 3]}\n")
    assert code == 2
    assert err.strip() == (f"lesiontrack check: --dataset dls: archives present: 2 of 3 configured archives; "
                           f"missing: {folder / 'archives' / 'Images_png_03.zip'}")
    assert "FAIL archives present" in out and "ok archive integrity" in out  # the other checks still ran


def test_a_corrupt_archive_fails(tmp_path, capsys):
    folder = _dls_download(tmp_path / "dls")
    path = folder / "archives" / "Images_png_02.zip"
    data = bytearray(path.read_bytes())
    data[len(data) // 4] ^= 0xFF  # one flipped byte inside a member's compressed data
    path.write_bytes(bytes(data))
    code, _, err = _run(tmp_path, capsys, folder)
    assert code == 2
    assert f"archive integrity: {path}: member Images_png/{OTHER}/" in err and "fails its CRC check" in err


def test_a_flipped_head_feet_series_fails(tmp_path, capsys):
    folder = _dls_download(tmp_path / "dls", flipped=True)
    code, _, err = _run(tmp_path, capsys, folder)
    assert code == 2
    assert f"head-feet: series {OTHER} ({folder / 'archives' / 'Images_png_02.zip'}): head-feet check failed" in err


def test_a_spacing_disagreement_fails(tmp_path, capsys):
    folder = _dls_download(tmp_path / "dls")
    write_dl_info(folder / "DL_info.csv", [(SERIES, 1, 6, SPACING), (OTHER, 1, 6, (0.7, 0.8, 5.0))])
    code, _, err = _run(tmp_path, capsys, folder)
    assert code == 2
    assert err.strip() == (f"lesiontrack check: --dataset dls: spacing agreement: {folder / 'DL_info.csv'}: series "
                           f"{OTHER} spacing [0.7, 0.8, 5.0] mm disagrees with the DLS annotations' [0.7, 0.8, 2.5] "
                           f"mm ({folder / 'annotations' / 'test.json'})")


def _nlst_download(folder: Path, slice_number: int, n_series: int = 8) -> Path:
    """``n_series`` downloaded NLSTx series (each a nodule at InstanceNumber 17) and their NLSTx rows,
    in the workflow's layout."""
    rows = []
    for k in range(n_series):
        uid = f"1.2.3.{k}"
        _write_series(folder / "dicom" / uid, nodule_k=NODULE[2], series_uid=uid)
        rows.append({"fold": 0, "PID": 100001 + k, "study_yr": 0, "malignancy": "B", "seriesinstanceuids": uid,
                     "Abnormality UID": 1.0, "Slice number": slice_number, "Bounding box x (pixels)": NODULE[0] - 5,
                     "Bounding box y (pixels)": NODULE[1] - 5, "Bounding box width (pixels)": 11,
                     "Bounding box height (pixels)": 11})
    pd.DataFrame(rows).to_csv(folder / "nlstx_dataset.csv", index=False)
    pd.DataFrame({"image_id": [r["seriesinstanceuids"] for r in rows], "role": "evaluation"}).to_csv(
        folder / "series.csv", index=False)
    return folder


def test_the_nlstx_slice_convention_is_decided_by_the_data(tmp_path, capsys):
    folder = _nlst_download(tmp_path / "nlst", slice_number=17)  # InstanceNumber 17 is the nodule's slice
    code, out, _ = _run(tmp_path, capsys, folder, "nlst", "{}\n")
    assert code == 0, out
    assert "ok slice convention instance_number, decided by the data (8 boxes" in out
    assert check.convention_of(tmp_path / "check.json") == "instance_number"
    # a config naming another convention than the one the data shows is refused
    code, _, err = _run(tmp_path, capsys, folder, "nlst", "datasets: {nlst: {slice_number_convention: index1}}\n")
    assert code == 2 and "slice_number_convention = index1, but the 8 downloaded NLSTx boxes support " \
                         "instance_number" in err


def test_an_undecided_nlstx_slice_convention_fails_unless_the_config_names_one(tmp_path, capsys):
    folder = _nlst_download(tmp_path / "nlst", slice_number=35)  # no convention puts the box on the nodule
    code, out, err = _run(tmp_path, capsys, folder, "nlst", "{}\n")
    assert code == 2
    assert err.startswith("lesiontrack check: --dataset nlst: slice convention: undecided: the 8 downloaded NLSTx "
                          "boxes do not single one out")
    assert err.rstrip().endswith("name one in datasets.nlst.slice_number_convention")
    with pytest.raises(Exception, match="did not pass"):
        check.convention_of(tmp_path / "check.json")
    code, out, _ = _run(tmp_path, capsys, folder, "nlst", "datasets: {nlst: {slice_number_convention: index0}}\n")
    assert code == 0 and "warn slice convention undecided by the data" in out
    assert check.convention_of(tmp_path / "check.json") == "index0"


def test_a_custom_volume_that_does_not_read_fails(tmp_path, capsys, test_data):
    folder = tmp_path / "custom"
    folder.mkdir()
    broken = folder / "broken.nii.gz"
    broken.write_bytes((test_data / "totalseg" / "example_ct_sm.nii.gz").read_bytes()[:5000])  # cut short
    pd.DataFrame({"image_id": ["good", "broken"], "path": [str(test_data / "totalseg" / "example_ct_sm.nii.gz"),
                                                           str(broken)]}).to_csv(folder / "images.csv", index=False)
    code, out, err = _run(tmp_path, capsys, folder, "custom", "{}\n")
    assert code == 2 and err.startswith(f"lesiontrack check: --dataset custom: volumes readable: {broken}")
    pd.DataFrame({"image_id": ["good"], "path": [str(test_data / "totalseg" / "example_ct_sm.nii.gz")]}).to_csv(
        folder / "images.csv", index=False)
    code, out, _ = _run(tmp_path, capsys, folder, "custom", "{}\n")
    assert code == 0 and "ok volumes readable 1 volumes, each with >= 3 slices per axis" in out


def test_a_series_missing_slices_fails(tmp_path, capsys):
    folder = _nlst_download(tmp_path / "nlst", slice_number=17)
    plan = pd.read_csv(folder / "series.csv").assign(instanceCount=40)  # the IDC index's count
    plan.to_csv(folder / "series.csv", index=False)
    next((folder / "dicom" / "1.2.3.0").glob("*.dcm")).unlink()
    code, _, err = _run(tmp_path, capsys, folder, "nlst", "{}\n")
    assert code == 2 and err.startswith(f"lesiontrack check: --dataset nlst: slices per series: "
                                        f"{folder / 'dicom' / '1.2.3.0'}: 39 of 40 slices")
