"""NLST / NLSTx pipeline: DICOM conversion, offline IDC cohort selection, download, NLSTx boxes, --check-slices."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from lesiontrack.io import InputError, dicom_series, read_image


@pytest.fixture(scope="module")
def dicom_dir(test_data) -> Path:
    return test_data / "totalseg" / "example_ct_dicom"


def test_example_dicom_converts_with_header_values(dicom_dir):
    pydicom = pytest.importorskip("pydicom")
    image = read_image(dicom_dir)
    assert image.GetSize() == (512, 512, 20)
    assert image.GetSpacing() == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert image.GetOrigin() == pytest.approx((-249.51171875, -437.51171875, -804.5))
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(dicom_dir.iterdir())]
    assert {float(h.SliceThickness) for h in headers} == {3.0}  # the tag is not what the converter uses
    z = sorted(float(h.ImagePositionPatient[2]) for h in headers)
    assert image.GetSpacing()[2] == pytest.approx(np.diff(z).mean())
    lowest = min(headers, key=lambda h: float(h.ImagePositionPatient[2]))
    assert image.GetOrigin() == pytest.approx([float(v) for v in lowest.ImagePositionPatient])
    assert dicom_series(dicom_dir).instance_numbers[0] == 286  # InstanceNumber grows towards the feet


def test_missing_slice_is_rejected_naming_the_folder(dicom_dir, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(dicom_dir, folder)
    files = dicom_series(folder).files
    Path(files[7]).unlink()
    with pytest.raises(InputError, match=f"{folder}: missing or irregular slice") as err:
        read_image(folder)
    assert str(err.value).count(str(folder)) == 1


def test_second_series_in_folder_is_rejected_naming_the_folder(dicom_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder = tmp_path / "two"
    shutil.copytree(dicom_dir, folder)
    for k, path in enumerate(sorted(dicom_dir.iterdir())[:5]):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{k}"
        ds.save_as(folder / f"second-{k}.dcm")
    with pytest.raises(InputError, match=f"{folder}: folder holds 2 DICOM series"):
        read_image(folder)


def test_tilted_series_is_rejected_naming_the_folder(dicom_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder = tmp_path / "tilt"
    folder.mkdir()
    for path in sorted(dicom_dir.iterdir()):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.3 * (z + 804.5), z]  # a gantry tilt of about 8.5 degrees
        ds.save_as(folder / path.name)
    with pytest.raises(InputError, match=f"{folder}: slice positions drift"):
        read_image(folder)


# --------------------------------------------------------------------------- cohorts from the offline IDC index
@pytest.fixture(scope="module")
def nlstx(test_data) -> pd.DataFrame:
    from lesiontrack.data import nlst

    return nlst.read_nlstx(test_data / "nlstx" / "nlstx_dataset.csv")


def test_nlstx_cohorts_from_offline_index(nlstx):
    pytest.importorskip("idc_index_data")
    from lesiontrack.data import nlst

    pairs = nlst.nlstx_pairs(nlstx)
    assert pairs["pair_id"].nunique() == 917 and len(pairs) == 2 * 917
    assert set(pairs["direction"]) == {"forward", "backward"}
    forward = pairs[pairs["direction"] == "forward"]
    assert (forward["source_year"] < forward["target_year"]).all()
    assert forward["consecutive"].sum() == ((forward["target_year"] - forward["source_year"]) == 1).sum() > 0
    index = nlst.idc_series("nlst")
    evaluation = nlst.evaluation_cohort(nlstx, index)
    assert len(evaluation) == evaluation["image_id"].nunique() == 1229
    assert (evaluation["instanceCount"] > 0).all()
    # the screening year from the de-identified StudyDate agrees with NLSTx's study_yr
    years = evaluation.merge(index[["image_id", "study_yr"]], on="image_id", suffixes=("", "_index"))
    assert (years["study_yr"] == years["study_yr_index"]).all()
    training = nlst.training_cohort(index, nlstx["pid"].unique(), n_patients=50, seed=0)
    assert training["pid"].nunique() == 50
    assert not set(training["pid"]) & set(nlstx["pid"])
    assert (training["instanceCount"] >= 50).all()
    assert not training.duplicated(["pid", "study_yr"]).any()
    assert (training.groupby("pid")["study_yr"].nunique() >= 2).all()
    assert 90_000 < nlst.size_mb(evaluation) < 110_000  # about 99 GB


def test_unknown_series_is_rejected(nlstx):
    from lesiontrack.data import nlst

    index = pd.DataFrame({"image_id": ["1.2.3"], "pid": ["1"], "study_yr": [0], "instanceCount": [100],
                          "series_size_MB": [50.0]})
    with pytest.raises(InputError, match="1229 series not in the IDC index"):
        nlst.evaluation_cohort(nlstx, index, "nlstx.csv")


# --------------------------------------------------------------------------- download (fake downloader, no network)
def test_download_is_per_series_and_resumable(tmp_path):
    from lesiontrack.data import nlst

    calls: list[str] = []

    def flaky(uid: str, folder: Path) -> None:  # the first call stops after 2 of 3 files, as an interruption
        calls.append(uid)
        n = 2 if len(calls) == 1 else 3
        for k in range(n):
            (folder / f"{k}.dcm").write_bytes(b"x")

    series = pd.DataFrame({"image_id": ["1.1", "1.2"], "instanceCount": [3, 3]})
    with pytest.raises(InputError, match=r"\.1\.1\.part: series 1\.1 has 2 of 3"):
        nlst.download_series(series, tmp_path, flaky)
    assert not (tmp_path / "1.1").exists()
    table = nlst.download_series(series, tmp_path, flaky)
    assert list(table["image_id"]) == ["1.1", "1.2"] and calls == ["1.1", "1.1", "1.2"]
    assert nlst.download_series(series, tmp_path, flaky) is not None and len(calls) == 3  # complete: skipped


def test_idc_downloader_calls_idc_index(monkeypatch, tmp_path):
    idc_index = pytest.importorskip("idc_index")
    from lesiontrack.data import nlst

    seen = {}

    class Client:
        def download_from_selection(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(idc_index, "IDCClient", Client)
    nlst.idc_downloader("1.2.3", tmp_path)
    assert seen["seriesInstanceUID"] == ["1.2.3"] and seen["downloadDir"] == str(tmp_path)
    assert seen["dirTemplate"] is None and seen["use_s5cmd_sync"] is True


# --------------------------------------------------------------------------- NLSTx boxes and --check-slices
SPACING = (0.8, 0.8, 2.5)  # x, y, z mm
NODULE = (32, 30, 25)  # x, y voxel and volume slice index k (slices sorted along +z)
INSTANCE_NUMBERS = list(range(42, 2, -1))  # 40 slices; InstanceNumber 3..42 grows towards the feet


def _write_series(folder: Path, nodule_k: int = NODULE[2], series_uid: str = "1.2.826.0.1.3680043.8.498.7") -> None:
    """40 slices of 64x64 lung-density air with one dense ellipsoidal nodule, as CT DICOM (pydicom)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    z, y, x = np.mgrid[0:40, 0:64, 0:64]
    inside = ((x - NODULE[0]) / 5.0) ** 2 + ((y - NODULE[1]) / 5.0) ** 2 + ((z - nodule_k) / 1.2) ** 2 <= 1.0
    volume = np.where(inside, 40, -850).astype(np.int16)
    folder.mkdir(parents=True)
    origin = (-25.0, -40.0, -300.0)
    for k in range(volume.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{series_uid}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{series_uid}.0", series_uid
        ds.Modality, ds.PatientID = "CT", "100001"
        ds.InstanceNumber = INSTANCE_NUMBERS[k]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * SPACING[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]
        ds.SliceThickness = 5.0
        ds.Rows, ds.Columns = 64, 64
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = volume[k].tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)


def _nlstx_row(image_id: str, slice_number: int, year: int = 0) -> dict:
    return {"pid": "100001", "study_yr": year, "image_id": image_id, "nodule": "1", "lesion_id": "100001-1",
            "slice_number": slice_number, "box_x": NODULE[0] - 5, "box_y": NODULE[1] - 5, "box_w": 11, "box_h": 11}


@pytest.mark.parametrize("truth", ["instance_number", "index0", "index1"])
def test_check_slices_picks_the_convention_of_the_data(tmp_path, truth):
    from lesiontrack.data import nlst

    _write_series(tmp_path / "dicom" / "1.2.3")
    # the nodule's slice is InstanceNumber 17, the 15th slice (0-based 14) in InstanceNumber order
    number = {"instance_number": 17, "index0": 14, "index1": 15}[truth]
    scores = nlst.check_slices(pd.DataFrame([_nlstx_row("1.2.3", number)]), tmp_path / "dicom")
    assert scores["convention"].iloc[0] == truth
    assert scores["mean_score"].iloc[0] > 0.3 > scores["mean_score"].iloc[1]


def test_boxes_become_world_points_and_pairs(tmp_path):
    from lesiontrack.data import nlst
    from lesiontrack.io import Geometry

    dicom = tmp_path / "dicom"
    _write_series(dicom / "1.2.3", nodule_k=25)
    _write_series(dicom / "1.2.4", nodule_k=20, series_uid="1.2.826.0.1.3680043.8.498.8")
    volumes = {}
    for uid in ("1.2.3", "1.2.4"):
        volumes[uid] = str(tmp_path / f"{uid}.nii.gz")
        sitk.WriteImage(read_image(dicom / uid), volumes[uid])
    rows = pd.DataFrame([_nlstx_row("1.2.3", 17, 0), _nlstx_row("1.2.4", 42 - 20, 1)])
    pairs, lesions = nlst.nlst_tables(rows, volumes, dicom, "instance_number")
    assert list(lesions["image_id"]) == ["1.2.3", "1.2.4"] and (lesions["status"] == "present").all()
    assert len(pairs) == 2 and set(pairs["direction"]) == {"forward", "backward"}
    forward = pairs[pairs["direction"] == "forward"].iloc[0]
    geometry = Geometry.of(read_image(volumes["1.2.3"]))
    expected = geometry.index_to_world([NODULE[0], NODULE[1], 25])[0]
    assert [forward.source_x, forward.source_y, forward.source_z] == pytest.approx(expected)
    assert forward.target_z == pytest.approx(expected[2] - 5 * SPACING[2])
    assert forward.target_radius_mm == pytest.approx(11 / 2 * SPACING[0])
    assert forward.target_box_min_x <= forward.target_x <= forward.target_box_max_x
    assert forward.target_box_max_z - forward.target_box_min_z == pytest.approx(2 * forward.target_radius_mm)
    assert forward.target_box_max_x - forward.target_box_min_x == pytest.approx(10 * SPACING[0])
    with pytest.raises(InputError, match=r"Slice number 99 .* is not a slice"):
        nlst.nlst_tables(pd.DataFrame([_nlstx_row("1.2.3", 99)]), volumes, dicom, "instance_number")


def test_cli_check_slices_and_pairs(tmp_path, capsys):
    from lesiontrack.cli import main

    dicom = tmp_path / "dicom"
    _write_series(dicom / "1.2.3")
    csv = tmp_path / "nlstx.csv"
    pd.DataFrame([{"fold": 0, "PID": 100001, "study_yr": 0, "malignancy": "B", "seriesinstanceuids": "1.2.3",
                   "Abnormality UID": 1.0, "Slice number": 17.0, "Bounding box x (pixels)": NODULE[0] - 5.0,
                   "Bounding box y (pixels)": NODULE[1] - 5.0, "Bounding box width (pixels)": 11.0,
                   "Bounding box height (pixels)": 11.0}]).to_csv(csv, index=False)
    assert main(["pairs", "--dataset", "nlst", "--nlstx", str(csv), "--dicom-dir", str(dicom), "--check-slices"]) == 0
    out = capsys.readouterr().out
    assert "NLSTx" in out and out.splitlines()[2].split()[0] == "instance_number"
    assert main(["convert", "--dataset", "nlst", "--dicom-table", str(tmp_path / "none.csv"), "--images-dir",
                 str(tmp_path / "images"), "--table", str(tmp_path / "images.csv")]) == 2
    assert "none.csv: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["download", "convert", "pairs"])
def test_dataset_commands_have_help(stage, capsys):
    from lesiontrack import cli

    with pytest.raises(SystemExit) as stopped:  # argparse's --help: the text, then exit 0
        cli.main([stage, "--help"])
    assert stopped.value.code == 0 and "--dataset" in capsys.readouterr().out


def test_nlst_config_defaults_and_bad_convention():
    import yaml
    from conftest import REPO

    from lesiontrack import config

    paper = config.merge(yaml.safe_load((REPO / "config.yaml").read_text()),
                         yaml.safe_load((REPO / "configs" / "paper-nlst.yaml").read_text()))
    cfg = config.validate(paper)
    assert cfg["evaluate"]["min_radius_mm"] == 6 and cfg["datasets"]["nlst"]["enabled"]
    assert cfg["datasets"]["nlst"]["nlstx_url"].startswith("https://raw.githubusercontent.com/benVZ/NLSTx/")
    assert not config.validate(yaml.safe_load((REPO / "config.yaml").read_text()))["datasets"]["nlst"]["enabled"]
    with pytest.raises(config.ConfigError, match=r"datasets\.nlst\.slice_number_convention = 'zero'"):
        config.validate(config.merge(paper, {"datasets": {"nlst": {"slice_number_convention": "zero"}}}))


# --------------------------------------------------------------------------- the workflow
def _plan(workdir: Path, configfiles: list[Path]) -> dict[str, int]:
    from conftest import planned_jobs

    with planned_jobs(workdir, configfiles) as jobs:
        names = [job.rule.name for job in jobs]
    return {name: names.count(name) for name in dict.fromkeys(names)}


def test_paper_nlst_plans_offline_then_shards_after_the_checkpoint(test_data, tmp_path):
    pytest.importorskip("idc_index_data")
    from conftest import copy_workflow, run_workflow

    workdir = copy_workflow(tmp_path / "repo")
    configs = [workdir / "configs" / "paper-nlst.yaml", workdir / "configs" / "paper-model.yaml"]
    plan = _plan(workdir, configs)
    # up to the checkpoint, and the jobs after it that do not depend on its shards: pretraining on
    # the training cohort, tracking with every method, evaluation, the NLSTx table
    assert plan == {"nlst_nlstx": 1, "nlst_select": 1, "nlst_check": 1, "nlst_pairs": 1, "pretrain": 1, "track": 8,
                    "register": 2, "evaluate": 8, "table": 1, "figures": 1, "training_figure": 1,
                    "landmark_figure": 1, "all": 1}
    # offline: with the NLSTx table in place, the checkpoint selects the cohorts from the bundled index
    small = tmp_path / "small.yaml"
    small.write_text("shard_size: 100\ndatasets:\n  nlst:\n    n_training_patients: 5\n")
    (workdir / "results" / "nlst").mkdir(parents=True)
    shutil.copy(test_data / "nlstx" / "nlstx_dataset.csv", workdir / "results" / "nlst" / "nlstx_dataset.csv")
    run_workflow(workdir, [*configs, small], targets=["results/nlst/series.csv"])
    series = pd.read_csv(workdir / "results" / "nlst" / "series.csv", dtype={"image_id": str, "pid": str})
    assert (series["role"] == "evaluation").sum() == 1229
    assert series.loc[series["role"] == "training", "pid"].nunique() == 5
    log = (workdir / "results" / "logs" / "nlst" / "select.log").read_text()
    assert "GB to download" in log and "TotalSegmentator DICOM SEG in the same studies" in log
    n_shards = -(-len(series) // 100)
    plan = _plan(workdir, [*configs, small])
    assert plan["nlst_download"] == plan["nlst_convert"] == n_shards and plan["nlst_pairs"] == plan["nlst_check"] == 1
    assert plan["resample"] == plan["embed"] == n_shards and plan["pretrain"] == 1 and plan["table"] == 1


def test_nlst_rules_download_convert_pairs_offline(tmp_path):
    """After the checkpoint: downloaded series are skipped (no network), converted, and paired in world mm."""
    import os
    import time

    from conftest import REPO, copy_workflow, run_workflow

    workdir = copy_workflow(tmp_path / "repo")
    nlst_dir = workdir / "results" / "nlst"
    _write_series(nlst_dir / "dicom" / "1.2.3", nodule_k=25)
    _write_series(nlst_dir / "dicom" / "1.2.4", nodule_k=20, series_uid="1.2.826.0.1.3680043.8.498.8")
    for uid in ("1.2.3", "1.2.4"):  # as download_series leaves a complete series
        (nlst_dir / "dicom" / uid / ".complete").write_text("40\n")
    rows = []
    for uid, year, number in (("1.2.3", 0, 17), ("1.2.4", 1, 22)):
        rows.append({"fold": 0, "PID": 100001, "study_yr": year, "malignancy": "B", "seriesinstanceuids": uid,
                     "Abnormality UID": 1.0, "Slice number": number, "Bounding box x (pixels)": NODULE[0] - 5,
                     "Bounding box y (pixels)": NODULE[1] - 5, "Bounding box width (pixels)": 11,
                     "Bounding box height (pixels)": 11})
    pd.DataFrame(rows).to_csv(nlst_dir / "nlstx_dataset.csv", index=False)
    time.sleep(0.05)
    pd.DataFrame({"image_id": ["1.2.3", "1.2.4"], "role": "evaluation", "pid": "100001", "study_yr": [0, 1],
                  "instanceCount": 40, "series_size_MB": 0.3}).to_csv(nlst_dir / "series.csv", index=False)
    os.utime(nlst_dir / "series.csv")
    named = tmp_path / "named.yaml"  # two boxes cannot decide the slice convention: the config names it
    named.write_text("datasets: {nlst: {slice_number_convention: instance_number}}\n")
    configs = [REPO / "configs" / "paper-nlst.yaml", REPO / "configs" / "paper-model.yaml", named]
    updated = run_workflow(workdir, configs, targets=["results/nlst/pairs.csv", "results/nlst/images.csv"])
    assert {"results/nlst/pairs.csv", "results/nlst/lesions.csv", "results/nlst/shards/images-000.csv"} <= set(updated)
    images = pd.read_csv(nlst_dir / "images.csv", dtype={"image_id": str, "subject_id": str})
    assert images[["image_id", "subject_id", "split"]].values.tolist() == [["1.2.3", "100001", "test"],
                                                                          ["1.2.4", "100001", "test"]]
    assert "results/nlst/series.csv" not in updated  # the checkpoint's output was taken as it is
    pairs = pd.read_csv(nlst_dir / "pairs.csv")
    assert len(pairs) == 2 and (pairs["dataset"] == "NLSTx").all()
    forward = pairs[pairs["direction"] == "forward"].iloc[0]
    assert forward.target_z == pytest.approx(forward.source_z - 5 * SPACING[2])
    assert (nlst_dir / "images" / "1.2.4.nii.gz").exists()
    assert "warn  slice convention   undecided by the data (2 boxes" in (nlst_dir / "check.txt").read_text()
