"""Tracking the lesions of a pairs table, or of a points file on two scans, with any method.

Workflow form: :func:`predict_pairs` reads cached embeddings (``lesiontrack embed``) for the
embedding methods (``multiscale``, ``single-scale-fine``, ``two-scale``, ``multiscale-paper``; with
``track.refine_mm`` also the resampled volumes), or resampled volumes for
the registration baselines (``affine``, ``deformable``); each row of ``pairs.csv`` is tracked in
its own direction. Own-data form: :func:`track_points` takes two NIfTI files or DICOM folders, a
``points.csv`` in world mm and a checkpoint, resamples and embeds both scans, and writes
``lesion_id, x, y, z, confidence, found``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lesiontrack.io import Geometry, InputError, read_image, read_table, volume_paths, write_table
from lesiontrack.track.baselines import PREDICTION_COLUMNS, identity_predictions
from lesiontrack.track.match import METHOD_SCALES, PAPER_MATCHING, MatchSettings, VolumeMaps, match_candidates
from lesiontrack.track.registration import METHODS as REGISTRATION_METHODS

if TYPE_CHECKING:
    from lesiontrack.track import presence

EMBEDDING_METHODS = tuple(METHOD_SCALES)
METHODS = ("identity", *EMBEDDING_METHODS, *REGISTRATION_METHODS)
PAIR_COLUMNS = ["pair_id", "lesion_id", "direction", "source_image", "target_image", "source_x", "source_y",
                "source_z"]


def match_settings(method: str, track: dict[str, Any] | None = None) -> MatchSettings:
    """Matching settings of an embedding ``method`` from the ``track`` config section."""
    if method not in METHOD_SCALES:
        raise ValueError(f"method {method!r}: not an embedding method {list(METHOD_SCALES)}")
    known = {f.name for f in fields(MatchSettings)} - {"scales"}
    values = {k: v for k, v in (track or {}).items() if k in known}
    if method == "multiscale-paper":
        values.update(PAPER_MATCHING)
    return MatchSettings(scales=METHOD_SCALES[method], **values)


class LoadCache:
    """The last few loaded volumes (embedding maps: float32 maps of a 2 mm CT take about 1 GB)."""

    def __init__(self, load: Callable[[str], Any], size: int = 3) -> None:
        self.load, self.size, self.items = load, size, OrderedDict()

    def __call__(self, image_id: str) -> Any:
        if image_id in self.items:
            self.items.move_to_end(image_id)
        else:
            self.items[image_id] = self.load(image_id)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return self.items[image_id]


def _check_inside(points: np.ndarray, geometry: Geometry, rows: pd.DataFrame, source: str, what: str) -> None:
    """Stop on the first point outside the volume, naming its row (the table's index + 1, i.e. the
    data row of the file) and its id."""
    inside = geometry.contains(points)
    if not inside.all():
        k = int(np.flatnonzero(~inside)[0])
        row = rows.iloc[k]
        label = f"{row['pair_id']} {row['direction']}" if "pair_id" in row else row.get("lesion_id", k)
        raise InputError(f"{source}: row {int(rows.index[k]) + 1} ({label}): point {tuple(np.round(points[k], 2))} mm "
                         f"lies outside "
                         f"the {what} volume (origin {tuple(np.round(geometry.origin, 1))} mm, size "
                         f"{geometry.size} voxels)")


def embedding_candidates(pairs: pd.DataFrame, load_maps: Callable[[str], VolumeMaps], method: str,
                         settings: MatchSettings | None = None, progress: bool = True,
                         source: str = "pairs.csv") -> pd.DataFrame:
    """Every candidate (:func:`~lesiontrack.track.match.match_candidates`) of every row of
    ``pairs`` (in its direction): ``row`` (the row's position), ``rank`` (0: the match),
    ``pred_x, pred_y, pred_z, confidence`` and ``seconds`` (matching the row, on each of its rows)."""
    from tqdm import tqdm

    settings = settings or match_settings(method)
    cache = LoadCache(load_maps)
    file_rows = pairs.index.to_numpy()  # the rows of the file (read_table's index), for messages
    pairs = pairs.reset_index(drop=True)
    records: list[tuple[int, int, float, float, float, float, float]] = []
    groups = pairs.groupby(["source_image", "target_image"], sort=True).indices
    for (source_image, target_image), rows in tqdm(groups.items(), desc=method, disable=not progress):
        src, dst = cache(source_image), cache(target_image)
        points = pairs.loc[rows, ["source_x", "source_y", "source_z"]].to_numpy(float)
        _check_inside(points, src.geometry, pairs.loc[rows].set_axis(file_rows[rows]), source,
                      f"source {source_image}")
        for row, point in zip(rows, points, strict=True):
            began = time.perf_counter()
            matches = match_candidates(src, dst, point, settings)
            seconds = time.perf_counter() - began
            records += [(int(row), rank, *m.point_mm, m.confidence, seconds) for rank, m in enumerate(matches)]
    columns = ["row", "rank", "pred_x", "pred_y", "pred_z", "confidence", "seconds"]
    return pd.DataFrame(records, columns=columns).sort_values(["row", "rank"], ignore_index=True)


def from_candidates(pairs: pd.DataFrame, candidates: pd.DataFrame, chosen: np.ndarray | None = None,
                     found: np.ndarray | None = None) -> pd.DataFrame:
    """Predictions (``PREDICTION_COLUMNS``) of ``pairs`` from their candidates: for each row the
    candidate at position ``chosen`` of ``candidates`` (default: its rank 0), ``found`` true unless
    given."""
    if chosen is None:
        chosen = np.flatnonzero(candidates["rank"].to_numpy() == 0)
    picked = candidates.iloc[chosen]
    if not np.array_equal(picked["row"].to_numpy(), np.arange(len(pairs))):
        raise ValueError("one chosen candidate per row of pairs, in order")
    out = pairs[PREDICTION_COLUMNS[:5]].copy().reset_index(drop=True)
    for column in ("pred_x", "pred_y", "pred_z", "confidence"):
        out[column] = picked[column].to_numpy(float)
    out["found"] = True if found is None else np.asarray(found, bool)
    out["seconds"] = picked["seconds"].to_numpy(float)
    return out[PREDICTION_COLUMNS]


def predict_pairs(pairs_csv: str | Path, method: str, out: str | Path, split: str | None = None,
                  embeddings_dir: str | Path | None = None, volume_tables: list[str | Path] = (),
                  track: dict[str, Any] | None = None, progress: bool = True,
                  presence_calibration: str | Path | None = None) -> pd.DataFrame:
    """Predictions CSV of ``method`` for the pairs (of ``split``) in ``pairs_csv``.

    ``embeddings_dir``: ``<dir>/<image_id>/`` caches for the embedding methods;
    ``volume_tables``: CSVs (``image_id, path``) of the resampled volumes (registration, the
    intensity refinement, the presence test); ``presence_calibration``: a
    ``lesiontrack presence-calibrate`` JSON: ``found`` is then its appearance test at each
    predicted point (the pairs need ``source_radius_mm``), else always true.
    """
    from lesiontrack.evaluate import select_split

    pairs = select_split(read_table(pairs_csv, required=PAIR_COLUMNS), split, str(pairs_csv))
    predictions = track_table(pairs, method, embeddings_dir, volume_tables, track, progress, str(pairs_csv),
                              presence_calibration)
    write_table(predictions, out)
    return predictions


def _calibration(presence_calibration: str | Path | None, queries: pd.DataFrame, source: str
                 ) -> presence.Calibration | None:
    """The presence calibration (None: none given, or not calibrated); the queries need
    ``source_radius_mm`` for it."""
    if presence_calibration is None:
        return None
    from lesiontrack.track import presence

    calibration = presence.Calibration.from_json(presence_calibration)
    if not calibration.calibrated:
        return None
    if "source_radius_mm" not in queries:
        raise InputError(f"{source}: the presence test needs a source_radius_mm column")
    return calibration


def track_table(pairs: pd.DataFrame, method: str, embeddings_dir: str | Path | None = None,
                volume_tables: list[str | Path] = (), track: dict[str, Any] | None = None, progress: bool = True,
                source: str = "pairs.csv", presence_calibration: str | Path | None = None) -> pd.DataFrame:
    """Predictions of ``method`` for the rows of a pairs table (``PAIR_COLUMNS``).

    ``found``: with a calibrated ``presence_calibration`` (``lesiontrack presence-calibrate``; the
    pairs then need ``source_radius_mm``) the appearance test at each prediction, else true. With
    ``track.presence_rerank`` the embedding methods choose among their reranking candidates by the
    test (:func:`lesiontrack.track.presence.choose_present`)."""
    calibration = _calibration(presence_calibration, pairs, source)
    if method not in METHODS:
        raise ValueError(f"method {method!r}: not one of {list(METHODS)}")
    if method in EMBEDDING_METHODS:
        candidates = _embedding_candidates(pairs, method, embeddings_dir, volume_tables, track, progress, source)
    else:
        predictions = identity_predictions(pairs) if method == "identity" else _registration_predictions(
            pairs, method, volume_tables, track, progress, source)
        candidates = single_candidates(predictions[["pred_x", "pred_y", "pred_z"]].to_numpy(float),
                                       predictions["confidence"].to_numpy(float),
                                       predictions["seconds"].to_numpy(float))
    paths = volume_paths(volume_tables) if calibration is not None else {}
    return from_candidates(pairs, candidates, *choose(pairs, candidates, calibration, track, paths.__getitem__))


def single_candidates(points_mm: np.ndarray, confidence: np.ndarray | float = np.nan,
                      seconds: np.ndarray | float = np.nan) -> pd.DataFrame:
    """The candidates table (:func:`embedding_candidates`) of a method with one answer per row."""
    points_mm = np.asarray(points_mm, float).reshape(-1, 3)
    return pd.DataFrame({"row": np.arange(len(points_mm)), "rank": 0, "pred_x": points_mm[:, 0],
                         "pred_y": points_mm[:, 1], "pred_z": points_mm[:, 2], "confidence": confidence,
                         "seconds": seconds})


def choose(queries: pd.DataFrame, candidates: pd.DataFrame, calibration: presence.Calibration | None,
           track: dict[str, Any] | None, path_of: Callable[[str], str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Each query's prediction (its position in ``candidates``) and ``found``: without a
    (calibrated) ``calibration`` the best candidate, found; with one, the appearance test decides,
    among all candidates with ``track.presence_rerank``
    (:func:`lesiontrack.track.presence.choose_present`), else at the best."""
    first = np.flatnonzero(candidates["rank"].to_numpy() == 0)
    if calibration is None or not calibration.calibrated:
        return first, np.ones(len(first), bool)
    from lesiontrack.track import presence

    if (track or {}).get("presence_rerank", False):
        return presence.choose_present(queries, candidates, calibration, path_of)
    chosen, found = presence.choose_present(queries, candidates.iloc[first], calibration, path_of)
    return first[chosen], found


def _embedding_candidates(pairs: pd.DataFrame, method: str, embeddings_dir: str | Path | None,
                          volume_tables: list[str | Path], track: dict[str, Any] | None, progress: bool,
                          source: str) -> pd.DataFrame:
    """:func:`embedding_candidates` from the cached embeddings of ``embeddings_dir`` (and, with
    ``track.refine_mm``, the resampled volumes)."""
    from lesiontrack.track.embed import Embeddings

    if embeddings_dir is None:
        raise ValueError(f"method {method}: needs embeddings_dir")
    settings = match_settings(method, track)
    paths = volume_paths(volume_tables) if settings.refine_mm > 0 else {}
    root = Path(embeddings_dir)

    def load(image_id: str) -> VolumeMaps:
        embeddings = Embeddings.load(root / image_id)
        if settings.refine_mm <= 0:
            return VolumeMaps(embeddings)
        if image_id not in paths:
            raise InputError(f"{source}: image {image_id} is in no volume table {list(volume_tables)} "
                             f"(track.refine_mm > 0 needs the resampled volumes)")
        return VolumeMaps(embeddings, image=windowed_voxels(read_image(paths[image_id]),
                                                            embeddings.info["window_hu"]))

    return embedding_candidates(pairs, load, method, settings, progress, source)


def _registration_predictions(pairs: pd.DataFrame, method: str, volume_tables: list[str | Path],
                              track: dict[str, Any] | None, progress: bool, source: str) -> pd.DataFrame:
    """A registration baseline's predictions (one registration per source/target image pair)."""
    from lesiontrack.track import registration

    paths = volume_paths(volume_tables)
    missing = sorted(set(pairs["source_image"]).union(pairs["target_image"]) - set(paths))
    if missing:
        raise InputError(f"{source}: image(s) {missing[:5]} not in the volume tables {list(volume_tables)}")
    settings = _registration_settings(method, track)
    return registration.registration_predictions(pairs, lambda image_id: paths[image_id], method, settings, progress)


def _registration_settings(method: str, track: dict[str, Any] | None):
    """The baseline's defaults with the overrides of ``track.registration.<method>``."""
    from lesiontrack.track import registration

    base = registration.DEFAULT_AFFINE if method == "affine" else registration.DEFAULT_DEFORMABLE
    overrides = ((track or {}).get("registration") or {}).get(method)
    return registration.RegistrationSettings.from_dict(overrides, base)


def windowed_voxels(image, window_hu) -> np.ndarray:
    """A volume's voxels (z, y, x) windowed as the network sees them (for ``track.refine_mm``)."""
    import SimpleITK as sitk

    from lesiontrack.preprocess import window

    return window(sitk.GetArrayViewFromImage(image), tuple(window_hu), (-1.0, 1.0))


POINT_COLUMNS = ["lesion_id", "x", "y", "z"]


def track_points(source: str | Path, target: str | Path, points_csv: str | Path, checkpoint: str | Path | None,
                 out: str | Path, method: str = "multiscale", qa_dir: str | Path | None = None,
                 track: dict[str, Any] | None = None, device: str = "cpu", registration_spacing_mm: float = 2.0,
                 presence_calibration: str | Path | None = None) -> pd.DataFrame:
    """Track the points of ``points_csv`` (``lesion_id, x, y, z`` in world mm, optional
    ``radius_mm``) from scan ``source`` to scan ``target`` (NIfTI files or DICOM folders).

    Embedding methods resample both scans to the checkpoint's spacing and embed them; the
    registration baselines register both scans resampled to ``registration_spacing_mm``. With
    ``presence_calibration`` (and ``radius_mm``) ``found`` is the appearance test at each match,
    and with ``track.presence_rerank`` the match is chosen as in :func:`track_table`."""
    from lesiontrack.preprocess import resample_isotropic
    from lesiontrack.track.embed import embed_volume, load_model

    if method not in METHODS:
        raise ValueError(f"method {method!r}: not one of {list(METHODS)}")
    points = read_table(points_csv, required=POINT_COLUMNS)
    if points.empty:
        raise InputError(f"{points_csv}: no points")
    xyz = points[["x", "y", "z"]].to_numpy(float)
    if not np.isfinite(xyz).all():
        k = int(np.flatnonzero(~np.isfinite(xyz).all(axis=1))[0])
        raise InputError(f"{points_csv}: row {k + 1} ({points['lesion_id'].iloc[k]}): coordinates {tuple(xyz[k])} "
                         f"are not finite")
    if presence_calibration is not None and "radius_mm" not in points:
        raise InputError(f"{points_csv}: the presence test (--presence) needs a radius_mm column")
    queries = pd.DataFrame({"source_image": "source", "target_image": "target", "source_x": xyz[:, 0],
                            "source_y": xyz[:, 1], "source_z": xyz[:, 2]})
    if "radius_mm" in points:
        queries["source_radius_mm"] = points["radius_mm"].to_numpy(float)
    source_image, target_image = read_image(source), read_image(target)
    _check_inside(xyz, Geometry.of(source_image), points, str(points_csv), f"source {source}")
    result = points[["lesion_id"]].copy()
    if method == "identity":
        predicted = xyz.copy()
    elif method in EMBEDDING_METHODS:
        if checkpoint is None:
            raise InputError(f"method {method}: needs --checkpoint")
        model, config = load_model(checkpoint, device)
        spacing = float(config["spacing_mm"])
        settings = match_settings(method, track)
        maps = []
        for image in (source_image, target_image):
            resampled = resample_isotropic(image, spacing)
            maps.append(VolumeMaps(embed_volume(model, resampled, tuple(config["window_hu"]), device=device),
                                   image=windowed_voxels(resampled, config["window_hu"])
                                   if settings.refine_mm > 0 else None))
        # (not embedding_candidates: its inside check would use the resampled grid, up to a voxel
        # smaller than the scan the points were checked against)
        candidates = pd.DataFrame([(row, rank, *m.point_mm, m.confidence)
                                   for row, point in enumerate(xyz)
                                   for rank, m in enumerate(match_candidates(maps[0], maps[1], point, settings))],
                                  columns=["row", "rank", "pred_x", "pred_y", "pred_z", "confidence"])
    else:
        from lesiontrack.track import registration

        transform = registration.register(resample_isotropic(source_image, registration_spacing_mm),
                                          resample_isotropic(target_image, registration_spacing_mm), method,
                                          _registration_settings(method, track))
        predicted = registration.map_points(transform, xyz)
    if method not in EMBEDDING_METHODS:
        candidates = single_candidates(predicted)
    chosen, found = choose(queries, candidates, _calibration(presence_calibration, queries, str(points_csv)), track,
                           {"source": source, "target": target}.__getitem__)
    picked = candidates.iloc[chosen]
    predicted = picked[["pred_x", "pred_y", "pred_z"]].to_numpy(float)
    confidence = picked["confidence"].to_numpy(float)
    result["x"], result["y"], result["z"] = predicted.T
    result["confidence"] = confidence
    result["found"] = found
    write_table(result, out)
    if qa_dir is not None:
        from lesiontrack.figures import display_volume, tracking_qa

        radius = points["radius_mm"].to_numpy(float) if "radius_mm" in points else np.full(len(points), np.nan)
        shown = display_volume(source_image), display_volume(target_image)
        for k, lesion_id in enumerate(points["lesion_id"].astype(str)):
            tracking_qa(*shown, xyz[k], predicted[k], Path(qa_dir) / f"{lesion_id}.png",
                        title=f"{lesion_id} ({method}, confidence {confidence[k]:.3f})", radius_mm=radius[k])
    return result
