"""Resampling to isotropic spacing and intensity windowing (the one definition of each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lesiontrack.io import (
    Geometry,
    InputError,
    check_apart,
    check_writable,
    named_path,
    read_image,
    read_table,
    sha256,
    staged_folder,
    write_image,
    write_table,
)
from lesiontrack.tables import validate_table

AIR_HU = -1024.0
MAX_VOXELS = 1_000_000_000  # a resampled volume larger than this (4 GB as float32) is a mistake, not a scan
MIN_VOXELS_PER_AXIS = 3  # fewer: no neighbour on both sides of a point (matching, refinement)


def resampled_size(image: sitk.Image, spacing_mm: float, source: str = "image") -> tuple[int, int, int]:
    """The grid size of ``image`` resampled to ``spacing_mm``; a spacing that is not a positive
    number, or a grid of fewer than 3 voxels along an axis or more than 1e9 voxels, stops here."""
    if not (np.isfinite(spacing_mm) and spacing_mm > 0):
        raise InputError(f"{source}: spacing {float(spacing_mm):g} mm: must be a positive number")
    old = Geometry.of(image)
    extent = (np.asarray(old.size) - 1) * np.asarray(old.spacing)
    size = tuple(int(n) for n in np.floor(extent / spacing_mm + 1e-6).astype(int) + 1)
    voxels = int(np.prod(size, dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise InputError(f"{source}: spacing {float(spacing_mm):g} mm makes {size} = {voxels:.2e} voxels "
                         f"(at most {MAX_VOXELS:.0e}): a spacing that small is not meant")
    if min(size) < MIN_VOXELS_PER_AXIS:
        raise InputError(f"{source}: spacing {float(spacing_mm):g} mm leaves {size} voxels over an extent of "
                         f"{tuple(round(float(e), 1) for e in extent)} mm (at least {MIN_VOXELS_PER_AXIS} per axis)")
    return size


def resample_isotropic(image: sitk.Image, spacing_mm: float, default_value: float = AIR_HU,
                       source: str = "image") -> sitk.Image:
    """Resample to ``spacing_mm`` in every axis with linear interpolation (as the paper).

    The first voxel centre and the direction are kept, so world coordinates are preserved; the
    grid covers the input's voxel centres. Integer images stay integer (rounded).
    """
    size = resampled_size(image, spacing_mm, source)
    old = Geometry.of(image)
    new = Geometry(old.origin, (spacing_mm,) * 3, size, old.direction)
    resampled = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                              new.origin, new.spacing, new.direction, default_value, sitk.sitkFloat32)
    if image.GetPixelID() in (sitk.sitkInt16, sitk.sitkInt32, sitk.sitkUInt8, sitk.sitkUInt16):
        array = np.rint(sitk.GetArrayViewFromImage(resampled))
        cast = new.stamp(sitk.GetImageFromArray(array.astype(sitk.GetArrayViewFromImage(image).dtype)))
        return cast
    return resampled


def resample_file(source: str | Path, target: str | Path, spacing_mm: float) -> Path:
    return write_image(resample_isotropic(read_image(source), spacing_mm, source=str(source)), target)


def resample_table(images_table: str | Path, out_dir: str | Path, out_table: str | Path, spacing_mm: float,
                   progress: bool = True) -> pd.DataFrame:
    """Resample every image listed in ``images_table`` (columns ``image_id, path``) into ``out_dir``.

    The volumes and the table appear together, on success only (a bad volume half-way leaves none)."""
    from tqdm import tqdm

    images = validate_table(read_table(images_table, required=["image_id", "path"]), str(images_table),
                            unique=["image_id"], ids=["image_id"])
    check_writable(out_table)
    check_apart({f"{images_table}: row {k + 1}: the resampled volume": named_path(out_dir, i, suffix=".nii.gz")
                 for k, i in enumerate(images["image_id"])},
                {f"{images_table}: row {k + 1}": p for k, p in enumerate(images["path"])})
    rows = []
    with staged_folder(out_dir) as staging:
        for image_id, path in tqdm(list(zip(images["image_id"], images["path"], strict=True)), desc="resample",
                                   disable=not progress):
            staged = resample_file(path, named_path(staging, image_id, suffix=".nii.gz"), spacing_mm)
            rows.append({"image_id": image_id, "path": str(Path(out_dir) / staged.name), "source_path": path,
                         "spacing_mm": spacing_mm, "sha256": sha256(staged)})
        table = pd.DataFrame(rows)
        write_table(table, out_table)
    return table


def window(hu: np.ndarray, window_hu: tuple[float, float], out_range: tuple[float, float] = (0.0, 1.0)
           ) -> np.ndarray:
    """Clip HU to ``window_hu`` = (low, high) and scale linearly to ``out_range`` (float32)."""
    low, high = window_hu
    if not high > low:
        raise ValueError(f"window_hu = {window_hu!r}: high must exceed low")
    out = np.array(hu, dtype=np.float32, copy=True)  # in place from here: one copy of a volume, not five
    np.clip(out, low, high, out=out)
    out -= low
    out /= high - low
    out *= out_range[1] - out_range[0]
    out += out_range[0]
    return out
