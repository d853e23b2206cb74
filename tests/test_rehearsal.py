"""The paper's benchmarks rehearsed end to end offline, by the very rules a real run uses.

DLS: a small DeepLesion in its own formats (zip archives of 16-bit PNG slices, DL_info.csv, DLS
JSONs) served from 127.0.0.1, through ``configs/paper-dls.yaml`` + ``configs/paper-model.yaml``
and a smoke-sized overlay: download, preflight, archive index, conversion, pairs, pretraining,
embedding, tracking with every method, evaluation and Table 1. NLST: NLST-like DICOM series under
real NLSTx series UIDs (so that the offline IDC index selects them) in a local folder source, an
NLSTx-format table served from 127.0.0.1, through ``configs/paper-nlst.yaml``: selection,
"download" from the folder, conversion, the preflight deciding the slice convention the generator
used, pairs, pretraining on the training cohort, tracking and Table 2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml
from conftest import REPO, LocalHTTPServer, copy_workflow, run_workflow

from lesiontrack.data import dls, nlst
from lesiontrack.data import synthetic as syn
from lesiontrack.data.deeplesion_synth import write_deeplesion
from lesiontrack.data.nlst_synth import write_nlst
from lesiontrack.evaluate import load_dls_entries

# a few patients (1 test, 1 valid, 2 pretraining), a few lesions, coarse pixels: seconds to make
DEEPLESION = {"n_train_subjects": 3, "n_test_subjects": 1, "followups": [1, 1], "lesions_per_subject": [2, 3],
              "new_lesions_per_followup": [0, 0], "disappear_probability": 0.0, "inplane_spacing_mm": [3.6, 4.0],
              "slice_spacing_mm": [3.5, 4.5], "canonical_spacing_mm": 2.5, "export": "dls-subvolumes"}
# one tracker of each kind (the rehearsals test the datasets' formats and plumbing; elastix and the
# other embedding rows run the same code on every dataset, in the smoke run)
METHODS = ["identity", "affine", "deformable", "multiscale", "hybrid"]
SMOKE_MODEL = f"""
track: {{methods: [{", ".join(METHODS)}]}}
model: {{name: rehearsal, width: 8, embedding_dim: 32}}
preprocess: {{spacing_mm: 4.0}}
train:
  device: cpu
  threads: 2
  sampler_workers: 1
  batch_size: 2
  patch_size: [16, 48, 48]
  max_epochs: 2
  steps_per_epoch: 3
  validation_pairs: 2
  n_pos: 20
  n_hard_neg: 10
  n_diverse_neg: 20
"""


@pytest.fixture(scope="module")
def deeplesion(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("deeplesion")
    write_deeplesion(syn.SyntheticConfig.from_dict(DEEPLESION), folder)
    return folder


def test_the_small_deeplesion_has_deeplesions_formats(deeplesion, test_data):
    info = pd.read_csv(deeplesion / "DL_info.csv", dtype=str)
    assert list(info.columns) == dls.DL_INFO_COLUMNS
    loaded = dls.load_dl_info(deeplesion / "DL_info.csv")  # the converter's reader takes it as it is
    index = dls.archive_index(sorted(deeplesion.glob("Images_png_*.zip")))
    for series_id, rows in loaded.groupby("series_id"):
        held = index[index["series_id"] == series_id].iloc[0]
        assert rows["first_slice"].min() >= held["first_slice"] and rows["last_slice"].max() <= held["last_slice"]
    test = json.loads((deeplesion / "test.json").read_text())
    assert list(test) == [f"{k + 1:04d}" for k in range(len(test))] and len(test) % 2 == 0
    real = load_dls_entries(test_data / "dls" / "test.json")[0]
    for entry in test.values():
        assert set(entry) <= set(real)  # no key of our own; every key the pipeline reads
        assert {"source", "target", "source center", "target center", "target box", "source spacing",
                "target spacing", "target recist diameter"} <= set(entry)
        volume = dls.VolumeName.parse(entry["target"])
        key = volume.first + round(entry["target center"][2])  # as on the published entries
        assert entry["target recist slice"] == f"{volume.series_id}/{key:03d}.png"
    truth = pd.read_csv(deeplesion / "truth" / "pairs.csv", dtype={"dls_entry": str})
    assert (truth["split"] == "test").sum() == len(test)


def test_dls_rehearsal_from_download_to_table_1(deeplesion, test_data, tmp_path):
    """Every rule of a real DLS run on the small DeepLesion from a local server: the converted
    pairs.csv lands on the generator's truth within half a voxel and Table 1 has every row."""
    files = {f"/nih/{p.name}": p.read_bytes() for p in deeplesion.iterdir() if p.is_file()}
    files["/dlt/DLTMix.json"] = (test_data / "dls" / "DLTMix.json").read_bytes()
    archives = sorted(p.name for p in deeplesion.glob("Images_png_*.zip"))
    workdir = copy_workflow(tmp_path / "repo")
    overlay = tmp_path / "rehearsal.yaml"
    with LocalHTTPServer(files) as server:
        urls = ", ".join(f"{server.url}/nih/{name}" for name in archives)
        overlay.write_text(SMOKE_MODEL + f"""
shard_size: 4
dls:
  annotation_urls: {{test: {server.url}/nih/test.json, valid: {server.url}/nih/valid.json}}
  dl_info_url: {server.url}/nih/DL_info.csv
  dlt_predictions_url: {server.url}/dlt/DLTMix.json
  archive_urls: [{urls}]
  archives: [{", ".join(str(k + 1) for k in range(len(archives)))}]
""")
        run_workflow(workdir, [REPO / "configs" / "paper-dls.yaml", REPO / "configs" / "paper-model.yaml", overlay])
    results = workdir / "results"
    check = json.loads((results / "dls" / "check.json").read_text())
    assert check["passed"] and {f["check"] for f in check["findings"]} >= {"archives present", "archive integrity",
                                                                            "spacing agreement", "head-feet"}
    # the converted pairs.csv against the generator's truth: within half a voxel
    pairs = pd.read_csv(results / "dls" / "pairs.csv", dtype={"dls_entry": str})
    truth = pd.read_csv(deeplesion / "truth" / "pairs.csv", dtype={"dls_entry": str})
    truth = truth[truth["split"].isin(["test", "valid"])]  # the DLS splits a run downloads
    joined = pairs.merge(truth, on=["split", "dls_entry"], suffixes=("", "_truth"), validate="one_to_one")
    assert len(joined) == len(truth) == len(pairs) and (joined["split"] == "test").any()
    images = pd.read_csv(results / "dls" / "images.csv")
    spacing = {}
    for image_id, path in zip(images["image_id"], images["path"], strict=True):
        spacing[image_id] = np.array(sitk.ReadImage(str(workdir / path)).GetSpacing())
    for end in ("source", "target"):
        error = np.abs(joined[[f"{end}_{a}" for a in "xyz"]].to_numpy(float)
                       - joined[[f"{end}_{a}_truth" for a in "xyz"]].to_numpy(float))
        half = np.stack([spacing[i] for i in joined[f"{end}_image"]]) / 2
        assert (error <= half).all(), error.max(axis=0)
    # pretraining on the patients outside the DLS splits (DL_info.csv), evaluation on the test split
    assert set(images.loc[images["split"] == "train", "subject_id"].astype(int)) == {2, 3}
    assert (results / "models" / "rehearsal" / "checkpoint_best.pt").exists()
    table = pd.read_csv(results / "tables" / "dls.csv")
    assert set(METHODS) <= set(table["method"]) and any("DLT" in m for m in table["method"])
    ours = table[table["method"].isin(METHODS)]
    assert (ours["n"] == (pairs["split"] == "test").sum()).all() and ours["CPM@Radius"].notna().all()



def test_nlst_rehearsal_from_selection_to_table_2(test_data, tmp_path):
    """NLST's rules on NLST-like series of two NLSTx patients and a training cohort of two: the
    preflight decides the convention the generator wrote (InstanceNumber), the pairs land on the
    generator's truth within half a voxel, Table 2 has every method."""
    pytest.importorskip("idc_index_data")
    real = pd.read_csv(test_data / "nlstx" / "nlstx_dataset.csv")
    years = real.groupby("PID")["study_yr"].nunique()
    real[real["PID"].isin(sorted(years[years >= 2].index)[:2])].to_csv(tmp_path / "chosen.csv", index=False)
    plan = nlst.select_cohorts(tmp_path / "chosen.csv", n_patients=2, seed=0)  # what nlst_select will choose
    source = tmp_path / "nlst"
    settings = yaml.safe_load((REPO / "configs" / "nlst-like.yaml").read_text())["synthetic"]
    write_nlst(syn.SyntheticConfig.from_dict({**settings, "canonical_spacing_mm": 2.5, "lesions_per_subject": [7, 8]}),
               plan, source)
    table = (source / "nlstx_dataset.csv").read_bytes()
    workdir = copy_workflow(tmp_path / "repo")
    overlay = tmp_path / "rehearsal.yaml"
    with LocalHTTPServer({"/nlstx/nlstx_dataset.csv": table}) as server:
        overlay.write_text(SMOKE_MODEL + f"""
shard_size: 5
datasets:
  nlst:
    nlstx_url: {server.url}/nlstx/nlstx_dataset.csv
    nlstx_sha256: {hashlib.sha256(table).hexdigest()}
    dicom_source: {source / "dicom"}
    n_training_patients: 2
""")
        run_workflow(workdir, [REPO / "configs" / "paper-nlst.yaml", REPO / "configs" / "paper-model.yaml", overlay])
    results = workdir / "results"
    check = json.loads((results / "nlst" / "check.json").read_text())
    assert check["passed"] and check["slice_number_convention"] == "instance_number"
    series = pd.read_csv(results / "nlst" / "series.csv", dtype={"image_id": str, "pid": str})
    assert sorted(series["image_id"]) == sorted(plan["image_id"])
    pairs = pd.read_csv(results / "nlst" / "pairs.csv", dtype={"pair_id": str, "lesion_id": str})
    truth = pd.read_csv(source / "truth.csv", dtype={"pid": str, "nodule": str, "image_id": str})
    truth["lesion_id"] = truth["pid"] + "-" + truth["nodule"]
    joined = pairs.merge(truth, left_on=["lesion_id", "target_image"], right_on=["lesion_id", "image_id"],
                         validate="many_to_one")
    assert len(joined) == len(pairs) > 0
    images = pd.read_csv(results / "nlst" / "images.csv", dtype={"image_id": str})
    spacing = {i: np.array(sitk.ReadImage(str(workdir / p)).GetSpacing())
               for i, p in zip(images["image_id"], images["path"], strict=True)}
    error = np.abs(joined[["target_x", "target_y", "target_z"]].to_numpy(float)
                   - joined[["x", "y", "z"]].to_numpy(float))
    assert (error <= np.stack([spacing[i] for i in joined["target_image"]]) / 2 + 1e-6).all(), error.max(axis=0)
    assert set(images.loc[images["split"] == "train", "image_id"]) == set(plan.loc[plan["role"] == "training",
                                                                                   "image_id"])
    result = pd.read_csv(results / "tables" / "nlst.csv")
    assert set(METHODS) <= set(result["method"])
    assert (result.loc[result["method"].isin(METHODS), "n"] == (pairs["split"] == "test").sum()).all()
