"""Tracking the lesions of a pairs table, or of a points file on two scans, with any registered tracker.

Workflow form: :func:`predict_pairs` gives the tracker (:mod:`lesiontrack.track.trackers`) the
cached embeddings (``lesiontrack embed``) and the resampled volumes; each row of ``pairs.csv`` is
tracked in its own direction. Own-data form: :func:`track_points` takes two NIfTI files or DICOM
folders, a ``points.csv`` in world mm and (for the embedding trackers) a checkpoint, resamples
(and embeds) both scans, and writes ``lesion_id, x, y, z, confidence, found``. Both choose each
prediction among the tracker's candidates the same way (:func:`lesiontrack.track.choose.choose`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesiontrack.io import (
    Geometry,
    InputError,
    LoadCache,
    check_scan,
    check_writable,
    named_path,
    read_geometry,
    read_image,
    volume_paths,
    write_table,
)
from lesiontrack.preprocess import resample_isotropic
from lesiontrack.tables import (
    PRED_POINT,
    PREDICTION_COLUMNS,
    QUERY_COLUMNS,
    TRACKED_POINT_COLUMNS,
    read_pairs,
    read_points,
)
from lesiontrack.track import registration, trackers
from lesiontrack.track.choose import choose
from lesiontrack.track.embed import Embeddings, embed_volume, load_model
from lesiontrack.track.embedding import windowed_voxels
from lesiontrack.track.match import VolumeMaps
from lesiontrack.track.presence import Calibration
from lesiontrack.track.tracker import Context, Scans, check_inside, check_radii


def from_candidates(pairs: pd.DataFrame, candidates: pd.DataFrame, chosen: np.ndarray | None = None,
                    found: np.ndarray | None = None) -> pd.DataFrame:
    """Predictions (``tables.PREDICTION_COLUMNS``) of ``pairs`` from their candidates: for each row
    the candidate at position ``chosen`` of ``candidates`` (default: its rank 0), ``found`` true
    unless given."""
    if chosen is None:
        chosen = np.flatnonzero(candidates["rank"].to_numpy() == 0)
    picked = candidates.iloc[chosen]
    if not np.array_equal(picked["row"].to_numpy(), np.arange(len(pairs))):
        raise ValueError("one chosen candidate per row of pairs, in order")
    out = pairs[PREDICTION_COLUMNS[:5]].copy().reset_index(drop=True)
    for column in (*PRED_POINT, "confidence"):
        out[column] = picked[column].to_numpy(float)
    out["found"] = True if found is None else np.asarray(found, bool)
    out["seconds"] = picked["seconds"].to_numpy(float)
    return out[PREDICTION_COLUMNS]


def predict_pairs(pairs_csv: str | Path, method: str, out: str | Path, split: str | None = None,
                  embeddings_dir: str | Path | None = None, volume_tables: list[str | Path] = (),
                  track: dict[str, Any] | None = None, progress: bool = True,
                  presence_calibration: str | Path | None = None,
                  registrations: list[str | Path] = ()) -> pd.DataFrame:
    """Predictions CSV of ``method`` for the pairs (of ``split``) in ``pairs_csv``.

    ``embeddings_dir``: ``<dir>/<image_id>/`` caches for the embedding trackers;
    ``volume_tables``: CSVs (``image_id, path``) of the resampled volumes (registration, the
    intensity refinement, the presence test); ``presence_calibration``: a
    ``lesiontrack presence-calibrate`` JSON: ``found`` is then its appearance test at each
    predicted point (the pairs need ``source_radius_mm``), else always true; ``registrations``:
    folders of :func:`register_pairs` whose registrations the tracker reads instead of running them.
    """
    trackers.get(method)
    pairs = read_pairs(pairs_csv, split, QUERY_COLUMNS)
    predictions = track_table(pairs, method, embeddings_dir, volume_tables, track, progress, str(pairs_csv),
                              presence_calibration, registrations)
    write_table(predictions, out)
    return predictions


def register_pairs(pairs_csv: str | Path, method: str, out_dir: str | Path, split: str | None = None,
                   volume_tables: list[str | Path] = (), track: dict[str, Any] | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """Register every image pair of the pairs (of ``split``) in ``pairs_csv`` once with ``method``
    (``affine`` | ``deformable``, settings ``track.registration.<method>``) on the resampled
    volumes of ``volume_tables`` and store the results in ``out_dir``
    (:func:`lesiontrack.track.registration.register_queries`), for every tracker that reads them."""
    if method not in registration.METHODS:
        raise InputError(f"registration method {method!r}: not one of {registration.METHODS}")
    pairs = read_pairs(pairs_csv, split, QUERY_COLUMNS)
    _check_volumes(pairs, volume_paths(volume_tables), volume_tables, str(pairs_csv))
    scans = workflow_scans(None, volume_tables, str(pairs_csv))
    return registration.register_queries(pairs, scans.image, method, registration.registration_settings(method, track),
                                         out_dir, progress)


def _check_volumes(pairs: pd.DataFrame, paths: dict[str, str], volume_tables: list[str | Path], source: str) -> None:
    """Stop, naming them, on images of ``pairs`` that no volume table lists."""
    missing = sorted(set(pairs["source_image"]).union(pairs["target_image"]) - set(paths))
    if missing:
        raise InputError(f"{source}: image(s) {missing[:5]} not in the volume tables {list(volume_tables)}")


def _calibration(presence_calibration: str | Path | None, queries: pd.DataFrame, source: str
                 ) -> Calibration | None:
    """The presence calibration (None: none given, or not calibrated); the queries need
    ``source_radius_mm`` for it."""
    if presence_calibration is None:
        return None
    calibration = Calibration.from_json(presence_calibration)
    if not calibration.calibrated:
        return None
    if "source_radius_mm" not in queries:
        raise InputError(f"{source}: the presence test needs a source_radius_mm column")
    return calibration


def workflow_scans(embeddings_dir: str | Path | None, volume_tables: list[str | Path], source: str,
                   registrations: list[str | Path] = ()) -> Scans:
    """The scans of the workflow: embedding caches ``<embeddings_dir>/<image_id>/`` and the
    resampled volumes of ``volume_tables``, each loaded when first asked for (a few kept), and the
    stored registrations of the folders ``registrations`` (:func:`register_pairs`)."""
    paths = volume_paths(volume_tables)

    def path_of(image_id: str) -> str:
        if image_id not in paths:
            raise InputError(f"{source}: image {image_id} is in no volume table {list(volume_tables)}")
        return paths[image_id]

    images = LoadCache(lambda image_id: read_image(path_of(image_id)))

    def load_maps(key: tuple[str, bool]) -> VolumeMaps:
        image_id, with_voxels = key
        embeddings = Embeddings.load(named_path(embeddings_dir, image_id))
        voxels = windowed_voxels(images(image_id), embeddings.info["window_hu"]) if with_voxels else None
        return VolumeMaps(embeddings, image=voxels)

    maps = LoadCache(load_maps)
    return Scans(maps=None if embeddings_dir is None else lambda image_id, voxels: maps((image_id, voxels)),
                 image=images, stored_registration=registration.RegistrationStore(registrations) if registrations
                 else None)


def track_table(pairs: pd.DataFrame, method: str, embeddings_dir: str | Path | None = None,
                volume_tables: list[str | Path] = (), track: dict[str, Any] | None = None, progress: bool = True,
                source: str = "pairs.csv", presence_calibration: str | Path | None = None,
                registrations: list[str | Path] = ()) -> pd.DataFrame:
    """Predictions of ``method`` for the rows of a pairs table (``tables.QUERY_COLUMNS``); the
    stored registrations of the folders ``registrations`` (:func:`register_pairs`) are read
    instead of run.

    ``found``: with a calibrated ``presence_calibration`` (``lesiontrack presence-calibrate``; the
    pairs then need ``source_radius_mm``) the appearance test at each prediction, else true. With
    ``track.presence_rerank`` the embedding trackers choose among their reranking candidates by the
    test (:func:`lesiontrack.track.choose.choose_present`)."""
    calibration = _calibration(presence_calibration, pairs, source)
    tracker = trackers.get(method)
    if tracker.needs.embeddings and embeddings_dir is None:
        raise ValueError(f"method {method}: needs embeddings_dir")
    paths = volume_paths(volume_tables)
    if tracker.needs.volumes and volume_tables:
        _check_volumes(pairs, paths, volume_tables, source)
    context = Context(workflow_scans(embeddings_dir, volume_tables, source, registrations), dict(track or {}),
                      progress, source)
    candidates = tracker.candidates(pairs, context)
    def geometry_of(image_id: str) -> Geometry | None:  # asked once per target image
        return read_geometry(paths[image_id]) if image_id in paths else None

    return from_candidates(pairs, candidates, *choose(pairs, candidates, calibration, track, paths.__getitem__,
                                                      geometry_of))


def own_scans(originals: dict[str, Any], method: str, checkpoint: str | Path | None, device: str,
              registration_spacing_mm: float) -> Scans:
    """The scans of an own-data run (``originals``: image id -> SimpleITK image), each computed
    once, when a tracker first asks for it: resampled to ``registration_spacing_mm`` (``image``),
    embedded with the checkpoint at its spacing (``maps``, the embedding trackers; ``hybrid`` asks
    only where the images put registration in doubt). Every scan's results stay cached, so a
    history of n scans embeds each once. The checkpoint is loaded (and so checked) at once."""
    tracker = trackers.get(method)
    n = len(originals)
    resampled = LoadCache(lambda key: resample_isotropic(originals[key[0]], key[1]), size=2 * n)
    scans = Scans(image=lambda image_id: resampled((image_id, registration_spacing_mm)),
                  check_inside=False)  # the points were checked against the original scan
    if tracker.needs.embeddings:
        if checkpoint is None:
            raise InputError(f"method {method}: needs --checkpoint")
        model, config = load_model(checkpoint, device)
        window_hu, spacing = tuple(config["window_hu"]), float(config["spacing_mm"])
        embedded = LoadCache(lambda image_id: embed_volume(model, resampled((image_id, spacing)), window_hu,
                                                           device=device), size=n)
        maps = LoadCache(lambda key: VolumeMaps(embedded(key[0]), image=windowed_voxels(
            resampled((key[0], spacing)), window_hu) if key[1] else None), size=2 * n)
        scans.maps = lambda image_id, voxels: maps((image_id, voxels))
    return scans


def track_points(source: str | Path, target: str | Path, points_csv: str | Path, checkpoint: str | Path | None,
                 out: str | Path | None, method: str = "hybrid", track: dict[str, Any] | None = None,
                 device: str = "cpu", registration_spacing_mm: float = 2.0,
                 presence_calibration: str | Path | None = None) -> pd.DataFrame:
    """Track the points of ``points_csv`` (``lesion_id, x, y, z`` in world mm, optional
    ``radius_mm``) from scan ``source`` to scan ``target`` (NIfTI files or DICOM folders).

    Embedding trackers resample both scans to the checkpoint's spacing and embed them; the
    registrations register both scans resampled to ``registration_spacing_mm``. With
    ``presence_calibration`` (and ``radius_mm``) ``found`` is the appearance test at each match,
    and with ``track.presence_rerank`` the match is chosen as in :func:`track_table`. Returns
    ``tables.TRACKED_POINT_COLUMNS``, written to ``out`` unless it is None. Bad input (a scan with
    fewer than ``track.min_slices`` voxels along an axis, an unwritable ``out``) stops it first."""
    tracker = trackers.get(method)
    if out is not None:
        check_writable(out)
    points = read_points(points_csv)
    xyz = points[["x", "y", "z"]].to_numpy(float)
    if presence_calibration is not None and "radius_mm" not in points:
        raise InputError(f"{points_csv}: the presence test (--presence) needs a radius_mm column")
    queries = pd.DataFrame({"pair_id": points["lesion_id"].astype(str), "lesion_id": points["lesion_id"],
                            "direction": "forward", "source_image": "source", "target_image": "target",
                            "source_x": xyz[:, 0], "source_y": xyz[:, 1], "source_z": xyz[:, 2]})
    if "radius_mm" in points:
        queries["source_radius_mm"] = points["radius_mm"].to_numpy(float)
    calibration = _calibration(presence_calibration, queries, str(points_csv))
    minimum = int((track or {}).get("min_slices", 3))
    source_image, target_image = (check_scan(read_image(path), path, minimum) for path in (source, target))
    check_inside(xyz, Geometry.of(source_image), points, str(points_csv), f"source {source}")
    check_radii(points, Geometry.of(source_image), str(points_csv), f"source {source}")
    scans = own_scans({"source": source_image, "target": target_image}, method, checkpoint, device,
                      registration_spacing_mm)
    candidates = tracker.candidates(queries, Context(scans, dict(track or {}), False, str(points_csv)))
    chosen, found = choose(queries, candidates, calibration, track, {"source": source, "target": target}.__getitem__,
                           {"source": Geometry.of(source_image), "target": Geometry.of(target_image)}.get)
    picked = candidates.iloc[chosen]
    result = points[["lesion_id"]].copy()
    result["x"], result["y"], result["z"] = picked[PRED_POINT].to_numpy(float).T
    result["confidence"] = picked["confidence"].to_numpy(float)
    result["found"] = found
    if out is not None:
        write_table(result[TRACKED_POINT_COLUMNS], out)
    return result[TRACKED_POINT_COLUMNS]
