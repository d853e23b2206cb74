"""Pretraining pieces: exact patch correspondence, InfoNCE by hand, determinism and resume."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lesiontrack.train.loop import ModelConfig, TrainConfig, pretrain
from lesiontrack.train.loss import info_nce, sample_embeddings
from lesiontrack.train.patches import PatchConfig, sample_pair


def test_patch_correspondence_is_exact():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    volume = np.full((90, 180, 180), -100, np.int16)
    marker = np.array([45.0, 80.0, 70.0])  # centre of a 3-voxel bright cube
    volume[44:47, 79:82, 69:72] = 2000
    cfg = PatchConfig(noise_std=0.0)
    seen = 0
    for _ in range(4):
        pair = sample_pair(volume, np.array([[45, 80, 80]]), cfg, 50, rng)
        for view in (pair.view1, pair.view2):
            image = view.image[0].numpy()
            if image.max() < 0.5:
                continue
            found = np.argwhere(image > 0.5).mean(axis=0)
            predicted = view.from_volume(marker[None])[0]
            assert np.linalg.norm(found - predicted) < 1.0  # within one voxel
            seen += 1
        # positives: the same volume voxel seen from both views
        back1 = pair.positives1 @ pair.view1.to_volume[:3, :3].T + pair.view1.to_volume[:3, 3]
        back2 = pair.positives2 @ pair.view2.to_volume[:3, :3].T + pair.view2.to_volume[:3, 3]
        np.testing.assert_allclose(back1, back2, atol=1e-6)
        np.testing.assert_allclose(back1, pair.positives_volume, atol=1e-6)
    assert seen >= 4


def test_info_nce_by_hand():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    negatives = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]], [[1.0, 0.0], [0.6, 0.8]]])
    t = 0.5
    # row 1: pos 0.6, negs 0, -1 ; row 2: pos 1, negs 0, 0.8
    expected = -(math.log(math.exp(0.6 / t) / (math.exp(0.6 / t) + math.exp(0) + math.exp(-1 / t)))
                 + math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0) + math.exp(0.8 / t))))
    assert info_nce(anchor, positive, negatives, t).item() == pytest.approx(expected, rel=1e-6)
    keep = torch.tensor([[True, False], [True, True]])  # drop one negative of row 1
    dropped = -(math.log(math.exp(0.6 / t) / (math.exp(0.6 / t) + 1.0))
                + math.log(math.exp(1 / t) / (math.exp(1 / t) + 1.0 + math.exp(0.8 / t))))
    assert info_nce(anchor, positive, negatives, t, keep).item() == pytest.approx(dropped, rel=1e-6)


def test_sample_embeddings_hits_voxel_centres():
    embedding = torch.zeros(3, 4, 6, 6)
    embedding[0, 1, 2, 3] = 1.0  # coarse voxel (1, 2, 3) at stride (2, 2, 2) of an 8x12x12 input
    centre = torch.tensor([[2.5, 4.5, 6.5]])  # input-voxel centre of that coarse voxel
    assert sample_embeddings(embedding, centre, (8, 12, 12))[0, 0].item() == pytest.approx(1.0)


def _tiny_volumes(tmp_path, n=3):
    import SimpleITK as sitk

    from lesiontrack.io import write_image

    paths = []
    rng = np.random.default_rng(1)
    for k in range(n):
        base = rng.normal(0, 1, (40, 70, 70))
        from scipy import ndimage

        array = (ndimage.gaussian_filter(base, 3) * 2000).clip(-1000, 1000).astype(np.int16)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((4.0, 4.0, 4.0))
        paths.append(write_image(image, tmp_path / f"v{k}.nii.gz"))
    return paths


TINY = dict(batch_size=2, max_epochs=2, steps_per_epoch=2, patch_size=(16, 32, 32), n_pos=20, n_hard_neg=10,
            n_diverse_neg=10, n_candidates=100, validation_pairs=2, seed=3)


def test_training_is_deterministic_and_resumes_exactly(tmp_path):
    volumes = _tiny_volumes(tmp_path)
    model = ModelConfig(width=4, embedding_dim=8)
    straight = pretrain(volumes[:2], volumes[2:], tmp_path / "a", TrainConfig(**TINY), model, progress=False)
    again = pretrain(volumes[:2], volumes[2:], tmp_path / "b", TrainConfig(**TINY), model, progress=False)
    losses = [c for c in straight.columns if "loss" in c]
    pd.testing.assert_frame_equal(straight[losses], again[losses])
    # one epoch, stop, then resume for the second: the same losses as the straight run
    pretrain(volumes[:2], volumes[2:], tmp_path / "c", TrainConfig(**{**TINY, "max_epochs": 1}), model,
             progress=False)
    resumed = pretrain(volumes[:2], volumes[2:], tmp_path / "c", TrainConfig(**TINY), model, progress=False)
    pd.testing.assert_frame_equal(straight[losses], resumed[losses])
    for name in ("checkpoint_best.pt", "checkpoint_latest.pt", "training_log.tsv", "progress.png"):
        assert (tmp_path / "c" / name).exists()
    state = torch.load(tmp_path / "c" / "checkpoint_latest.pt", weights_only=False)
    assert state["epoch"] == 1 and {"model", "optimizer", "config"} <= set(state)
