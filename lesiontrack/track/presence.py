"""Is a tracked lesion still there (``found``)? The appearance test behind ``disappeared``.

An anatomical embedding (or a registration) finds a lesion's location again even when the lesion
has vanished, so presence is decided by an *appearance test* at the matched point, with its
threshold calibrated on training subjects (``lesiontrack presence-calibrate``).

Appearance (world mm; volumes sampled trilinearly at world points): around a point, for the
*source* lesion's radius ``r``, the *inner ball* has radius ``max(0.4 r, 2 mm)`` (small, so that a
shrunken lesion still fills it) and the *shell* runs from ``1.1 r + 2 mm`` to that plus
``max(4 mm, 0.25 r)``. The *contrast* is ``median(inner) - median(shell)`` (HU), the *spread* the
shell's 1.4826 x median absolute deviation. At the target, the neighbourhood is centred within
``search_mm`` (8 mm) of the matched point where it correlates best with the source's.

Score: the log-likelihood ratio of "still there" against "gone" (target contrast 0) for the
target contrast ``c_t``, Gaussian with the two shells' spreads, where "still there" expects the
source contrast ``c_s`` corrected for a change of enhancement: ``e = c_s + slope (shell_t -
shell_s)``, ``slope`` fitted on the present lesions of the training subjects (a lesion enhances
less than the organ around it: a contrast phase change moves the shell more than the lesion), and
a relative uncertainty ``relative_sd x e``. A lesion barely visible at the source scores about 0
(undecidable, so ``found``). ``found`` = score above the calibrated threshold.

With ``track.presence_rerank`` an embedding method's reranking candidates are all tested
(:func:`lesiontrack.track.choose.choose_present`): its best candidate if the lesion is seen there, else the best-ranked
other candidate scoring above 0 (found), else its best one (gone).

Chosen on the default run's TRAIN subjects (172 queries, 8 gone; affine points for the tracking
error): inner 0.6 r -> 0.4 r raised the F1 of ``gone`` at ground-truth points from 0.71 to 0.75;
the enhancement correction to 0.80; the 8 mm search (against 4) cut false ``gone`` at affine
points from 15 to 9. The calibration has only a handful of gone lesions: weakly determined.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.ndimage import map_coordinates

from lesiontrack.io import Geometry, InputError, LoadCache, atomic_path, read_image, volume_paths
from lesiontrack.tables import (
    LONGITUDINAL_LESION_COLUMNS,
    PRESENCE_QUERY_COLUMNS,
    SOURCE_POINT,
    TARGET_POINT,
    pair_id,
    read_lesions,
)


@dataclass(frozen=True)
class PresenceSettings:
    """Neighbourhood geometry of the appearance test (radii relative to the source lesion's)."""

    inner_fraction: float = 0.4  # inner ball radius / lesion radius
    min_inner_mm: float = 2.0
    shell_start: float = 1.1  # shell inner radius = shell_start * r + shell_margin_mm
    shell_margin_mm: float = 2.0
    shell_width_fraction: float = 0.25  # shell width = max(shell_width_mm, shell_width_fraction * r)
    shell_width_mm: float = 4.0
    max_step_mm: float = 2.0  # sampling step = clip(r / 4, 1, max_step_mm)
    search_mm: float = 8.0  # the target neighbourhood's centre within this distance of the match
    relative_sd: float = 0.3  # uncertainty of the expected target contrast, relative to it
    ncc_samples: int = 600  # offsets used to place the target neighbourhood (speed)

    def __post_init__(self) -> None:
        if not 0 < self.inner_fraction < self.shell_start:
            raise ValueError("presence: need 0 < inner_fraction < shell_start")
        if self.search_mm < 0 or self.relative_sd < 0:
            raise ValueError("presence: search_mm and relative_sd must be >= 0")


class Volume:
    """A volume's voxels (z, y, x) as float32 HU with its :class:`Geometry`, sampled at world points."""

    def __init__(self, path: str | os.PathLike) -> None:
        import SimpleITK as sitk

        image = read_image(path)
        self.geometry = Geometry.of(image)
        self.array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)

    def sample(self, points_mm: np.ndarray) -> np.ndarray:
        """Trilinear HU at (N, 3) world points; NaN outside the volume."""
        index_zyx = self.geometry.world_to_index(points_mm)[:, ::-1]
        return map_coordinates(self.array, index_zyx.T, order=1, mode="constant", cval=np.nan, output=np.float64)


@dataclass(frozen=True)
class Neighbourhood:
    """Sample offsets (world mm) around a point for one lesion radius: inner ball and shell."""

    offsets: np.ndarray  # (N, 3) mm
    inner: np.ndarray  # (N,) bool
    shell: np.ndarray  # (N,) bool

    @classmethod
    def of(cls, radius_mm: float, settings: PresenceSettings) -> Neighbourhood:
        r = max(float(radius_mm), 0.0)
        inner_r = max(settings.inner_fraction * r, settings.min_inner_mm)
        shell_lo = max(settings.shell_start * r + settings.shell_margin_mm, inner_r + 1.0)
        shell_hi = shell_lo + max(settings.shell_width_mm, settings.shell_width_fraction * r)
        step = float(np.clip(r / 4.0, 1.0, settings.max_step_mm))
        axis = np.arange(-np.floor(shell_hi / step), np.floor(shell_hi / step) + 1) * step
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        dist = np.linalg.norm(grid, axis=1)
        keep = dist <= shell_hi
        return cls(grid[keep], dist[keep] <= inner_r, dist[keep] >= shell_lo)


@dataclass(frozen=True)
class Appearance:
    """HU around a point: the values at the offsets, the medians of inner ball and shell, and the
    shell's spread (1.4826 x median absolute deviation)."""

    values: np.ndarray
    inner_hu: float
    shell_hu: float
    spread_hu: float

    @property
    def contrast(self) -> float:
        return self.inner_hu - self.shell_hu


def appearance(volume: Volume, point_mm: np.ndarray, hood: Neighbourhood) -> Appearance:
    values = volume.sample(np.asarray(point_mm, float).reshape(1, 3) + hood.offsets)
    return Appearance(values, *_summary(values, hood))


def _search_offsets(radius_mm: float, settings: PresenceSettings) -> np.ndarray:
    """Centre shifts (mm) around a matched point: a grid of step max(2 mm, inner radius / 2) in a ball."""
    if settings.search_mm <= 0:
        return np.zeros((1, 3))
    step = max(2.0, 0.5 * max(settings.inner_fraction * radius_mm, settings.min_inner_mm))
    n = int(np.floor(settings.search_mm / step))
    axis = np.arange(-n, n + 1) * step
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    grid = grid[np.linalg.norm(grid, axis=1) <= settings.search_mm + 1e-9]
    return grid[np.argsort(np.linalg.norm(grid, axis=1), kind="stable")]  # the match itself first


def _summary(values: np.ndarray, hood: Neighbourhood) -> tuple[float, float, float]:
    """Medians of the inner ball and the shell, and the shell's spread, of one set of values."""
    inner, shell = values[hood.inner], values[hood.shell]
    inner_hu = float(np.nanmedian(inner)) if np.isfinite(inner).any() else np.nan
    shell_hu = float(np.nanmedian(shell)) if np.isfinite(shell).any() else np.nan
    spread = float(1.4826 * np.nanmedian(np.abs(shell - shell_hu))) if np.isfinite(shell_hu) else np.nan
    return inner_hu, shell_hu, spread


def measure(source: Volume, target: Volume, source_point_mm: np.ndarray, target_point_mm: np.ndarray,
            radius_mm: float, settings: PresenceSettings) -> dict[str, float]:
    """Source and target contrast, shell and spread of one query (HU), the target neighbourhood
    centred within ``search_mm`` of ``target_point_mm`` where it correlates best with the source's."""
    hood = Neighbourhood.of(radius_mm, settings)
    src = appearance(source, source_point_mm, hood)
    shifts = _search_offsets(radius_mm, settings)
    centres = np.asarray(target_point_mm, float).reshape(1, 3) + shifts
    # normalised cross-correlation with the source values of every candidate centre at once, on at
    # most `ncc_samples` of the offsets (evenly strided)
    pick = slice(None, None, max(1, len(hood.offsets) // settings.ncc_samples))
    values = target.sample((centres[:, None, :] + hood.offsets[pick][None]).reshape(-1, 3)).reshape(len(shifts), -1)
    usable = np.isfinite(values) & np.isfinite(src.values[pick])[None]
    a = np.where(usable, src.values[pick][None], 0.0)
    b = np.where(usable, values, 0.0)
    n = usable.sum(axis=1).clip(min=1)
    a = np.where(usable, a - (a.sum(axis=1) / n)[:, None], 0.0)
    b = np.where(usable, b - (b.sum(axis=1) / n)[:, None], 0.0)
    norm = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    score = np.where((usable.sum(axis=1) >= 8) & (norm > 0), (a * b).sum(axis=1) / np.where(norm > 0, norm, 1.0),
                     -np.inf)
    best = int(np.argmax(score))  # the first (nearest) of equals; the match itself if none is usable
    inner_hu, shell_hu, spread = _summary(target.sample(centres[best] + hood.offsets), hood)
    return {"source_contrast_hu": src.contrast, "target_contrast_hu": inner_hu - shell_hu,
            "source_shell_hu": src.shell_hu, "target_shell_hu": shell_hu, "source_spread_hu": src.spread_hu,
            "target_spread_hu": spread}


def presence_score(measured: pd.DataFrame, slope: float, relative_sd: float) -> np.ndarray:
    """The log-likelihood ratio (higher = still there) of each row of :func:`measure` values (the
    module docstring); NaN where a neighbourhood left the volume."""
    expected = measured["source_contrast_hu"] + slope * (measured["target_shell_hu"] - measured["source_shell_hu"])
    variance = (measured["source_spread_hu"] ** 2 + measured["target_spread_hu"] ** 2 + 1.0
                + (relative_sd * expected) ** 2)
    return (expected * (2.0 * measured["target_contrast_hu"] - expected) / (2.0 * variance)).to_numpy(float)


def fit_slope(measured: pd.DataFrame, max_contrast_hu: float = 200.0) -> float:
    """Least-squares slope (through 0) of the contrast change on the shell change over present
    queries whose source contrast is under ``max_contrast_hu`` (soft-tissue lesions in enhancing
    organs; a nodule against lung, about 800 HU, says nothing about enhancement)."""
    measured = measured[measured["source_contrast_hu"].abs() < max_contrast_hu]
    d_shell = (measured["target_shell_hu"] - measured["source_shell_hu"]).to_numpy(float)
    d_contrast = (measured["target_contrast_hu"] - measured["source_contrast_hu"]).to_numpy(float)
    ok = np.isfinite(d_shell) & np.isfinite(d_contrast)
    if ok.sum() < 3 or float((d_shell[ok] ** 2).sum()) == 0.0:
        return 0.0
    return float((d_shell[ok] * d_contrast[ok]).sum() / (d_shell[ok] ** 2).sum())


def measure_queries(queries: pd.DataFrame, points: np.ndarray, path_of: Callable[[str], str | os.PathLike],
                    settings: PresenceSettings) -> pd.DataFrame:
    """:func:`measure` for each query (``source_image, target_image, source_x/y/z,
    source_radius_mm``) at its target point ``points`` (N, 3) world mm."""
    queries = queries.reset_index(drop=True)
    cache = LoadCache(lambda image_id: Volume(path_of(image_id)), size=16)
    rows: list[dict[str, float]] = [{}] * len(queries)
    for k in queries.sort_values(["target_image", "source_image"]).index:
        row = queries.loc[k]
        rows[k] = measure(cache(row["source_image"]), cache(row["target_image"]),
                          row[SOURCE_POINT].to_numpy(float), points[k],
                          float(row["source_radius_mm"]), settings)
    return pd.DataFrame(rows, index=queries.index)


def presence_queries(lesions: pd.DataFrame, split: str | None = None) -> pd.DataFrame:
    """Presence queries (``tables.PRESENCE_QUERY_COLUMNS``) of a ``lesions.csv`` table (of ``split``).

    For each subject and ordered pair of its scans (a, b): every lesion ``present`` or ``new`` in
    a with a row in b; ``expected`` = ``gone`` where b says ``disappeared``, else ``present``; b's
    row is the ground-truth target point. ``pair_id`` and ``direction`` as in ``pairs.csv``.
    """
    missing = [c for c in LONGITUDINAL_LESION_COLUMNS if c not in lesions.columns]
    if missing:
        raise InputError(f"lesions table: missing column(s) {missing}")
    if split is not None and "split" in lesions:
        lesions = lesions[lesions["split"] == split]
    rows = []
    for _, group in lesions.groupby("subject_id", sort=True):
        by_scan = {t: g.set_index("lesion_id") for t, g in group.groupby("timepoint", sort=True)}
        for ta, a in by_scan.items():
            visible = a[a["status"].isin(["present", "new"])]
            for tb, b in by_scan.items():
                if ta == tb:
                    continue
                for lesion_id in visible.index.intersection(b.index):
                    src, dst = visible.loc[lesion_id], b.loc[lesion_id]
                    rows.append({
                        "pair_id": pair_id(lesion_id, ta, tb), "lesion_id": lesion_id,
                        "direction": "forward" if ta < tb else "backward",
                        "source_image": src["image_id"], "target_image": dst["image_id"],
                        "source_x": src["x"], "source_y": src["y"], "source_z": src["z"],
                        "source_radius_mm": src["radius_mm"], "target_x": dst["x"], "target_y": dst["y"],
                        "target_z": dst["z"], "target_radius_mm": dst["radius_mm"],
                        "expected": "gone" if dst["status"] == "disappeared" else "present",
                        "subject_id": src["subject_id"], "split": src.get("split", ""),
                    })
    return pd.DataFrame(rows, columns=PRESENCE_QUERY_COLUMNS)


def gone_metrics(expected_gone: Iterable[bool], decided_gone: Iterable[bool]) -> dict[str, float]:
    """Counts, precision, recall and F1 of ``gone`` (NaN where undefined)."""
    truth, guess = np.asarray(list(expected_gone), bool), np.asarray(list(decided_gone), bool)
    tp, fp = int((truth & guess).sum()), int((~truth & guess).sum())
    fn, tn = int((truth & ~guess).sum()), int((~truth & ~guess).sum())
    return {"n_gone": tp + fn, "n_present": tn + fp, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": tp / (tp + fp) if tp + fp else np.nan, "recall": tp / (tp + fn) if tp + fn else np.nan,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan}


def best_threshold(values: np.ndarray, gone: np.ndarray) -> float:
    """The threshold on ``values`` (``found`` = above it) that maximises the F1 of ``gone``: the
    middle of the best run of midpoints between consecutive distinct values."""
    values, gone = np.asarray(values, float), np.asarray(gone, bool)
    distinct = np.unique(values[np.isfinite(values)])
    if distinct.size == 0 or not gone.any() or gone.all():
        raise ValueError("a threshold needs finite values and both present and gone queries")
    candidates = np.concatenate([[distinct[0] - 1.0], (distinct[:-1] + distinct[1:]) / 2.0])
    merit = np.array([np.nan_to_num(gone_metrics(gone, ~decide(values, t))["f1"]) for t in candidates])
    best = np.flatnonzero(merit >= merit.max() - 1e-12)
    lo = hi = int(best[0])
    while hi + 1 in best:
        hi += 1
    return float(candidates[lo]) if lo == 0 else float((distinct[lo - 1] + distinct[hi]) / 2.0)


def decide(values: np.ndarray, threshold: float) -> np.ndarray:
    """``found``: value above the threshold; an undefined (NaN) value counts as found (undecided)."""
    values = np.asarray(values, float)
    return np.where(np.isfinite(values), values > threshold, True)


@dataclass(frozen=True)
class Calibration:
    """A calibrated appearance test (``calibrated`` false: the dataset had no gone lesions on its
    calibration split, and nothing is decided)."""

    calibrated: bool
    threshold: float
    slope: float
    split: str
    counts: dict[str, int]
    train: dict[str, float]  # precision, recall, f1 of gone on the calibration queries
    settings: dict[str, Any]

    def to_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2, default=float) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Calibration:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise InputError(f"{path}: not a presence calibration ({err})") from err

    def score(self, measured: pd.DataFrame) -> np.ndarray:
        return presence_score(measured, self.slope, self.settings["relative_sd"])


def calibrate_presence(lesions_csv: str | Path, volume_tables: list[str | Path], out: str | Path,
                       split: str = "train", settings: PresenceSettings | None = None) -> Calibration:
    """Fit the enhancement slope and the threshold on the ground-truth points of ``split``."""
    settings = settings or PresenceSettings()
    queries = presence_queries(read_lesions(lesions_csv, LONGITUDINAL_LESION_COLUMNS), split)
    gone = (queries["expected"] == "gone").to_numpy()
    if not gone.any() or gone.all():
        calibration = Calibration(False, float("nan"), 0.0, split, {"present": int((~gone).sum()),
                                                                     "gone": int(gone.sum())}, {},
                                  dataclasses.asdict(settings))
        calibration.to_json(out)
        return calibration
    paths = volume_paths(volume_tables)
    missing = sorted(set(queries["source_image"]) - set(paths))
    if missing:
        raise InputError(f"{lesions_csv}: image(s) {missing[:5]} of split {split} in no volume table")
    measured = measure_queries(queries, queries[TARGET_POINT].to_numpy(float),
                               paths.__getitem__, settings)
    slope = fit_slope(measured[~gone])
    values = presence_score(measured, slope, settings.relative_sd)
    threshold = best_threshold(values, gone)
    metrics = gone_metrics(gone, ~decide(values, threshold))
    calibration = Calibration(True, threshold, slope, split, {"present": int((~gone).sum()), "gone": int(gone.sum())},
                              {k: metrics[k] for k in ("precision", "recall", "f1")}, dataclasses.asdict(settings))
    calibration.to_json(out)
    return calibration


def score_at(queries: pd.DataFrame, points: np.ndarray, calibration: Calibration,
             path_of: Callable[[str], str | os.PathLike]) -> np.ndarray:
    """The presence score of each query at its predicted target point (NaN: not calibrated)."""
    if not calibration.calibrated:
        return np.full(len(queries), np.nan)
    settings = PresenceSettings(**calibration.settings)
    return calibration.score(measure_queries(queries, points, path_of, settings))
