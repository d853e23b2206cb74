"""The embedding trackers: ``multiscale``, ``single-scale-fine``, ``two-scale``, ``multiscale-paper``.

Each matches a query's source embedding over the target's embedding maps
(:func:`lesiontrack.track.match.match_many`) at its scales (``match.METHOD_SCALES``) with the
``track`` section's matching settings; ``multiscale-paper`` uses the paper's matching exactly
(``match.PAPER_MATCHING``). With ``track.refine_mm`` the target's windowed voxels refine each match.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from lesiontrack.config import settings_from
from lesiontrack.preprocess import window
from lesiontrack.tables import CANDIDATE_COLUMNS, SOURCE_POINT
from lesiontrack.track.match import METHOD_SCALES, PAPER_MATCHING, MatchSettings, match_many
from lesiontrack.track.tracker import Context, Needs, check_inside

TRACK_WORKFLOW_KEYS = ("methods", "min_slices", "presence_datasets", "presence_rerank", "registration", "elastix",
                      "hybrid")


def match_settings(method: str, track: dict[str, Any] | None = None) -> MatchSettings:
    """Matching settings of an embedding ``method`` from the ``track`` config section."""
    if method not in METHOD_SCALES:
        raise ValueError(f"method {method!r}: not an embedding method {list(METHOD_SCALES)}")
    values = {**(track or {}), **(PAPER_MATCHING if method == "multiscale-paper" else {})}
    return settings_from(values, MatchSettings, "track", TRACK_WORKFLOW_KEYS, MatchSettings(METHOD_SCALES[method]))


def windowed_voxels(image: sitk.Image, window_hu: tuple[float, float]) -> np.ndarray:
    """A volume's voxels (z, y, x) windowed as the network sees them (for ``track.refine_mm``)."""
    return window(sitk.GetArrayViewFromImage(image), tuple(window_hu), (-1.0, 1.0))


NEEDS = Needs(embeddings=True, volumes=True)  # volumes: the refinement (track.refine_mm)


@dataclass(frozen=True)
class EmbeddingTracker:
    name: str
    needs: Needs = NEEDS
    decides_presence: bool = True

    def candidates(self, queries: pd.DataFrame, context: Context) -> pd.DataFrame:
        """Every candidate of every query row (in its direction); ``seconds`` is the matching
        time of the row's image pair over its rows (the pair's rows are matched together), on each
        of its candidates."""
        settings = self.settings(context.track)
        maps = context.scans.maps
        if maps is None:
            raise ValueError(f"method {self.name}: needs embeddings")
        with_voxels = settings.refine_mm > 0
        file_rows = queries.index.to_numpy()  # the rows of the file (read_table's index), for messages
        queries = queries.reset_index(drop=True)
        records: list[tuple[int, int, float, float, float, float, float]] = []
        groups = queries.groupby(["source_image", "target_image"], sort=True).indices
        for (source_image, target_image), rows in tqdm(groups.items(), desc=self.name,
                                                       disable=not context.progress):
            src, dst = maps(source_image, with_voxels), maps(target_image, with_voxels)
            points = queries.loc[rows, SOURCE_POINT].to_numpy(float)
            if context.scans.check_inside:
                check_inside(points, src.geometry, queries.loc[rows].set_axis(file_rows[rows]), context.source,
                             f"source {source_image}")
            began = time.perf_counter()
            matched = match_many(src, dst, points, settings)
            seconds = (time.perf_counter() - began) / len(rows)
            for row, matches in zip(rows, matched, strict=True):
                records += [(int(row), rank, *m.point_mm, m.confidence, seconds) for rank, m in enumerate(matches)]
        return pd.DataFrame(records, columns=CANDIDATE_COLUMNS).sort_values(["row", "rank"], ignore_index=True)

    def settings(self, track: dict[str, Any] | None) -> MatchSettings:
        return match_settings(self.name, track)

    def registrations(self, track: dict[str, Any] | None) -> tuple[str, ...]:
        return ()


TRACKERS = tuple(EmbeddingTracker(name) for name in METHOD_SCALES)
