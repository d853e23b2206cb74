"""Follow-ups of real scans with known motion (``lesiontrack simulate``): a tracker measured on
the user's own anatomy before it is trusted there.

Each scan is given lesions (smooth blobs of their own density, inserted at body voxels), and for
each condition a follow-up is made from the same anatomy: the lesions grown or shrunk, the body
moved (a rigid repositioning and a smooth displacement field), the acquisition changed (slice
thickness, noise, contrast, a cut field of view, a thin slab on either side, frames of reference
unrelated as DeepLesion's sub-volumes). Every follow-up voxel is sampled at its known point of
the baseline, so each lesion's point on the follow-up is known exactly: ``pairs.csv`` holds both
directions in world mm (``tables.GENERATED_PAIR_COLUMNS``).

What it cannot tell: the anatomy itself does not change (no breathing organs sliding, no bowel
filling, no surgery), the lesions are blobs, not tumours, and the motion is smooth. A tracker
that fails here will fail on real follow-ups; one that passes has passed the easier half.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from lesiontrack.data.custom import image_id_of
from lesiontrack.data.synthetic import Deformation
from lesiontrack.io import (
    Geometry,
    InputError,
    check_scan,
    named_path,
    read_image,
    staged_folder,
    write_image,
    write_table,
)
from lesiontrack.tables import GENERATED_PAIR_COLUMNS, SOURCE_POINT, TARGET_POINT, pair_id


@dataclass(frozen=True)
class Condition:
    """How one follow-up differs from its baseline. ``motion_mm``: the standard deviation of the
    smooth displacement field's peaks; ``rotation_deg``, ``shift_mm``: the rigid repositioning
    (per axis, uniform in +-); ``slice_mm``: the follow-up's slice spacing (None: the baseline's);
    ``noise_hu``; ``contrast_hu``: soft tissue brighter or darker by up to this; ``coverage``: the
    share of the baseline's z extent that the follow-up keeps (a cut field of view); ``slab_mm``
    and ``slab_side``: one side a thin slab of that extent (``source``: the baseline is cut);
    ``frames``: the follow-up's world frame moved by 100-250 mm (unrelated frames, as DeepLesion's
    sub-volumes); ``growth``: the lesions' radii scaled by a factor in this range."""

    name: str
    motion_mm: float = 4.0
    rotation_deg: float = 3.0
    shift_mm: float = 10.0
    slice_mm: float | None = None
    noise_hu: float = 0.0
    contrast_hu: float = 0.0
    coverage: float = 1.0
    slab_mm: tuple[float, float] | None = None
    slab_side: str = "target"
    frames: bool = False
    growth: tuple[float, float] = (0.8, 1.25)


CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition("smooth"),
    Condition("large-motion", motion_mm=12.0, rotation_deg=15.0, shift_mm=30.0),
    Condition("acquisition", slice_mm=5.0, noise_hu=25.0, contrast_hu=40.0),
    Condition("low-dose", noise_hu=60.0),
    Condition("partial", coverage=0.5, frames=True),
    Condition("slab-target", slab_mm=(50.0, 100.0), frames=True),
    Condition("slab-source", slab_mm=(50.0, 100.0), slab_side="source", frames=True),
)}

LESION_RADIUS_MM = (3.0, 12.0)
LESION_CONTRAST_HU = (-60.0, 120.0)  # hypo- to hyperdense against the tissue around
BODY_HU = (-200.0, 300.0)  # soft tissue: where a lesion is put


@dataclass(frozen=True)
class Motion:
    """Follow-up world mm -> baseline world mm: ``p = R (q - centre - frame) + centre + shift``,
    then ``p + field(p)``."""

    rotation: np.ndarray
    centre: np.ndarray
    shift: np.ndarray
    frame: np.ndarray
    field: Deformation

    def to_baseline(self, follow_up_mm: np.ndarray) -> np.ndarray:
        rigid = (np.atleast_2d(follow_up_mm) - self.centre - self.frame) @ self.rotation.T + self.centre + self.shift
        return rigid + self.field(rigid)

    def to_follow_up(self, baseline_mm: np.ndarray, tol: float = 1e-6) -> np.ndarray:
        """The inverse of :meth:`to_baseline` (the field by fixed-point iteration: a contraction)."""
        target = np.atleast_2d(np.asarray(baseline_mm, float))
        rigid = target.copy()
        for _ in range(500):
            update = target - self.field(rigid)
            done = np.max(np.abs(update - rigid), initial=0.0) < tol
            rigid = update
            if done:
                break
        return (rigid - self.centre - self.shift) @ self.rotation + self.centre + self.frame


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sample_motion(condition: Condition, geometry: Geometry, rng: np.random.Generator) -> Motion:
    """A rigid repositioning and a smooth field (Gaussian bumps of 40-80 mm over the scan, peaks
    of ``motion_mm`` standard deviation, capped so that the field stays invertible)."""
    corners = geometry.corners()
    centre = corners.mean(axis=0)
    low, high = corners.min(axis=0), corners.max(axis=0)
    n_bumps = 8
    sigmas = rng.uniform(40.0, 80.0, n_bumps)
    vectors = rng.normal(0.0, condition.motion_mm, (n_bumps, 3))
    # a bump of peak v and width s changes its displacement by at most |v| exp(-1/2) / s per mm:
    # kept under 0.5 in all, so the field is a contraction and its inverse exists
    vectors *= np.minimum(1.0, 0.5 / max(1e-9, float(np.sum(np.linalg.norm(vectors, axis=1) * np.exp(-0.5)
                                                                / sigmas))))
    field = Deformation(rng.uniform(low, high, (n_bumps, 3)), vectors, sigmas)
    frame = np.zeros(3)
    if condition.frames:
        direction = rng.normal(size=3)
        frame = direction / np.linalg.norm(direction) * rng.uniform(100.0, 250.0)
    return Motion(_rotation(rng.uniform(-condition.rotation_deg, condition.rotation_deg, 3)), centre,
                  rng.uniform(-condition.shift_mm, condition.shift_mm, 3), frame, field)


def place_lesions(hu: np.ndarray, geometry: Geometry, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` lesions at soft-tissue voxels at least a radius + 6 mm inside the scan: ``lesion_id``,
    centre ``x, y, z`` (world mm), ``radius_mm``, ``contrast_hu``."""
    spacing = np.asarray(geometry.spacing)  # (x, y, z)
    tissue = (hu > BODY_HU[0]) & (hu < BODY_HU[1])
    tissue = ndimage.binary_erosion(tissue, iterations=2)
    candidates = np.argwhere(tissue)  # (z, y, x)
    if len(candidates) == 0:
        raise InputError(f"no soft tissue ({BODY_HU[0]:g} to {BODY_HU[1]:g} HU) to place a lesion in")
    rows = []
    for k in range(n):
        for _ in range(200):
            radius = float(rng.uniform(*LESION_RADIUS_MM))
            z, y, x = candidates[rng.integers(len(candidates))]
            index = np.array([x, y, z], float)
            margin = (radius + 6.0) / spacing
            if np.all(index >= margin) and np.all(index <= np.asarray(geometry.size) - 1 - margin):
                break
        else:
            break  # the scan is too thin for another lesion of this size
        centre = geometry.index_to_world(index[None])[0]
        rows.append({"lesion_id": f"L{k:02d}", "x": centre[0], "y": centre[1], "z": centre[2], "radius_mm": radius,
                     "contrast_hu": float(rng.uniform(*LESION_CONTRAST_HU))})
    if not rows:
        raise InputError(f"no room for a lesion: the scan (size {geometry.size} voxels) is too thin")
    return pd.DataFrame(rows)


def with_lesions(hu: np.ndarray, geometry: Geometry, lesions: pd.DataFrame, scale: np.ndarray) -> np.ndarray:
    """``hu`` (z, y, x) with each lesion added as a smooth ball of ``radius_mm * scale`` (a 1 mm
    soft edge) and its ``contrast_hu``."""
    out = hu.astype(np.float32).copy()
    spacing = np.asarray(geometry.spacing)
    for lesion, factor in zip(lesions.itertuples(index=False), scale, strict=True):
        radius = lesion.radius_mm * factor
        centre = geometry.world_to_index(np.array([[lesion.x, lesion.y, lesion.z]]))[0]
        reach = np.ceil((radius + 3.0) / spacing).astype(int)
        lo = np.maximum(np.floor(centre).astype(int) - reach, 0)
        hi = np.minimum(np.ceil(centre).astype(int) + reach + 1, np.asarray(geometry.size))
        zz, yy, xx = np.meshgrid(*(np.arange(lo[a], hi[a]) for a in (2, 1, 0)), indexing="ij")
        offsets = np.stack([xx, yy, zz], axis=-1).reshape(-1, 3).astype(float)
        world = geometry.index_to_world(offsets)
        distance = np.linalg.norm(world - np.array([lesion.x, lesion.y, lesion.z]), axis=1).reshape(xx.shape)
        weight = 1.0 / (1.0 + np.exp((distance - radius) / 0.5))  # 1 inside, 0 outside, a 1 mm edge
        out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] += (lesion.contrast_hu * weight).astype(np.float32)
    return out


def follow_up_geometry(geometry: Geometry, motion: Motion, condition: Condition, rng: np.random.Generator,
                       ) -> Geometry:
    """The follow-up's grid in its own world frame: the baseline's grid moved into it, with the
    condition's slice spacing and z extent (a cut field of view or a slab of the target side)."""
    spacing = list(geometry.spacing)
    size = list(geometry.size)
    extent_z = (size[2] - 1) * spacing[2]
    keep = extent_z * condition.coverage
    if condition.slab_mm is not None and condition.slab_side == "target":
        keep = min(keep, float(rng.uniform(*condition.slab_mm)))
    start = float(rng.uniform(0.0, extent_z - keep)) if keep < extent_z else 0.0
    if condition.slice_mm is not None:
        spacing[2] = condition.slice_mm
    size[2] = max(3, int(np.floor(keep / spacing[2])) + 1)
    origin = geometry.index_to_world(np.array([[0.0, 0.0, start / geometry.spacing[2]]]))[0]
    # the grid where the baseline's would lie once repositioned: its origin carried by the inverse rigid part
    origin_follow = (origin - motion.centre - motion.shift) @ motion.rotation + motion.centre + motion.frame
    direction = motion.rotation.T @ np.asarray(geometry.direction, float).reshape(3, 3)
    return Geometry(tuple(float(v) for v in origin_follow), tuple(float(s) for s in spacing), tuple(size),
                    tuple(float(v) for v in direction.ravel()))


def resample_follow_up(anatomy_hu: np.ndarray, geometry: Geometry, target: Geometry, motion: Motion,
                       slice_mm: float | None) -> np.ndarray:
    """The follow-up (z, y, x) on ``target``: each voxel the baseline anatomy at its known point
    (linear), thick slices as the mean over their thickness (a Gaussian of that width along z)."""
    source = anatomy_hu
    if slice_mm is not None and slice_mm > geometry.spacing[2]:
        sigma = np.array([slice_mm / geometry.spacing[2] / 2.355, 0.0, 0.0])  # FWHM = the slice
        source = ndimage.gaussian_filter(anatomy_hu, sigma)
    out = np.empty(tuple(target.size[::-1]), np.float32)
    nx, ny = target.size[0], target.size[1]
    ix, iy = np.meshgrid(np.arange(nx, dtype=float), np.arange(ny, dtype=float), indexing="xy")
    for k in range(target.size[2]):  # one slice at a time: a 512 x 512 x 300 follow-up in little memory
        index = np.stack([ix.ravel(), iy.ravel(), np.full(ix.size, float(k))], axis=1)
        at = geometry.world_to_index(motion.to_baseline(target.index_to_world(index)))
        values = ndimage.map_coordinates(source, [at[:, 2], at[:, 1], at[:, 0]], order=1, mode="constant",
                                         cval=-1024.0)
        out[k] = values.reshape(ny, nx)
    return out


def acquisition(hu: np.ndarray, condition: Condition, rng: np.random.Generator) -> np.ndarray:
    """Noise and a soft-tissue contrast change of ``condition`` on a follow-up's HU."""
    out = hu.copy()
    if condition.contrast_hu:
        tissue = (out > BODY_HU[0]) & (out < BODY_HU[1])
        out[tissue] += float(rng.uniform(-condition.contrast_hu, condition.contrast_hu))
    if condition.noise_hu:
        out += rng.normal(0.0, condition.noise_hu, out.shape).astype(np.float32)
    return out


def _image(hu: np.ndarray, geometry: Geometry) -> sitk.Image:
    return geometry.stamp(sitk.GetImageFromArray(np.clip(np.rint(hu), -1024, 3071).astype(np.int16)))


def _source_slab(hu: np.ndarray, geometry: Geometry, lesions: pd.DataFrame, slab_mm: tuple[float, float],
                 rng: np.random.Generator) -> tuple[np.ndarray, Geometry, pd.DataFrame]:
    """The baseline cut to a slab along z (around a lesion), with the lesions inside it."""
    extent = (geometry.size[2] - 1) * geometry.spacing[2]
    keep = min(extent, float(rng.uniform(*slab_mm)))
    centre_k = geometry.world_to_index(lesions[["x", "y", "z"]].to_numpy(float)[[rng.integers(len(lesions))]])[0, 2]
    n = max(3, int(keep / geometry.spacing[2]) + 1)
    first = int(np.clip(round(centre_k - n / 2), 0, geometry.size[2] - n))
    origin = geometry.index_to_world(np.array([[0.0, 0.0, float(first)]]))[0]
    slab = Geometry(tuple(origin), geometry.spacing, (geometry.size[0], geometry.size[1], n), geometry.direction)
    inside = slab.contains(lesions[["x", "y", "z"]].to_numpy(float), margin_mm=0.0)
    return hu[first:first + n], slab, lesions[inside].reset_index(drop=True)


def simulate_pair(image: sitk.Image, condition: Condition, seed: int, n_lesions: int = 8
                  ) -> tuple[sitk.Image, sitk.Image, pd.DataFrame]:
    """(baseline, follow-up, lesions) of one real scan under ``condition``: the lesions' ``x, y,
    z`` on the baseline, ``follow_x, follow_y, follow_z`` on the follow-up, their radii on each
    (``radius_mm``, ``follow_radius_mm``) and whether the follow-up holds them (``inside``)."""
    geometry = Geometry.of(image)
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    rng = np.random.default_rng([seed, sorted(CONDITIONS).index(condition.name)])
    lesions = place_lesions(hu, geometry, n_lesions, rng)
    growth = rng.uniform(*condition.growth, len(lesions))
    baseline_hu = with_lesions(hu, geometry, lesions, np.ones(len(lesions)))
    follow_anatomy = with_lesions(hu, geometry, lesions, growth)
    base_geometry = geometry
    if condition.slab_mm is not None and condition.slab_side == "source":
        baseline_hu, base_geometry, kept = _source_slab(baseline_hu, geometry, lesions, condition.slab_mm, rng)
        growth = growth[lesions["lesion_id"].isin(kept["lesion_id"]).to_numpy()]
        lesions = kept
    motion = sample_motion(condition, geometry, rng)
    target = follow_up_geometry(geometry, motion, condition, rng)
    follow_hu = acquisition(resample_follow_up(follow_anatomy, geometry, target, motion, condition.slice_mm),
                            condition, rng)
    follow = motion.to_follow_up(lesions[["x", "y", "z"]].to_numpy(float))
    lesions = lesions.assign(follow_x=follow[:, 0], follow_y=follow[:, 1], follow_z=follow[:, 2],
                             follow_radius_mm=lesions["radius_mm"].to_numpy() * growth,
                             inside=target.contains(follow, margin_mm=0.0))
    return _image(baseline_hu, base_geometry), _image(follow_hu, target), lesions


def simulate(scans: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
             conditions: Sequence[str] = tuple(CONDITIONS), seeds: Sequence[int] = (0,), n_lesions: int = 8
             ) -> pd.DataFrame:
    """For each scan, condition and seed a baseline and a follow-up in ``out_dir/images/``,
    ``out_dir/images.csv`` (``image_id, path``) and ``out_dir/pairs.csv`` (both directions of
    every lesion that both scans hold, world mm); all or nothing. Returns the pairs."""
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise InputError(f"--conditions {unknown[0]!r}: not one of {list(CONDITIONS)}")
    names = [image_id_of(Path(s)) for s in scans]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"--scans: two scans are named {repeated[0]!r}; give each scan once, with its own name")
    read = [check_scan(read_image(scan), scan, 3) for scan in scans]  # every scan checked before anything is made
    out_dir = Path(out_dir)
    rows, images = [], []
    with staged_folder(out_dir) as staged:
        for scan, image, name in zip(scans, read, names, strict=True):
            for condition in conditions:
                for seed in seeds:
                    try:
                        baseline, follow_up, lesions = simulate_pair(image, CONDITIONS[condition], seed, n_lesions)
                    except InputError as why:
                        raise InputError(f"{scan}: {why}") from None
                    subject = f"{name}_{condition}_s{seed}"
                    ids = (f"{subject}_t0", f"{subject}_t1")
                    for image_id, made in zip(ids, (baseline, follow_up), strict=True):
                        write_image(made, named_path(staged / "images", image_id, suffix=".nii.gz"))
                        images.append({"image_id": image_id, "path": str(named_path(out_dir / "images", image_id,
                                                                                   suffix=".nii.gz"))})
                    rows += _pair_rows(lesions[lesions["inside"]], subject, ids)
        pairs = pd.DataFrame(rows, columns=GENERATED_PAIR_COLUMNS)
        write_table(pd.DataFrame(images), staged / "images.csv")
        write_table(pairs, staged / "pairs.csv", float_format="%.4f")
    return pairs


def _pair_rows(lesions: pd.DataFrame, subject: str, ids: tuple[str, str]) -> list[dict]:
    rows = []
    for lesion in lesions.itertuples(index=False):
        ends = [((lesion.x, lesion.y, lesion.z), lesion.radius_mm),
                ((lesion.follow_x, lesion.follow_y, lesion.follow_z), lesion.follow_radius_mm)]
        lesion_id = f"{subject}_{lesion.lesion_id}"
        for direction, (a, b) in (("forward", (0, 1)), ("backward", (1, 0))):
            (source, source_radius), (target, target_radius) = ends[a], ends[b]
            rows.append({"pair_id": pair_id(lesion_id, 0, 1), "lesion_id": lesion_id, "direction": direction,
                         "source_image": ids[a], "target_image": ids[b],
                         **dict(zip(SOURCE_POINT, source, strict=True)),
                         **dict(zip(TARGET_POINT, target, strict=True)),
                         "target_radius_mm": target_radius, "subject_id": subject, "split": "test",
                         "lesion_type": "inserted", "source_radius_mm": source_radius,
                         **{f"target_box_{m}_{a}": np.nan for m in ("min", "max") for a in "xyz"}})
    return rows
