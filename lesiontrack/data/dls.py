"""DLS (Deep Longitudinal Study) on DeepLesion: downloads, PNG slices -> sub-volume NIfTI, pairs in world mm.

DeepLesion ships 16-bit PNG slices (HU = value - 32768) in ``Images_png/<PPPPPP_SS_SS>/<NNN>.png``
inside 56 zip archives; DLS names sub-volumes ``PPPPPP_SS_SS_FFF-LLL.nii.gz`` (slices FFF..LLL,
contiguous) and gives points as voxels ``[x=column, y=row, z=slice offset in the sub-volume]``.

Geometry (that of DeepLesion's DL_save_nifti: array (rows, cols, slices), slice index running
towards the feet, axis-aligned, spacing from DL_info.csv ``Spacing_mm_px_``) in SimpleITK's LPS
world: index (i, j, k) = (column, row, slice offset), direction diag(1, 1, -1) (columns run to the
patient's left, rows to the back, slices to the feet), origin ``(0, 0, -(FFF - 1) * sz)`` so that
every sub-volume of one series shares one world frame (slice n at z = -(n - 1) * sz).
:func:`dls_geometry` is the only place that knows this; :func:`dls_voxel_to_world` uses it.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lesiontrack.download import download
from lesiontrack.evaluate import dls_document, load_dls_entries, recist_radius_mm
from lesiontrack.io import (
    Geometry,
    InputError,
    check_writable,
    read_table,
    safe_name,
    staged_folder,
    write_image,
    write_table,
)
from lesiontrack.tables import DLS_PAIR_COLUMNS, SOURCE_POINT, TARGET_POINT

HU_OFFSET = 32768
SERIES_RE = re.compile(r"^(\d{6})_(\d{2})_(\d{2})$")
NAME_RE = re.compile(r"^(\d{6})_(\d{2})_(\d{2})_(\d{3,})-(\d{3,})(?:\.nii\.gz)?$")
MEMBER_RE = re.compile(r"(?:^|/)(\d{6}_\d{2}_\d{2})/(\d+)\.png$")
INDEX_COLUMNS = ["series_id", "archive", "n_slices", "first_slice", "last_slice"]
# DeepLesion's DL_info.csv header (the converter reads File_name, Slice_range, Spacing_mm_px_)
DL_INFO_COLUMNS = ["File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index",
                   "Measurement_coordinates", "Bounding_boxes", "Lesion_diameters_Pixel_",
                   "Normalized_lesion_location", "Coarse_lesion_type", "Possibly_noisy", "Slice_range",
                   "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender", "Patient_age",
                   "Train_Val_Test"]



def archive_urls() -> list[str]:
    """The 56 DeepLesion archive URLs shipped with the package; entry k-1 is ``Images_png_{k:02d}.zip``."""
    text = resources.files("lesiontrack.data").joinpath("deeplesion_urls.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def archive_name(number: int) -> str:
    return f"Images_png_{number:02d}.zip"


# --- names and geometry ---------------------------------------------------------------------------

@dataclass(frozen=True)
class VolumeName:
    """A DLS sub-volume name ``PPPPPP_SS_SS_FFF-LLL``: series and first/last slice (1-based, inclusive)."""

    series_id: str
    first: int
    last: int

    @classmethod
    def parse(cls, name: str, source: str = "DLS volume name") -> VolumeName:
        match = NAME_RE.match(Path(name).name)
        if not match or int(match[5]) < int(match[4]):
            raise InputError(f"{source}: volume name {name!r} is not PPPPPP_SS_SS_FFF-LLL.nii.gz")
        return cls(f"{match[1]}_{match[2]}_{match[3]}", int(match[4]), int(match[5]))

    @property
    def image_id(self) -> str:
        return f"{self.series_id}_{self.first:03d}-{self.last:03d}"

    @property
    def filename(self) -> str:
        return f"{safe_name(self.image_id)}.nii.gz"

    @property
    def n_slices(self) -> int:
        return self.last - self.first + 1

    @property
    def patient(self) -> str:
        return self.series_id[:6]


def dls_geometry(name: str | VolumeName, spacing_mm: Sequence[float], inplane_size: tuple[int, int] = (512, 512)
                 ) -> Geometry:
    """Geometry of a DLS sub-volume (see the module docstring); ``inplane_size`` = (columns, rows)."""
    volume = name if isinstance(name, VolumeName) else VolumeName.parse(name)
    try:
        spacing = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        spacing = ()
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(f"{volume.filename}: spacing {list(spacing_mm)} mm: expected 3 positive numbers")
    return Geometry(origin=(0.0, 0.0, -(volume.first - 1) * spacing[2]), spacing=spacing,  # type: ignore[arg-type]
                    size=(int(inplane_size[0]), int(inplane_size[1]), volume.n_slices),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))


def dls_voxel_to_world(voxel_xyz: Sequence[float] | np.ndarray, name: str | VolumeName,
                       spacing_mm: Sequence[float]) -> np.ndarray:
    """DLS voxel ``[x=column, y=row, z=slice offset in the sub-volume]`` (N, 3) or (3,) -> world mm (N, 3), LPS."""
    return dls_geometry(name, spacing_mm).index_to_world(np.asarray(voxel_xyz, float))


# --- DL_info.csv ----------------------------------------------------------------------------------

def _numbers(text: Any, count: int, path: Path, row: int, column: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != count or not all(np.isfinite(values)):
        raise InputError(f"{path}: row {row} {column} = {text!r}: expected {count} comma-separated numbers")
    return values


def load_dl_info(path: str | Path) -> pd.DataFrame:
    """DL_info.csv -> one row per annotated slice: ``series_id, patient, sx, sy, sz, first_slice, last_slice``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    raw = pd.read_csv(path, dtype=str)
    required = ["File_name", "Slice_range", "Spacing_mm_px_"]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; found {list(raw.columns)}")
    rows = []
    for number, record in enumerate(raw.to_dict("records"), start=2):  # line 1 is the header
        series_id = str(record["File_name"])[:12]
        if not SERIES_RE.match(series_id):
            raise InputError(f"{path}: row {number} File_name = {record['File_name']!r}: expected PPPPPP_SS_SS_NNN.png")
        sx, sy, sz = _numbers(record["Spacing_mm_px_"], 3, path, number, "Spacing_mm_px_")
        first, last = (int(v) for v in _numbers(record["Slice_range"], 2, path, number, "Slice_range"))
        rows.append({"series_id": series_id, "patient": series_id[:6], "sx": sx, "sy": sy, "sz": sz,
                     "first_slice": first, "last_slice": last})
    return pd.DataFrame(rows)


def series_spacing(info: pd.DataFrame) -> dict[str, tuple[float, float, float]]:
    """``series_id -> (sx, sy, sz)`` mm from :func:`load_dl_info`."""
    first = info.drop_duplicates("series_id")
    return {s: (x, y, z) for s, x, y, z in zip(first["series_id"], first["sx"], first["sy"], first["sz"], strict=True)}


def json_spacings(split_jsons: Iterable[str | Path]) -> dict[str, tuple[float, float, float]]:
    """``series_id -> (sx, sy, sz)`` mm from the DLS annotation files' ``source spacing`` /
    ``target spacing`` (every evaluation volume has one: DL_info.csv is not needed for them). Two
    entries that give one series different spacings stop it, naming both."""
    spacing: dict[str, tuple[float, float, float]] = {}
    where: dict[str, str] = {}
    for path in split_jsons:
        for number, entry in enumerate(load_dls_entries(path), start=1):
            for end in ("source", "target"):
                series = VolumeName.parse(entry[end], str(path)).series_id
                value = tuple(float(v) for v in _numbers_field(entry, f"{end} spacing", 3, Path(path), number))
                if series in spacing and not np.allclose(spacing[series], value, rtol=0, atol=1e-4):
                    raise InputError(f"{path}: entry {number} {end} spacing {list(value)} for series {series}, "
                                     f"but {where[series]} gives {list(spacing[series])}")
                spacing.setdefault(series, value)  # type: ignore[arg-type]
                where.setdefault(series, f"{path} entry {number}")
    return spacing


def checked_spacings(split_jsons: Iterable[str | Path], dl_info: str | Path | None
                     ) -> dict[str, tuple[float, float, float]]:
    """The spacing of every series: the DLS JSONs' for the evaluation series, checked against
    DL_info.csv where it is given (a disagreement beyond 0.001 mm names the series and both
    values), and DL_info.csv's for the series the JSONs do not name (pretraining volumes)."""
    split_jsons = list(split_jsons)
    spacing = json_spacings(split_jsons)
    if dl_info is None:
        return spacing
    listed = series_spacing(load_dl_info(dl_info))
    for series, value in sorted(spacing.items()):
        if series in listed and not np.allclose(listed[series], value, rtol=0, atol=1e-3):
            raise InputError(f"{dl_info}: series {series} spacing {list(listed[series])} mm disagrees with the DLS "
                             f"annotations' {list(value)} mm ({', '.join(map(str, split_jsons))})")
    return {**listed, **spacing}


def split_volume_names(split_jsons: Iterable[str | Path]) -> list[str]:
    """Sorted sub-volume names (``.nii.gz``) that DLS annotation files refer to (sources and targets)."""
    names = set()
    for path in split_jsons:
        for entry in load_dls_entries(path):
            names.update(VolumeName.parse(entry[k], str(path)).filename for k in ("source", "target"))
    return sorted(names)


def pretraining_volumes(dl_info: str | Path | pd.DataFrame, split_jsons: Iterable[str | Path]) -> pd.DataFrame:
    """DeepLesion sub-volumes (from DL_info.csv ``Slice_range``) of patients outside the DLS splits given.

    Columns ``image_id, series_id, patient``; one row per distinct (series, slice range)."""
    info = dl_info if isinstance(dl_info, pd.DataFrame) else load_dl_info(dl_info)
    excluded = {VolumeName.parse(name).patient for name in split_volume_names(split_jsons)}
    keep = info[~info["patient"].isin(excluded)].drop_duplicates(["series_id", "first_slice", "last_slice"])
    rows = [{"image_id": VolumeName(s, f, l).image_id, "series_id": s, "patient": s[:6]}
            for s, f, l in zip(keep["series_id"], keep["first_slice"], keep["last_slice"], strict=True)]
    return pd.DataFrame(rows, columns=["image_id", "series_id", "patient"]).sort_values("image_id", ignore_index=True)


# --- archives -------------------------------------------------------------------------------------

def archive_members(archive: str | Path) -> dict[str, dict[int, str]]:
    """``series_id -> {slice number: member name}`` of the PNG slices in one DeepLesion archive."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{archive}: not a readable zip archive ({err})") from err
    members: dict[str, dict[int, str]] = {}
    for name in names:
        match = MEMBER_RE.search(name)
        if match:
            members.setdefault(match[1], {})[int(match[2])] = name
    return members


def locate_slices(archives: Iterable[str | Path]) -> dict[str, dict[int, tuple[Path, str]]]:
    """``series_id -> {slice number: (archive, member)}`` over ``archives`` (each archive's
    directory read once)."""
    located: dict[str, dict[int, tuple[Path, str]]] = {}
    for archive in archives:
        for series_id, slices in archive_members(archive).items():
            located.setdefault(series_id, {}).update((n, (Path(archive), m)) for n, m in slices.items())
    return located


@contextmanager
def opened_archives() -> Iterator[dict[Path, zipfile.ZipFile]]:
    """Archives opened on first use by :func:`slice_stack` (each once), closed on leaving."""
    handles: dict[Path, zipfile.ZipFile] = {}
    try:
        yield handles
    finally:
        for zf in handles.values():
            zf.close()


def slice_stack(located: dict[int, tuple[Path, str]], numbers: Iterable[int], handles: dict[Path, zipfile.ZipFile],
                name: str) -> np.ndarray:
    """The PNG slices ``numbers`` of one series (``located``: :func:`locate_slices`' entry) as
    (slices, rows, cols) HU; slices of different sizes stop it, naming ``name``."""
    slices = []
    for number in numbers:
        archive, member = located[number]
        if archive not in handles:
            handles[archive] = zipfile.ZipFile(archive)
        slices.append(png_to_hu(handles[archive].read(member), f"{archive}:{member}"))
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise InputError(f"{name}: slices of different sizes {sorted(shapes)}")
    return np.stack(slices)


def archive_index(archives: Iterable[str | Path], out: str | Path | None = None) -> pd.DataFrame:
    """Which archive holds which series: ``series_id, archive, n_slices, first_slice, last_slice``."""
    rows = []
    for archive in archives:
        for series_id, slices in sorted(archive_members(archive).items()):
            rows.append({"series_id": series_id, "archive": str(archive), "n_slices": len(slices),
                         "first_slice": min(slices), "last_slice": max(slices)})
    table = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    if out is not None:
        write_table(table, out)
    return table


def contiguous_runs(slices: Iterable[int]) -> list[tuple[int, int]]:
    """Runs of consecutive slice numbers, (first, last) inclusive: [1, 2, 3, 5, 6] -> [(1, 3), (5, 6)]."""
    ordered = sorted(set(slices))
    runs: list[tuple[int, int]] = []
    for n in ordered:
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def png_to_hu(data: bytes, source: str) -> np.ndarray:
    """A DeepLesion 16-bit PNG slice -> int16 HU (value - 32768), array (rows, cols)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image)
    except OSError as err:
        raise InputError(f"{source}: not a readable PNG ({err})") from err
    if array.ndim != 2 or array.dtype.kind not in "ui" or array.dtype.itemsize < 2:
        raise InputError(f"{source}: expected a 16-bit single-channel PNG, found {array.dtype} {array.shape}")
    return (array.astype(np.int32) - HU_OFFSET).astype(np.int16)


def hu_to_png(hu: np.ndarray) -> bytes:
    """int16 HU (rows, cols) -> DeepLesion-format 16-bit PNG bytes (value = HU + 32768)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.asarray(hu, np.int32) + HU_OFFSET).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- head-feet check ------------------------------------------------------------------------------

LUNG_HU = (-950.0, -600.0)
LIVER_HU = (40.0, 90.0)


def head_feet_check(hu: np.ndarray, source: str, lung_fraction: float = 0.05, liver_fraction: float = 0.10,
                    slice_numbers: Sequence[int] | None = None) -> str:
    """Lungs above liver: air-filled lung slices must come at smaller slice index than liver-density ones.

    ``hu`` is (slices, rows, cols); ``slice_numbers`` (default 0, 1, ...) place the slices along the
    series. Returns ``confirmed`` or ``inconclusive`` (one kind of slice is missing); raises
    :class:`InputError` naming ``source`` when the order is reversed."""
    flat = hu.reshape(hu.shape[0], -1)
    numbers = np.arange(hu.shape[0]) if slice_numbers is None else np.asarray(slice_numbers)
    lung = ((flat >= LUNG_HU[0]) & (flat <= LUNG_HU[1])).mean(axis=1)
    liver = ((flat >= LIVER_HU[0]) & (flat <= LIVER_HU[1])).mean(axis=1)
    lung_slices = numbers[lung >= lung_fraction]
    liver_slices = numbers[(liver >= liver_fraction) & (lung < lung_fraction / 5)]
    if lung_slices.size == 0 or liver_slices.size == 0:
        return "inconclusive"
    lung_at, liver_at = float(np.median(lung_slices)), float(np.median(liver_slices))
    if lung_at < liver_at:
        return "confirmed"
    raise InputError(f"{source}: head-feet check failed: air-filled lung slices (median slice index {lung_at:g}) "
                     f"are not above liver-density slices (median slice index {liver_at:g}); the slice index "
                     "must run towards the feet")


# --- conversion -----------------------------------------------------------------------------------

def series_image(hu: np.ndarray, volume: VolumeName, spacing_mm: Sequence[float]) -> sitk.Image:
    """Stack (slices, rows, cols) HU -> a SimpleITK image with the DLS geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu, dtype=np.int16))
    return dls_geometry(volume, spacing_mm, (hu.shape[2], hu.shape[1])).stamp(image)


def convert_series(series_id: str, archives: Sequence[str | Path], spacing_mm: Sequence[float],
                   out_dir: str | Path, check: bool = True, staging: str | Path | None = None
                   ) -> list[dict[str, Any]]:
    """All sub-volumes of one series (runs of contiguous slices in the archives) -> NIfTI in ``out_dir``.

    Each sub-volume is checked head-feet on its own, then the series' sub-volumes together (by slice
    number): ``head_feet`` is ``confirmed``, ``confirmed-series`` or ``inconclusive``; nothing is
    written for a series that fails. Returns rows ``image_id, path, series_id, n_slices, head_feet``.
    ``staging``: where the files are written instead (their rows and messages name ``out_dir``)."""
    out_dir = Path(out_dir)
    written_in = Path(staging) if staging is not None else out_dir
    located = locate_slices(archives).get(series_id, {})
    if not located:
        raise InputError(f"{list(map(str, archives))}: no PNG slices of series {series_id}")
    volumes: list[tuple[VolumeName, np.ndarray, str]] = []
    with opened_archives() as handles:
        for first, last in contiguous_runs(located):
            volume = VolumeName(series_id, first, last)
            hu = slice_stack(located, range(first, last + 1), handles, volume.filename)
            status = head_feet_check(hu, f"{out_dir / volume.filename} (from {series_id}/{first:03d}..{last:03d}.png)"
                                     ) if check else "unchecked"
            volumes.append((volume, hu, status))
    if check and len(volumes) > 1:  # sub-volumes of one series together: lung and liver slabs apart
        names = ", ".join(str(out_dir / v.filename) for v, _, _ in volumes)
        series_status = head_feet_check(np.concatenate([hu for _, hu, _ in volumes]), f"{names} (series {series_id})",
                                        slice_numbers=[n for v, _, _ in volumes for n in range(v.first, v.last + 1)])
        if series_status == "confirmed":
            volumes = [(v, hu, "confirmed" if s == "confirmed" else "confirmed-series") for v, hu, s in volumes]
    rows = []
    for volume, hu, status in volumes:  # written only once every check has passed
        write_image(series_image(hu, volume, spacing_mm), written_in / volume.filename)
        rows.append({"image_id": volume.image_id, "path": str(out_dir / volume.filename), "series_id": series_id,
                     "n_slices": volume.n_slices, "head_feet": status})
    return rows


def convert(index: str | Path, dl_info: str | Path | None, series_ids: Iterable[str], out_dir: str | Path,
            table: str | Path | None = None, check: bool = True, split_jsons: Sequence[str | Path] = ()
            ) -> pd.DataFrame:
    """Convert the given series (archives looked up in the archive index) -> table ``image_id, path, ...``.
    Spacings: :func:`checked_spacings` (the DLS JSONs ``split_jsons``, DL_info.csv where given)."""
    from tqdm import tqdm

    located = pd.read_csv(index, dtype={"series_id": str})
    spacing = checked_spacings(split_jsons, dl_info)
    rows: list[dict[str, Any]] = []
    if table is not None:
        check_writable(table)
    with staged_folder(out_dir) as staging:  # every series or none: a bad one later leaves nothing
        for series_id in tqdm(sorted(set(series_ids)), desc="convert", unit="series"):
            archives = located.loc[located["series_id"] == series_id, "archive"].tolist()
            if not archives:
                raise InputError(f"{index}: series {series_id} is in no downloaded archive")
            if series_id not in spacing:
                where = dl_info if dl_info is not None else "DL_info.csv (not given: dls.dl_info_url unset)"
                raise InputError(f"{where}: no spacing for series {series_id}, which no DLS annotation file names")
            rows += convert_series(series_id, archives, spacing[series_id], out_dir, check, staging)
        result = pd.DataFrame(rows, columns=["image_id", "path", "series_id", "n_slices", "head_feet"])
        if table is not None:
            write_table(result, table)
    return result


# --- pairs ----------------------------------------------------------------------------------------

def _numbers_field(entry: dict[str, Any], field: str, count: int, path: Path, number: int) -> np.ndarray:
    """``count`` finite numbers of one field of a DLS entry, refused naming the file, entry and value."""
    try:
        value = np.asarray(entry[field], float)
    except (TypeError, ValueError):
        value = np.array([])
    if value.shape != (count,) or not np.isfinite(value).all():
        raise InputError(f"{path}: entry {number} field '{field}' = {entry[field]!r}: expected {count} finite numbers")
    return value


def _point(entry: dict[str, Any], end: str, path: Path, number: int) -> np.ndarray:
    value = _numbers_field(entry, f"{end} center", 3, path, number)
    return dls_voxel_to_world(value, entry[end], entry[f"{end} spacing"])[0]


def _radius_mm(entry: dict[str, Any], end: str, path: Path, number: int) -> float:
    """The lesion radius in mm from ``<end> recist diameter`` (pixels), refused unless positive numbers."""
    field = f"{end} recist diameter"
    try:
        diameters = np.asarray(entry[field], float).reshape(-1)
    except (TypeError, ValueError):
        diameters = np.array([])
    if diameters.size == 0 or not np.isfinite(diameters).all() or diameters.max() <= 0 or diameters.min() < 0:
        raise InputError(f"{path}: entry {number} field '{field}' = {entry[field]!r}: expected RECIST diameters "
                         "in pixels (positive numbers)")
    spacing = dls_geometry(entry[end], entry[f"{end} spacing"]).spacing
    return recist_radius_mm(diameters, spacing[0])


def pair_rows(path: str | Path, split: str) -> pd.DataFrame:
    """Directed pairs of a DLS annotation file in world mm; entries 2k-1 (``forward``) and 2k share pair k
    (pair id ``k`` in the test split, as Deep Lesion Tracker numbers it, ``<split>-k`` in the others)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such DLS annotation file (split {split!r})")
    required = ["source", "target", "source center", "target center", "source spacing", "target spacing",
                "target recist diameter", "target box"]
    rows = []
    entries, keys = dls_document(path)
    for number, entry in enumerate(entries, start=1):
        missing = [k for k in required if k not in entry]
        if missing:
            raise InputError(f"{path}: entry {number} lacks field(s) {missing}")
        for end in ("source", "target"):
            volume = VolumeName.parse(entry[end], f"{path}: entry {number} field '{end}'")
            try:
                dls_geometry(volume, entry[f"{end} spacing"])
            except InputError as error:
                raise InputError(f"{path}: entry {number} field '{end} spacing' = {entry[f'{end} spacing']!r}: "
                                 "expected 3 positive numbers (mm)") from error
        known = entry.get("lesion pair id")  # DLTMix.json has it; test.json and valid.json do not
        pair_k = str(int(known)) if known is not None else str((number + 1) // 2)
        # pair k of every split: one pairs.csv holds them all, each pair id once
        pair_id = pair_k if split == "test" else f"{split}-{pair_k}"
        source, target = _point(entry, "source", path, number), _point(entry, "target", path, number)
        box = _numbers_field(entry, "target box", 6, path, number)
        corners = dls_voxel_to_world(np.stack([box[:3], box[:3] + box[3:]]), entry["target"], entry["target spacing"])
        rows.append({
            "pair_id": pair_id, "lesion_id": f"dls-{split}-{pair_k}",
            "direction": "forward" if number % 2 else "backward",
            "source_image": VolumeName.parse(entry["source"], str(path)).image_id,
            "target_image": VolumeName.parse(entry["target"], str(path)).image_id,
            **dict(zip(SOURCE_POINT, source, strict=True)),
            **dict(zip(TARGET_POINT, target, strict=True)),
            "target_radius_mm": _radius_mm(entry, "target", path, number),
            **{f"target_box_min_{a}": v for a, v in zip("xyz", corners.min(0), strict=True)},
            **{f"target_box_max_{a}": v for a, v in zip("xyz", corners.max(0), strict=True)},
            "subject_id": VolumeName.parse(entry["source"]).patient, "split": split, "lesion_type": "",
            "source_radius_mm": (_radius_mm(entry, "source", path, number)
                                 if "source recist diameter" in entry else np.nan),
            "dls_entry": keys[number - 1],
        })
    return pd.DataFrame(rows, columns=DLS_PAIR_COLUMNS)


def pairs_table(splits: dict[str, str | Path], out: str | Path | None = None) -> pd.DataFrame:
    """pairs.csv of the DLS splits (``{"test": test.json, "valid": valid.json}``), column ``split``."""
    table = pd.concat([pair_rows(path, split) for split, path in splits.items()], ignore_index=True)
    if out is not None:
        write_table(table, out, float_format="%.6f")
    return table


# --- downloads and the series plan ----------------------------------------------------------------

def fetch(url: str | None, destination: str | Path, what: str, progress: bool = True, **options: Any) -> Path:
    """Download one DLS/DeepLesion file through :func:`lesiontrack.download.download` (resume, retry, verify;
    ``options`` such as ``retries`` and ``backoff_s`` go to it)."""
    if not url:
        raise InputError(f"{destination}: no URL configured for {what} (set it in the config; see "
                         "lesiontrack/config.schema.yaml, section dls)")
    return download(url, destination, progress=progress, **options)


def archive_url(number: int, urls: Sequence[str] | None = None) -> str:
    """URL of ``Images_png_{number:02d}.zip``: from ``urls`` (config ``dls.archive_urls``) or the package list."""
    urls = list(urls) if urls else archive_urls()
    if not 1 <= number <= len(urls):
        raise InputError(f"dls.archives: archive {number} out of range 1..{len(urls)}")
    return urls[number - 1]


def download_all(cfg: dict[str, Any], out_dir: str | Path, progress: bool = True, **options: Any) -> list[Path]:
    """Annotations, DL_info.csv (where ``dl_info_url`` is set: the annotations give the evaluation
    volumes' spacings) and the configured archives of the ``dls`` config section, into ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [fetch(url, out_dir / "annotations" / f"{split}.json", f"DLS {split} annotations", progress, **options)
             for split, url in cfg["annotation_urls"].items()]
    if cfg.get("dl_info_url"):
        paths.append(fetch(cfg["dl_info_url"], out_dir / "DL_info.csv", "DL_info.csv (dls.dl_info_url)", progress,
                           **options))
    for number in cfg["archives"]:
        paths.append(fetch(archive_url(number, cfg.get("archive_urls")), out_dir / "archives" / archive_name(number),
                           f"DeepLesion archive {number}", progress, **options))
    return paths


def plan_series(index: str | Path | pd.DataFrame, dl_info: str | Path | None, split_jsons: Sequence[str | Path],
                shard_size: int, pretraining: bool = True, out: str | Path | None = None) -> pd.DataFrame:
    """Series to convert and their shards: ``series_id, role, shard``.

    ``role`` is ``dls`` for series that the DLS splits refer to and ``pretrain`` for series of
    patients outside them (only with ``pretraining``); series in no downloaded archive are left out
    (the archive index holds what was downloaded). Pretraining series come from DL_info.csv;
    without it (``dl_info`` None) they are the series of the patients of the non-test annotation
    files (``valid.json``) that ``test.json`` does not name: their spacings are in the JSONs
    (:func:`no_dl_info_notice`)."""
    located = index if isinstance(index, pd.DataFrame) else pd.read_csv(index, dtype={"series_id": str})
    present = set(located["series_id"])
    dls_series = {VolumeName.parse(n).series_id for n in split_volume_names(split_jsons)}
    rows = [{"series_id": s, "role": "dls"} for s in sorted(dls_series & present)]
    if pretraining and dl_info is not None:
        extra = set(pretraining_volumes(dl_info, split_jsons)["series_id"]) & present
        rows = [*rows, *({"series_id": s, "role": "pretrain"} for s in sorted(extra - dls_series))]
    elif pretraining:
        held_out = [p for p in split_jsons if Path(p).stem == "test"]
        tested = {VolumeName.parse(n).patient for n in split_volume_names(held_out)}
        rows = [{"series_id": r["series_id"], "role": "dls" if r["series_id"][:6] in tested else "pretrain"}
                for r in rows]
    table = pd.DataFrame(rows, columns=["series_id", "role"])
    table["shard"] = [f"{k // shard_size:03d}" for k in range(len(table))]
    if out is not None:
        write_table(table, out)
    return table


def no_dl_info_notice(cfg: dict[str, Any]) -> str | None:
    """The one line a DLS run without ``dls.dl_info_url`` gets before anything is downloaded
    (None where the URL is set or nothing is downloaded); ``cfg``: the whole config."""
    if not cfg["datasets"]["dls"]["enabled"] or not cfg["datasets"]["dls"]["download"] or cfg["dls"]["dl_info_url"]:
        return None
    pretraining = ("pretraining uses the DLS valid split's volumes only (patients outside test.json)"
                   if cfg["dls"]["pretraining"] else "no DeepLesion volume is converted for pretraining")
    return ("dls.dl_info_url is unset: evaluation volumes take their spacings from the DLS JSONs and "
            f"{pretraining}; pretraining on the DeepLesion volumes outside the DLS splits needs DL_info.csv "
            "(their slice ranges and spacings): set dls.dl_info_url to its link from "
            "https://nihcc.app.box.com/v/DeepLesion")


def images_table(shard_tables: Sequence[str | Path], series_csv: str | Path, pairs_csv: str | Path,
                 out: str | Path | None = None) -> pd.DataFrame:
    """The converted sub-volumes of every shard with ``subject_id`` (the DeepLesion patient) and
    ``split``: ``train`` for pretraining series (patients outside the DLS splits), else the DLS
    split whose pairs use the volume (``test`` before ``valid``), or ``unused``."""
    table = pd.concat([read_table(t, required=["image_id", "path", "series_id"]) for t in shard_tables],
                      ignore_index=True)
    roles = read_table(series_csv, required=["series_id", "role"]).astype({"series_id": str})
    role = dict(zip(roles["series_id"], roles["role"], strict=True))
    pairs = read_table(pairs_csv, required=["source_image", "target_image", "split"])
    split_of: dict[str, str] = {}
    for split in sorted(pairs["split"].unique(), key=lambda name: name != "test"):
        chosen = pairs[pairs["split"] == split]
        for image_id in pd.concat([chosen["source_image"], chosen["target_image"]]):
            split_of.setdefault(image_id, split)
    table["series_id"] = table["series_id"].astype(str)
    table["subject_id"] = table["series_id"].str[:6]
    table["split"] = [("train" if role.get(series) == "pretrain" else split_of.get(image_id, "unused"))
                      for image_id, series in zip(table["image_id"], table["series_id"], strict=True)]
    if out is not None:
        write_table(table, out)
    return table

