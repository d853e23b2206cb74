"""Synthetic longitudinal CT: subjects with a baseline and follow-ups, and exact ground truth.

Each subject's anatomy is drawn once on a canonical grid in its own anatomical frame
(:mod:`lesiontrack.data.phantom`). A scan samples that grid through its pose: world point ``p``
maps to anatomy ``q = q' + v(q')`` with ``q' = R^T (p - c - t) + c`` (rigid pose about the body
centre ``c``, smooth displacement field ``v``; the baseline has ``R = I`` and ``v = 0``). Ground
truth points are mapped back by inverting this chain, so landmarks and lesion centres are exact
in every scan's world millimetres. Lesions and bowel gas are drawn per timepoint; contrast
phase, noise and blur are drawn per scan.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from scipy import ndimage

from lesiontrack import tables
from lesiontrack.config import settings_from
from lesiontrack.data import dls
from lesiontrack.data import phantom as ph
from lesiontrack.io import Geometry, named_path, sha256, write_image, write_table
from lesiontrack.vocabulary import LANDMARKS, LUNG_LABELS, TOTALSEG_V2

DATASET = "synthetic"
LESION_TYPES = ("lung", "liver", "kidney", "node")
# Largest radius (mm) a lesion of each type can take in its organ.
_RADIUS_CAP = {"lung": 15.0, "liver": 28.0, "kidney": 14.0, "node": 15.0}
# (HU without contrast, extra HU at full enhancement) ranges per lesion type.
_LESION_HU = {"lung": ((15.0, 50.0), 20.0), "liver": ((10.0, 35.0), 8.0),
              "kidney": ((0.0, 40.0), 15.0), "node": ((30.0, 50.0), 15.0)}
_CANONICAL_BOUNDS = (np.array([-240.0, -190.0, -440.0]), np.array([240.0, 190.0, 360.0]))
# DLS sub-volumes, measured from the DLS test split (960 entries of dls/test.json): z extent 61 / 84 /
# 155 mm at the 5th / 50th / 95th percentile; 5 mm slices in 70 % of them, 1 mm in the rest; the
# lesion's slice at 0.25 / 0.50 / 0.74 of the sub-volume (5th / 50th / 95th percentile).
DLS_EXTENT_MM = (61.0, 84.0, 155.0)
DLS_SLICE_SPACINGS_MM = (5.0, 1.0)
DLS_THICK_FRACTION = 0.7
DLS_KEY_POSITION = (0.5, 0.13)  # mean, sd of the lesion's relative slice position


@dataclass
class SyntheticConfig:
    """The ``synthetic`` config section (defaults and ranges live in the config schema)."""

    seed: int = 0
    n_train_subjects: int = 8
    n_test_subjects: int = 4
    followups: tuple[int, int] = (1, 2)
    inplane_spacing_mm: tuple[float, float] = (1.6, 2.3)
    slice_spacing_mm: tuple[float, float] = (2.5, 4.0)
    fov_xy_mm: tuple[float, float] = (380.0, 460.0)
    fov_z_mm: tuple[float, float] = (380.0, 460.0)
    pelvis_fraction: float = 0.25
    fov_min_difference_mm: float = 20.0
    translation_mm: tuple[float, float] = (10.0, 50.0)
    rotation_deg: float = 8.0
    deformation_peak_mm: tuple[float, float] = (5.0, 20.0)
    lesions_per_subject: tuple[int, int] = (4, 8)
    new_lesions_per_followup: tuple[int, int] = (0, 2)
    disappear_probability: float = 0.1
    noise_hu: tuple[float, float] = (8.0, 20.0)
    canonical_spacing_mm: float = 1.5
    region: str = "chest-abdomen"  # or chest (chest-only fields of view, as in lung screening)
    lesion_types: tuple[str, ...] = LESION_TYPES
    lesion_radii: str = "dls"  # radius distribution: dls or nlst
    coverage: str = "full"  # full, partial (follow-ups cover 40-60 % of the baseline) or slab
    export: str = "volumes"  # or dls-subvolumes (one DeepLesion-style slab per lesion and scan)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SyntheticConfig:
        """The config's ``synthetic`` section."""
        return settings_from(values, cls, "synthetic")


@dataclass
class Deformation:
    """Smooth displacement field: a sum of Gaussian bumps (anatomical frame, mm)."""

    centers: np.ndarray  # (K, 3)
    vectors: np.ndarray  # (K, 3)
    sigmas: np.ndarray  # (K,)

    @classmethod
    def none(cls) -> Deformation:
        return cls(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        out = np.zeros_like(points)
        for c, v, s in zip(self.centers, self.vectors, self.sigmas, strict=True):
            d2 = np.sum((points - c) ** 2, axis=1)
            out += np.exp(-d2 / (2.0 * s * s))[:, None] * v
        return out


@dataclass
class Scan:
    """One synthetic scan: grid, pose relative to the subject's anatomy, acquisition."""

    image_id: str
    subject_id: str
    split: str
    timepoint: int
    protocol: str
    geometry: Geometry
    rotation: np.ndarray
    translation: np.ndarray
    center: np.ndarray
    deformation: Deformation
    contrast: float
    hu_offset: float
    noise_hu: float
    blur_mm: float
    fov_anatomy_z: tuple[float, float]

    def to_anatomy(self, points_mm: np.ndarray) -> np.ndarray:
        """World mm of this scan (N, 3) -> the subject's anatomical frame."""
        moved = (np.atleast_2d(points_mm) - self.center - self.translation) @ self.rotation + self.center
        return moved + self.deformation(moved)

    def to_world(self, anatomy_mm: np.ndarray, tol: float = 1e-5) -> np.ndarray:
        """Anatomical frame (N, 3) -> world mm of this scan (inverts :meth:`to_anatomy`)."""
        target = np.atleast_2d(np.asarray(anatomy_mm, float))
        moved = target.copy()
        for _ in range(200):  # fixed point of q' = q - v(q'); v is a contraction
            update = target - self.deformation(moved)
            if np.max(np.abs(update - moved), initial=0.0) < tol:
                moved = update
                break
            moved = update
        return (moved - self.center) @ self.rotation.T + self.center + self.translation


@dataclass
class Lesion:
    lesion_id: str
    kind: str
    center: np.ndarray  # anatomical frame
    axes: np.ndarray  # semi-axes at radius 1 (the largest is 1)
    rotation: np.ndarray
    lobulation: np.ndarray  # (3, 4) rows: direction xyz + amplitude
    radii: list[float]  # long semi-axis (mm) per timepoint; 0 = absent
    hu: float
    enhancement: float


@dataclass
class Subject:
    subject_id: str
    split: str
    seed: int
    anatomy: ph.Anatomy
    scans: list[Scan] = field(default_factory=list)


def _pick(rng: np.random.Generator, low_high) -> float:
    low, high = low_high
    return float(rng.uniform(low, high))


def subject_ids(cfg: SyntheticConfig) -> list[tuple[str, str]]:
    """(subject_id, split) for every subject, train first."""
    ids = [(f"train{i:03d}", "train") for i in range(cfg.n_train_subjects)]
    return ids + [(f"test{i:03d}", "test") for i in range(cfg.n_test_subjects)]


def plan_subject(cfg: SyntheticConfig, index: int) -> Subject:
    """Draw a subject's anatomy and its scans' geometry, pose and acquisition (no voxels)."""
    subject_id, split = subject_ids(cfg)[index]
    rng = np.random.default_rng([cfg.seed, index])
    anatomy = ph.Anatomy.sample(rng)
    subject = Subject(subject_id, split, int(rng.integers(2**31)), anatomy)
    n_scans = 1 + int(rng.integers(cfg.followups[0], cfg.followups[1] + 1))
    levels = anatomy.vertebra_levels()
    apex_z = levels["T1"][0] + 22.0 * anatomy.height_scale
    protocol = "chest-abdomen-pelvis" if rng.uniform() < cfg.pelvis_fraction else "chest-abdomen"
    if cfg.region == "chest":
        protocol = "chest"
    fovs = _fields_of_view(cfg, rng, anatomy, apex_z, protocol, n_scans)
    body_center = np.array([0.0, 0.0, apex_z - 200.0])
    table_offset = np.array([rng.uniform(-20, 20), rng.uniform(-30, 30), rng.uniform(-900, -300)])
    for tp, fov_z in enumerate(fovs):
        if tp == 0:
            rotation, translation, deformation = np.eye(3), table_offset, Deformation.none()
        else:
            signs = rng.choice([-1.0, 1.0], size=3)
            delta = signs * rng.uniform(*cfg.translation_mm, size=3)
            rotation = ph.rotation_matrix(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, size=3))
            translation = table_offset + delta
            if cfg.coverage == "slab":  # the slab in a frame of its own, hundreds of mm away
                translation = translation + np.array([0.0, 0.0, rng.choice([-1.0, 1.0]) * rng.uniform(200, 600)])
            deformation = _sample_deformation(rng, anatomy, apex_z, _pick(rng, cfg.deformation_peak_mm))
        length = fov_z[1] - fov_z[0]
        inplane = _pick(rng, cfg.inplane_spacing_mm)
        spacing = np.array([inplane, inplane, _pick(rng, cfg.slice_spacing_mm)])
        side = _pick(rng, cfg.fov_xy_mm)
        extent = np.array([side, side, length])
        size = np.maximum(np.round(extent / spacing).astype(int), 8)
        # Centre the field of view on the anatomy it is meant to show (rigid pose only).
        aim = np.array([rng.uniform(-15, 15), rng.uniform(-15, 15), 0.5 * (fov_z[0] + fov_z[1])])
        aim_world = (aim - body_center) @ rotation.T + body_center + translation
        origin = aim_world - 0.5 * (size - 1) * spacing
        scan = Scan(
            image_id=f"{subject_id}_t{tp}",
            subject_id=subject_id,
            split=split,
            timepoint=tp,
            protocol=protocol,
            geometry=Geometry(tuple(origin.round(3)), tuple(spacing.round(4)), tuple(int(n) for n in size)),
            rotation=rotation,
            translation=translation,
            center=body_center,
            deformation=deformation,
            contrast=float(rng.uniform(0.0, 1.0)),
            hu_offset=float(rng.uniform(-5.0, 5.0)),
            noise_hu=_pick(rng, cfg.noise_hu),
            blur_mm=float(rng.uniform(0.5, 0.9)),
            fov_anatomy_z=fov_z,
        )
        subject.scans.append(scan)
    return subject


MAX_FOV_DRAWS = 1000  # draws of a field of view before its subject's lengths are drawn again


def _fields_of_view(cfg: SyntheticConfig, rng: np.random.Generator, anatomy: ph.Anatomy, apex_z: float,
                    protocol: str, n_scans: int) -> list[tuple[float, float]]:
    """(bottom, top) anatomical z of each scan's field of view, baseline first.

    Full coverage: every scan of the protocol, lengths differing by >= fov_min_difference_mm.
    Partial: follow-ups from the baseline's bottom over 40-60 % of its length (abdomen only against
    chest-abdomen). Slab: follow-ups DLS-like slabs (:func:`dls_extent`) about one level of the baseline.
    """
    fovs: list[tuple[float, float]] = []
    misses = 0
    while len(fovs) < n_scans:  # fields of view differ in length by >= fov_min_difference_mm
        if misses == MAX_FOV_DRAWS:  # the lengths kept leave no room for another (a short range: chest)
            fovs, misses = [], 0
        top = apex_z + rng.uniform(5.0, 45.0)
        if protocol == "chest":  # apex to below the lung bases
            bottom = min(anatomy.dome_left_z, anatomy.dome_right_z) - rng.uniform(60.0, 90.0)
        elif protocol == "chest-abdomen":
            bottom = top - _pick(rng, cfg.fov_z_mm)
        else:  # down to below the pubic symphysis
            bottom = anatomy.pubic_symphysis_z() - rng.uniform(15.0, 60.0)
        if all(abs((top - bottom) - (t - b)) >= cfg.fov_min_difference_mm for b, t in fovs):
            fovs.append((bottom, top))
            misses = 0
        else:
            misses += 1
        if cfg.coverage != "full":
            break
    if cfg.coverage == "full":
        return fovs
    bottom0, top0 = fovs[0]
    length0 = top0 - bottom0
    level = bottom0 + rng.uniform(0.25, 0.75) * length0
    for _ in range(1, n_scans):
        if cfg.coverage == "partial":
            fovs.append((bottom0, bottom0 + rng.uniform(0.4, 0.6) * length0))
            continue
        extent = dls_extent(rng)
        centre = float(np.clip(level + rng.uniform(-10.0, 10.0), bottom0 + extent / 2, top0 - extent / 2))
        fovs.append((centre - extent / 2, centre + extent / 2))
    return fovs


def dls_extent(rng: np.random.Generator) -> float:
    """A sub-volume's z extent (mm) with the DLS 5th / 50th / 95th percentiles (a log-normal with
    its own spread on either side of the median)."""
    p5, p50, p95 = DLS_EXTENT_MM
    z = float(rng.standard_normal())
    sigma = np.log(p50 / p5) / 1.645 if z < 0 else np.log(p95 / p50) / 1.645
    return float(p50 * np.exp(sigma * z))


def _sample_deformation(rng, anatomy: ph.Anatomy, apex_z: float, peak_mm: float) -> Deformation:
    """Breathing-like bump at the diaphragm plus posture bumps, scaled to a peak of ``peak_mm``."""
    dome = 0.5 * (anatomy.dome_left_z + anatomy.dome_right_z)
    centers = [np.array([0.0, 0.0, dome])]
    vectors = [np.array([rng.normal(0, 0.2), rng.normal(0, 0.3), rng.choice([-1.0, 1.0])])]
    sigmas = [rng.uniform(80.0, 110.0)]
    for _ in range(3):
        centers.append(np.array([rng.uniform(-100, 100), rng.uniform(-70, 70), rng.uniform(apex_z - 450, apex_z)]))
        direction = rng.normal(size=3)
        vectors.append(direction / np.linalg.norm(direction) * rng.uniform(0.3, 1.0))
        sigmas.append(rng.uniform(60.0, 110.0))
    field_ = Deformation(np.array(centers), np.array(vectors), np.array(sigmas))
    grid = np.stack(np.meshgrid(np.linspace(-150, 150, 9), np.linspace(-110, 110, 7),
                                np.linspace(apex_z - 600, apex_z + 40, 17), indexing="ij"), -1).reshape(-1, 3)
    current = np.linalg.norm(field_(grid), axis=1).max()
    field_.vectors *= peak_mm / current
    return field_


def shards(cfg: SyntheticConfig, shard_size: int) -> list[list[int]]:
    """Subject indices per shard: consecutive subjects, at most ``shard_size`` scans per shard
    (a subject with more scans than that gets a shard of its own)."""
    out: list[list[int]] = []
    count = 0
    for index in range(len(subject_ids(cfg))):
        n = len(plan_subject(cfg, index).scans)
        if not out or count + n > shard_size:
            out.append([])
            count = 0
        out[-1].append(index)
        count += n
    return out


# --- rendering -----------------------------------------------------------------------------


@dataclass
class RenderedSubject:
    subject: Subject
    canvas: ph.Canvas
    texture: np.ndarray
    structures: ph.Structures
    landmarks: dict[str, np.ndarray]
    lesions: list[Lesion]


def _canvas_for(subject: Subject, spacing: float) -> ph.Canvas:
    """Canonical grid covering every scan's field of view (mapped to anatomy) with a margin."""
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for scan in subject.scans:
        size = np.asarray(scan.geometry.size) - 1
        corners = np.stack(np.meshgrid(*[np.linspace(0, n, 3) for n in size], indexing="ij"), -1).reshape(-1, 3)
        anat = scan.to_anatomy(scan.geometry.index_to_world(corners))
        lo, hi = np.minimum(lo, anat.min(0)), np.maximum(hi, anat.max(0))
    lo = np.maximum(lo - 25.0, _CANONICAL_BOUNDS[0])
    hi = np.minimum(hi + 25.0, _CANONICAL_BOUNDS[1])
    shape = tuple(int(n) for n in (np.ceil((hi - lo) / spacing).astype(int) + 1)[::-1])
    return ph.Canvas(lo, spacing, shape)


def _smooth_texture(shape, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance smooth noise (anatomical texture, the same at every timepoint)."""
    coarse_shape = tuple(n // 2 + 1 for n in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), 1.0)
    noise /= noise.std() + 1e-6
    fine = F.interpolate(torch.from_numpy(noise)[None, None], scale_factor=2.0, mode="trilinear",
                         align_corners=False)[0, 0]
    return fine[: shape[0], : shape[1], : shape[2]].contiguous().numpy()


def _sample_radius(rng: np.random.Generator, distribution: str = "dls") -> float:
    """Lesion long semi-axis like DLS: ~8 % under 5 mm, 37 % 5-10 mm, 55 % over 10 mm; like NLST
    (lung nodules): 68 % under 5 mm (2-5 mm), the rest 5 mm plus an exponential of mean 3 mm."""
    u = rng.uniform()
    if distribution == "nlst":
        return float(rng.uniform(2.0, 5.0)) if u < 0.68 else float(min(5.0 + rng.exponential(3.0), 15.0))
    if u < 0.08:
        return float(rng.uniform(2.5, 5.0))
    if u < 0.45:
        return float(rng.uniform(5.0, 10.0))
    return float(min(10.0 + rng.exponential(5.0), 28.0))


def _lesion_sites(rendered_canvas: ph.Canvas, structures: ph.Structures, kind: str) -> np.ndarray:
    """Flat canonical indices of voxels where a lesion of ``kind`` may be centred."""
    c = rendered_canvas
    if kind == "lung":
        mask = c.tissue == ph.LUNG
    elif kind == "liver":
        mask = c.label == TOTALSEG_V2["liver"]
    elif kind == "kidney":
        mask = np.isin(c.label, [TOTALSEG_V2["kidney_left"], TOTALSEG_V2["kidney_right"]])
    else:  # lymph-node-like: visceral fat near the aorta (mediastinal, para-aortic)
        near = np.zeros(c.shape_zyx, bool)
        path = structures.aorta_path
        dense = np.concatenate([np.linspace(a, b, 10) for a, b in itertools.pairwise(path)])
        for point in dense:
            found = c.box(point - 45.0, point + 45.0)
            if found is None:
                continue
            sl, x, y, z = found
            d2 = (x - point[0]) ** 2 + (y - point[1]) ** 2 + (z - point[2]) ** 2
            near[sl] |= (d2 >= 20.0**2) & (d2 <= 45.0**2)
        mask = near & (c.tissue == ph.VISCERAL_FAT)
    return np.flatnonzero(mask)


def _place_lesions(cfg: SyntheticConfig, subject: Subject, canvas: ph.Canvas, structures, rng) -> list[Lesion]:
    n_scans = len(subject.scans)
    z_lo = max(s.fov_anatomy_z[0] for s in subject.scans)
    z_hi = min(s.fov_anatomy_z[1] for s in subject.scans)
    margin = 10.0 if cfg.coverage == "full" else 3.0  # between the lesion's edge and the field's ends
    sites = {kind: _lesion_sites(canvas, structures, kind) if kind in cfg.lesion_types else np.zeros(0, int)
             for kind in LESION_TYPES}
    if cfg.coverage != "full":  # only sites inside every field of view
        for kind, flat in sites.items():
            z = canvas.origin[2] + canvas.spacing * np.unravel_index(flat, canvas.shape_zyx)[0]
            sites[kind] = flat[(z >= z_lo + margin) & (z <= z_hi - margin)]
    lesions: list[Lesion] = []
    births = [0] * int(rng.integers(cfg.lesions_per_subject[0], cfg.lesions_per_subject[1] + 1))
    for tp in range(1, n_scans):
        births += [tp] * int(rng.integers(cfg.new_lesions_per_followup[0], cfg.new_lesions_per_followup[1] + 1))
    for birth in births:
        radius = _sample_radius(rng, cfg.lesion_radii)
        kinds = [k for k in LESION_TYPES if _RADIUS_CAP[k] >= radius and sites[k].size]
        if not kinds:
            continue
        kind = str(rng.choice(kinds))
        center = None
        for _ in range(60):
            flat = int(rng.choice(sites[kind]))
            zyx = np.array(np.unravel_index(flat, canvas.shape_zyx))
            candidate = canvas.origin + canvas.spacing * zyx[::-1]
            if not (z_lo + radius + margin <= candidate[2] <= z_hi - radius - margin):
                continue
            if all(np.linalg.norm(candidate - other.center) > radius + max(other.radii) + 8 for other in lesions):
                center = candidate
                break
        if center is None:
            continue
        radii = [0.0] * n_scans
        radii[birth] = radius
        for tp in range(birth + 1, n_scans):
            previous = radii[tp - 1]
            if previous == 0.0:
                break
            if rng.uniform() < cfg.disappear_probability:
                break
            change = rng.choice(["grow", "shrink", "stable"])
            factor = {"grow": rng.uniform(1.15, 1.5), "shrink": rng.uniform(0.55, 0.85),
                      "stable": rng.uniform(0.93, 1.07)}[str(change)]
            radii[tp] = float(min(previous * factor, _RADIUS_CAP[kind] * 1.2))
        directions = rng.normal(size=(3, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lobulation = np.concatenate([directions, rng.uniform(0.0, 0.08, size=(3, 1))], axis=1)
        (hu_lo, hu_hi), enhancement = _LESION_HU[kind]
        lesions.append(Lesion(
            lesion_id=f"{subject.subject_id}_L{len(lesions):02d}", kind=kind, center=center,
            axes=np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)]),
            rotation=ph.rotation_matrix(rng.uniform(-180, 180, size=3)), lobulation=lobulation,
            radii=radii, hu=float(rng.uniform(hu_lo, hu_hi)), enhancement=enhancement))
    return lesions


def _lesion_inside(lesion: Lesion, radius: float):
    c, rot, axes = lesion.center, lesion.rotation, lesion.axes * radius

    def inside(x, y, z):
        d = (x - c[0], y - c[1], z - c[2])
        u = [rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2] for i in range(3)]
        r2 = (u[0] / axes[0]) ** 2 + (u[1] / axes[1]) ** 2 + (u[2] / axes[2]) ** 2
        norm = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + 1e-6
        bumps = 1.0
        for direction_amp in lesion.lobulation:
            cos = (d[0] * direction_amp[0] + d[1] * direction_amp[1] + d[2] * direction_amp[2]) / norm
            bumps = bumps + direction_amp[3] * np.cos(4.0 * np.arccos(np.clip(cos, -1, 1)))
        return r2 <= bumps**2

    return inside


def lesion_surface(lesion: Lesion, radius: float, n: int = 200) -> np.ndarray:
    """Points on the lesion's ellipsoid (anatomical frame) for bounding boxes in scan space."""
    golden = np.pi * (3.0 - np.sqrt(5.0))
    k = np.arange(n)
    zz = 1 - 2 * (k + 0.5) / n
    rr = np.sqrt(1 - zz**2)
    unit = np.stack([rr * np.cos(golden * k), rr * np.sin(golden * k), zz], 1)
    return lesion.center + (unit * lesion.axes * radius) @ lesion.rotation.T


def render_subject(cfg: SyntheticConfig, subject: Subject, markers: dict[str, np.ndarray] | None = None
                   ) -> RenderedSubject:
    """Draw the subject's anatomy, landmarks and lesions on its canonical grid.

    ``markers``: optional anatomical points (name -> xyz mm) painted as small bright spheres,
    for tests that follow a point through a scan's pose and deformation.
    """
    canvas = _canvas_for(subject, cfg.canonical_spacing_mm)
    structures = ph.draw_anatomy(subject.anatomy, canvas)
    for point in (markers or {}).values():
        canvas.ellipsoid(point, [2.6, 2.6, 2.6], ph.MARKER, None)
    rng = np.random.default_rng(subject.seed)
    texture = _smooth_texture(canvas.shape_zyx, rng)
    landmarks = dict(structures.points)
    L = TOTALSEG_V2
    for side in ("left", "right"):
        lung_mask = np.isin(canvas.label, [L[n] for n in LUNG_LABELS if n.endswith(side)])
        for name, top in ((f"lung_apex_{side}", True), (f"lung_base_{side}", False)):
            landmarks[name] = ph.extreme_point(lung_mask, canvas, 2, top)
    for organ, top_name, bottom_name in (("liver", "liver_dome", "liver_tip"), ("spleen", "spleen_top", "spleen_tip")):
        mask = canvas.label == L[organ]
        landmarks[top_name] = ph.extreme_point(mask, canvas, 2, True)
        landmarks[bottom_name] = ph.extreme_point(mask, canvas, 2, False)
    landmarks = {name: landmarks[name] for name in LANDMARKS if landmarks.get(name) is not None}
    lesions = _place_lesions(cfg, subject, canvas, structures, rng)
    return RenderedSubject(subject, canvas, texture, structures, landmarks, lesions)


def _timepoint_tissue(rendered: RenderedSubject, timepoint: int) -> np.ndarray:
    """Canonical tissue map at a timepoint: lesions of that size, bowel and stomach gas."""
    work = copy.copy(rendered.canvas)  # shares the label map, which no call below writes
    work.tissue = rendered.canvas.tissue.copy()
    rng = np.random.default_rng([rendered.subject.seed, 7, timepoint])
    for path in rendered.structures.bowel_paths:
        if rng.uniform() < 0.5:
            start = int(rng.integers(0, len(path) - 3))
            work.tube(path[start:start + 3], rng.uniform(3.0, 7.0), ph.BOWEL_GAS, within=[ph.BOWEL])
    gas_level = rendered.structures.stomach_center[2] + rng.uniform(5.0, 40.0)
    work.paint(rendered.structures.stomach_center - 60, rendered.structures.stomach_center + 60,
                          lambda x, y, z: z > gas_level, ph.BOWEL_GAS, within=[ph.STOMACH])
    soft = [t for t in range(ph.MARKER) if t not in (ph.CORTICAL_BONE, ph.CANCELLOUS_BONE, ph.AIRWAY, ph.AIR)]
    for k, lesion in enumerate(rendered.lesions):
        radius = lesion.radii[timepoint]
        if radius <= 0:
            continue
        reach = radius * 1.3
        work.paint(lesion.center - reach, lesion.center + reach, _lesion_inside(lesion, radius),
                              ph.FIRST_LESION_TISSUE + k, within=soft)
    return work.tissue


def hu_table(rendered: RenderedSubject, scan: Scan) -> tuple[np.ndarray, np.ndarray]:
    """Per-tissue mean HU and texture amplitude for this scan's contrast phase."""
    mean = np.full(ph.N_TISSUES, -1000.0, np.float32)
    amplitude = np.zeros(ph.N_TISSUES, np.float32)
    for tissue, (hu, enhance, amp) in ph.TISSUE_HU.items():
        mean[tissue] = hu + enhance * scan.contrast + (scan.hu_offset if tissue != ph.MARKER else 0.0)
        amplitude[tissue] = amp
    for k, lesion in enumerate(rendered.lesions):
        mean[ph.FIRST_LESION_TISSUE + k] = lesion.hu + lesion.enhancement * scan.contrast + scan.hu_offset
        amplitude[ph.FIRST_LESION_TISSUE + k] = 6.0
    return mean, amplitude


def _sampling_grid(scan: Scan, canvas: ph.Canvas, step=(2, 4, 4)) -> torch.Tensor:
    """Where every voxel of the scan lies on the canonical grid, as a ``grid_sample`` grid
    (1, nz, ny, nx, 3) of normalised (x, y, z) canonical coordinates.

    The pose is evaluated exactly on a lattice of every ``step`` voxels and interpolated
    trilinearly in between: exact for the rigid part, well under 0.2 mm for the smooth
    deformation (Gaussian bumps of sigma >= 60 mm), and several times faster.
    """
    nx, ny, nz = scan.geometry.size
    lattice = [np.linspace(0, n - 1, max(2, int(np.ceil((n - 1) / s)) + 1)) for n, s in
               zip((nz, ny, nx), step, strict=True)]
    zz, yy, xx = np.meshgrid(*lattice, indexing="ij")
    index_xyz = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
    anatomy = scan.to_anatomy(scan.geometry.index_to_world(index_xyz))
    shape_xyz = np.asarray(canvas.shape_zyx[::-1], float)
    normalised = ((anatomy - canvas.origin) / canvas.spacing) * (2.0 / (shape_xyz - 1.0)) - 1.0
    coarse = torch.from_numpy(np.ascontiguousarray(normalised.T.reshape(3, *zz.shape), np.float32))[None]
    fine = F.interpolate(coarse, size=(nz, ny, nx), mode="trilinear", align_corners=True)
    return fine.permute(0, 2, 3, 4, 1)


def _sample(canonical: np.ndarray, grid: torch.Tensor, nearest: bool) -> np.ndarray:
    """Sample a canonical array [z, y, x] on a scan's sampling grid (zero outside), float32."""
    volume = torch.from_numpy(np.asarray(canonical, np.float32))[None, None]
    return F.grid_sample(volume, grid, mode="nearest" if nearest else "bilinear", padding_mode="zeros",
                         align_corners=True)[0, 0].numpy()


def sample_nearest(canonical: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    """Nearest-neighbour sample of a canonical class map (labels, tissues) at scan voxels."""
    return _sample(canonical, grid, nearest=True).astype(canonical.dtype)


def scan_tissue(rendered: RenderedSubject, scan: Scan) -> np.ndarray:
    """Tissue classes (phantom.* ids) of every voxel of ``scan``, array [z, y, x]."""
    tissue = _timepoint_tissue(rendered, scan.timepoint)
    return sample_nearest(tissue, _sampling_grid(scan, rendered.canvas))


def render_scan(rendered: RenderedSubject, scan: Scan, tissue: np.ndarray | None = None
                ) -> tuple[sitk.Image, sitk.Image]:
    """Sample a scan (int16 HU image, uint8 TotalSegmentator v2 label map) from the canonical grid."""
    canvas = rendered.canvas
    if tissue is None:
        tissue = _timepoint_tissue(rendered, scan.timepoint)
    mean, amplitude = hu_table(rendered, scan)
    # sampled as HU + 1000, so that outside the canonical grid (zero padding) is air
    above_air = (mean + 1000.0)[tissue]
    above_air += amplitude[tissue] * rendered.texture
    geo = scan.geometry
    grid = _sampling_grid(scan, canvas)
    hu = _sample(above_air, grid, nearest=False)
    hu -= 1000.0
    label = sample_nearest(canvas.label, grid)
    del grid, above_air
    rng = np.random.default_rng([rendered.subject.seed, 11, scan.timepoint])
    spacing_zyx = np.asarray(geo.spacing)[::-1]
    psf = np.array([0.45 * geo.spacing[2], scan.blur_mm, scan.blur_mm]) / spacing_zyx
    hu = ndimage.gaussian_filter(hu, psf)
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), 0.6)
    hu += noise * (scan.noise_hu / (noise.std() + 1e-6))
    image = geo.stamp(sitk.GetImageFromArray(np.clip(np.rint(hu), -1024, 3071).astype(np.int16)))
    return image, geo.stamp(sitk.GetImageFromArray(label))


# --- ground truth tables -------------------------------------------------------------------


def landmark_table(rendered: RenderedSubject, scan: Scan) -> pd.DataFrame:
    """Ground-truth landmarks of a scan (world mm), those inside its field of view."""
    names = list(rendered.landmarks)
    world = scan.to_world(np.array([rendered.landmarks[n] for n in names]))
    keep = scan.geometry.contains(world, margin_mm=2.0)
    return pd.DataFrame({"name": np.array(names)[keep], "x": world[keep, 0], "y": world[keep, 1],
                         "z": world[keep, 2], "confidence": 1.0})


def lesion_rows(rendered: RenderedSubject, scan: Scan) -> list[dict[str, Any]]:
    """lesions.csv rows of a scan: lesions present, new, or gone since the previous timepoint."""
    rows = []
    tp = scan.timepoint
    for lesion in rendered.lesions:
        radius = lesion.radii[tp]
        previous = lesion.radii[tp - 1] if tp > 0 else 0.0
        if radius > 0:
            status = "new" if tp > 0 and previous == 0 else "present"
        elif previous > 0:
            status = "disappeared"
        else:
            continue
        center = scan.to_world(lesion.center)[0]
        if not scan.geometry.contains(center[None], margin_mm=min(max(radius, previous), 10.0))[0]:
            continue
        surface = scan.to_world(lesion_surface(lesion, radius if radius > 0 else previous))
        rows.append({"lesion_id": lesion.lesion_id, "image_id": scan.image_id, "x": center[0], "y": center[1],
                     "z": center[2], "radius_mm": radius, "status": status, "lesion_type": lesion.kind,
                     "subject_id": scan.subject_id, "split": scan.split, "timepoint": tp,
                     **{f"box_min_{a}": v for a, v in zip("xyz", surface.min(0), strict=True)},
                     **{f"box_max_{a}": v for a, v in zip("xyz", surface.max(0), strict=True)}})
    return rows



def pair_rows(lesions: pd.DataFrame) -> pd.DataFrame:
    """Directed pairs: every timepoint pair of a subject, both directions, lesions present at both ends."""
    present = lesions[lesions["status"] != "disappeared"]
    rows = []
    for (subject_id, lesion_id), group in present.groupby(["subject_id", "lesion_id"], sort=True):
        group = group.sort_values("timepoint")
        records = group.to_dict("records")
        for i, early in enumerate(records):
            for late in records[i + 1:]:
                pair_id = tables.pair_id(lesion_id, early["timepoint"], late["timepoint"])
                for direction, src, dst in (("forward", early, late), ("backward", late, early)):
                    rows.append({
                        "pair_id": pair_id, "lesion_id": lesion_id, "direction": direction,
                        "source_image": src["image_id"], "target_image": dst["image_id"],
                        "source_x": src["x"], "source_y": src["y"], "source_z": src["z"],
                        "target_x": dst["x"], "target_y": dst["y"], "target_z": dst["z"],
                        "target_radius_mm": dst["radius_mm"],
                        **{f"target_box_{m}_{a}": dst[f"box_{m}_{a}"] for m in ("min", "max") for a in "xyz"},
                        "subject_id": subject_id, "split": src["split"], "lesion_type": src["lesion_type"],
                        "source_radius_mm": src["radius_mm"]})
    return pd.DataFrame(rows, columns=tables.GENERATED_PAIR_COLUMNS)


def image_row(scan: Scan, image_path: Path, label_path: Path) -> dict[str, Any]:
    geo = scan.geometry
    return {"image_id": scan.image_id, "subject_id": scan.subject_id, "split": scan.split,
            "timepoint": scan.timepoint, "protocol": scan.protocol, "path": str(image_path),
            "label_path": str(label_path), "sha256": sha256(image_path),
            **{f"spacing_{a}": s for a, s in zip("xyz", geo.spacing, strict=True)},
            **{f"size_{a}": n for a, n in zip("xyz", geo.size, strict=True)},
            "pose": json.dumps({"rotation": scan.rotation.round(6).tolist(),
                                "translation": np.round(scan.translation, 4).tolist(),
                                "contrast": round(scan.contrast, 4), "noise_hu": round(scan.noise_hu, 3)})}


def dls_series(scan: Scan, series_id: str, rng: np.random.Generator) -> Scan:
    """The scan as a DeepLesion series ``series_id``: slices of 5 mm (70 %) or 1 mm numbered from the
    top of its field of view, in the frame :func:`lesiontrack.data.dls.dls_geometry` gives every
    sub-volume of a series (columns and rows from 0, slice n at z = -(n - 1) * sz)."""
    geo = scan.geometry
    if geo.direction != Geometry.direction:  # the generator's scans are axis-aligned
        raise ValueError(f"{scan.image_id}: dls_series needs an identity direction, not {geo.direction}")
    thick = rng.uniform() < DLS_THICK_FRACTION
    sz = DLS_SLICE_SPACINGS_MM[0] if thick else DLS_SLICE_SPACINGS_MM[1]
    length = (geo.size[2] - 1) * geo.spacing[2]
    n_slices = int(np.floor(length / sz)) + 1
    top = geo.origin[2] + length
    shift = np.array([geo.origin[0], geo.origin[1], top])  # scan world -> series world
    name = dls.VolumeName(series_id, 1, n_slices)
    geometry = dls.dls_geometry(name, (geo.spacing[0], geo.spacing[1], sz), (geo.size[0], geo.size[1]))
    return dataclasses.replace(scan, image_id=name.image_id, geometry=geometry,
                               translation=scan.translation - shift)


def dls_subvolume(series: Scan, row: dict[str, Any], rng: np.random.Generator) -> Scan:
    """A DLS-style sub-volume of ``series`` around one lesion row: z extent :func:`dls_extent`, the
    lesion's slice at a relative position drawn like DLS's, named ``PPPPPP_SS_SS_FFF-LLL``."""
    whole = dls.VolumeName.parse(series.image_id)
    sz = series.geometry.spacing[2]
    n_sub = min(max(2, round(dls_extent(rng) / sz)), whole.n_slices)  # extent = slices x sz, as measured
    extent = (n_sub - 1) * sz  # first to last slice centre
    keep = min(max(row["radius_mm"], 1.0), 10.0) + sz  # lesion centre this far inside the slab's ends
    low, high = max(0.2, keep / extent), min(0.8, 1.0 - keep / extent)
    position = float(np.clip(rng.normal(*DLS_KEY_POSITION), low, high)) if low <= high else 0.5
    lesion_slice = 1.0 - row["z"] / sz  # 1-based continuous slice number in the series
    first = int(np.clip(round(lesion_slice - position * (n_sub - 1)), 1, whole.n_slices - n_sub + 1))
    name = dls.VolumeName(whole.series_id, first, first + n_sub - 1)
    geo = series.geometry
    geometry = dls.dls_geometry(name, geo.spacing, (geo.size[0], geo.size[1]))
    return dataclasses.replace(series, image_id=name.image_id, geometry=geometry)


def exported_scans(cfg: SyntheticConfig, rendered: RenderedSubject, scan: Scan, index: int
                   ) -> list[tuple[Scan, set[str] | None]]:
    """The volumes a scan is written as, each with the lesions it holds the truth of (None: all).

    ``export: volumes``: the scan itself. ``export: dls-subvolumes``: the scan as DeepLesion series
    ``PPPPPP_SS_01`` (patient = subject index + 1, study = timepoint + 1) cut into one sub-volume per
    lesion it shows, as DLS pairs lesions; sub-volumes that come out the same are written once."""
    if cfg.export == "volumes":
        return [(scan, None)]
    rng = np.random.default_rng([rendered.subject.seed, 13, scan.timepoint])
    series = dls_series(scan, f"{index + 1:06d}_{scan.timepoint + 1:02d}_01", rng)
    volumes: dict[str, tuple[Scan, set[str]]] = {}
    for row in lesion_rows(rendered, series):
        sub = dls_subvolume(series, row, rng)
        volumes.setdefault(sub.image_id, (sub, set()))[1].add(row["lesion_id"])
    return list(volumes.values())


def generate_shard(cfg: SyntheticConfig, subject_indices: list[int], out_dir: str | Path,
                   images_table: str | Path, lesions_table: str | Path, pairs_table: str | Path,
                   progress: bool = True) -> pd.DataFrame:
    """Render the given subjects into ``out_dir`` (images/, labels/, truth/) and write shard tables."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    image_rows, lesion_records = [], []
    for index in tqdm(subject_indices, desc="subjects", disable=not progress):
        subject = plan_subject(cfg, index)
        rendered = render_subject(cfg, subject)
        for planned in subject.scans:
            tissue = _timepoint_tissue(rendered, planned.timepoint)
            for scan, owners in exported_scans(cfg, rendered, planned, index):
                image, label = render_scan(rendered, scan, tissue)
                image_path = write_image(image, named_path(out_dir / "images", scan.image_id, suffix=".nii.gz"))
                label_path = write_image(label, named_path(out_dir / "labels", scan.image_id, suffix=".nii.gz"))
                write_table(landmark_table(rendered, scan), named_path(out_dir / "truth", scan.image_id, suffix=".csv"))
                image_rows.append(image_row(scan, image_path, label_path))
                rows = lesion_rows(rendered, scan)
                lesion_records.extend(r for r in rows if owners is None or r["lesion_id"] in owners)
    lesions = pd.DataFrame(lesion_records, columns=tables.SYNTHETIC_LESION_COLUMNS)
    write_table(lesions, lesions_table)
    write_table(pair_rows(lesions), pairs_table)
    images = pd.DataFrame(image_rows)
    write_table(images, images_table)
    return images


def merge_tables(parts: list[str | Path], out: str | Path) -> pd.DataFrame:
    """Concatenate shard tables (in shard order) into one table."""
    frames = [pd.read_csv(p) for p in parts]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    write_table(table, out)
    return table

