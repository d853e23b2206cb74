"""The custom dataset: own NIfTI files and DICOM series folders, pairs in world mm checked against the volumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from lesiontrack.data import custom
from lesiontrack.io import Geometry, InputError, read_image


@pytest.fixture()
def own_data(test_data, tmp_path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(test_data / "totalseg" / "example_ct_sm.nii.gz", folder / "ct_sm.nii.gz")
    shutil.copytree(test_data / "totalseg" / "example_ct_dicom", folder / "ct_dicom")
    return folder


def _pair_row(pair_id: str, source: str, target: str, p: list[float], q: list[float]) -> dict:
    return {"pair_id": pair_id, "lesion_id": pair_id, "direction": "forward", "source_image": source,
            "target_image": target, "source_x": p[0], "source_y": p[1], "source_z": p[2], "target_x": q[0],
            "target_y": q[1], "target_z": q[2], "target_radius_mm": 5.0}


def test_convert_nifti_and_dicom_and_check_pairs(own_data, tmp_path):
    table = custom.convert([str(own_data / "*")], tmp_path / "images", tmp_path / "images.csv")
    assert list(table["image_id"]) == ["ct_dicom", "ct_sm"]
    dicom = read_image(table.loc[table["image_id"] == "ct_dicom", "path"].iloc[0])
    assert dicom.GetSize() == (512, 512, 20) and dicom.GetSpacing()[2] == pytest.approx(2.0)
    sm = Geometry.of(read_image(table.loc[table["image_id"] == "ct_sm", "path"].iloc[0]))
    inside_sm = list(sm.index_to_world([60, 50, 15])[0])
    inside_dicom = [0.0, -200.0, -790.0]
    pairs_csv = tmp_path / "pairs.csv"
    pd.DataFrame([_pair_row("a", "ct_sm", "ct_dicom", inside_sm, inside_dicom)]).to_csv(pairs_csv, index=False)
    pairs = custom.pairs_stage(pairs_csv, tmp_path / "images.csv", tmp_path / "out" / "pairs.csv")
    assert len(pairs) == 1 and pairs["split"].iloc[0] == "test"
    outside = [0.0, -200.0, -700.0]  # above the 20 DICOM slices (z -804.5 .. -766.5)
    pd.DataFrame([_pair_row("a", "ct_sm", "ct_dicom", inside_sm, inside_dicom),
                  _pair_row("b", "ct_sm", "ct_dicom", inside_sm, outside)]).to_csv(pairs_csv, index=False)
    with pytest.raises(InputError, match=r"pairs\.csv: row 3 \(pair_id b\): target point \(0\.0, -200\.0, -700\.0\) "
                                         r"mm is outside ct_dicom"):
        custom.check_pairs(pairs_csv, {"ct_sm": str(own_data / "ct_sm.nii.gz"),
                                       "ct_dicom": table["path"].iloc[0]})


def test_patterns_that_match_nothing_or_clash_are_rejected(own_data):
    with pytest.raises(InputError, match=r"'nowhere/\*\.nii\.gz' matches no file"):
        custom.collect(["nowhere/*.nii.gz"], own_data)
    (own_data / "ct_dicom.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="image id 'ct_dicom' is given by"):
        custom.collect(["*"], own_data)


def _checkpoint(path: Path) -> Path:
    """A small untrained lesiontrack checkpoint (width 4, 8-d), as pretraining writes it."""
    from dataclasses import asdict

    import torch

    from lesiontrack.model import build_model
    from lesiontrack.train.loop import ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(width=4, embedding_dim=8)
    model = build_model(config.width, config.embedding_dim)
    torch.save({"model": model.state_dict(), "config": {"model": asdict(config), "window_hu": [-1000.0, 400.0],
                                                        "spacing_mm": 2.0}}, path)
    return path


def test_custom_config_plans_and_runs_embed(own_data, tmp_path):
    """Own scans and pairs with a given checkpoint: convert, resample and embed run (no pretraining),
    and the plan goes on to tracking and the table."""
    from conftest import copy_workflow, run_workflow
    from test_nlst import _plan

    workdir = copy_workflow(tmp_path / "repo")
    pairs_csv = tmp_path / "pairs.csv"
    inside_sm = list(Geometry.of(read_image(own_data / "ct_sm.nii.gz")).index_to_world([60, 50, 15])[0])
    pd.DataFrame([_pair_row("a", "ct_dicom", "ct_sm", [0.0, -200.0, -790.0], inside_sm)]).to_csv(
        pairs_csv, index=False)
    checkpoint = _checkpoint(tmp_path / "model.pt")
    overlay = tmp_path / "custom.yaml"
    overlay.write_text(f"datasets:\n  synthetic:\n    enabled: false\n  custom:\n    enabled: true\n"
                       f"    images: ['{own_data}/*']\n    pairs: {pairs_csv}\nmodel:\n  checkpoint: {checkpoint}\n")
    assert _plan(workdir, [overlay]) == {"custom_convert": 1, "custom_pairs": 1, "track": 8, "register": 2,
                                         "resample": 1, "embed": 1, "evaluate": 8,
                                         "table": 1, "figures": 1, "all": 1}
    embedded = "results/custom/shards/embeddings-default-000.csv"
    updated = run_workflow(workdir, [overlay], targets=[embedded])
    assert {"results/custom/images.csv", "results/custom/pairs.csv", embedded} <= set(updated)
    images = pd.read_csv(workdir / "results" / "custom" / "images.csv")
    assert list(images["image_id"]) == ["ct_dicom", "ct_sm"] and set(images["split"]) == {"train"}
    table = pd.read_csv(workdir / embedded)
    assert sorted(table["image_id"]) == ["ct_dicom", "ct_sm"]  # both ends of the pair
    for folder in table["embeddings"]:
        scales = sorted(p.name for p in (workdir / folder).glob("scale*.npy"))
        assert len(scales) == 5 and (workdir / folder / "geometry.json").exists()
    assert "finished in" in (workdir / "results" / "logs" / "custom" / "pairs.log").read_text()
