"""The hybrid tracker's pieces: the robust fit of embedding correspondences, and registration
rescued by it where the fields of view do not meet (a thin slab in an unrelated frame)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from lesiontrack.track import hybrid, trackers
from lesiontrack.track.registration import map_points, register, registration_settings


def test_robust_fit_recovers_a_known_similarity_among_outliers():
    rng = np.random.default_rng(4)
    source = rng.uniform(-150, 150, (48, 3))
    rotation = Rotation.from_euler("xyz", [4, -3, 8], degrees=True).as_matrix()
    shift = np.array([12.0, -35.0, 410.0])  # frames hundreds of mm apart, as DLS sub-volumes
    target = 1.04 * source @ rotation.T + shift + rng.normal(0, 1.0, (48, 3))
    wrong = rng.random(48) < 0.55  # more than half the matches elsewhere
    target[wrong] = rng.uniform(-200, 200, (wrong.sum(), 3)) + shift
    transform, inliers = hybrid.robust_fit(source, target, hybrid.HybridSettings())
    assert inliers[~wrong].all() and inliers[wrong].sum() <= 1
    probe = rng.uniform(-100, 100, (10, 3))
    np.testing.assert_allclose(map_points(transform, probe), 1.04 * probe @ rotation.T + shift, atol=1.5)


@pytest.fixture(scope="module")
def ct_2mm(test_data):
    from lesiontrack.preprocess import resample_isotropic

    return resample_isotropic(sitk.ReadImage(str(test_data / "totalseg" / "example_ct_sm.nii.gz")), 2.0)


def test_a_thin_slab_in_an_unrelated_frame_is_registered_from_the_anchors(ct_2mm):
    """The whole real CT (2 mm) against its top 24 mm moved 400 mm: the deformable baseline cannot
    start (ITK raises) or lands far off; registration from the robust fit of anchor matches of which
    only 40 % are right (the rest scattered over the slab) maps the slab's points within 2 mm."""
    a, b = 0, 12
    slab = ct_2mm[:, :, a:b]
    offset = np.array([0.0, 0.0, 400.0])
    slab.SetOrigin(tuple(np.add(slab.GetOrigin(), offset)))
    settings = hybrid.HybridSettings()
    anchors = hybrid.anchor_points(ct_2mm, settings)
    assert len(anchors) == settings.anchors
    rng = np.random.default_rng(0)
    matched = anchors + offset
    wrong = rng.random(len(anchors)) < 0.6
    centre = np.asarray(slab.TransformContinuousIndexToPhysicalPoint([n / 2 for n in slab.GetSize()]))
    matched[wrong] = centre + rng.normal(0, 40, (wrong.sum(), 3))
    size = ct_2mm.GetSize()
    probe = np.array([ct_2mm.TransformContinuousIndexToPhysicalPoint((x * size[0], y * size[1], (a + b) / 2))
                      for x in (0.35, 0.5, 0.65) for y in (0.35, 0.5, 0.65)])
    deformable = registration_settings("deformable", {})
    try:
        baseline = np.linalg.norm(map_points(register(ct_2mm, slab, "deformable", deformable), probe) - probe - offset,
                                  axis=1).max()
    except RuntimeError:
        baseline = np.inf
    transform = hybrid.anchored_transform(ct_2mm, slab, (anchors, matched), settings, deformable)
    error = np.linalg.norm(map_points(transform, probe) - probe - offset, axis=1)
    assert baseline > 10.0 and error.max() < 2.0


def test_hybrid_is_a_registered_tracker():
    tracker = trackers.get("hybrid")
    assert tracker.needs.embeddings and tracker.needs.volumes and tracker.decides_presence
