"""The ``hybrid`` tracker: registration disposes, the embeddings propose where it is in doubt.

Per (source, target) image pair:

1. **Registration.** ``deformable`` (``track.registration.deformable``) from its own start
   (centred, then searched along z where one field of view is much shorter); where the B-spline
   cannot run (a slab too thin for it) its affine stage; a registration that fails (ITK raises)
   is skipped, never stopping a run.
2. **The images check it.** Each lesion's registered point is scored by the normalised
   cross-correlation of a cube of half-width ``local_mm`` around the source point with the target,
   at the best offset within ``local_search_mm`` (intensities in ``window_hu``). Where the full
   registration ran and the median over the pair's lesions reaches ``trust_correlation``, its
   points stand and nothing else is computed: no embedding, no matching. Outside slab pairs (5.)
   the same median over a wider cube (half-width ``trust_mm``) also trusts it, where the median
   over the small cubes reaches ``wider_floor``: a lesion that grew or shrank fills the small cube
   and lowers its correlation, the anatomy around it does not; but a registration that slipped
   10-20 mm along z still correlates over the wider cube, and there the small cubes fall lower.
3. **Otherwise the embeddings are consulted.** ``multiscale`` matches the pair's lesions (with the
   configured context points, refinement and reranking). Registration is in doubt when it failed,
   or at least ``min_agreement`` of the lesions land farther than ``inlier_mm`` from their
   embedding match; then ``anchors`` points inside the source body (farthest-point sampling,
   ``anchor_margin_mm`` deep) are matched by the embeddings (coarse to fine) and, with the lesions'
   matches, fitted robustly (RANSAC over similarity transforms, least squares on the inliers): a
   global initial transform that needs no overlap of the fields of view, nor frames that agree.
   Registration runs again from it, on the part of the source that it maps into the target.
4. **Per lesion**, the candidates (each registration's point, then the embedding candidates) are
   scored by the same correlation; outside slab pairs over the part of the cube that lies inside
   both volumes, at the offsets where at least ``choice_overlap`` of it does (masked NCC): near the
   end of a partial follow-up the whole cube and its search leave the volume, and the right
   candidate could not be scored. The first registration's point stands unless the anchored
   registration's correlates better by more than ``switch_margin``; where the embeddings' best
   match lies farther than ``inlier_mm`` from the point so chosen, their best-correlating candidate
   replaces it if it correlates better by more than ``embedding_margin``; outside slab pairs also
   where it lies farther than ``elsewhere_mm`` (twice ``local_search_mm``: beyond both searches, a
   different place), if it correlates better and reaches ``trust_correlation``. The other candidates are
   ranked after it (the presence-aware choice may move to one); the embedding candidates stand
   alone only where no registration ran.
5. **Through-plane, in a slab pair** (one volume spans at most ``axis_slab_mm`` along world z),
   the chosen point moves along world z (within ``axis_search_mm``) to where the correlation is
   best, where that beats the best within ``local_search_mm`` by more than ``axis_gain``: a slab
   registered a vertebral level off, or thick slices that blur the levels.

The confidence is the correlation at the chosen point. The settings were chosen on the synthetic
training subjects (docs/experiments.md).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torch.nn.functional as F  # noqa: N812
from tqdm import tqdm

from lesiontrack.config import settings_from
from lesiontrack.io import Geometry, LoadCache
from lesiontrack.tables import CANDIDATE_COLUMNS, PRED_POINT, SOURCE_POINT
from lesiontrack.track.embedding import EmbeddingTracker, match_settings, windowed_voxels
from lesiontrack.track.match import Match, MatchSettings, _intensity_match, cube_points, match_candidates
from lesiontrack.track.registration import (
    METHODS as REGISTRATIONS,
)
from lesiontrack.track.registration import (
    RegistrationSettings,
    map_points,
    pair_registration,
    register_safely,
    registration_settings,
)
from lesiontrack.track.tracker import Context, Needs, check_inside


@dataclass(frozen=True)
class HybridSettings:
    anchors: int = 48  # source points matched by the embeddings for the global fit
    anchor_margin_mm: float = 16.0  # anchors at least this far inside the source volume
    body_hu: float = -500.0  # anchors lie in voxels above this
    inlier_mm: float = 15.0  # an anchor agrees with a transform within this distance
    ransac_iterations: int = 500
    min_scale: float = 0.8  # the robust fit's similarity transforms scale by at most these
    max_scale: float = 1.25
    min_agreement: float = 0.5  # registration in doubt when this share of a pair's lesions disagree with the embeddings
    crop_margin_mm: float = 30.0  # the second registration's source crop around the target's field of view
    local_mm: float = 12.0  # half-width of the cube that compares candidates (NCC)
    local_search_mm: float = 4.0  # the best offset within this distance of a candidate counts
    switch_margin: float = 0.1  # the anchored registration's point must correlate this much better than the first
    embedding_margin: float = 0.0  # an embedding candidate farther than elsewhere_mm must correlate this much better
    elsewhere_mm: float = 8.0  # ... where the embeddings' best lies farther than this from the registration's point;
    # nearer than inlier_mm it must reach trust_correlation too (outside slab pairs; in slab pairs from inlier_mm on)
    trust_correlation: float = 0.7  # registration stands unchecked by the embeddings from this median NCC on
    trust_mm: float = 20.0  # ... or from this median over cubes of this half-width, outside slab pairs (0: never)
    wider_floor: float = 0.5  # ... asked only where the median over the small cubes reaches this (-1: always)
    axis_search_mm: float = 10.0  # in a slab pair the chosen point may move this far along world z (0: never) ...
    axis_gain: float = 0.02  # ... where the correlation there beats the best within local_search_mm by this
    axis_slab_mm: float = 160.0  # a pair is a slab pair where one of its volumes spans at most this along world z
    window_hu: tuple[float, float] = (-1000.0, 400.0)  # intensity window of the correlations
    choice_overlap: float = 0.5  # outside slab pairs, the choice scores the part of the cube inside both volumes
    # where that is at least this share of it (0: the whole cube and its search, as the trust check)
    registration: str = "deformable"  # affine | deformable

    def __post_init__(self) -> None:
        """Each value in its range; a bad one is named with its value (config.settings_from adds the section)."""
        def bad(key: str, rule: str) -> ValueError:
            value = getattr(self, key)
            return ValueError(f"{key} = {list(value) if isinstance(value, tuple) else value!r}: {rule}")

        for key, least in (("anchors", 0), ("ransac_iterations", 1)):
            value = getattr(self, key)
            if not (np.isfinite(value) and value == int(value) and value >= least):
                raise bad(key, f"must be a whole number >= {least}")
            object.__setattr__(self, key, int(value))  # 48.0 in a config counts as 48
        for key in ("anchor_margin_mm", "crop_margin_mm", "local_search_mm", "trust_mm", "axis_search_mm",
                    "axis_slab_mm", "switch_margin", "embedding_margin", "axis_gain", "elsewhere_mm"):
            if not getattr(self, key) >= 0:
                raise bad(key, "must be >= 0")
        for key in ("inlier_mm", "local_mm"):
            if not getattr(self, key) > 0:
                raise bad(key, "must be > 0")
        for key in ("min_agreement", "choice_overlap"):
            if not 0 <= getattr(self, key) <= 1:
                raise bad(key, "must lie in [0, 1] (a share)")
        for key in ("trust_correlation", "wider_floor"):
            if not -1 <= getattr(self, key) <= 1:
                raise bad(key, "must lie in [-1, 1] (a correlation)")
        if not 0 < self.min_scale <= 1:
            raise bad("min_scale", "must lie in (0, 1]")
        if not self.max_scale >= 1:
            raise bad("max_scale", "must be >= 1")
        if len(self.window_hu) != 2 or not self.window_hu[0] < self.window_hu[1]:
            raise bad("window_hu", "must be [low, high] with low < high")
        if self.registration not in REGISTRATIONS:
            raise bad("registration", f"not one of {list(REGISTRATIONS)}")


def hybrid_settings(track: dict[str, Any] | None) -> HybridSettings:
    return settings_from((track or {}).get("hybrid"), HybridSettings, "track.hybrid")


# --------------------------------------------------------------------------- anchors and the robust fit
def anchor_points(image: sitk.Image, settings: HybridSettings) -> np.ndarray:
    """``settings.anchors`` world points (N, 3) spread over the inside of the body of ``image``:
    farthest-point sampling (deterministic) of the body voxels at least ``anchor_margin_mm`` inside
    the body and the volume (where the embeddings see anatomy on every side), on a 4-voxel grid."""
    from scipy import ndimage

    array = sitk.GetArrayViewFromImage(image)
    geometry = Geometry.of(image)
    step = 4
    grid = np.asarray(array[::step, ::step, ::step]) > settings.body_hu
    depth_mm = ndimage.distance_transform_edt(np.pad(grid, 1), sampling=np.asarray(geometry.spacing)[::-1] * step)
    inside = depth_mm[1:-1, 1:-1, 1:-1]
    voxels = np.argwhere(inside >= min(settings.anchor_margin_mm, float(inside.max()) * 0.5)) * step
    if len(voxels) == 0:  # no body: the volume's grid itself
        voxels = np.argwhere(np.ones(grid.shape, bool)) * step
    points = geometry.index_to_world(voxels[:, ::-1].astype(float))
    chosen = [int(np.argmin(np.linalg.norm(points - points.mean(0), axis=1)))]
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(min(settings.anchors, len(points)) - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return points[chosen]


def similarity_fit(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama): scale s, rotation R, translation t with target ~ s R source + t."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    u, d, vt = np.linalg.svd(b.T @ a / len(source))
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    variance = (a**2).sum() / len(source)
    scale = float(np.trace(np.diag(d) @ sign) / variance) if variance > 0 else 1.0
    return scale, rotation, mu_t - scale * rotation @ mu_s


def robust_fit(source: np.ndarray, target: np.ndarray, settings: HybridSettings, seed: int = 0
               ) -> tuple[sitk.AffineTransform, np.ndarray]:
    """RANSAC over similarity transforms of point correspondences; returns the transform refitted on
    its inliers (as a SimpleITK affine: source point -> target point) and the inlier mask."""
    rng = np.random.default_rng(seed)
    n = len(source)
    best = np.zeros(n, bool)
    if n >= 3:
        for _ in range(settings.ransac_iterations):
            sample = rng.choice(n, 3, replace=False)
            if np.linalg.matrix_rank(source[sample] - source[sample].mean(0), tol=1.0) < 2:
                continue
            scale, rotation, shift = similarity_fit(source[sample], target[sample])
            if not settings.min_scale <= scale <= settings.max_scale:
                continue
            inliers = np.linalg.norm(source @ (scale * rotation).T + shift - target, axis=1) < settings.inlier_mm
            if inliers.sum() > best.sum():
                best = inliers
    if best.sum() >= 3:
        for _ in range(2):  # refit on the inliers, then take the inliers of the refit
            scale, rotation, shift = similarity_fit(source[best], target[best])
            refit = np.linalg.norm(source @ (scale * rotation).T + shift - target, axis=1) < settings.inlier_mm
            if refit.sum() < 3:
                break
            best = refit
        matrix = scale * rotation
    else:  # too few agreeing anchors: the median shift
        matrix, shift = np.eye(3), np.median(target - source, axis=0)
        best = np.linalg.norm(source + shift - target, axis=1) < settings.inlier_mm
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(float(v) for v in matrix.ravel()))
    transform.SetTranslation(tuple(float(v) for v in shift))
    return transform, best


def crop_to_target(source: sitk.Image, target: sitk.Image, initial: sitk.AffineTransform, margin_mm: float
                   ) -> sitk.Image:
    """The part of ``source`` that ``initial`` (source -> target) maps into the target's field of view,
    plus a margin."""
    in_source = map_points(initial.GetInverse(), Geometry.of(target).corners())
    geometry = Geometry.of(source)
    index = geometry.world_to_index(in_source)
    grow = margin_mm / np.asarray(geometry.spacing)
    low = np.clip(np.floor(index.min(0) - grow), 0, np.asarray(geometry.size) - 1).astype(int)
    high = np.clip(np.ceil(index.max(0) + grow) + 1, 1, np.asarray(geometry.size)).astype(int)
    if np.any(high - low < 8):
        return source
    return sitk.RegionOfInterest(source, [int(v) for v in high - low], [int(v) for v in low])


def anchored_transform(source: sitk.Image, target: sitk.Image, correspondences: tuple[np.ndarray, np.ndarray],
                       settings: HybridSettings, registration) -> sitk.Transform:
    """Registration started from the robust fit of embedding correspondences (source points, their
    target matches), on the part of the source that the fit maps into the target; the fit itself
    where registration cannot run."""
    initial, _ = robust_fit(*correspondences, settings)
    cropped = crop_to_target(source, target, initial, settings.crop_margin_mm)
    registered = register_safely(cropped, target, settings.registration, registration, initial=initial)[0]
    return initial if registered is None else registered


def needs_anchoring(standard: sitk.Transform | None, points: np.ndarray, proposals: np.ndarray,
                    settings: HybridSettings) -> bool:
    """Whether the standard registration is in doubt: it failed, or it maps at least
    ``min_agreement`` of the pair's lesions farther than ``inlier_mm`` from their embedding match."""
    if standard is None:
        return True
    disagree = np.linalg.norm(map_points(standard, points) - proposals, axis=1) > settings.inlier_mm
    return bool(disagree.mean() >= settings.min_agreement)


# --------------------------------------------------------------------------- the choice per lesion
@dataclass(frozen=True)
class Voxels:
    """A volume's voxels (z, y, x) in the correlation window, and its geometry."""

    geometry: Geometry
    image: torch.Tensor

    @classmethod
    def of(cls, image: sitk.Image, window_hu: tuple[float, float]) -> Voxels:
        return cls(Geometry.of(image), torch.from_numpy(np.ascontiguousarray(windowed_voxels(image, window_hu),
                                                                              dtype=np.float32)))


def local_correlation(source: Voxels, target: Voxels, point_mm: np.ndarray, candidate_mm: np.ndarray,
                      settings: HybridSettings) -> float:
    """NCC of the source cube around ``point_mm`` with the target, best offset within
    ``local_search_mm`` of ``candidate_mm`` (-1 where the cube leaves a volume or is flat)."""
    index = target.geometry.world_to_index(np.asarray(candidate_mm, float).reshape(1, 3))[0]
    match = Match(np.asarray(candidate_mm, float), float("nan"), index)
    local = MatchSettings(refine_mm=settings.local_mm, refine_search_mm=settings.local_search_mm)
    correlation = _intensity_match(source, target, np.asarray(point_mm, float), match, local)[1]
    return float(correlation) if np.isfinite(correlation) else -1.0


def overlap_correlation(source: Voxels, target: Voxels, point_mm: np.ndarray, candidate_mm: np.ndarray,
                        settings: HybridSettings, overlap: float) -> float:
    """:func:`local_correlation` over the part of the cube that lies inside both volumes, where that
    is at least the share ``overlap`` of it (masked NCC at each offset); -1 where it is less or flat.
    A lesion near the end of a partial follow-up has a cube that leaves the volume."""
    geometry = target.geometry
    spacing = np.asarray(geometry.spacing)
    half = np.ceil(settings.local_mm / spacing).astype(int)[::-1]  # z, y, x voxels
    search = np.ceil(settings.local_search_mm / spacing).astype(int)[::-1]
    centre = np.rint(geometry.world_to_index(np.asarray(candidate_mm, float).reshape(1, 3))[0][::-1]).astype(int)
    world = cube_points(point_mm, geometry, half)
    inside = source.geometry.contains(world)
    if inside.mean() < overlap:
        return -1.0
    from scipy.ndimage import map_coordinates

    values = map_coordinates(source.image.numpy(), source.geometry.world_to_index(world)[:, ::-1].T, order=1,
                             mode="nearest")
    box = tuple(int(n) for n in 2 * half + 1)
    f_mask = torch.from_numpy(inside.reshape(box).astype(np.float32))
    f = torch.from_numpy(values.astype(np.float32).reshape(box)) * f_mask
    lo, hi = centre - half - search, centre + half + search + 1
    shape = np.asarray(target.image.shape)
    a, b = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    g = torch.zeros(tuple(int(n) for n in hi - lo))
    g_mask = torch.zeros_like(g)
    if np.all(b > a):
        cut = tuple(slice(int(x - l), int(y - l)) for x, y, l in zip(a, b, lo, strict=True))
        g[cut] = target.image[a[0]:b[0], a[1]:b[1], a[2]:b[2]]
        g_mask[cut] = 1.0

    def conv(volume: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return F.conv3d(volume[None, None], kernel[None, None])[0, 0]

    n = conv(g_mask, f_mask)
    sum_f, sum_ff = conv(g_mask, f), conv(g_mask, f * f)
    sum_g, sum_gg, sum_fg = conv(g, f_mask), conv(g * g, f_mask), conv(g, f)
    safe = n.clamp_min(1.0)
    covariance = sum_fg - sum_f * sum_g / safe
    var_f, var_g = sum_ff - sum_f**2 / safe, sum_gg - sum_g**2 / safe
    valid = (n >= overlap * f_mask.numel()) & (var_f > 1e-6 * safe) & (var_g > 1e-8 * safe)  # flat: no score
    if not bool(valid.any()):
        return -1.0
    ncc = torch.where(valid, covariance / torch.sqrt((var_f * var_g).clamp_min(1e-12)), torch.tensor(-1.0))
    return float(ncc.max())


def along_axis(source: Voxels, target: Voxels, point_mm: np.ndarray, candidate_mm: np.ndarray,
               settings: HybridSettings) -> np.ndarray:
    """``candidate_mm`` moved along world z, in steps of the target's finest spacing within
    ``axis_search_mm``, to where the source cube around ``point_mm`` correlates best, if that beats
    the best within ``local_search_mm`` by more than ``axis_gain``; else unchanged. Through-plane is
    where a slab's registration slips by a vertebral level and where thick slices blur the candidates
    apart."""
    if settings.axis_search_mm <= 0:
        return np.asarray(candidate_mm, float)
    step = float(min(target.geometry.spacing))
    offsets = np.arange(-np.floor(settings.axis_search_mm / step), np.floor(settings.axis_search_mm / step) + 1) * step
    exact = replace(settings, local_search_mm=0.0)
    candidate, z = np.asarray(candidate_mm, float), np.array([0.0, 0.0, 1.0])
    scores = np.array([local_correlation(source, target, point_mm, candidate + dz * z, exact) for dz in offsets])
    near = np.abs(offsets) <= settings.local_search_mm
    best = int(np.argmax(scores))
    if scores[best] > scores[near].max() + settings.axis_gain:
        return candidate + offsets[best] * z
    return candidate


def trusted(stage: str, correlations: list[float], settings: HybridSettings,
            wider: Callable[[], list[float]] | None = None) -> bool:
    """Whether the standard registration stands without the embeddings: its full stage ran and the
    median correlation of the pair's lesions at its points reaches ``trust_correlation``, or, where
    ``wider`` is given (the correlations over cubes of half-width ``trust_mm``, computed only if
    needed) and that median reaches ``wider_floor``, their median does."""
    if stage != settings.registration:
        return False
    if float(np.median(correlations)) >= settings.trust_correlation:
        return True
    return asks_wider(correlations, settings, wider) and float(np.median(wider())) >= settings.trust_correlation


def asks_wider(correlations: list[float], settings: HybridSettings, wider: Callable[[], list[float]] | None) -> bool:
    """Whether :func:`trusted` may ask the wider cubes: they are given and the small cubes' median
    reaches ``wider_floor``."""
    return wider is not None and float(np.median(correlations)) >= settings.wider_floor


@dataclass
class _Pair:
    """One image pair's lesions as the tracker sees them."""

    source_id: str
    target_id: str
    points: np.ndarray  # (N, 3) source points
    source: Voxels
    target: Voxels

    def is_slab(self, settings: HybridSettings) -> bool:
        """Whether one of the two volumes spans at most ``axis_slab_mm`` along world z."""
        return min(self.source.geometry.z_extent_mm(), self.target.geometry.z_extent_mm()) <= settings.axis_slab_mm

    def choice_score(self, point: np.ndarray, candidate: np.ndarray, settings: HybridSettings) -> float:
        """The score that ranks a lesion's candidates: :func:`overlap_correlation` at
        ``choice_overlap``, or, where that is 0, :func:`local_correlation`."""
        if settings.choice_overlap:
            return overlap_correlation(self.source, self.target, point, candidate, settings, settings.choice_overlap)
        return local_correlation(self.source, self.target, point, candidate, settings)

    def correlations(self, candidates: np.ndarray, settings: HybridSettings) -> list[float]:
        """:func:`local_correlation` of each lesion at its candidate (``candidates``: (N, 3))."""
        return [local_correlation(self.source, self.target, p, q, settings)
                for p, q in zip(self.points, candidates, strict=True)]


def _consult_embeddings(pair: _Pair, queries: pd.DataFrame, standard: sitk.Transform | None,
                        context: Context, settings: HybridSettings, registration: RegistrationSettings
                        ) -> tuple[list[np.ndarray], pd.DataFrame]:
    """The registrations' points (the standard one where it ran, the anchored one where the
    embeddings doubt it) and the lesions' embedding candidates (``row`` = position in ``queries``)."""
    proposals = EmbeddingTracker("multiscale").candidates(queries, replace(context, progress=False))
    best = proposals[proposals["rank"] == 0].sort_values("row")[PRED_POINT].to_numpy(float)
    transforms = [standard]
    if needs_anchoring(standard, pair.points, best, settings):
        src, dst = context.scans.maps(pair.source_id, False), context.scans.maps(pair.target_id, False)
        anchor_matching = replace(match_settings("multiscale", context.track), refine_mm=0.0, rerank_peaks=1,
                                  coarse_to_fine=True)
        source_image, target_image = context.scans.image(pair.source_id), context.scans.image(pair.target_id)
        anchors = anchor_points(source_image, settings)
        matched = np.array([match_candidates(src, dst, a, anchor_matching)[0].point_mm for a in anchors])
        correspondences = (np.vstack([anchors, pair.points]), np.vstack([matched, best]))
        transforms.append(anchored_transform(source_image, target_image, correspondences, settings, registration))
    return [map_points(t, pair.points) for t in transforms if t is not None], proposals


NEEDS = Needs(embeddings=True, volumes=True)


@dataclass(frozen=True)
class HybridTracker:
    name: str = "hybrid"
    needs: Needs = NEEDS
    decides_presence: bool = True

    def candidates(self, queries: pd.DataFrame, context: Context) -> pd.DataFrame:
        """Per query row: rank 0 the chosen point, then the other candidates (the registrations' points
        and, where the embeddings were consulted, their candidates) by correlation; ``seconds``: the
        row's share of its image pair's registrations and checks plus its own matching and choice."""
        if context.scans.image is None:
            raise ValueError(f"method {self.name}: needs the resampled volumes")
        settings = self.settings(context.track)
        registration = registration_settings(settings.registration, context.track)
        voxels = LoadCache(lambda image_id: Voxels.of(context.scans.image(image_id), settings.window_hu))
        file_rows = queries.index.to_numpy()
        queries = queries.reset_index(drop=True)
        records = []
        groups = queries.groupby(["source_image", "target_image"], sort=True).indices
        for (source_id, target_id), rows in tqdm(groups.items(), desc=self.name, disable=not context.progress):
            began = time.perf_counter()
            pair = _Pair(source_id, target_id, queries.loc[rows, SOURCE_POINT].to_numpy(float),
                         voxels(source_id), voxels(target_id))
            if context.scans.check_inside:
                check_inside(pair.points, pair.source.geometry, queries.loc[rows].set_axis(file_rows[rows]),
                             context.source, f"source {source_id}")
            called = time.perf_counter()
            standard, stage, registering = pair_registration(context.scans, source_id, target_id,
                                                             settings.registration, registration)
            began += time.perf_counter() - called - registering  # a stored registration costs its own seconds
            registered, proposals, correlations = [], None, None
            if standard is not None:
                registered = [map_points(standard, pair.points)]
                correlations = pair.correlations(registered[0], settings)
            slab = pair.is_slab(settings)
            wider = None if slab or settings.trust_mm <= 0 or standard is None else partial(
                pair.correlations, registered[0], replace(settings, local_mm=settings.trust_mm))
            if standard is None or not trusted(stage, correlations, settings, wider):
                if context.scans.maps is None:
                    raise ValueError(f"method {self.name}: needs embeddings")
                doubt = ("registration failed" if standard is None else f"registration stopped at its {stage} stage"
                         if stage != settings.registration else
                         f"median correlation {np.median(correlations):.2f} < {settings.trust_correlation}"
                         + (f", over {2 * settings.trust_mm:g} mm cubes too"
                            if asks_wider(correlations, settings, wider)
                            else "" if wider is None else f" and < {settings.wider_floor}"))
                tqdm.write(f"{self.name}: {source_id} -> {target_id}: {doubt}; the embeddings consulted",
                           file=sys.stderr)
                registered, proposals = _consult_embeddings(
                    pair, queries.loc[rows].set_axis(file_rows[rows]), standard, context, settings, registration)
            choosing = settings if slab else replace(settings, axis_search_mm=0.0)
            if slab or proposals is None:  # the whole cube where nothing is chosen or in slabs
                choosing = replace(choosing, choice_overlap=0.0)
            if slab:  # in slab pairs the embeddings replace registration only from inlier_mm on
                choosing = replace(choosing, elsewhere_mm=max(choosing.elsewhere_mm, choosing.inlier_mm))
            shared = (time.perf_counter() - began) / len(rows)
            by_row = {} if proposals is None else dict(tuple(proposals.groupby("row", sort=False)))  # split once
            for k, row in enumerate(rows):
                records += self._choose(pair, k, int(row), registered, correlations, by_row.get(k), shared,
                                        choosing)
        return pd.DataFrame(records, columns=CANDIDATE_COLUMNS).sort_values(["row", "rank"], ignore_index=True)

    def settings(self, track: dict[str, Any] | None) -> HybridSettings:
        return hybrid_settings(track)

    def registrations(self, track: dict[str, Any] | None) -> tuple[str, ...]:
        """The standard registration (``track.hybrid.registration``) is the workflow's stored one."""
        return (self.settings(track).registration,)

    @staticmethod
    def _choose(pair: _Pair, k: int, row: int, registered: list[np.ndarray], checked: list[float] | None,
                mine: pd.DataFrame | None, shared: float, settings: HybridSettings) -> list[tuple]:
        """The ranked candidates of the pair's ``k``-th lesion (query ``row``); ``checked``: the
        correlations of the standard registration's points (``registered[0]``) where it ran, already
        computed for the trust check; ``mine``: the lesion's embedding candidates, if consulted."""
        began = time.perf_counter()
        point = pair.points[k]
        options = [r[k] for r in registered] + ([] if mine is None else list(mine[PRED_POINT].to_numpy(float)))
        reuse = checked is not None and not settings.choice_overlap  # option 0 scored by the trust check already
        scores = np.array([checked[k] if j == 0 and reuse else pair.choice_score(point, c, settings)
                           for j, c in enumerate(options)])
        order = sorted(range(len(options)), key=lambda j: -scores[j])
        # registration disposes: the first registration's point (where none ran, the embedding's
        # best) unless the anchored one correlates better by switch_margin
        preferred = 1 if len(registered) == 2 and scores[1] > scores[0] + settings.switch_margin else 0
        if registered and mine is not None and len(mine):
            # the embeddings' best lies elsewhere: their best-correlating candidate may replace it;
            # nearer than inlier_mm only where the images would trust it (trust_correlation)
            first = len(registered)
            apart = float(np.linalg.norm(options[preferred] - options[first]))
            if apart > settings.elsewhere_mm:
                best = first + int(np.argmax(scores[first:]))
                needed = scores[preferred] + settings.embedding_margin
                if apart <= settings.inlier_mm:
                    needed = max(needed, settings.trust_correlation)
                if scores[best] > needed:
                    preferred = best
        order = [preferred, *[j for j in order if j != preferred]]
        moved = along_axis(pair.source, pair.target, point, options[preferred], settings)
        if not np.array_equal(moved, options[preferred]):  # the chosen point slipped through-plane
            options[preferred] = moved
            scores[preferred] = local_correlation(pair.source, pair.target, point, moved, settings)
        seconds = shared + (0.0 if mine is None else float(mine["seconds"].iloc[0])) + time.perf_counter() - began
        # each candidate's confidence is its own correlation: the presence-aware choice may pick any
        return [(row, rank, *options[j], float(scores[j]), seconds) for rank, j in enumerate(order)]


TRACKERS = (HybridTracker(),)
