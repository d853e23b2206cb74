"""What a tracker is: the protocol every tracking method implements, and what it reads of the scans.

A tracker turns queries (``tables.QUERY_COLUMNS``: a source image, a target image and a source
point in world mm per row) into candidates (``tables.CANDIDATE_COLUMNS``: for each query row one or
more ranked target points with a confidence). The prediction and ``found`` are chosen from the
candidates afterwards (:func:`lesiontrack.track.predict.choose`), the same way for every tracker.
The registry of trackers by name is :mod:`lesiontrack.track.trackers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lesiontrack.io import Geometry, InputError
from lesiontrack.tables import CANDIDATE_COLUMNS

if TYPE_CHECKING:
    from lesiontrack.track.match import VolumeMaps


@dataclass(frozen=True)
class Needs:
    """What a tracker reads: embeddings (the workflow's caches, or a checkpoint to embed own
    scans), the resampled volumes."""

    embeddings: bool = False
    volumes: bool = False


Registered = tuple[sitk.Transform | None, str, float]
"""One image pair's registration: the transform (None where it could not start), the stage that
produced it (as :func:`lesiontrack.track.registration.register_safely`) and the seconds it took."""


@dataclass
class Scans:
    """The scans of a tracking run, by image id: ``maps`` (embeddings, for trackers that need
    them) and ``image`` (resampled volumes). ``check_inside``: stop on a source point outside the
    embedded volume (own data checks against the original scan before resampling instead).
    ``stored_registration(source_id, target_id, method, settings)``: a registration already made
    (the workflow's ``register`` rule), or None where there is none of that method and settings
    (:func:`lesiontrack.track.registration.pair_registration`)."""

    maps: Callable[[str], VolumeMaps] | None = None
    image: Callable[[str], sitk.Image] | None = None
    check_inside: bool = True
    stored_registration: Callable[[str, str, str, Any], Registered | None] | None = None  # Any: its settings


@dataclass
class Context:
    """Everything a tracker may use besides the queries."""

    scans: Scans
    track: dict[str, Any] = field(default_factory=dict)  # the config's ``track`` section
    progress: bool = True
    source: str = "pairs.csv"  # the queries' file, for messages


class Tracker(Protocol):
    """A tracking method: ``name`` (as in ``track.methods``), what it ``needs``, whether its
    ``found`` can be decided by the appearance test (``decides_presence``), and ``candidates``."""

    name: str
    needs: Needs
    decides_presence: bool

    def candidates(self, queries: pd.DataFrame, context: Context) -> pd.DataFrame:
        """``tables.CANDIDATE_COLUMNS`` for the rows of ``queries`` (``row`` = position)."""
        ...

    def settings(self, track: dict[str, Any] | None) -> Any:
        """Its settings from the config's ``track`` section (a settings dataclass, None where it has
        none); a bad key or value stops with a :class:`lesiontrack.config.ConfigError` naming it.
        :func:`lesiontrack.track.trackers.check_settings` reads every tracker's before any work."""
        ...

    def registrations(self, track: dict[str, Any] | None) -> tuple[str, ...]:
        """The registration methods (``affine``, ``deformable``) whose results it reads through
        ``Scans.stored_registration`` under the config's ``track`` section; the workflow makes
        each once per dataset (rule ``register``) for every tracker that reads it."""
        ...


def single_candidates(points_mm: np.ndarray, confidence: np.ndarray | float = np.nan,
                      seconds: np.ndarray | float = np.nan) -> pd.DataFrame:
    """The candidates table of a tracker with one answer per query row."""
    points_mm = np.asarray(points_mm, float).reshape(-1, 3)
    return pd.DataFrame({"row": np.arange(len(points_mm)), "rank": 0, "pred_x": points_mm[:, 0],
                         "pred_y": points_mm[:, 1], "pred_z": points_mm[:, 2], "confidence": confidence,
                         "seconds": seconds}, columns=CANDIDATE_COLUMNS)


def check_inside(points: np.ndarray, geometry: Geometry, rows: pd.DataFrame, source: str, what: str) -> None:
    """Stop on the first point outside the volume, naming its row (the table's index + 1, i.e. the
    data row of the file) and its id."""
    inside = geometry.contains(points)
    if not inside.all():
        k = int(np.flatnonzero(~inside)[0])
        row = rows.iloc[k]
        label = f"{row['pair_id']} {row['direction']}" if "pair_id" in row else row.get("lesion_id", k)
        point = tuple(round(float(v), 2) for v in points[k])
        origin = tuple(round(float(v), 1) for v in geometry.origin)
        raise InputError(f"{source}: row {int(rows.index[k]) + 1} ({label}): point {point} mm lies outside the {what} "
                         f"volume (origin {origin} mm, size {tuple(int(n) for n in geometry.size)} voxels)")


def check_radii(rows: pd.DataFrame, geometry: Geometry, source: str, what: str) -> None:
    """Stop on the first ``radius_mm`` larger than half the scan's largest extent: a lesion that
    does not fit in its scan is a typo (or a unit slip), and such a radius would swallow every
    new lesion near it."""
    if "radius_mm" not in rows:
        return
    extent = float((np.asarray(geometry.size, float) * np.asarray(geometry.spacing, float)).max())
    radius = rows["radius_mm"].to_numpy(float)
    too_large = radius > extent / 2
    if too_large.any():
        k = int(np.flatnonzero(too_large)[0])
        raise InputError(f"{source}: row {int(rows.index[k]) + 1} ({rows['lesion_id'].iloc[k]}): radius_mm = "
                         f"{radius[k]:g} does not fit in the {what} (its largest extent {extent:.0f} mm)")
