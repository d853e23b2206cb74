"""Paired patches: two overlapping, independently augmented views of one volume, with the exact
voxel correspondence between them.

Each view is cut from the volume, augmented with TorchIO on tensors (random affine: scaling and
rotation; Gaussian noise; then cropped to the patch size), and a voxel-index grid of the volume is
pushed through the same spatial transform. Away from the padded border the result is an affine
map from view voxels to volume voxels, recovered by least squares (residual ~1e-6 voxel), so the
correspondence between the two views is exact rather than estimated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from lesiontrack.preprocess import AIR_HU, window


@dataclass(frozen=True)
class PatchConfig:
    patch_size: tuple[int, int, int] = (32, 96, 96)  # (z, y, x) voxels at the resampled spacing
    scales: tuple[float, float] = (0.85, 1.15)
    degrees: float = 10.0
    noise_std: float = 0.05  # in windowed units ([-1, 1] covers window_hu)
    window_hu: tuple[float, float] = (-1000.0, 400.0)

    @property
    def max_shift(self) -> tuple[int, int, int]:
        """Largest offset between the two views' centres (voxels): a quarter of the patch."""
        return tuple(n // 4 for n in self.patch_size)


@dataclass
class View:
    image: torch.Tensor  # (1, D, H, W), windowed to [-1, 1]
    to_volume: np.ndarray  # 4x4: view voxel (z, y, x, 1) -> volume voxel (z, y, x, 1)
    valid: np.ndarray  # (D, H, W) bool: voxels whose mapping is exact (not in the padded border)

    def from_volume(self, volume_zyx: np.ndarray) -> np.ndarray:
        """Volume voxel coordinates (N, 3) -> continuous view voxel coordinates (N, 3)."""
        inverse = np.linalg.inv(self.to_volume)
        return volume_zyx @ inverse[:3, :3].T + inverse[:3, 3]


@dataclass
class PatchPair:
    view1: View
    view2: View
    positives1: np.ndarray  # (N, 3) integer view-1 voxels (z, y, x)
    positives2: np.ndarray  # (N, 3) continuous view-2 voxels of the same anatomy
    positives_volume: np.ndarray  # (N, 3) their volume voxel coordinates
    # Landmark positives: the same named landmark in view 1 of this pair and of a partner pair
    # (another volume of the batch): index of the partner, points here, points there.
    landmark_partner: int | None = None
    landmarks1: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    landmarks_partner: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    # A sibling pair from the same volume elsewhere in the body (far negatives): its batch index.
    sibling: int | None = None
    volume_index: int = -1  # which training volume the pair was cut from


def shared_points(view_a: View, points_a: np.ndarray, view_b: View, points_b: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Volume points (K, 3) of two views (row k = the same landmark) -> the view coordinates of
    those that lie in the valid region of both views."""
    in_a, in_b = view_a.from_volume(points_a), view_b.from_volume(points_b)
    keep = np.ones(len(points_a), bool)
    for view, points in ((view_a, in_a), (view_b, in_b)):
        nearest = np.rint(points).astype(int)
        inside = np.all((nearest >= 0) & (nearest < np.array(view.valid.shape)), axis=1)
        inside[inside] = view.valid[tuple(nearest[inside].T)]
        keep &= inside
    return in_a[keep], in_b[keep]


def _crop_size(cfg: PatchConfig) -> tuple[int, int, int]:
    # room for scaling down and rotating without padding most of the patch
    return tuple(int(np.ceil(n * 1.3)) for n in cfg.patch_size)


def _augment(crop_hu: np.ndarray, origin: np.ndarray, cfg: PatchConfig,
             inside: tuple[np.ndarray, np.ndarray] | None = None) -> View:
    """One augmented view of a crop whose voxel 0 is volume voxel ``origin``; ``inside`` = (first,
    last) volume voxels of real data (the rest is padding, never valid)."""
    import torchio as tio  # here: with nibabel it costs every lesiontrack command 0.3 s at import

    shape = crop_hu.shape
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(window(crop_hu, cfg.window_hu, (0.0, 2.0))[None])),
        index=tio.ScalarImage(tensor=torch.from_numpy(grid + 1.0)),  # +1: padding (0) is told apart
    )
    transform = tio.Compose([
        tio.RandomAffine(scales=cfg.scales, degrees=cfg.degrees, default_pad_value=0, image_interpolation="linear"),
        tio.CropOrPad(cfg.patch_size),
        tio.RandomNoise(std=(0.0, cfg.noise_std), include=["image"]),
    ])
    out = transform(subject)
    image = out["image"].data.float() - 1.0  # padding (0) becomes -1: air
    index = out["index"].data.numpy() - 1.0
    # voxels interpolated from padding lie within one voxel of the padded region: erode by two
    valid = np.all(index > -0.5, axis=0)
    if inside is not None:  # a padded volume: only voxels that map into the real data
        where = index + origin.reshape(3, 1, 1, 1)
        valid &= np.all((where >= inside[0].reshape(3, 1, 1, 1) - 0.5) & (where <= inside[1].reshape(3, 1, 1, 1) + 0.5),
                        axis=0)
    valid = ndimage.binary_erosion(valid, iterations=2)
    voxels = np.stack(np.nonzero(valid), axis=1)
    if len(voxels) < 1000:
        raise ValueError("augmented view has almost no valid voxels")
    step = max(1, len(voxels) // 4000)
    sample = voxels[::step]
    design = np.c_[sample, np.ones(len(sample))]
    target = index[:, sample[:, 0], sample[:, 1], sample[:, 2]].T + origin
    coefficients = np.linalg.lstsq(design, target, rcond=None)[0]  # (4, 3)
    to_volume = np.eye(4)
    to_volume[:3, :3] = coefficients[:3].T
    to_volume[:3, 3] = coefficients[3]
    return View(image=image, to_volume=to_volume, valid=valid)


def pad_to(volume_hu: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``volume_hu`` padded with air, centred, to at least ``shape``; returns it and the padding
    before each axis (volume voxel v is padded voxel v + before)."""
    missing = np.maximum(np.asarray(shape) - volume_hu.shape, 0)
    before = missing // 2
    if not missing.any():
        return volume_hu, before
    padded = np.pad(volume_hu, [(b, m - b) for b, m in zip(before, missing, strict=True)],
                    constant_values=AIR_HU)
    return padded, before


def sample_pair(volume_hu: np.ndarray, body_voxels: np.ndarray, cfg: PatchConfig, n_positives: int,
                rng: np.random.Generator, center: np.ndarray | None = None) -> PatchPair:
    """Two augmented views around a random body voxel (or ``center``) and ``n_positives``
    corresponding voxels.

    ``body_voxels``: (M, 3) candidate centres (e.g. voxels above -500 HU). TorchIO draws its
    random parameters from torch's generator: seed both for a reproducible stream. A volume
    smaller than two shifted crops along an axis (a thin slab, a small field of view) is padded
    with air; padding is never valid, so positives and negatives come from the real voxels only.
    """
    crop = np.array(_crop_size(cfg))
    shape = np.array(volume_hu.shape)
    volume_hu, before = pad_to(volume_hu, crop + 2 * np.array(cfg.max_shift))
    padded = volume_hu.shape != tuple(shape)
    inside = (before.astype(float), (before + shape - 1).astype(float)) if padded else None
    body_voxels = body_voxels + before
    center = None if center is None else np.asarray(center) + before
    padded_shape = np.array(volume_hu.shape)
    for _ in range(20):
        middle = body_voxels[rng.integers(len(body_voxels))] if center is None else np.rint(center).astype(int)
        shift = rng.integers(-np.array(cfg.max_shift), np.array(cfg.max_shift) + 1)
        origins = []
        for c in (middle, middle + shift):
            origins.append(np.clip(c - crop // 2, 0, padded_shape - crop))
        views = []
        for origin in origins:
            z, y, x = origin
            crop_hu = volume_hu[z: z + crop[0], y: y + crop[1], x: x + crop[2]].astype(np.float32)
            view = _augment(crop_hu, origin.astype(float), cfg, inside)
            view.to_volume[:3, 3] -= before  # padded voxel -> volume voxel
            views.append(view)
        view1, view2 = views
        candidates = np.stack(np.nonzero(view1.valid), axis=1)
        volume_points = candidates @ view1.to_volume[:3, :3].T + view1.to_volume[:3, 3]
        in_view2 = view2.from_volume(volume_points)
        nearest = np.rint(in_view2).astype(int)
        inside_view2 = np.all((nearest >= 0) & (nearest < np.array(cfg.patch_size)), axis=1)
        inside_view2[inside_view2] = view2.valid[tuple(nearest[inside_view2].T)]
        overlap = np.flatnonzero(inside_view2)
        if len(overlap) >= n_positives:
            chosen = rng.choice(overlap, size=n_positives, replace=False)
            return PatchPair(view1, view2, candidates[chosen], in_view2[chosen], volume_points[chosen])
    raise ValueError(f"could not find {n_positives} overlapping voxels in 20 tries")
