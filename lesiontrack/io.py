"""Volumes, point tables and the one world <-> voxel conversion of lesiontrack.

World coordinates are millimetres in SimpleITK's physical space (LPS). Volumes are read with
SimpleITK (NIfTI files or DICOM series folders); every file is written to a temporary name in the
destination folder and renamed, so a failed step never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk


class InputError(ValueError):
    """Bad input: the message names the file and the offending value."""


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a NIfTI (or any SimpleITK format) file or a DICOM series folder.

    For DICOM the slice spacing comes from the slice positions, not from ``SliceThickness``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InputError(f"{path}: folder holds no DICOM series")
            if len(series) > 1:
                raise InputError(f"{path}: folder holds {len(series)} DICOM series {list(series)}; give one")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(f"{path}: cannot be read as an image ({str(err).strip().splitlines()[-1]})") from err


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes); rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_image(image: sitk.Image, path: str | os.PathLike, compression_level: int = 1) -> Path:
    """Write ``image`` atomically (gzip level 1 for ``.nii.gz``: fast, about as small)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=path.name.endswith(".gz"),
                        compressionLevel=compression_level)
    return path


def write_table(table: pd.DataFrame, path: str | os.PathLike, float_format: str = "%.4f") -> Path:
    """Write a CSV (or TSV for ``.tsv``) atomically."""
    path = Path(path)
    sep = "\t" if path.suffix == ".tsv" else ","
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, sep=sep, float_format=float_format)
    return path


def read_table(path: str | os.PathLike, required: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV/TSV table and check that ``required`` columns are present."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    table = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    return table


def volume_paths(tables: list[str | os.PathLike] | tuple[str | os.PathLike, ...]) -> dict[str, str]:
    """``image_id -> path`` from volume tables (CSV with columns ``image_id, path``); later tables win."""
    paths: dict[str, str] = {}
    for table in tables:
        frame = read_table(table, required=["image_id", "path"])
        paths.update(zip(frame["image_id"], frame["path"], strict=True))
    return paths


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a volume: origin (mm), spacing (mm), direction (row-major 3x3), size (voxels).

    All in SimpleITK's (x, y, z) index order and LPS world frame; this class owns the
    world <-> voxel conversion for the whole package.
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(tuple(image.GetOrigin()), tuple(image.GetSpacing()), tuple(image.GetSize()),
                   tuple(image.GetDirection()))

    def stamp(self, image: sitk.Image) -> sitk.Image:
        """Give ``image`` (whose array has this size) this geometry."""
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image

    def index_to_world(self, index_xyz: np.ndarray) -> np.ndarray:
        """Continuous voxel indices (N, 3), (x, y, z) order -> world mm (N, 3), LPS."""
        index_xyz = np.atleast_2d(np.asarray(index_xyz, dtype=float))
        direction = np.asarray(self.direction, float).reshape(3, 3)
        return np.asarray(self.origin) + (index_xyz * np.asarray(self.spacing)) @ direction.T

    def world_to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """World mm (N, 3), LPS -> continuous voxel indices (N, 3), (x, y, z) order."""
        points_mm = np.atleast_2d(np.asarray(points_mm, dtype=float))
        direction = np.asarray(self.direction, float).reshape(3, 3)
        offset = points_mm - np.asarray(self.origin)
        return (offset @ np.linalg.inv(direction).T) / np.asarray(self.spacing)

    def contains(self, points_mm: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
        """Whether each world point lies inside the grid (voxel centres) by ``margin_mm``."""
        idx = self.world_to_index(points_mm)
        margin = margin_mm / np.asarray(self.spacing)
        upper = np.asarray(self.size, float) - 1.0 - margin
        return np.all((idx >= margin - 1e-6) & (idx <= upper + 1e-6), axis=1)
