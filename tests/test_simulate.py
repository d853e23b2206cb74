"""Follow-ups with known motion (lesiontrack simulate): the motion's inverse is exact, an inserted
lesion lands where pairs.csv says, each condition changes what it says, and bad input stops it.
On volumes made here (no reference data needed)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import made_ct

from lesiontrack.cli import main
from lesiontrack.data.simulate import CONDITIONS, sample_motion, simulate, simulate_pair
from lesiontrack.io import Geometry, read_image
from lesiontrack.tables import GENERATED_PAIR_COLUMNS


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return made_ct(tmp_path_factory.mktemp("ct") / "made_ct.nii.gz", size=(64, 64, 48), spacing=(2.5, 2.5, 2.5))


@pytest.mark.parametrize("name", ["smooth", "large-motion", "partial"])
def test_the_motion_and_its_inverse_agree_to_a_micrometre(ct, name):
    geometry = Geometry.of(read_image(ct))
    motion = sample_motion(CONDITIONS[name], geometry, np.random.default_rng(3))
    points = np.random.default_rng(4).uniform(geometry.corners().min(0), geometry.corners().max(0), (200, 3))
    follow = motion.to_follow_up(points)
    np.testing.assert_allclose(motion.to_baseline(follow), points, atol=1e-3)
    moved = np.linalg.norm(follow - points, axis=1)
    assert moved.max() > (100.0 if CONDITIONS[name].frames else 1.0)  # it does move them


def test_an_inserted_lesion_lies_where_the_pairs_say(ct):
    """A bright lesion on a smooth, noise-free follow-up: the centroid of its bright voxels is
    within half a voxel of the lesion's known follow-up point, in every lesion."""
    condition = replace(CONDITIONS["large-motion"], growth=(1.0, 1.0))
    image = read_image(ct)
    flat = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(image).shape, 40, np.int16))
    flat.CopyInformation(image)
    _, follow_up, lesions = simulate_pair(flat, condition, seed=1, n_lesions=4)
    assert len(lesions) == 4 and lesions["inside"].all()
    hu = sitk.GetArrayFromImage(follow_up)
    geometry = Geometry.of(follow_up)
    for lesion in lesions.itertuples():
        target = np.array([lesion.follow_x, lesion.follow_y, lesion.follow_z])
        zz, yy, xx = np.nonzero(hu > 40 + abs(lesion.contrast_hu) / 2 if lesion.contrast_hu > 0 else
                                hu < 40 - abs(lesion.contrast_hu) / 2)
        world = geometry.index_to_world(np.stack([xx, yy, zz], axis=1).astype(float))
        near = world[np.linalg.norm(world - target, axis=1) < lesion.radius_mm + 2.0]
        assert len(near) > 0
        assert np.linalg.norm(near.mean(axis=0) - target) < 0.5 * max(geometry.spacing)


def test_each_condition_changes_what_it_says(ct):
    image = read_image(ct)
    base = Geometry.of(image)
    for name in ("acquisition", "partial", "slab-target", "slab-source"):
        baseline, follow_up, lesions = simulate_pair(image, CONDITIONS[name], seed=0)
        b, f = Geometry.of(baseline), Geometry.of(follow_up)
        if name == "acquisition":
            assert f.spacing[2] == 5.0 and np.std(sitk.GetArrayFromImage(follow_up)[sitk.GetArrayFromImage(
                follow_up) > -300]) > 0
        if name == "partial":
            assert (f.size[2] - 1) * f.spacing[2] == pytest.approx(0.5 * base.z_extent_mm(), abs=base.spacing[2])
            assert np.linalg.norm(np.subtract(f.origin, base.origin)) > 90.0  # unrelated frames
        if name == "slab-source":
            assert b.z_extent_mm() < base.z_extent_mm() and f.size == base.size
        assert lesions["inside"].any()


def test_simulate_writes_both_directions_of_every_lesion_in_world_mm(ct, tmp_path):
    pairs = simulate([ct], tmp_path / "sim", ["smooth", "low-dose"], seeds=[0, 1], n_lesions=3)
    assert list(pairs.columns) == GENERATED_PAIR_COLUMNS
    assert pairs["subject_id"].nunique() == 4 and set(pairs["direction"]) == {"forward", "backward"}
    images = pd.read_csv(tmp_path / "sim" / "images.csv")
    assert len(images) == 8 and all(sitk.ReadImage(p).GetSize() for p in images["path"])
    forward = pairs[pairs["direction"] == "forward"].set_index("pair_id")
    backward = pairs[pairs["direction"] == "backward"].set_index("pair_id")
    np.testing.assert_allclose(forward[["source_x", "source_y", "source_z"]].to_numpy(),
                               backward.loc[forward.index, ["target_x", "target_y", "target_z"]].to_numpy())
    # every point inside its image
    for row in pairs.itertuples():
        for end in ("source", "target"):
            path = images.set_index("image_id").loc[getattr(row, f"{end}_image"), "path"]
            point = np.array([[getattr(row, f"{end}_{a}") for a in "xyz"]])
            assert Geometry.of(sitk.ReadImage(path)).contains(point)[0]
    # the same seed makes the same follow-ups
    again = simulate([ct], tmp_path / "again", ["smooth", "low-dose"], seeds=[0, 1], n_lesions=3)
    pd.testing.assert_frame_equal(pairs, again)


def test_the_command_line_and_its_bad_input(ct, tmp_path, capsys):
    assert main(["simulate", "--scans", str(ct), "--out", str(tmp_path / "sim"), "--conditions", "smooth",
                 "--lesions", "2"]) == 0
    assert "2 lesion pair(s) in 1 image pair(s)" in capsys.readouterr().out
    assert main(["simulate", "--scans", str(ct), str(ct), "--out", str(tmp_path / "twice")]) == 2
    assert "two scans are named 'made_ct'" in capsys.readouterr().err and not (tmp_path / "twice").exists()
    with pytest.raises(SystemExit):
        main(["simulate", "--scans", str(ct), "--out", str(tmp_path / "x"), "--conditions", "earthquake"])
