"""Registration baselines: a known affine on a real CT is recovered; predictions group by direction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from lesiontrack.tables import PREDICTION_COLUMNS
from lesiontrack.track import registration
from lesiontrack.track.predict import track_table
from lesiontrack.track.registration import (
    DEFAULT_AFFINE,
    DEFAULT_DEFORMABLE,
    RegistrationSettings,
    map_points,
    refine_bspline,
    register,
)


def _known_affine(center: tuple[float, float, float]) -> sitk.AffineTransform:
    """Fixed -> moving: 5 degrees about an oblique axis, 5 % scaling, (12, -8, 6) mm (~15.6 mm) shift."""
    rotation = sitk.VersorTransform((0.2, 0.1, 1.0), np.radians(5.0))
    matrix = np.array(rotation.GetMatrix()).reshape(3, 3) * 1.05
    transform = sitk.AffineTransform(3)
    transform.SetCenter(center)
    transform.SetMatrix(matrix.ravel().tolist())
    transform.SetTranslation((12.0, -8.0, 6.0))
    return transform


@pytest.fixture(scope="module")
def ct_case(test_data: Path):
    """(fixed CT, moving = CT under a known affine, that affine, body points of the fixed CT in world mm)."""
    ct = sitk.ReadImage(str(test_data / "totalseg" / "example_ct_sm.nii.gz"))  # 3 mm voxels
    # on the workflow's 2 mm grid, which the default shrink factors are meant for
    size = [round(n * sp / 2.0) for n, sp in zip(ct.GetSize(), ct.GetSpacing(), strict=True)]
    fixed = sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(), (2.0, 2.0, 2.0),
                          ct.GetDirection(), -1024.0, ct.GetPixelID())
    array = sitk.GetArrayViewFromImage(fixed)
    center = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in fixed.GetSize()])
    truth = _known_affine(center)
    # moving(q) = fixed(truth^-1(q)) on the fixed grid cropped until no voxel of it lies outside
    # the source (no padding with made-up air); part of the body leaves the field of view
    ones = sitk.Image(fixed.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(fixed)
    valid = sitk.GetArrayFromImage(sitk.Resample(ones, fixed, truth.GetInverse(), sitk.sitkNearestNeighbor, 0))
    low, high = np.zeros(3, int), np.array(valid.shape)  # z, y, x
    while not valid[low[0]:high[0], low[1]:high[1], low[2]:high[2]].all():
        box = valid[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
        faces = [(box[0] == 0).mean(), (box[-1] == 0).mean(), (box[:, 0] == 0).mean(), (box[:, -1] == 0).mean(),
                 (box[:, :, 0] == 0).mean(), (box[:, :, -1] == 0).mean()]
        worst = int(np.argmax(faces))
        if worst % 2 == 0:
            low[worst // 2] += 1
        else:
            high[worst // 2] -= 1
    moving = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkLinear, -1024.0, fixed.GetPixelID())
    moving = moving[int(low[2]):int(high[2]), int(low[1]):int(high[1]), int(low[0]):int(high[0])]
    rng = np.random.default_rng(0)
    z, y, x = np.nonzero(array > -200)  # soft tissue and bone
    keep = rng.choice(len(x), size=200, replace=False)
    points = np.array([fixed.TransformIndexToPhysicalPoint((int(x[i]), int(y[i]), int(z[i]))) for i in keep])
    mapped = map_points(truth, points)
    inside = np.array([all(0 <= c < s - 1 for c, s in zip(moving.TransformPhysicalPointToContinuousIndex(p),
                                                             moving.GetSize(), strict=True)) for p in mapped])
    return fixed, moving, truth, points[inside]


@pytest.mark.parametrize("method", ["affine", "deformable"])
def test_known_affine_is_recovered(ct_case, method):
    fixed, moving, truth, points = ct_case
    assert len(points) > 100
    transform = register(fixed, moving, method)
    errors = np.linalg.norm(map_points(transform, points) - map_points(truth, points), axis=1)
    identity = np.linalg.norm(points - map_points(truth, points), axis=1)
    assert identity.mean() > 10  # the test is not trivial
    message = f"{method}: mean {errors.mean():.2f} mm, 95th percentile {np.percentile(errors, 95):.2f}, max " \
              f"{errors.max():.2f} mm"
    assert errors.mean() < 1.0 and np.percentile(errors, 95) < 2.0, message
    if method == "affine":  # the model is exact: every point within 2 mm
        assert errors.max() < 2.0, message


def test_one_thread_makes_a_registration_bit_reproducible(ct_case):
    """threads=1 (every workflow rule): two deformable registrations of the same pair are the same
    to the bit, whatever ITK's global default is, and that default is restored afterwards."""
    fixed, moving, _, points = ct_case
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    try:
        first, second = (register(fixed, moving, "deformable", threads=1) for _ in range(2))
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 2
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    np.testing.assert_array_equal(map_points(first, points), map_points(second, points))


def test_threads_below_one_are_refused_in_one_line(capsys):
    from lesiontrack.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["register", "--threads", "0", "--pairs", "p.csv", "--out-dir", "r", "--volumes", "v.csv"])
    assert stop.value.code == 2
    assert "argument --threads: expected a whole number of at least 1, not '0'" in capsys.readouterr().err


def test_refine_bspline_is_exact():
    image = sitk.Image([30, 25, 20], sitk.sitkFloat32)
    image.SetSpacing((2.0, 3.0, 4.0))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection(sitk.VersorTransform((1.0, 2.0, 3.0), 0.3).GetMatrix())
    coarse = sitk.BSplineTransformInitializer(image, [2, 3, 2], 3)
    coarse.SetParameters(np.random.default_rng(0).normal(0, 5, coarse.GetNumberOfParameters()).tolist())
    fine = refine_bspline(refine_bspline(coarse))
    assert list(fine.GetTransformDomainMeshSize()) == [8, 12, 8]
    rng = np.random.default_rng(1)
    points = np.array([image.TransformContinuousIndexToPhysicalPoint(rng.uniform(0, np.array(image.GetSize()) - 1))
                       for _ in range(200)])
    assert np.abs(map_points(coarse, points) - points).max() > 1  # a real deformation
    np.testing.assert_allclose(map_points(fine, points), map_points(coarse, points), atol=1e-9)


def test_map_points_shapes():
    shift = sitk.TranslationTransform(3, (1.0, -2.0, 3.0))
    assert map_points(shift, np.zeros((0, 3))).shape == (0, 3)
    np.testing.assert_allclose(map_points(shift, np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])),
                               [[1.0, -2.0, 3.0], [2.0, -1.0, 4.0]])


def test_settings_from_dict():
    assert DEFAULT_AFFINE.iterations >= 200
    assert DEFAULT_DEFORMABLE.bspline_mesh_mm <= 40
    assert RegistrationSettings.from_dict(DEFAULT_DEFORMABLE.to_dict()) == DEFAULT_DEFORMABLE
    changed = RegistrationSettings.from_dict({"histogram_bins": 24, "shrink_factors": [4, 2, 1]})
    assert changed.histogram_bins == 24 and changed.shrink_factors == (4, 2, 1)
    with pytest.raises(ValueError, match="histogram_bin"):
        RegistrationSettings.from_dict({"histogram_bin": 24})
    with pytest.raises(ValueError, match="bspline_mesh_mm"):
        RegistrationSettings.from_dict({"bspline_mesh_mm": 60})
    with pytest.raises(ValueError, match="method"):
        register(sitk.Image(8, 8, 8, sitk.sitkFloat32), sitk.Image(8, 8, 8, sitk.sitkFloat32), "rigid")


def _two_volumes(tmp_path):
    """Two empty 4-voxel volumes, "b" 100 mm along x from "a"."""
    paths = {}
    for name, origin in (("a", (0.0, 0.0, 0.0)), ("b", (100.0, 0.0, 0.0))):
        image = sitk.Image(4, 4, 4, sitk.sitkInt16)
        image.SetOrigin(origin)
        paths[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(image, str(paths[name]))
    return paths


def test_registration_tracker_one_registration_per_direction(tmp_path, monkeypatch):
    paths = _two_volumes(tmp_path)
    calls = []

    def fake_register(fixed, moving, method, settings=None, threads=None, initial=None):
        calls.append((fixed.GetOrigin()[0], moving.GetOrigin()[0], method))
        # maps fixed to moving: shift by the difference of the origins
        return sitk.TranslationTransform(3, (moving.GetOrigin()[0] - fixed.GetOrigin()[0], 0.0, 0.0))

    monkeypatch.setattr(registration, "register", fake_register)
    pairs = pd.DataFrame({
        "pair_id": ["p1", "p1", "p2", "p2", "p3"],
        "lesion_id": ["l1", "l1", "l2", "l2", "l3"],
        "direction": ["forward", "backward", "forward", "backward", "forward"],
        "source_image": ["a", "b", "a", "b", "a"],
        "target_image": ["b", "a", "b", "a", "b"],
        "source_x": [1.0, 2.0, 3.0, 4.0, 5.0], "source_y": [0.0] * 5, "source_z": [7.0] * 5,
    }, index=[10, 11, 12, 13, 14])
    volumes = tmp_path / "volumes.csv"
    pd.DataFrame({"image_id": list(paths), "path": [str(p) for p in paths.values()]}).to_csv(volumes, index=False)
    out = track_table(pairs, "deformable", volume_tables=[volumes], progress=False)
    assert list(out.columns) == PREDICTION_COLUMNS
    assert sorted(calls) == [(0.0, 100.0, "deformable"), (100.0, 0.0, "deformable")]  # once per direction
    assert list(out["pair_id"]) == list(pairs["pair_id"]) and list(out["direction"]) == list(pairs["direction"])
    np.testing.assert_allclose(out["pred_x"], [101.0, -98.0, 103.0, -96.0, 105.0])
    np.testing.assert_allclose(out["pred_z"], 7.0)
    assert out["confidence"].isna().all() and (out["seconds"] >= 0).all()
    assert not out["found"].any()  # every prediction lies outside its 4-voxel target: never found there
    # seconds is the group's time over its rows: equal within a group
    assert out["seconds"].iloc[0] == out["seconds"].iloc[2] == out["seconds"].iloc[4]
    with pytest.raises(ValueError, match="method"):
        track_table(pairs, "rigid", volume_tables=[volumes], progress=False)


def test_registration_tracker_survives_a_registration_that_cannot_start(tmp_path, monkeypatch, capsys):
    """ITK raising inside the B-spline stage leaves the affine stage's points, with a line on stderr;
    raising in both stages leaves the centred initialisation: a run never stops on a failed pair."""
    paths = _two_volumes(tmp_path)
    volumes = tmp_path / "volumes.csv"
    pd.DataFrame({"image_id": list(paths), "path": [str(p) for p in paths.values()]}).to_csv(volumes, index=False)
    pairs = pd.DataFrame({"pair_id": ["p1"], "lesion_id": ["l1"], "direction": ["forward"],
                          "source_image": ["a"], "target_image": ["b"],
                          "source_x": [1.0], "source_y": [2.0], "source_z": [3.0]})

    def affine_only(fixed, moving, method, settings=None, threads=None, initial=None):
        if method == "deformable":
            raise RuntimeError("All samples map outside moving image buffer")
        return sitk.TranslationTransform(3, (50.0, 0.0, 0.0))

    monkeypatch.setattr(registration, "register", affine_only)
    out = track_table(pairs, "deformable", volume_tables=[volumes], progress=False)
    np.testing.assert_allclose(out[["pred_x", "pred_y", "pred_z"]].to_numpy(), [[51.0, 2.0, 3.0]])
    assert "a -> b: registration failed; its affine stage stands" in capsys.readouterr().err

    def never(fixed, moving, method, settings=None, threads=None, initial=None):
        raise RuntimeError("All samples map outside moving image buffer")

    monkeypatch.setattr(registration, "register", never)
    out = track_table(pairs, "deformable", volume_tables=[volumes], progress=False)
    initial = registration.initial_transform(sitk.ReadImage(str(paths["a"])), sitk.ReadImage(str(paths["b"])),
                                             "deformable")
    np.testing.assert_allclose(out[["pred_x", "pred_y", "pred_z"]].to_numpy(),
                               [initial.TransformPoint((1.0, 2.0, 3.0))], atol=1e-9)
    assert "the initialisation stands" in capsys.readouterr().err


def test_stored_registrations_are_read_not_run(tmp_path, monkeypatch):
    """Rule register's store: each image pair registered once (a pair that cannot start stored as
    failed); deformable reading it registers nothing and predicts exactly what it predicts by
    registering, with the stored seconds; other settings are not served from it."""
    from lesiontrack.track.predict import register_pairs

    paths = _two_volumes(tmp_path)
    volumes = tmp_path / "volumes.csv"
    pd.DataFrame({"image_id": list(paths), "path": [str(p) for p in paths.values()]}).to_csv(volumes, index=False)
    pairs = pd.DataFrame({"pair_id": ["p1", "p1", "p2"], "lesion_id": ["l1", "l1", "l2"],
                          "direction": ["forward", "backward", "forward"], "source_image": ["a", "b", "a"],
                          "target_image": ["b", "a", "b"], "split": "test", "source_x": [1.0, 2.0, 3.0],
                          "source_y": [0.0] * 3, "source_z": [7.0] * 3,
                          "target_x": 0.0, "target_y": 0.0, "target_z": 0.0})
    pairs_csv = tmp_path / "pairs.csv"
    pairs.to_csv(pairs_csv, index=False)
    calls = []

    def fake_register(fixed, moving, method, settings=None, threads=None, initial=None):
        calls.append((fixed.GetOrigin()[0], method))
        if fixed.GetOrigin()[0] == 100.0:  # b -> a cannot start
            raise RuntimeError("All samples map outside moving image buffer")
        return sitk.TranslationTransform(3, (moving.GetOrigin()[0] - fixed.GetOrigin()[0] + 0.123456789, 0.0, 0.0))

    monkeypatch.setattr(registration, "register", fake_register)
    run = track_table(pairs, "deformable", volume_tables=[volumes], progress=False)
    calls.clear()
    table = register_pairs(pairs_csv, "deformable", tmp_path / "reg", "test", [volumes])
    assert list(table["stage"]) == ["deformable", "failed"] and list(table["file"]) == ["00000.h5", ""]
    assert len(calls) == 3  # a -> b once; b -> a: the deformable and then its affine stage tried
    calls.clear()
    stored = track_table(pairs, "deformable", volume_tables=[volumes], progress=False,
                         registrations=[tmp_path / "reg"])
    assert calls == []
    np.testing.assert_array_equal(stored[["pred_x", "pred_y", "pred_z"]].to_numpy(),
                                  run[["pred_x", "pred_y", "pred_z"]].to_numpy())
    assert stored["pred_x"].iloc[0] == pytest.approx(101.123456789, abs=1e-9)
    a_to_b = float(table["seconds"].iloc[0])
    assert stored["seconds"].iloc[0] == pytest.approx(a_to_b / 2, abs=0.01)  # two rows share a -> b
    other = {"registration": {"deformable": {"bspline_mesh_mm": 20.0}}}
    track_table(pairs, "deformable", volume_tables=[volumes], track=other, progress=False,
                registrations=[tmp_path / "reg"])
    assert len(calls) == 3  # different settings: registered again


def test_elastix_recovers_the_known_affine(ct_case):
    """The field-standard baseline (itk-elastix, affine + B-spline, the chosen settings) on the same
    case: within 1 mm on average, like ours."""
    from lesiontrack.track.elastix import ElastixSettings, register_elastix

    fixed, moving, truth, points = ct_case
    transform = register_elastix(fixed, moving, ElastixSettings())
    errors = np.linalg.norm(map_points(transform, points) - map_points(truth, points), axis=1)
    assert errors.mean() < 1.0 and np.percentile(errors, 95) < 2.0, f"mean {errors.mean():.2f} mm"


def test_elastix_falls_back_where_it_cannot_register(ct_case):
    """A slab of 2 slices cannot be sampled by elastix's pyramid: the run goes on with the
    centre-of-gravity translation, never a traceback."""
    from lesiontrack.track.elastix import ElastixSettings, elastix_pair

    fixed, moving, _, points = ct_case
    slab = moving[:, :, 10:12]
    transform, stage = elastix_pair(fixed, slab, ElastixSettings())
    assert stage in ("affine", "initialisation")
    assert np.isfinite(map_points(transform, points)).all()


def test_a_follow_up_covering_half_the_baseline_is_found_along_z():
    """A chest-abdomen baseline against an abdomen-only follow-up (half its length, another pose and
    breathing): the centres of mass put the follow-up's middle on the baseline's, 100 mm and more from
    where it belongs, and the affine stage cannot recover that; the search along z starts it where the
    metric is best, and every landmark that both scans show is recovered within 5 mm."""
    from lesiontrack.data import synthetic as sy

    cfg = sy.SyntheticConfig(n_train_subjects=1, n_test_subjects=0, coverage="partial")
    subject = sy.plan_subject(cfg, 0)
    rendered = sy.render_subject(cfg, subject)
    baseline, follow_up = subject.scans[:2]
    fixed, moving = sy.render_scan(rendered, baseline)[0], sy.render_scan(rendered, follow_up)[0]
    a, b = (sy.landmark_table(rendered, scan).set_index("name")[list("xyz")] for scan in (baseline, follow_up))
    names = a.index.intersection(b.index)
    assert len(names) >= 10

    def errors(step: float) -> np.ndarray:
        transform = register(fixed, moving, "affine", {"z_search_step_mm": step}, threads=1)
        return np.linalg.norm(map_points(transform, a.loc[names].to_numpy()) - b.loc[names].to_numpy(), axis=1)

    assert errors(0.0).min() > 50.0  # without the search: every landmark lost
    found = errors(DEFAULT_AFFINE.z_search_step_mm)
    assert found.max() < 5.0, np.round(found, 1)
