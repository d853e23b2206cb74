"""The choice of each query's prediction and ``found`` among a tracker's candidates, the same for
every tracker: the best candidate, or, with a presence calibration, as the appearance test
(:mod:`lesiontrack.track.presence`) decides."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from lesiontrack.io import Geometry
from lesiontrack.tables import PRED_POINT
from lesiontrack.track.presence import Calibration, decide, score_at


def choose(queries: pd.DataFrame, candidates: pd.DataFrame, calibration: Calibration | None,
           track: dict[str, Any] | None, path_of: Callable[[str], str | os.PathLike],
           geometry_of: Callable[[str], Geometry | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each query's prediction (its position in ``candidates``) and ``found``: without a
    (calibrated) ``calibration`` the best candidate, found; with one, the appearance test decides,
    among all candidates with ``track.presence_rerank`` (:func:`choose_present`), else at the best.
    A prediction outside its target scan (``geometry_of(target_image)``, where known) is never
    found: the lesion cannot be shown there."""
    first = np.flatnonzero(candidates["rank"].to_numpy() == 0)
    if calibration is None or not calibration.calibrated:
        chosen, found = first, np.ones(len(first), bool)
    elif (track or {}).get("presence_rerank", False):
        chosen, found = choose_present(queries, candidates, calibration, path_of)
    else:
        chosen, found = choose_present(queries, candidates.iloc[first], calibration, path_of)
        chosen = first[chosen]
    if geometry_of is not None:
        found = found & inside_targets(queries, candidates[PRED_POINT].to_numpy(float)[chosen], geometry_of)
    return chosen, found


def inside_targets(queries: pd.DataFrame, points_mm: np.ndarray, geometry_of: Callable[[str], Geometry | None]
                   ) -> np.ndarray:
    """Whether each query's point lies within its target scan's voxels (true where the scan's
    geometry is not known)."""
    inside = np.ones(len(points_mm), bool)
    targets = queries["target_image"].astype(str).to_numpy()
    for target in np.unique(targets):
        geometry = geometry_of(target)
        if geometry is not None:
            rows = targets == target
            inside[rows] = geometry.covers(points_mm[rows])
    return inside


SWITCH_SCORE = 0.0  # a candidate other than the best needs a score above this too: evidence for "still there"


def choose_present(queries: pd.DataFrame, candidates: pd.DataFrame, calibration: Calibration,
                   path_of: Callable[[str], str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """For each query, its best-ranked candidate target point if the appearance test finds the
    lesion there; else the best-ranked other candidate whose score favours "still there" (above
    the threshold and :data:`SWITCH_SCORE`, a log-likelihood ratio of 0); else the best-ranked
    one, decided gone (the embedding's best guess of the place of a lesion that has gone).

    ``candidates``: ``row`` (the query's position), ``rank`` (0 best), ``pred_x, pred_y, pred_z``.
    Returns the chosen candidates' positions in ``candidates`` and ``found`` (an undecidable score
    at the best candidate, a neighbourhood off the volume, counts as found, as in :func:`decide`).
    Chosen on the default run's training subjects: moving to any other candidate that merely
    passes the threshold also moved gone lesions onto look-alikes (recall of gone 0.75 -> 0.50).
    """
    queries = queries.reset_index(drop=True)
    rows = candidates["row"].to_numpy(int)
    ranks = candidates["rank"].to_numpy(int)
    first = np.flatnonzero(ranks == 0)
    first = first[np.argsort(rows[first], kind="stable")]  # query k's best candidate: first[k]
    if not np.array_equal(rows[first], np.arange(len(queries))):
        raise ValueError("candidates: every query needs one candidate of rank 0")
    points = candidates[PRED_POINT].to_numpy(float)
    found = decide(score_at(queries, points[first], calibration, path_of), calibration.threshold)
    chosen = first.copy()
    # the other candidates only of the queries whose best one fails
    others = np.flatnonzero(np.isin(rows, np.flatnonzero(~found)) & (ranks > 0))
    if others.size:
        scores = score_at(queries.iloc[rows[others]], points[others], calibration, path_of)
        switch = others[np.isfinite(scores) & (scores > max(calibration.threshold, SWITCH_SCORE))]
        switch = switch[np.lexsort((ranks[switch], rows[switch]))]  # by query, best rank first
        switched, best = np.unique(rows[switch], return_index=True)
        chosen[switched] = switch[best]
        found[switched] = True
    return chosen, found
