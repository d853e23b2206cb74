"""Your own data: NIfTI files or DICOM series folders as an unlabeled set, optional pairs in world mm.

``datasets.custom.images`` lists paths or glob patterns; each match is a volume file that
SimpleITK reads (NIfTI, MHA, NRRD) or a DICOM series folder (checked by ``lesiontrack.io``).
image_id = the file name without its extension(s), or the folder name. An optional pairs CSV holds
the pairs.csv columns in world mm (LPS); every point must lie inside its volume.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lesiontrack.io import (
    Geometry,
    InputError,
    check_apart,
    check_writable,
    named_path,
    read_geometry,
    read_image,
    read_table,
    staged_folder,
    volume_paths,
    write_image,
    write_table,
)
from lesiontrack.tables import PAIR_COLUMNS, validate_pairs

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")


def image_id_of(path: Path) -> str:
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def collect(patterns: Sequence[str], base: str | os.PathLike = ".") -> pd.DataFrame:
    """``image_id, source`` of every volume file or DICOM folder the patterns match (sorted per pattern)."""
    if not patterns:
        raise InputError("datasets.custom.images is empty: list volume files, DICOM series folders or glob patterns")
    rows = []
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        matches = sorted(glob.glob(full)) if glob.has_magic(full) else ([full] if os.path.exists(full) else [])
        if not matches:
            raise InputError(f"datasets.custom.images: {pattern!r} matches no file or folder")
        for match in map(Path, matches):
            if match.is_file() and not match.name.endswith(VOLUME_SUFFIXES):
                raise InputError(f"{match}: not a volume file ({', '.join(VOLUME_SUFFIXES)}) or DICOM series folder")
            rows.append({"image_id": image_id_of(match), "source": str(match)})
    table = pd.DataFrame(rows, columns=["image_id", "source"])
    bad = [i for i in table["image_id"] if not re.fullmatch(r"[A-Za-z0-9_.-]+", i)]
    if bad:
        raise InputError(f"datasets.custom.images: image id {bad[0]!r} has characters outside [A-Za-z0-9_.-]")
    duplicated = table[table["image_id"].duplicated(keep=False)]
    if not duplicated.empty:
        raise InputError(f"datasets.custom.images: image id {duplicated['image_id'].iloc[0]!r} is given by "
                         f"{list(duplicated['source'])}")
    return table


def convert(patterns: Sequence[str], images_dir: str | os.PathLike, out: str | os.PathLike,
            base: str | os.PathLike = ".") -> pd.DataFrame:
    """Write every matched volume as ``images_dir/<image_id>.nii.gz``; table ``image_id, path,
    source, subject_id, split`` (every volume is its own subject, all are ``train``: an unlabeled
    training set; evaluation pairs say which volumes they use). ``out``: one path or several."""
    table = collect(patterns, base)
    outs = [out] if isinstance(out, (str, os.PathLike)) else list(out)
    for path in outs:
        check_writable(path)
    check_apart({f"the converted {i}": named_path(images_dir, i, suffix=".nii.gz") for i in table["image_id"]},
                dict(zip(table["image_id"], table["source"], strict=True)))
    with staged_folder(images_dir) as staging:  # all volumes or none: a bad one leaves nothing
        for image_id, src in zip(table["image_id"], table["source"], strict=True):
            write_image(read_image(src), named_path(staging, image_id, suffix=".nii.gz"))
        table.insert(1, "path", [str(named_path(images_dir, image_id, suffix=".nii.gz"))
                                 for image_id in table["image_id"]])
        table["subject_id"] = table["image_id"]
        table["split"] = "train"
        for path in outs:
            write_table(table, path)
    return table


def check_pairs(pairs_csv: str | os.PathLike, volumes: dict[str, str]) -> pd.DataFrame:
    """Read a pairs CSV in world mm; reject an unknown image or a point outside its volume, naming the row."""
    pairs = validate_pairs(read_table(pairs_csv), str(pairs_csv), PAIR_COLUMNS)
    geometries: dict[str, Geometry] = {}
    for row, record in enumerate(pairs.itertuples(index=False), start=2):  # row 1 is the header
        for end in ("source", "target"):
            image = str(getattr(record, f"{end}_image"))
            if image not in volumes:
                raise InputError(f"{pairs_csv}: row {row} (pair_id {record.pair_id}): {end}_image {image!r} is not "
                                 f"one of the custom images {sorted(volumes)}")
            point = np.array([getattr(record, f"{end}_{a}") for a in "xyz"], float)
            if image not in geometries:
                geometries[image] = read_geometry(volumes[image])
            if not np.isfinite(point).all() or not geometries[image].contains(point[None])[0]:
                raise InputError(f"{pairs_csv}: row {row} (pair_id {record.pair_id}): {end} point "
                                 f"({point[0]:.1f}, {point[1]:.1f}, {point[2]:.1f}) mm is outside {image} "
                                 f"({volumes[image]})")
    if not (pairs["target_radius_mm"] > 0).all():
        row = int(np.flatnonzero(~(pairs["target_radius_mm"] > 0))[0]) + 2
        raise InputError(f"{pairs_csv}: row {row}: target_radius_mm must be > 0")
    return pairs


def pairs_stage(pairs_csv: str | os.PathLike, image_table: str | os.PathLike, out: str | os.PathLike) -> pd.DataFrame:
    pairs = check_pairs(pairs_csv, volume_paths([image_table]))
    if "split" not in pairs.columns:
        pairs["split"] = "test"
    write_table(pairs, out)
    return pairs
