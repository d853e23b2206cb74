"""Multi-scale similarity matching of a source point in a target volume (the paper, section 3.3).

For a source point (world mm) the embedding of each scale is interpolated at the point; its
cosine similarity with every voxel of the target's map of that scale gives one map per scale;
the maps are brought to the target's input grid (trilinear, the embedding convention of
:mod:`lesiontrack.track.embed`) and summed; the argmax, refined to sub-voxel precision by a
parabola through its neighbours along each axis, is the prediction; the summed similarity
divided by the number of scales (a mean cosine, at most 1) is its confidence.

``context_mm`` > 0 adds *context points*: the source embeddings at the six points ``context_mm``
away from the lesion along each axis are matched too, each map shifted back by its offset, and the
maps averaged with the lesion's own, so the peak must fit a small constellation of anatomy rather
than one voxel (against jumps between repeated structures: vertebrae, ribs). The averaged map is
computed on the grid of the finest scale used (4 mm on a 2 mm volume), its peak refined by the
same parabola, and its value over the number of scales is the confidence (points off the source
volume are left out).

``refine_mm`` > 0 refines the match by intensity: a cube of half-width ``refine_mm`` around the
source point (windowed HU, sampled on the target's axes) is correlated (normalised
cross-correlation) with the target within ``refine_search_mm`` of the match; the best offset,
refined to sub-voxel precision, moves the prediction. It needs the volumes' voxels
(:class:`VolumeMaps` ``image``) and is skipped where the cube leaves either volume. The
confidence stays the embedding similarity at the embedding match.

``rerank_peaks`` > 1 (with context points and ``refine_mm``) refines that many distinct peaks of
the averaged map (farther apart than ``refine_search_mm``) and keeps the one whose embedding
confidence + ``rerank_weight`` x intensity correlation is highest: the embedding proposes
candidates, the intensities near the lesion pick among them.

:func:`match_many` matches the points of one image pair together: the similarity of all their
context points with a scale's map is one matrix product (one pass over the map, which costs more
than the arithmetic; about 4x less time per point), the steps after it per point as above. Its
candidates equal :func:`match_candidates`' up to float rounding (the product's summation order).

``coarse_to_fine`` evaluates the coarse scales (those at or above ``coarse_levels``) on the whole
volume, keeps the ``n_peaks`` best local maxima of their sum, and evaluates the finer scales only in
a box of ``window_mm`` around each, so a weak coarse scale costs candidates rather than the answer.
With context points, the coarse stage averages the context points' coarse maps too, and each box
holds the full search's own context-averaged map of every scale (:func:`context_sum` with
``box``), so coarse-to-fine equals the full search wherever the full peak falls in a box.

Methods (Contracts): ``multiscale`` = all 5 scales; ``single-scale-fine`` = scale 1 only;
``two-scale`` = scales 1 and 5 (SAM's global + local embedding); each with the configured context
points and refinement. ``multiscale-paper`` = all 5 scales, the lesion point alone and no
refinement: the paper's matching exactly, as a row beside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from lesiontrack.io import Geometry
from lesiontrack.model import CUMULATIVE_STRIDES
from lesiontrack.track.embed import SCALES, Embeddings, input_to_scale, scale_to_input, scale_to_scale

METHOD_SCALES = {"multiscale": SCALES, "single-scale-fine": SCALES[:1], "two-scale": (SCALES[0], SCALES[-1]),
                 "multiscale-paper": SCALES}
PAPER_MATCHING = {"context_mm": 0.0, "refine_mm": 0.0}  # the settings that make multiscale-paper the paper's


@dataclass(frozen=True)
class MatchSettings:
    scales: tuple[int, ...] = SCALES
    coarse_to_fine: bool = False
    subvoxel: bool = True
    coarse_levels: int = 3  # coarse-to-fine: scales >= this are evaluated everywhere
    n_peaks: int = 16
    window_mm: float = 32.0  # half-width of the box searched at the fine scales around each peak
    context_mm: float = 0.0  # context points this far from the lesion along each axis (0: the paper)
    context_rings: int = 1  # and at 2, 3, ... times that distance
    refine_mm: float = 0.0  # half-width of the intensity cube of the refinement (0: none)
    refine_search_mm: float = 8.0  # how far from the embedding match the refinement looks
    rerank_peaks: int = 1  # with refine_mm: refine this many distinct embedding peaks, keep the best
    rerank_weight: float = 1.0  # ... by embedding confidence + rerank_weight x intensity correlation


@dataclass(frozen=True)
class Match:
    point_mm: np.ndarray  # (3,) world mm
    confidence: float  # mean cosine similarity over the scales at the match, in [-1, 1]
    index_xyz: np.ndarray  # continuous voxel index in the target's input grid


class VolumeMaps:
    """The embedding maps of one volume as float32 tensors, loaded once and reused; ``image``
    (optional): the volume's voxels (z, y, x) on the same grid, windowed, for ``refine_mm``."""

    def __init__(self, embeddings: Embeddings, scales=SCALES, image: np.ndarray | None = None) -> None:
        self.embeddings = embeddings
        self.geometry = embeddings.geometry
        if image is not None and tuple(image.shape) != tuple(self.geometry.size[::-1]):
            raise ValueError(f"image of shape {image.shape} does not match the embeddings' grid "
                             f"{tuple(self.geometry.size[::-1])} (z, y, x)")
        self.image = None if image is None else torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        # channels last (d, h, w, C): a block's similarities are one contiguous matrix product
        self.maps = {k: torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(embeddings.maps[k - 1],
                                                                                     dtype=np.float32), 0, -1)))
                     for k in scales}
        self.grids = {k: embeddings.grids[k - 1] for k in scales}

    def vector(self, point_mm: np.ndarray, scale: int) -> torch.Tensor:
        """The (re-normalised, trilinear) embedding at a world point at one scale."""
        return self.vectors(np.asarray(point_mm, float).reshape(1, 3), scale)[:, 0]

    def vectors(self, points_mm: np.ndarray, scale: int) -> torch.Tensor:
        """:meth:`vector` of several world points (N, 3) at once: (C, N)."""
        index = self.grids[scale].world_to_index(np.asarray(points_mm, float).reshape(-1, 3))  # (N, x y z)
        embedding = self.maps[scale]  # (d, h, w, C)
        size = np.asarray(embedding.shape[:3][::-1], float)  # x, y, z
        index = np.clip(index, 0.0, size - 1.0)
        lo = np.floor(index).astype(int)
        hi = np.minimum(lo + 1, size.astype(int) - 1)
        frac = index - lo
        vectors = torch.zeros((len(index), embedding.shape[3]))
        for corner in range(8):  # trilinear: the 8 neighbouring voxels
            pick = np.array([(corner >> axis) & 1 for axis in range(3)], bool)
            weight = np.prod(np.where(pick, frac, 1.0 - frac), axis=1)
            x, y, z = np.where(pick, hi, lo).T
            vectors += torch.from_numpy(weight.astype(np.float32))[:, None] * embedding[z, y, x]
        return F.normalize(vectors, dim=1).T


def _to_input_grid(similarity: torch.Tensor, stride: tuple[int, int, int], shape: tuple[int, int, int],
                   offset=(0, 0, 0)) -> torch.Tensor:
    """A map on a scale grid -> the input grid (trilinear, align_corners=False over the padded
    extent), cropped to ``shape`` starting at input voxel ``offset``."""
    padded = tuple(n * s for n, s in zip(similarity.shape, stride, strict=True))
    full = F.interpolate(similarity[None, None], size=padded, mode="trilinear", align_corners=False)[0, 0]
    z, y, x = offset
    return full[z: z + shape[0], y: y + shape[1], x: x + shape[2]]


def _subvoxel(volume: torch.Tensor, peak: tuple[int, int, int]) -> np.ndarray:
    """Peak (z, y, x) refined by a parabola through its neighbours along each axis (at most +-0.5)."""
    refined = np.asarray(peak, float)
    for axis in range(3):
        if 0 < peak[axis] < volume.shape[axis] - 1:
            lo, hi = list(peak), list(peak)
            lo[axis] -= 1
            hi[axis] += 1
            a, b, c = float(volume[tuple(lo)]), float(volume[tuple(peak)]), float(volume[tuple(hi)])
            curvature = a - 2 * b + c
            if np.isfinite(curvature) and curvature < 0:  # not beside masked (-inf) voxels
                refined[axis] += float(np.clip(0.5 * (a - c) / curvature, -0.5, 0.5))
    return refined


def _similarity(target: VolumeMaps, query: torch.Tensor, scale: int, box=None) -> torch.Tensor:
    """Cosine similarity of ``query`` (C,) with the map of one scale (d, h, w); of P queries at
    once (C, P): (d, h, w, P)."""
    embedding = target.maps[scale]  # (d, h, w, C)
    if box is not None:
        (z0, z1), (y0, y1), (x0, x1) = box
        embedding = embedding[z0:z1, y0:y1, x0:x1]
    return (embedding.reshape(-1, embedding.shape[3]) @ query).view(*embedding.shape[:3], *query.shape[1:])


def _similarity_rows(target: VolumeMaps, queries: torch.Tensor, scale: int) -> torch.Tensor:
    """:func:`_similarity` of P queries (C, P) with the whole map, each query's map contiguous:
    (P, d, h, w)."""
    embedding = target.maps[scale]  # (d, h, w, C)
    return (queries.T @ embedding.reshape(-1, embedding.shape[3]).T).view(queries.shape[1], *embedding.shape[:3])


def _full_map(target: VolumeMaps, query: torch.Tensor, scale: int) -> torch.Tensor:
    """Cosine similarity of ``query`` with the target's map of one scale, on the target's input grid."""
    return _to_input_grid(_similarity(target, query, scale), CUMULATIVE_STRIDES[scale - 1],
                          tuple(target.geometry.size[::-1]))


def similarity_maps(source: VolumeMaps, target: VolumeMaps, point_mm: np.ndarray,
                    scales: tuple[int, ...] = SCALES) -> dict[int, torch.Tensor]:
    """The per-scale cosine-similarity maps of one source point (world mm) over the whole target,
    each on the target's input grid (z, y, x): the terms that :func:`match_point` sums."""
    point_mm = np.asarray(point_mm, float).reshape(1, 3)
    return {k: _full_map(target, source.vector(point_mm, k), k) for k in scales}


def match_point(source: VolumeMaps, target: VolumeMaps, point_mm: np.ndarray,
                settings: MatchSettings = MatchSettings()) -> Match:
    """The target point of one source point (world mm)."""
    return match_candidates(source, target, point_mm, settings)[0]


def match_candidates(source: VolumeMaps, target: VolumeMaps, point_mm: np.ndarray,
                     settings: MatchSettings = MatchSettings(),
                     similarities: dict[int, torch.Tensor] | None = None) -> list[Match]:
    """The target candidates of one source point (world mm), best first: the match alone, or with
    ``refine_mm`` and ``rerank_peaks`` > 1 every refined peak, ranked by embedding confidence +
    ``rerank_weight`` x intensity correlation (the first of equals first). ``similarities``: the
    point's context points' similarity maps, computed beforehand (:func:`match_many`)."""
    point_mm = np.asarray(point_mm, float).reshape(1, 3)
    candidates = _embedding_match(source, target, point_mm, settings, similarities)
    if settings.refine_mm <= 0:
        return candidates[:1]
    refined, scores = [], []
    for candidate in candidates:
        match, correlation = _intensity_match(source, target, point_mm, candidate, settings)
        refined.append(match)
        correlation = correlation if np.isfinite(correlation) else 0.0
        scores.append(candidate.confidence + settings.rerank_weight * correlation)
    return [refined[k] for k in np.argsort(-np.asarray(scores), kind="stable")]


def match_many(source: VolumeMaps, target: VolumeMaps, points_mm: np.ndarray,
                settings: MatchSettings = MatchSettings(), chunk: int = 8) -> list[list[Match]]:
    """:func:`match_candidates` of each of several source points (N, 3) on one image pair. With
    the full search and context points, the similarity maps of ``chunk`` points' context points
    are one matrix product per scale (module docstring); otherwise point by point."""
    points_mm = np.asarray(points_mm, float).reshape(-1, 3)
    if not len(points_mm):
        return []
    if settings.coarse_to_fine or settings.context_mm <= 0:
        return [match_candidates(source, target, p, settings) for p in points_mm]
    results: list[list[Match]] = []
    per_point = len(context_points(points_mm[:1], settings.context_mm, settings.context_rings))
    for start in range(0, len(points_mm), chunk):
        block = points_mm[start:start + chunk]
        every = np.vstack([context_points(p, settings.context_mm, settings.context_rings) for p in block])
        products = {k: _similarity_rows(target, source.vectors(every, k), k) for k in settings.scales}
        for i, point in enumerate(block):
            own = {k: maps[i * per_point:(i + 1) * per_point] for k, maps in products.items()}
            results.append(match_candidates(source, target, point, settings, own))
    return results


def landmark_errors_mm(source: VolumeMaps, target: VolumeMaps, source_landmarks: pd.DataFrame,
                       target_landmarks: pd.DataFrame, settings: MatchSettings = MatchSettings()) -> np.ndarray:
    """The distance (mm) between each landmark of the source table matched in the target and the
    same-named landmark of the target table, for the names in both (tables indexed by name, with
    columns x, y, z in world mm)."""
    names = source_landmarks.index.intersection(target_landmarks.index)
    xyz = ["x", "y", "z"]
    return np.array([np.linalg.norm(match_point(source, target, source_landmarks.loc[name, xyz].to_numpy(float),
                                                settings).point_mm - target_landmarks.loc[name, xyz].to_numpy(float))
                     for name in names])


def _embedding_match(source: VolumeMaps, target: VolumeMaps, point_mm: np.ndarray, settings: MatchSettings,
                     similarities: dict[int, torch.Tensor] | None = None) -> list[Match]:
    """The embedding match, best first; with ``rerank_peaks`` > 1 (and context points) also the
    next distinct peaks of the averaged map (farther apart than ``refine_search_mm``)."""
    shape = tuple(target.geometry.size[::-1])  # (z, y, x) of the input grid
    queries = {k: source.vector(point_mm, k) for k in settings.scales}
    coarse = [k for k in settings.scales if k >= settings.coarse_levels]
    if not settings.coarse_to_fine or not coarse or len(coarse) == len(settings.scales):
        if settings.context_mm > 0:
            grid = min(settings.scales)
            total = context_sum(source, target, point_mm, settings.scales, grid, settings.context_mm,
                                settings.context_rings, similarities=similarities)
            return _grid_candidates(total, target, grid, settings)
        total = torch.zeros(shape)
        for k in settings.scales:
            total += _full_map(target, queries[k], k)
        return [_result(total, target.geometry, settings, (0, 0, 0))]
    # coarse scales on the grid of the finest coarse scale, where peaks are cheap to find
    base = min(coarse)
    base_shape = tuple(target.maps[base].shape[:3])
    base_stride = np.asarray(CUMULATIVE_STRIDES[base - 1])
    spacing_zyx = np.asarray(target.geometry.spacing[::-1])
    half = np.ceil(settings.window_mm / spacing_zyx).astype(int)  # input voxels
    separation = np.maximum(np.round(half / base_stride).astype(int), 1)  # base voxels
    if settings.context_mm > 0:
        # the coarse stage's peaks, then the very map of the full search (context points at every
        # scale) in a box around each: equal to it there, -inf elsewhere
        cache: dict[int, torch.Tensor] = {}
        coarse_sum = context_sum(source, target, point_mm, tuple(coarse), base, settings.context_mm,
                                 settings.context_rings, queries=cache)
        grid = min(settings.scales)
        grid_stride = np.asarray(CUMULATIVE_STRIDES[grid - 1])
        grid_shape = np.asarray(target.maps[grid].shape[:3])
        grid_half = np.ceil(settings.window_mm / (spacing_zyx * grid_stride)).astype(int)
        total = torch.full(tuple(grid_shape), float("-inf"))
        for peak in _peaks(coarse_sum, settings.n_peaks, separation):
            centre = np.rint(scale_to_scale(peak, base_stride, grid_stride)).astype(int)
            lo = np.clip(centre - grid_half, 0, grid_shape)
            hi = np.clip(centre + grid_half + 1, 0, grid_shape)
            total[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = context_sum(
                source, target, point_mm, settings.scales, grid, settings.context_mm, settings.context_rings,
                box=(lo, hi), queries=cache)
        return _grid_candidates(total, target, grid, settings)
    coarse_sum = torch.zeros(base_shape)
    for k in coarse:
        coarse_sum += _resample_map(_similarity(target, queries[k], k), base_shape)
    _mask_padding(coarse_sum, shape, base_stride)
    best: Match | None = None
    for peak in _peaks(coarse_sum, settings.n_peaks, separation):
        centre = np.clip(np.rint(scale_to_input(peak, base_stride)).astype(int), 0, np.asarray(shape) - 1)
        candidate = _window_match(target, queries, settings, centre, half)
        if best is None or candidate.confidence > best.confidence:
            best = candidate
    return [best]


def _grid_candidates(total: torch.Tensor, target: VolumeMaps, grid: int, settings: MatchSettings) -> list[Match]:
    """The match (and with ``rerank_peaks`` > 1 and ``refine_mm``, the next distinct peaks, farther
    apart than ``refine_search_mm``) of a summed map on the grid of scale ``grid``, best first."""
    shape = np.asarray(target.geometry.size[::-1])
    stride = np.asarray(CUMULATIVE_STRIDES[grid - 1])
    if settings.rerank_peaks > 1 and settings.refine_mm > 0:
        grid_mm = np.asarray(target.geometry.spacing[::-1]) * stride
        separation = np.maximum(np.ceil(settings.refine_search_mm / grid_mm).astype(int), 1)
        peaks = _peaks(total, settings.rerank_peaks, separation)
    else:
        peaks = [tuple(int(v) for v in np.unravel_index(int(torch.argmax(total)), total.shape))]
    matches = []
    for peak in peaks:
        index_zyx = _subvoxel(total, peak) if settings.subvoxel else np.asarray(peak, float)
        index_zyx = scale_to_input(index_zyx, stride)  # input voxels
        index_xyz = np.clip(index_zyx, 0, shape - 1)[::-1]
        matches.append(Match(target.geometry.index_to_world(index_xyz)[0],
                             float(total[peak]) / len(settings.scales), index_xyz))
    return matches


def _mask_padding(grid_map: torch.Tensor, input_shape: tuple[int, int, int], stride: np.ndarray,
                  start: tuple[int, int, int] = (0, 0, 0)) -> None:
    """-inf on the voxels of a scale grid that cover only the padding of the input (in place);
    ``grid_map`` holds the grid's voxels from ``start`` (z, y, x) on."""
    valid = np.ceil(np.asarray(input_shape) / stride).astype(int) - np.asarray(start)
    for axis in range(3):
        index = [slice(None)] * 3
        index[axis] = slice(int(np.clip(valid[axis], 0, grid_map.shape[axis])), None)
        grid_map[tuple(index)] = float("-inf")


def context_points(point_mm: np.ndarray, context_mm: float, rings: int = 1) -> np.ndarray:
    """The lesion point (1, 3) and, per ring k = 1..rings, the six points k x ``context_mm`` away
    along each world axis (1 + 6 rings, 3)."""
    offsets = [np.zeros((1, 3))]
    for k in range(1, rings + 1):
        offsets += [k * context_mm * np.eye(3), -k * context_mm * np.eye(3)]
    return np.asarray(point_mm, float).reshape(1, 3) + np.vstack(offsets)


def context_sum(source: VolumeMaps, target: VolumeMaps, point_mm: np.ndarray, scales: tuple[int, ...],
                grid: int, context_mm: float, rings: int = 1, box: tuple | None = None,
                queries: dict[int, torch.Tensor] | None = None,
                similarities: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Summed similarity (over ``scales``) of the lesion point and its context points, each map
    shifted back by its point's offset (rounded to the grid) and averaged where it is defined, on
    the grid of scale ``grid``; padding voxels -inf. ``box`` = (lo, hi), grid voxels (z, y, x):
    only the voxels [lo, hi) of that map (the same values, computed from the scale voxels they need).
    ``queries``: a dict that keeps the points' embeddings per scale between calls for one point.
    ``similarities``: per scale, the whole map's similarity with each of :func:`context_points`
    (points, d, h, w), computed beforehand (:func:`match_many`; not with ``box``)."""
    grid_shape = tuple(target.maps[grid].shape[:3])
    grid_geometry = target.grids[grid]
    all_points = context_points(point_mm, context_mm, rings)
    inside = source.geometry.contains(all_points)
    inside[0] = True  # the lesion itself (checked by the caller)
    points = all_points[inside]
    # the context point's match lies `offset` from the lesion's: read its map there
    offsets = np.rint(grid_geometry.world_to_index(points - point_mm.reshape(1, 3) + np.asarray(
        grid_geometry.origin))[:, ::-1]).astype(int)  # (points, z y x)
    keep = np.all(np.abs(offsets) < np.asarray(grid_shape), axis=1)
    points, offsets = points[keep], offsets[keep]
    queries = {} if queries is None else queries
    lo, hi = (np.zeros(3, int), np.asarray(grid_shape)) if box is None else (np.asarray(box[0]), np.asarray(box[1]))
    # the grid voxels whose values the points' maps need: [lo + min offset, hi + max offset) in the map
    need_lo = np.maximum(lo + offsets.min(axis=0), 0)
    need_hi = np.minimum(hi + offsets.max(axis=0), grid_shape)
    need_shape = tuple(int(n) for n in need_hi - need_lo)
    summed = torch.zeros((len(points), *need_shape))  # one summed map per point, all points at once
    grid_stride = np.asarray(CUMULATIVE_STRIDES[grid - 1])
    columns = np.flatnonzero(inside)[keep]
    for k in scales:
        if similarities is not None and box is None:
            maps = similarities[k]
            summed += _on_grid(maps if len(columns) == len(maps) else maps[torch.from_numpy(columns)], grid_shape)
            continue
        if k not in queries:
            queries[k] = source.vectors(all_points, k)  # (C, all points)
        query = queries[k][:, columns]  # (C, points)
        if box is not None:
            ratio = np.asarray(CUMULATIVE_STRIDES[k - 1]) // grid_stride
            map_shape = np.asarray(target.maps[k].shape[:3])
            s_lo = np.maximum(np.floor(input_to_scale(need_lo, ratio)).astype(int), 0)
            s_hi = np.minimum(np.floor(input_to_scale(need_hi - 1, ratio)).astype(int) + 2, map_shape)
            part = _similarity(target, query, k, tuple(zip(s_lo, s_hi, strict=True))).permute(3, 0, 1, 2)
            summed += _window_to_input(part, ratio, s_lo, need_lo, need_hi)
            continue
        summed += _on_grid(_similarity(target, query, k).permute(3, 0, 1, 2), grid_shape)
    window = tuple(int(n) for n in hi - lo)
    total, count = torch.zeros(window), torch.zeros(window)
    for offset, point_map in zip(offsets, summed, strict=True):
        # window voxels g with g + offset on the map: [max(lo, -offset), min(hi, n - offset))
        g_lo = np.maximum(lo, -offset)
        g_hi = np.minimum(hi, np.asarray(grid_shape) - offset)
        if np.any(g_hi <= g_lo):
            continue
        here = tuple(slice(a, b) for a, b in zip(g_lo - lo, g_hi - lo, strict=True))
        there = tuple(slice(a, b) for a, b in zip(g_lo + offset - need_lo, g_hi + offset - need_lo, strict=True))
        total[here] += point_map[there]
        count[here] += 1
    total = total / count.clamp_min(1)
    _mask_padding(total, tuple(target.geometry.size[::-1]), grid_stride, lo)
    return total


def _on_grid(maps: torch.Tensor, grid_shape: tuple[int, int, int]) -> torch.Tensor:
    """Maps (n, d, h, w) of one scale interpolated onto the grid of a finer scale (trilinear,
    align_corners=False)."""
    if maps.shape[1] == grid_shape[0] and tuple(maps.shape[2:]) != tuple(grid_shape[1:]):
        # same z grid (scales 2-4 on scale 1's): trilinear is bilinear in-plane, at half the cost
        n, d, h, w = maps.shape
        return F.interpolate(maps.reshape(1, n * d, h, w), size=grid_shape[1:], mode="bilinear",
                             align_corners=False).reshape(n, *grid_shape)
    if tuple(maps.shape[1:]) != tuple(grid_shape):
        return F.interpolate(maps[None], size=grid_shape, mode="trilinear", align_corners=False)[0]
    return maps


def _window_match(target: VolumeMaps, queries: dict[int, torch.Tensor], settings: MatchSettings,
                  centre: np.ndarray, half: np.ndarray) -> Match:
    """The best point of the summed full-resolution maps in the box ``centre +- half`` (input voxels, z, y, x)."""
    shape = tuple(target.geometry.size[::-1])
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, shape)
    window = torch.zeros(tuple(hi - lo))
    for k in settings.scales:
        stride = np.asarray(CUMULATIVE_STRIDES[k - 1])
        map_shape = np.asarray(target.maps[k].shape[:3])
        # scale voxels whose interpolation reaches the window (one voxel of margin)
        s_lo = np.maximum(np.floor(input_to_scale(lo, stride)).astype(int) - 1, 0)
        s_hi = np.minimum(np.ceil(input_to_scale(hi - 1, stride)).astype(int) + 2, map_shape)
        part = _similarity(target, queries[k], k, tuple(zip(s_lo, s_hi, strict=True)))
        window += _window_to_input(part, stride, s_lo, lo, hi)
    return _result(window, target.geometry, settings, tuple(lo))


def refine_by_intensity(source: VolumeMaps, target: VolumeMaps, point_mm: np.ndarray, match: Match,
                        settings: MatchSettings) -> Match:
    """``match`` moved to where the source's intensity cube around ``point_mm`` correlates best
    with the target within ``refine_search_mm`` (unchanged where the cube leaves a volume or is
    flat)."""
    return _intensity_match(source, target, point_mm, match, settings)[0]


def cube_points(point_mm: np.ndarray, geometry: Geometry, half: np.ndarray) -> np.ndarray:
    """World points (N, 3) of a cube of ``2 * half + 1`` voxels (z, y, x) of ``geometry``'s grid,
    its axes and spacing, centred on ``point_mm``, in C order over (z, y, x)."""
    steps = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    index_offsets = np.stack([s.ravel() for s in steps[::-1]], axis=1)  # x, y, z
    direction = np.asarray(geometry.direction).reshape(3, 3)
    return np.asarray(point_mm, float).reshape(1, 3) + (index_offsets * np.asarray(geometry.spacing)) @ direction.T


def _intensity_match(source: VolumeMaps, target: VolumeMaps, point_mm: np.ndarray, match: Match,
                     settings: MatchSettings) -> tuple[Match, float]:
    """:func:`refine_by_intensity` and the correlation it reached (NaN where it did not run)."""
    from scipy.ndimage import map_coordinates

    if source.image is None or target.image is None:
        raise ValueError("refine_mm > 0 needs the volumes' voxels (VolumeMaps image=...)")
    geometry = target.geometry
    spacing = np.asarray(geometry.spacing)
    half = np.ceil(settings.refine_mm / spacing).astype(int)[::-1]  # z, y, x voxels
    search = np.ceil(settings.refine_search_mm / spacing).astype(int)[::-1]
    centre = np.rint(match.index_xyz[::-1]).astype(int)
    lo, hi = centre - half - search, centre + half + search + 1
    if np.any(lo < 0) or np.any(hi > np.asarray(target.image.shape)):
        return match, float("nan")
    # the template on the target's axes, sampled from the source around the point (trilinear)
    world = cube_points(point_mm, geometry, half)
    if not source.geometry.contains(world).all():
        return match, float("nan")
    source_zyx = source.geometry.world_to_index(world)[:, ::-1]
    template = map_coordinates(source.image.numpy(), source_zyx.T, order=1, mode="nearest")
    template = torch.from_numpy(template.astype(np.float32).reshape(tuple(2 * half + 1)))
    zero_mean = template - template.mean()
    if float(zero_mean.norm()) < 1e-3 * np.sqrt(zero_mean.numel()):
        return match, float("nan")
    region = target.image[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    box = tuple(int(n) for n in template.shape)
    products = F.conv3d(region[None, None], zero_mean[None, None])[0, 0]
    mean = F.avg_pool3d(region[None, None], box, stride=1)[0, 0]
    variance = (F.avg_pool3d((region * region)[None, None], box, stride=1)[0, 0] - mean**2).clamp_min(1e-8)
    ncc = products / (torch.sqrt(variance * template.numel()) * zero_mean.norm())
    peak = tuple(int(v) for v in np.unravel_index(int(torch.argmax(ncc)), ncc.shape))
    index_zyx = centre - search + _subvoxel(ncc, peak)
    return Match(geometry.index_to_world(index_zyx[::-1])[0], match.confidence, index_zyx[::-1]), float(ncc[peak])


def _resample_map(similarity: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """A scale's map -> a finer scale's grid over the same padded extent (align_corners=False)."""
    if tuple(similarity.shape) == tuple(shape):
        return similarity
    return F.interpolate(similarity[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]


def _window_to_input(part: torch.Tensor, stride: np.ndarray, s_lo: np.ndarray, lo: np.ndarray, hi: np.ndarray
                     ) -> torch.Tensor:
    """Trilinear values on input voxels [lo, hi) of a map block (d, h, w), or of several (P, d, h,
    w), that starts at scale voxel s_lo,
    with the same (align_corners=False) convention as :func:`_to_input_grid` (clamped at the map's
    border, which the block reaches only where the map does)."""
    axes, size = [], part.shape[-3:]
    for axis in range(3):
        coordinate = input_to_scale(np.arange(lo[axis], hi[axis]), stride[axis]) - s_lo[axis]
        coordinate = np.clip(coordinate, 0, size[axis] - 1)
        axes.append(torch.tensor(2.0 * coordinate / max(size[axis] - 1, 1) - 1.0, dtype=torch.float32))
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([xx, yy, zz], dim=-1)[None]
    channels = part[None] if part.dim() == 4 else part[None, None]
    values = F.grid_sample(channels, grid, mode="bilinear", align_corners=True)[0]
    return values if part.dim() == 4 else values[0]


def _peaks(volume: torch.Tensor, count: int, separation: np.ndarray, pool: int = 64) -> list[tuple[int, int, int]]:
    """Up to ``count`` maxima, best first, each farther than ``separation`` voxels (per axis) from
    the better ones (greedy suppression among the ``pool`` highest voxels)."""
    values, order = torch.topk(volume.flatten(), k=min(pool, volume.numel()))
    chosen: list[np.ndarray] = []
    for value, flat in zip(values.tolist(), order.tolist(), strict=True):
        if not np.isfinite(value):
            break
        voxel = np.asarray(np.unravel_index(flat, volume.shape))
        if all(np.any(np.abs(voxel - other) > separation) for other in chosen):
            chosen.append(voxel)
            if len(chosen) == count:
                break
    return [tuple(int(v) for v in voxel) for voxel in chosen]


def _result(total: torch.Tensor, geometry: Geometry, settings: MatchSettings, offset) -> Match:
    flat = int(torch.argmax(total))
    peak = tuple(int(v) for v in np.unravel_index(flat, total.shape))
    index_zyx = _subvoxel(total, peak) if settings.subvoxel else np.asarray(peak, float)
    index_xyz = (index_zyx + np.asarray(offset))[::-1]
    confidence = float(total[peak]) / len(settings.scales)
    return Match(geometry.index_to_world(index_xyz)[0], confidence, index_xyz)
