"""Multi-scale similarity matching of a source point in a target volume (the paper, section 3.3).

For a source point (world mm) the embedding of each scale is interpolated at the point; its
cosine similarity with every voxel of the target's map of that scale gives one map per scale;
the maps are brought to the target's input grid (trilinear, the embedding convention of
:mod:`lesiontrack.track.embed`) and summed; the argmax, refined to sub-voxel precision by a
parabola through its neighbours along each axis, is the prediction; the summed similarity
divided by the number of scales (a mean cosine, at most 1) is its confidence.

``coarse_to_fine`` evaluates the coarse scales (those at or above ``coarse_levels``) on the whole
volume, keeps the ``n_peaks`` best local maxima of their sum, and evaluates the finer scales only in
a box of ``window_mm`` around each, so a weak coarse scale costs candidates rather than the answer.

Methods (Contracts): ``multiscale`` = all 5 scales; ``single-scale-fine`` = scale 1 only;
``two-scale`` = scales 1 and 5 (SAM's global + local embedding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from lesiontrack.io import Geometry
from lesiontrack.model import CUMULATIVE_STRIDES
from lesiontrack.track.embed import Embeddings

METHOD_SCALES = {"multiscale": (1, 2, 3, 4, 5), "single-scale-fine": (1,), "two-scale": (1, 5)}


@dataclass(frozen=True)
class MatchSettings:
    scales: tuple[int, ...] = (1, 2, 3, 4, 5)
    coarse_to_fine: bool = False
    subvoxel: bool = True
    coarse_levels: int = 3  # coarse-to-fine: scales >= this are evaluated everywhere
    n_peaks: int = 16
    window_mm: float = 32.0  # half-width of the box searched at the fine scales around each peak


@dataclass(frozen=True)
class Match:
    point_mm: np.ndarray  # (3,) world mm
    confidence: float  # mean cosine similarity over the scales at the match, in [-1, 1]
    index_xyz: np.ndarray  # continuous voxel index in the target's input grid


class VolumeMaps:
    """The embedding maps of one volume as float32 tensors, loaded once and reused."""

    def __init__(self, embeddings: Embeddings, scales=(1, 2, 3, 4, 5)) -> None:
        self.embeddings = embeddings
        self.geometry = embeddings.geometry
        # channels last (d, h, w, C): a block's similarities are one contiguous matrix product
        self.maps = {k: torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(embeddings.maps[k - 1],
                                                                                     dtype=np.float32), 0, -1)))
                     for k in scales}
        self.grids = {k: embeddings.grids[k - 1] for k in scales}

    def vector(self, point_mm: np.ndarray, scale: int) -> torch.Tensor:
        """The (re-normalised, trilinear) embedding at a world point at one scale."""
        index = self.grids[scale].world_to_index(point_mm)[0]  # (x, y, z) in the scale's grid
        embedding = self.maps[scale]  # (d, h, w, C)
        size = np.asarray(embedding.shape[:3][::-1], float)  # x, y, z
        index = np.clip(index, 0.0, size - 1.0)
        lo = np.floor(index).astype(int)
        hi = np.minimum(lo + 1, size.astype(int) - 1)
        frac = index - lo
        vector = torch.zeros(embedding.shape[3])
        for corner in range(8):  # trilinear: the 8 neighbouring voxels
            pick = [(corner >> axis) & 1 for axis in range(3)]
            weight = float(np.prod([f if p else 1.0 - f for f, p in zip(frac, pick, strict=True)]))
            x, y, z = (h if p else l for l, h, p in zip(lo, hi, pick, strict=True))
            vector += weight * embedding[z, y, x]
        return F.normalize(vector, dim=0)


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
            if curvature < 0:
                refined[axis] += float(np.clip(0.5 * (a - c) / curvature, -0.5, 0.5))
    return refined


def _similarity(target: VolumeMaps, query: torch.Tensor, scale: int, box=None) -> torch.Tensor:
    embedding = target.maps[scale]  # (d, h, w, C)
    if box is not None:
        (z0, z1), (y0, y1), (x0, x1) = box
        embedding = embedding[z0:z1, y0:y1, x0:x1]
    return (embedding.reshape(-1, embedding.shape[3]) @ query).view(embedding.shape[:3])


def _full_map(target: VolumeMaps, query: torch.Tensor, scale: int) -> torch.Tensor:
    """Cosine similarity of ``query`` with the target's map of one scale, on the target's input grid."""
    return _to_input_grid(_similarity(target, query, scale), CUMULATIVE_STRIDES[scale - 1],
                          tuple(target.geometry.size[::-1]))


def similarity_maps(source: VolumeMaps, target: VolumeMaps, point_mm: np.ndarray,
                    scales: tuple[int, ...] = (1, 2, 3, 4, 5)) -> dict[int, torch.Tensor]:
    """The per-scale cosine-similarity maps of one source point (world mm) over the whole target,
    each on the target's input grid (z, y, x): the terms that :func:`match_point` sums."""
    point_mm = np.asarray(point_mm, float).reshape(1, 3)
    return {k: _full_map(target, source.vector(point_mm, k), k) for k in scales}


def match_point(source: VolumeMaps, target: VolumeMaps, point_mm: np.ndarray,
                settings: MatchSettings = MatchSettings()) -> Match:
    """The target point of one source point (world mm)."""
    point_mm = np.asarray(point_mm, float).reshape(1, 3)
    shape = tuple(target.geometry.size[::-1])  # (z, y, x) of the input grid
    queries = {k: source.vector(point_mm, k) for k in settings.scales}
    coarse = [k for k in settings.scales if k >= settings.coarse_levels]
    if not settings.coarse_to_fine or not coarse or len(coarse) == len(settings.scales):
        total = torch.zeros(shape)
        for k in settings.scales:
            total += _full_map(target, queries[k], k)
        return _result(total, target.geometry, settings, (0, 0, 0))
    # coarse scales on the grid of the finest coarse scale, where peaks are cheap to find
    base = min(coarse)
    base_shape = tuple(target.maps[base].shape[:3])
    coarse_sum = torch.zeros(base_shape)
    for k in coarse:
        coarse_sum += _resample_map(_similarity(target, queries[k], k), base_shape)
    base_stride = np.asarray(CUMULATIVE_STRIDES[base - 1])
    valid = np.ceil(np.asarray(shape) / base_stride).astype(int)  # base voxels over real input voxels
    coarse_sum[valid[0]:, :, :] = float("-inf")
    coarse_sum[:, valid[1]:, :] = float("-inf")
    coarse_sum[:, :, valid[2]:] = float("-inf")
    spacing_zyx = np.asarray(target.geometry.spacing[::-1])
    half = np.ceil(settings.window_mm / spacing_zyx).astype(int)  # input voxels
    separation = np.maximum(np.round(half / base_stride).astype(int), 1)  # base voxels
    best: Match | None = None
    for peak in _peaks(coarse_sum, settings.n_peaks, separation):
        centre = np.clip(np.rint((np.asarray(peak) + 0.5) * base_stride - 0.5).astype(int), 0, np.asarray(shape) - 1)
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, shape)
        window = torch.zeros(tuple(hi - lo))
        for k in settings.scales:
            stride = np.asarray(CUMULATIVE_STRIDES[k - 1])
            map_shape = np.asarray(target.maps[k].shape[:3])
            # scale voxels whose interpolation reaches the window (one voxel of margin)
            s_lo = np.maximum(np.floor((lo + 0.5) / stride - 0.5).astype(int) - 1, 0)
            s_hi = np.minimum(np.ceil((hi - 0.5) / stride - 0.5).astype(int) + 2, map_shape)
            part = _similarity(target, queries[k], k, tuple(zip(s_lo, s_hi, strict=True)))
            window += _window_to_input(part, stride, s_lo, lo, hi)
        candidate = _result(window, target.geometry, settings, tuple(lo))
        if best is None or candidate.confidence > best.confidence:
            best = candidate
    return best


def _resample_map(similarity: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """A scale's map -> a finer scale's grid over the same padded extent (align_corners=False)."""
    if tuple(similarity.shape) == tuple(shape):
        return similarity
    return F.interpolate(similarity[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0]


def _window_to_input(part: torch.Tensor, stride: np.ndarray, s_lo: np.ndarray, lo: np.ndarray, hi: np.ndarray
                     ) -> torch.Tensor:
    """Trilinear values on input voxels [lo, hi) of a map block that starts at scale voxel s_lo,
    with the same (align_corners=False) convention as :func:`_to_input_grid` (clamped at the map's
    border, which the block reaches only where the map does)."""
    axes = []
    for axis in range(3):
        coordinate = (np.arange(lo[axis], hi[axis]) + 0.5) / stride[axis] - 0.5 - s_lo[axis]
        coordinate = np.clip(coordinate, 0, part.shape[axis] - 1)
        axes.append(torch.tensor(2.0 * coordinate / max(part.shape[axis] - 1, 1) - 1.0, dtype=torch.float32))
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([xx, yy, zz], dim=-1)[None]
    return F.grid_sample(part[None, None], grid, mode="bilinear", align_corners=True)[0, 0]


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
