"""Volumes, point tables and the one world <-> voxel conversion of lesiontrack.

World coordinates are millimetres in SimpleITK's physical space (LPS). Volumes are read with
SimpleITK (NIfTI files or DICOM series folders); every file is written to a temporary name in the
destination folder and renamed, so a failed step never leaves a half-written file behind.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import math
import os
import shutil
import struct
import sys
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from pandas._libs.parsers import STR_NA_VALUES


class InputError(ValueError):
    """Bad input: the message names the file and the offending value."""


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a NIfTI (or any SimpleITK format) file or a DICOM series folder (see :func:`dicom_series`).

    Refused, naming the file: a compressed file that fails its integrity check (gzip CRC and
    length), a NIfTI whose data is shorter than its header says (SimpleITK would fill the rest
    with zeros), fewer than 3 dimensions, a spacing that is not finite and positive, a direction
    matrix that is not orthonormal."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return check_volume(dicom_series(path).read(), path)
    data_bytes = _check_compressed(path) if path.suffix == ".gz" else path.stat().st_size
    if path.name.endswith((".nii", ".nii.gz")):
        _check_nifti_header(path, data_bytes)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(f"{path}: cannot be read as an image ({str(err).strip().splitlines()[-1]})") from err
    return check_volume(image, path)


def _check_compressed(path: Path) -> int:
    """The uncompressed length of a gzip file, read through to check its CRC and length."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(f"{path}: damaged or truncated gzip file ({err})") from None
    return total


def _check_nifti_header(path: Path, data_bytes: int) -> None:
    """Stop where a NIfTI header gives voxel sizes that are not finite and non-zero (ITK would
    replace them), or where the (uncompressed) file is shorter than its offset + data size."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        header = fh.read(540)
    if len(header) < 348:
        raise InputError(f"{path}: {len(header)} bytes, shorter than a NIfTI header (348)")
    for order in ("<", ">"):
        size = struct.unpack(f"{order}i", header[:4])[0]
        if size == 348:  # NIfTI-1
            dims = struct.unpack(f"{order}8h", header[40:56])
            bitpix = struct.unpack(f"{order}h", header[72:74])[0]
            pixdim = struct.unpack(f"{order}8f", header[76:108])
            offset = int(struct.unpack(f"{order}f", header[108:112])[0])
            codes = struct.unpack(f"{order}2h", header[252:256])
            quatern = struct.unpack(f"{order}6f", header[256:280])
            srow = struct.unpack(f"{order}12f", header[280:328])
            break
        if size == 540 and len(header) >= 540:  # NIfTI-2
            dims = struct.unpack(f"{order}8q", header[16:80])
            bitpix = struct.unpack(f"{order}h", header[14:16])[0]
            pixdim = struct.unpack(f"{order}8d", header[104:168])
            offset = int(struct.unpack(f"{order}q", header[168:176])[0])
            codes = struct.unpack(f"{order}2i", header[344:352])
            quatern = struct.unpack(f"{order}6d", header[352:400])
            srow = struct.unpack(f"{order}12d", header[400:496])
            break
    else:
        return  # not a NIfTI header SimpleITK reads the way we know: leave it to SimpleITK
    n_dims = int(dims[0])
    if not 1 <= n_dims <= 7:
        raise InputError(f"{path}: NIfTI header gives {n_dims} dimensions")
    voxel = [float(v) for v in pixdim[1:min(n_dims, 3) + 1]]
    if not all(math.isfinite(v) and v != 0 for v in voxel):
        raise InputError(f"{path}: NIfTI header gives voxel sizes {tuple(voxel)} mm: not finite and non-zero")
    expected = offset + int(np.prod([max(int(d), 1) for d in dims[1:n_dims + 1]], dtype=np.int64)) * bitpix // 8
    if data_bytes < expected:
        raise InputError(f"{path}: truncated: the NIfTI header describes {expected} bytes, the file holds "
                         f"{data_bytes}")
    if n_dims >= 3 and codes[0] > 0 and codes[1] > 0:
        _check_qform_sform(path, [int(d) for d in dims[1:4]], pixdim, quatern, srow)


QFORM_SFORM_TOLERANCE_MM = 1.0


def _check_qform_sform(path: Path, size: list[int], pixdim, quatern, srow) -> None:
    """Stop where a NIfTI header's two geometries (qform and sform, both set) place the volume's
    corners more than :data:`QFORM_SFORM_TOLERANCE_MM` apart: ITK would take one of them silently."""
    b, c, d, qx, qy, qz = (float(v) for v in quatern)
    a = math.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                         [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                         [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    qform = np.eye(4)
    qform[:3, :3] = rotation * np.array([pixdim[1], pixdim[2], qfac * pixdim[3]])
    qform[:3, 3] = (qx, qy, qz)
    sform = np.eye(4)
    sform[:3] = np.asarray(srow, float).reshape(3, 4)
    corners = np.array([[i, j, k, 1.0] for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)])
    apart = float(np.linalg.norm(corners @ qform.T - corners @ sform.T, axis=1).max())
    if not apart <= QFORM_SFORM_TOLERANCE_MM:
        shown = [tuple(round(float(v), 1) for v in m[:3, 3]) for m in (qform, sform)]
        raise InputError(f"{path}: the NIfTI header's qform and sform disagree by {apart:.1f} mm (origin {shown[0]} "
                         f"against {shown[1]} mm, RAS): which one is right cannot be told from the file; make them "
                         "agree (or set one's code to 0)")


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Stop before any work where ``path`` cannot be written: a file where a folder is wanted or the
    other way round, or a nearest existing parent folder that is not writable."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind, wanted = ("a file", "a folder") if folder else ("a folder", "a file")
        raise InputError(f"{path}: is {kind}, expected {wanted}")
    parent = path if folder and path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot be written ({parent} is not a writable folder)")
    return path


def check_apart(outputs: dict[str, str | os.PathLike], inputs: dict[str, str | os.PathLike],
                folders_of_scans: tuple[str, ...] = ()) -> None:
    """Stop before any work where an output would write over an input: an output path that is an
    input (resolved: links, ``..`` and relative paths followed), or one inside an input named in
    ``folders_of_scans`` that is a folder (a DICOM series: nothing is written into a series).
    ``outputs`` and ``inputs`` map what the user typed (``--out``) to a path; inputs that do not
    exist are left to their own checks."""
    given = {name: Path(path).resolve() for name, path in inputs.items() if os.path.exists(path)}
    for out_name, out_path in outputs.items():
        out = Path(out_path).resolve()
        for in_name, path in given.items():
            if out == path:
                raise InputError(f"{out_name} {out_path}: is the input {in_name} ({inputs[in_name]}); an output never "
                                 "replaces an input: give another path")
            if in_name.split("[")[0] in folders_of_scans and path.is_dir() and path in out.parents:
                raise InputError(f"{out_name} {out_path}: lies inside the input {in_name} ({inputs[in_name]}); "
                                 "nothing is written into a scan's folder: give another path")


def check_volume(image: sitk.Image, path: str | os.PathLike) -> sitk.Image:
    """``image`` if it is a 3D volume with a finite positive spacing and an orthonormal direction."""
    if image.GetDimension() != 3:
        raise InputError(f"{path}: a {image.GetDimension()}D image (size {tuple(image.GetSize())}), not a 3D volume: "
                         "give one volume")
    spacing = np.asarray(image.GetSpacing(), float)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputError(f"{path}: spacing {tuple(float(s) for s in spacing)} mm is not finite and positive")
    n = image.GetDimension()
    direction = np.asarray(image.GetDirection(), float).reshape(n, n)
    if not np.allclose(direction @ direction.T, np.eye(n), atol=1e-4):
        raise InputError(f"{path}: direction matrix {np.round(direction, 4).tolist()} is not orthonormal")
    return image


MIN_SLICE_VOXELS = 32  # a CT slice of fewer than 32 x 32 voxels holds no anatomy to track by
BODY_HU = -500.0  # above: soft tissue, bone, contrast; below: air and lung
MIN_BODY_SHARE = 0.01
_warned: set[str] = set()


def check_scan(image: sitk.Image, path: str | os.PathLike, minimum: int) -> sitk.Image:
    """``image`` if it can be tracked in: at least ``minimum`` voxels along every axis (trilinear
    sampling and sub-voxel refinement need neighbours on both sides of a point), at least
    :data:`MIN_SLICE_VOXELS` along two, finite values, and a body (at least
    :data:`MIN_BODY_SHARE` of its voxels above :data:`BODY_HU`). A volume whose values do not look
    like CT in HU (no air, a narrow range, a byte or boolean type: a mask or a screenshot) is
    tracked as given, with one warning."""
    size = image.GetSize()
    if min(size) < minimum:
        raise InputError(f"{path}: size {tuple(size)} voxels: tracking needs at least {minimum} along every axis")
    if sorted(size)[-2] < MIN_SLICE_VOXELS:
        raise InputError(f"{path}: size {tuple(size)} voxels: a CT scan has at least {MIN_SLICE_VOXELS} x "
                         f"{MIN_SLICE_VOXELS} voxels in a slice")
    values = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(values) if values.dtype.kind == "f" else None
    if finite is not None and not finite.any():
        raise InputError(f"{path}: every voxel is NaN or infinite: no scan to track in")
    shown = values[finite] if finite is not None and not finite.all() else values
    low, high = float(shown.min()), float(shown.max())
    body = float(np.count_nonzero(shown > BODY_HU)) / shown.size
    if body < MIN_BODY_SHARE:
        raise InputError(f"{path}: no body in the scan: {body:.1%} of its voxels lie above {BODY_HU:g} HU (values "
                         f"{low:g} to {high:g}); at least {MIN_BODY_SHARE:.0%} needed")
    if str(path) not in _warned and ((values.dtype.kind in "bu" and values.dtype.itemsize == 1) or low > BODY_HU
                                     or high - low < 200):
        _warned.add(str(path))
        print(f"lesiontrack: warning: {path}: values {low:g} to {high:g} ({values.dtype}) do not look like CT in HU "
              "(air near -1000, bone above 300): a mask or a rescaled image? tracked as given", file=sys.stderr)
    return image


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series folder, its slices sorted along the slice normal (volume index k = ``files[k]``).

    ``spacing_z`` is the distance between neighbouring ImagePositionPatient values along the
    normal (never ``SliceThickness``); ``instance_numbers[k]`` is the InstanceNumber of slice k.
    """

    folder: Path
    files: tuple[str, ...]
    positions: tuple[float, ...]
    instance_numbers: tuple[int | None, ...]
    spacing_z: float

    def read(self) -> sitk.Image:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(list(self.files))
        try:
            image = reader.Execute()
        except RuntimeError as err:
            raise InputError(f"{self.folder}: cannot be read as a DICOM series "
                             f"({str(err).strip().splitlines()[-1]})") from err
        spacing = image.GetSpacing()
        image.SetSpacing((spacing[0], spacing[1], self.spacing_z))
        return image


def _dicom_tag(reader: sitk.ImageFileReader, tag: str, file: str, folder: Path) -> str:
    if not reader.HasMetaDataKey(tag):
        raise InputError(f"{folder}: slice {Path(file).name} has no DICOM tag {tag}")
    return reader.GetMetaData(tag).strip()


def dicom_series(folder: str | os.PathLike, tolerance: float = 0.01) -> DicomSeries:
    """Check and sort the slices of the one DICOM series in ``folder``.

    Rejects (one :class:`InputError` naming the folder) a folder with no series or several, slices
    of different orientation, duplicate positions, a missing or irregular slice (a gap between
    neighbouring slice positions that differs from the median gap by more than ``tolerance`` of it),
    and slices whose positions drift across the slice plane (gantry tilt).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such DICOM series folder")
    series_reader = sitk.ImageSeriesReader()
    series = series_reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        raise InputError(f"{folder}: folder holds {len(series)} DICOM series {list(series)}; give one")
    files = list(series_reader.GetGDCMSeriesFileNames(str(folder), series[0]))
    if len(files) < 2:
        raise InputError(f"{folder}: DICOM series has {len(files)} slice(s); a volume needs at least 2")
    reader = sitk.ImageFileReader()
    positions, orientations, numbers = [], [], []
    for file in files:
        reader.SetFileName(file)
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            raise InputError(f"{folder}: slice {Path(file).name} cannot be read ({err})") from err
        try:
            positions.append([float(v) for v in _dicom_tag(reader, "0020|0032", file, folder).split("\\")])
            orientations.append([float(v) for v in _dicom_tag(reader, "0020|0037", file, folder).split("\\")])
        except ValueError as err:
            raise InputError(f"{folder}: slice {Path(file).name} has an unreadable position/orientation") from err
        number = reader.GetMetaData("0020|0013").strip() if reader.HasMetaDataKey("0020|0013") else ""
        numbers.append(int(float(number)) if number else None)
    orientation = np.asarray(orientations)
    if np.abs(orientation - orientation[0]).max() > 1e-4:
        raise InputError(f"{folder}: slices have different ImageOrientationPatient values")
    normal = np.cross(orientation[0, :3], orientation[0, 3:])
    along = np.asarray(positions) @ normal
    order = np.argsort(along, kind="stable")
    gaps = np.diff(along[order])
    step = float(np.median(gaps))
    if step <= 1e-3 or gaps.min() <= 1e-3:
        raise InputError(f"{folder}: two slices share one position ({along[order][np.argmin(gaps)]:.3f} mm "
                         "along the slice normal)")
    bad = np.flatnonzero(np.abs(gaps - step) > tolerance * step)
    if bad.size:
        k = int(bad[0])
        raise InputError(f"{folder}: missing or irregular slice: gap {gaps[k]:.3f} mm between slice positions "
                         f"{along[order][k]:.3f} and {along[order][k + 1]:.3f} mm, while the series steps "
                         f"{step:.3f} mm ({bad.size} such gap(s))")
    lateral = np.asarray(positions)[order] - np.outer(along[order], normal)  # in-plane offset of each slice
    drift = float(np.linalg.norm(lateral - lateral[0], axis=1).max())
    if drift > tolerance * step:
        raise InputError(f"{folder}: slice positions drift {drift:.3f} mm across the slice plane (gantry tilt or "
                         "sheared series); a volume grid cannot hold it")
    spacing_z = float((along[order][-1] - along[order][0]) / (len(files) - 1))
    return DicomSeries(folder, tuple(files[i] for i in order), tuple(float(along[i]) for i in order),
                       tuple(numbers[i] for i in order), spacing_z)


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: the process's umask, for the mode of files written atomically


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes); rename it to ``path`` on success.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 less the umask), not the
    owner-only mode of temporary files, so results are readable on a shared file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def staged_folder(path: str | os.PathLike | None) -> Iterator[Path | None]:
    """Yield a temporary folder beside ``path`` (None for None); on success its files and folders
    move into ``path`` (created), each replacing one of the same name (a folder from an earlier run
    whole: nothing of it stays); on failure it is removed: a failed command leaves none of them."""
    if path is None:
        yield None
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        path.mkdir(exist_ok=True)
        old = tmp / ".replaced"  # what an earlier run left under a new folder's name, removed below
        for item in sorted(p for p in tmp.iterdir() if p != old):
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~_UMASK)
            there = path / item.name
            if (item.is_dir() or there.is_dir()) and os.path.lexists(there):
                old.mkdir(exist_ok=True)  # os.replace cannot put a folder over a non-empty one
                os.replace(there, old / item.name)
            os.replace(item, there)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def replaced_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it becomes ``path``, and what was there
    before goes whole (two renames, then the old folder is removed: nothing of it is merged with
    the new); on failure it is removed and ``path`` is as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        for item in tmp.rglob("*"):
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~_UMASK)
        if os.path.lexists(path):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old / path.name, path)  # put the earlier one back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_image(image: sitk.Image, path: str | os.PathLike, compression_level: int = 1) -> Path:
    """Write ``image`` atomically (gzip level 1 for ``.nii.gz``: fast, about as small)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=path.name.endswith(".gz"),
                            compressionLevel=compression_level)
        except RuntimeError as err:  # ITK's word for a full disk or a refused write: one line naming the file
            raise OSError(errno.EIO, f"could not be written (ITK: {str(err).strip().splitlines()[-1]})",
                          str(path)) from None
    return path


def write_table(table: pd.DataFrame, path: str | os.PathLike, float_format: str = "%.4f") -> Path:
    """Write a CSV (or TSV for ``.tsv``) atomically."""
    path = Path(path)
    sep = "\t" if path.suffix == ".tsv" else ","
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, sep=sep, float_format=float_format)
    return path


def is_id_column(name: object) -> bool:
    """Identifiers are the columns named ``*_id`` or ``*_image`` (``pair_id``, ``lesion_id``,
    ``image_id``, ``source_image``, ...): text, whatever they look like. DLS pair ids are numbers
    in the test split and "valid-<k>" beside them, two tables must join on them, a patient
    "000016" keeps its zeros, and an id "NA" or "null" is an id, not a missing value."""
    return isinstance(name, str) and name.endswith(("_id", "_image"))


def read_table(path: str | os.PathLike, required: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV/TSV table and check that ``required`` columns are present; id columns
    (:func:`is_id_column`) are text exactly as written (pandas' NA strings kept there, only there)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a table")
    sep = "\t" if path.suffix == ".tsv" else ","
    try:
        header = pd.read_csv(path, sep=sep, nrows=0).columns
        ids = [c for c in header if is_id_column(c)]
        na_values = {c: sorted(STR_NA_VALUES) for c in header if c not in ids}
        table = pd.read_csv(path, sep=sep, dtype=dict.fromkeys(ids, str), keep_default_na=False, na_values=na_values)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file (no header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable {'TSV' if path.suffix == '.tsv' else 'CSV'} table "
                         f"({str(error).strip().splitlines()[-1]})") from None
    _check_fields(path, sep, len(header))
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    return table


def _check_fields(path: Path, sep: str, n_columns: int) -> None:
    """Stop on the first data row with more or fewer fields than the header (pandas would take an
    extra first field as the index, shifting every value one column, and fill a short row with
    NaN)."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        for number, fields in enumerate(csv.reader(fh, delimiter=sep)):
            if number and fields and len(fields) != n_columns:
                raise InputError(f"{path}: row {number} has {len(fields)} fields, the header {n_columns}")


# file names made from data (lesion, image and series ids): letters, digits, "-", "_" and "." stay;
# anything else, "~" itself, a leading or trailing ".", and the first letter of a name Windows keeps
# for a device become ~XX (the UTF-8 bytes in hex), so no name climbs out of its folder, names
# stay distinct, and original_name gives the id back
_NAME_KEEPS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{k}" for k in range(10)),
                              *(f"LPT{k}" for k in range(10))})
MAX_NAME_BYTES = 160  # the encoded id; a file system allows 255, and a prefix and suffix are added


def _escaped(char: str) -> str:
    return "".join(f"~{b:02X}" for b in char.encode("utf-8"))


def safe_name(text: str) -> str:
    """``text`` (an id) as one file-name component that stays inside its folder on POSIX and Windows
    file systems: distinct ids give distinct names, :func:`original_name` reverses it, and ids of
    letters, digits, ``-``, ``_`` and inner ``.`` keep their name. ValueError for an empty id or
    one whose name would be longer than :data:`MAX_NAME_BYTES`."""
    text = str(text)
    if not text:
        raise ValueError("an empty id")
    chars = [c if c in _NAME_KEEPS else _escaped(c) for c in text]
    for k in (0, len(chars) - 1):
        if chars[k] == ".":
            chars[k] = _escaped(".")
    if text.split(".")[0].upper() in _WINDOWS_DEVICES:
        chars[0] = _escaped(text[0])
    name = "".join(chars)
    if len(name) > MAX_NAME_BYTES:
        written = "" if len(name) == len(text) else f", {len(name)} once written as a file name"
        raise ValueError(f"{len(text)} characters{written}: too long to name a file (at most {MAX_NAME_BYTES})")
    return name


def original_name(name: str) -> str:
    """The id that :func:`safe_name` wrote as ``name``."""
    raw, k = bytearray(), 0
    while k < len(name):
        if name[k] == "~":
            raw.append(int(name[k + 1:k + 3], 16))
            k += 3
        else:
            raw.extend(name[k].encode("ascii"))
            k += 1
    return raw.decode("utf-8")


def check_ids(table: pd.DataFrame, columns: list[str] | tuple[str, ...], source: str) -> None:
    """Stop where an id in ``columns`` is empty or too long to name a file (:func:`safe_name`),
    naming the file, the row and the column: before any work, not when a file is written."""
    for column in columns:
        if column not in table.columns:
            continue
        for k, (index, value) in enumerate(zip(table.index, table[column].tolist(), strict=True)):
            number = int(index) + 1 if isinstance(index, (int, np.integer)) else k + 1
            text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
            try:
                safe_name(text)
            except ValueError as why:
                shown = repr(text) if len(text) <= 40 else repr(text[:40]) + "..."
                raise InputError(f"{source}: row {number}: {column} = {shown}: {why}") from None


def named_path(folder: str | os.PathLike, text: str, prefix: str = "", suffix: str = "") -> Path:
    """``folder / (prefix + safe_name(text) + suffix)``: the one way a file is named from data."""
    return Path(folder) / f"{prefix}{safe_name(text)}{suffix}"


def volume_paths(tables: list[str | os.PathLike] | tuple[str | os.PathLike, ...]) -> dict[str, str]:
    """``image_id -> path`` from volume tables (CSV with columns ``image_id, path``); later tables win."""
    paths: dict[str, str] = {}
    for table in tables:
        frame = read_table(table, required=["image_id", "path"])
        check_ids(frame, ["image_id"], str(table))
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

    def corners(self) -> np.ndarray:
        """The world points (8, 3) of the grid's corner voxel centres."""
        last = np.asarray(self.size, float) - 1.0
        return self.index_to_world(np.array([[i, j, k] for i in (0, last[0]) for j in (0, last[1])
                                             for k in (0, last[2])]))

    def z_extent_mm(self) -> float:
        """How far the grid spans along world z (its corner voxel centres' extent)."""
        z = self.corners()[:, 2]
        return float(z.max() - z.min())

    def covers(self, points_mm: np.ndarray) -> np.ndarray:
        """Whether each world point lies within the grid's voxels (half a voxel beyond the outer
        voxel centres)."""
        idx = self.world_to_index(points_mm)
        return np.all((idx >= -0.5 - 1e-6) & (idx <= np.asarray(self.size, float) - 0.5 + 1e-6), axis=1)

    def contains(self, points_mm: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
        """Whether each world point lies inside the grid (voxel centres) by ``margin_mm``."""
        idx = self.world_to_index(points_mm)
        margin = margin_mm / np.asarray(self.spacing)
        upper = np.asarray(self.size, float) - 1.0 - margin
        return np.all((idx >= margin - 1e-6) & (idx <= upper + 1e-6), axis=1)


def read_geometry(path: str | os.PathLike) -> Geometry:
    """The grid of a volume file, from its header (no voxels read); a DICOM series folder is read."""
    if Path(path).is_dir():
        return Geometry.of(read_image(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputError(f"{path}: cannot be read as an image ({str(err).strip().splitlines()[-1]})") from None
    return Geometry(reader.GetOrigin(), reader.GetSpacing(), reader.GetSize(), reader.GetDirection())


class LoadCache:
    """The last few loaded volumes by image id (embedding maps: float32 maps of a 2 mm CT take
    about 1 GB)."""

    def __init__(self, load: Callable[[Any], Any], size: int = 3) -> None:
        self.load, self.size, self.items = load, size, OrderedDict()

    def __call__(self, image_id: Hashable) -> Any:
        if image_id in self.items:
            self.items.move_to_end(image_id)
        else:
            self.items[image_id] = self.load(image_id)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return self.items[image_id]
