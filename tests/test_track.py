"""Tracking: embedding cache, multi-scale matching (full and coarse-to-fine), both directions,
own-data points on NIfTI and DICOM input, coarse-to-fine against full matching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from lesiontrack.io import Geometry, InputError, read_image, read_table, write_image
from lesiontrack.track.embed import Embeddings, embed_volume, load_model, scale_geometry
from lesiontrack.track.match import VolumeMaps
from lesiontrack.track.predict import track_points


@pytest.fixture(scope="module")
def smoke_model(smoke_run):
    torch.set_num_threads(2)
    return load_model(smoke_run / "results" / "models" / "default" / "checkpoint_best.pt")


def _resampled(smoke_run, image_id: str) -> sitk.Image:
    return read_image(smoke_run / "results" / "synthetic" / "resampled" / f"{image_id}.nii.gz")


def _landmarks(smoke_run, image_id: str) -> pd.DataFrame:
    return read_table(smoke_run / "results" / "synthetic" / "truth" / f"{image_id}.csv").set_index("name")


def test_scale_geometry_puts_map_voxels_where_training_samples_them():
    geometry = Geometry((10.0, -20.0, 30.0), (2.0, 2.0, 2.0), (64, 64, 32))
    grid = scale_geometry(geometry, (4, 32, 32), (8, 2, 2))
    # map voxel 0 covers input voxels 0..s-1: its centre is input voxel (s - 1) / 2
    assert np.allclose(grid.index_to_world([[0, 0, 0]])[0], geometry.index_to_world([[15.5, 15.5, 1.5]])[0])
    assert grid.spacing == (64.0, 64.0, 8.0)


def test_embedding_cache_round_trip_and_slabs(smoke_run, smoke_model, tmp_path):
    model, config = smoke_model
    image = _resampled(smoke_run, "test000_t0")
    single = embed_volume(model, image, tuple(config["window_hu"]))
    folder = single.save(tmp_path / "test000_t0")
    loaded = Embeddings.load(folder)
    assert [m.dtype for m in loaded.maps] == [np.float16] * 5
    assert loaded.geometry == Geometry.of(image)
    assert all(np.array_equal(a, b) for a, b in zip(single.maps, loaded.maps, strict=True))
    # a volume too large for one pass is embedded in overlapping z-slabs: per-voxel normalisation
    # makes them equal to one pass except where the receptive field crosses the slab overlap
    padded = [-(-n // 32) * 32 for n in image.GetSize()[:2]]  # in-plane, padded to the coarsest stride
    assert image.GetSize()[2] > 48
    slabs = embed_volume(model, image, tuple(config["window_hu"]), max_voxels=padded[0] * padded[1] * 48, overlap=12)
    for a, b in zip(single.maps, slabs.maps, strict=True):
        assert a.shape == b.shape
        cosine = (a.astype(np.float32) * b.astype(np.float32)).sum(0)
        assert np.median(cosine) > 0.9


def test_window_sums_equal_the_whole_volume_maps(smoke_run, smoke_model):
    """Coarse-to-fine evaluates the scales only in windows; those values must equal the
    whole-volume maps brought to the input grid (same interpolation, same borders)."""
    from lesiontrack.model import CUMULATIVE_STRIDES
    from lesiontrack.track.match import _similarity, _to_input_grid, _window_to_input

    model, config = smoke_model
    maps = VolumeMaps(embed_volume(model, _resampled(smoke_run, "test000_t0"), tuple(config["window_hu"])))
    shape = tuple(maps.geometry.size[::-1])
    rng = np.random.default_rng(0)
    query_point = maps.geometry.index_to_world(np.asarray(maps.geometry.size) / 2)
    for k in range(1, 6):
        stride = np.asarray(CUMULATIVE_STRIDES[k - 1])
        full = _to_input_grid(_similarity(maps, maps.vector(query_point, k), k), tuple(stride), shape)
        map_shape = np.asarray(maps.maps[k].shape[:3])
        for _ in range(5):  # windows anywhere, including at the volume's borders
            lo = rng.integers(0, np.asarray(shape) - 4)
            hi = np.minimum(lo + rng.integers(4, 30, size=3), shape)
            s_lo = np.maximum(np.floor((lo + 0.5) / stride - 0.5).astype(int) - 1, 0)
            s_hi = np.minimum(np.ceil((hi - 0.5) / stride - 0.5).astype(int) + 2, map_shape)
            part = _similarity(maps, maps.vector(query_point, k), k, tuple(zip(s_lo, s_hi, strict=True)))
            window = _window_to_input(part, stride, s_lo, lo, hi)
            expected = full[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            assert torch.allclose(window, expected, atol=1e-5), (k, lo, hi)


def test_both_directions_are_tracked(smoke_run):
    results = smoke_run / "results" / "synthetic"
    pairs = read_table(results / "pairs.csv")
    predictions = read_table(results / "predictions" / "multiscale.csv")
    test_pairs = pairs[pairs["split"] == "test"]
    assert len(predictions) == len(test_pairs) > 0
    assert set(zip(predictions["pair_id"], predictions["direction"], strict=True)) == set(
        zip(test_pairs["pair_id"], test_pairs["direction"], strict=True))
    assert predictions.groupby("pair_id")["direction"].nunique().eq(2).all()
    assert predictions["confidence"].between(-1, 1).all()


def _points(path, rows):
    pd.DataFrame(rows, columns=["lesion_id", "x", "y", "z"]).to_csv(path, index=False)
    return path


def test_point_outside_the_source_is_rejected_naming_the_row(smoke_run, tmp_path):
    image = smoke_run / "results" / "synthetic" / "resampled" / "test000_t0.nii.gz"
    geometry = Geometry.of(read_image(image))
    inside = geometry.index_to_world(np.asarray(geometry.size) / 2)[0]
    points = _points(tmp_path / "points.csv", [["a", *inside], ["far", *(inside + np.array([0, 0, 5000]))]])
    out = tmp_path / "predictions.csv"
    with pytest.raises(InputError, match=r"row 2 \(far\).*outside"):
        track_points(image, image, points, None, out, method="identity")
    assert not out.exists()


def test_own_data_on_a_dicom_folder_with_qa(smoke_run, test_data, tmp_path):
    dicom = test_data / "totalseg" / "example_ct_dicom"
    image = read_image(dicom)
    # the follow-up: the same scan moved by a known translation, written as NIfTI
    shift = np.array([6.0, -4.0, 0.0])
    moved = sitk.Resample(image, image, sitk.TranslationTransform(3, tuple(-shift)), sitk.sitkLinear, -1024.0)
    target = write_image(moved, tmp_path / "followup.nii.gz")
    geometry = Geometry.of(image)
    centre = geometry.index_to_world(np.asarray(geometry.size) / 2)[0]
    offsets = {"L1": np.array([-40.0, 0.0, 0.0]), "L2": np.array([40.0, 20.0, 0.0])}
    points = _points(tmp_path / "points.csv", [[name, *(centre + offset)] for name, offset in offsets.items()])
    out = tmp_path / "out.csv"
    checkpoint = smoke_run / "results" / "models" / "default" / "checkpoint_best.pt"
    result = track_points(dicom, target, points, checkpoint, out, method="multiscale", qa_dir=tmp_path / "qa")
    written = read_table(out)
    assert list(written.columns) == ["lesion_id", "x", "y", "z", "confidence", "found"]
    assert list(written["lesion_id"]) == ["L1", "L2"]
    assert np.isfinite(result[["x", "y", "z", "confidence"]].to_numpy(float)).all()
    assert sorted(p.name for p in (tmp_path / "qa").iterdir()) == ["L1.png", "L2.png"]


def _maps(smoke_run, smoke_model, image_id: str) -> VolumeMaps:
    model, config = smoke_model
    return VolumeMaps(embed_volume(model, _resampled(smoke_run, image_id), tuple(config["window_hu"])))


def test_coarse_to_fine_agrees_with_full_matching(smoke_run, smoke_model):
    """On the smoke test pairs, coarse-to-fine lands within one finest-grid voxel (scale 1: 2
    input voxels) of the full search for at least 95 % of the lesions."""
    from lesiontrack.model import CUMULATIVE_STRIDES
    from lesiontrack.track.match import MatchSettings, match_point

    pairs = read_table(smoke_run / "results" / "synthetic" / "pairs.csv")
    pairs = pairs[pairs["split"] == "test"]
    maps = {i: _maps(smoke_run, smoke_model, i) for i in set(pairs["source_image"]) | set(pairs["target_image"])}
    spacing = next(iter(maps.values())).geometry.spacing
    finest_voxel_mm = np.asarray(CUMULATIVE_STRIDES[0])[::-1] * spacing  # (x, y, z)
    agree = []
    for row in pairs.itertuples():
        point = np.array([row.source_x, row.source_y, row.source_z])
        full = match_point(maps[row.source_image], maps[row.target_image], point, MatchSettings())
        c2f = match_point(maps[row.source_image], maps[row.target_image], point, MatchSettings(coarse_to_fine=True))
        agree.append(bool(np.all(np.abs(full.point_mm - c2f.point_mm) <= finest_voxel_mm + 1e-6)))
    assert len(agree) >= 10
    assert np.mean(agree) >= 0.95, f"{np.mean(agree):.1%} of {len(agree)} pairs agree"

