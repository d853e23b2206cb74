"""The ``identity`` tracker: the target point is the source point, in world mm.

Identity is a real baseline: it measures how far the anatomy moved between the two scans'
world frames, which is what every tracker must undo. It has no confidence (NaN) and never decides
that a lesion is gone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lesiontrack.tables import SOURCE_POINT
from lesiontrack.track.tracker import Context, Needs, single_candidates

NEEDS = Needs()  # nothing: the source point itself


@dataclass(frozen=True)
class IdentityTracker:
    name: str = "identity"
    needs: Needs = NEEDS
    decides_presence: bool = False

    def candidates(self, queries: pd.DataFrame, context: Context) -> pd.DataFrame:
        start = time.perf_counter()
        points = queries[SOURCE_POINT].to_numpy(float)
        return single_candidates(points, seconds=(time.perf_counter() - start) / max(len(queries), 1))

    def settings(self, track: dict[str, Any] | None) -> None:
        return None

    def registrations(self, track: dict[str, Any] | None) -> tuple[str, ...]:
        return ()


TRACKERS = (IdentityTracker(),)
