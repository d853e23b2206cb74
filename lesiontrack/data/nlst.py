"""NLST from the NCI Imaging Data Commons, evaluated on the open NLSTx nodule pairs.

The paper's NLST annotations are private; every table this module feeds is labelled "NLSTx".
Cohort selection is offline, from the series index bundled with PyPI's ``idc-index-data``;
download runs idc-index (s5cmd) per series; NLSTx pixel boxes are converted once, here, to world
millimetres (SimpleITK's LPS physical space) on the converted volume.

Conventions:
- image_id = the series' SeriesInstanceUID; DICOM lands in ``<dicom_dir>/<image_id>/``.
- Screening year = StudyDate year - 1999 (IDC's de-identified NLST dates are 1999-01-02,
  2000-01-02 and 2001-01-02 for T0, T1, T2).
- ``slice_number_convention`` says what NLSTx's ``Slice number`` counts: ``instance_number``
  (the DICOM InstanceNumber), ``index0``/``index1`` (0-/1-based position among the series' slices
  sorted by InstanceNumber).
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lesiontrack.evaluate import recist_radius_mm
from lesiontrack.io import (
    DicomSeries,
    Geometry,
    InputError,
    check_ids,
    check_writable,
    dicom_series,
    named_path,
    read_image,
    read_table,
    staged_folder,
    volume_paths,
    write_image,
    write_table,
)
from lesiontrack.tables import LESION_COLUMNS, validate_table

LABEL = "NLSTx"
CONVENTIONS = ("instance_number", "index0", "index1")
FIRST_SCREENING_YEAR = 1999
NLSTX_COLUMNS = {
    "PID": "pid",
    "study_yr": "study_yr",
    "seriesinstanceuids": "image_id",
    "Abnormality UID": "nodule",
    "Slice number": "slice_number",
    "Bounding box x (pixels)": "box_x",
    "Bounding box y (pixels)": "box_y",
    "Bounding box width (pixels)": "box_w",
    "Bounding box height (pixels)": "box_h",
}
INDEX_COLUMNS = ("SeriesInstanceUID", "PatientID", "StudyInstanceUID", "StudyDate", "Modality", "instanceCount",
                 "series_size_MB", "SeriesDescription")


# --------------------------------------------------------------------------- NLSTx table and pairs
def read_nlstx(path: str | os.PathLike) -> pd.DataFrame:
    """NLSTx CSV -> one row per (nodule, screening year), columns renamed (``NLSTX_COLUMNS``).

    Refused, naming the row and nodule: a position, box or year that is not a number, a box of
    zero or negative size, two rows of one nodule in one screening year."""
    table = read_table(path, required=list(NLSTX_COLUMNS))
    table = table[list(NLSTX_COLUMNS)].rename(columns=NLSTX_COLUMNS)
    validate_table(table, str(path), numeric=["study_yr", "nodule", "slice_number", "box_x", "box_y"],
                   positive=["box_w", "box_h"], unit="pixels", unique=["pid", "nodule", "study_yr"],
                   ids=["pid", "nodule", "study_yr"])
    table["pid"] = table["pid"].astype(str)
    table["study_yr"] = table["study_yr"].astype(float).astype(int)
    table["nodule"] = table["nodule"].map(lambda v: f"{float(v):g}")
    table["lesion_id"] = table["pid"] + "-" + table["nodule"]
    table["slice_number"] = table["slice_number"].astype(float).astype(int)
    return table


def nlstx_pairs(nlstx: pd.DataFrame) -> pd.DataFrame:
    """Every pair of screening years of the same nodule (PID + Abnormality UID), both directions.

    Columns: pair_id, lesion_id, direction (forward = earlier -> later year), source_image,
    target_image, source_year, target_year, consecutive (years differ by one).
    """
    rows = []
    for lesion_id, group in nlstx.sort_values("study_yr").groupby("lesion_id", sort=True):
        years = group.drop_duplicates("study_yr")
        for (_, a), (_, b) in itertools.combinations(years.iterrows(), 2):
            pair_id = f"{lesion_id}-y{a.study_yr}y{b.study_yr}"
            consecutive = b.study_yr - a.study_yr == 1
            for direction, src, tgt in (("forward", a, b), ("backward", b, a)):
                rows.append({"pair_id": pair_id, "lesion_id": lesion_id, "direction": direction,
                             "source_image": src.image_id, "target_image": tgt.image_id,
                             "source_year": int(src.study_yr), "target_year": int(tgt.study_yr),
                             "consecutive": consecutive})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the offline IDC index
def index_path() -> Path:
    import idc_index_data

    return Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)


def idc_series(collection: str = "nlst", parquet: str | os.PathLike | None = None) -> pd.DataFrame:
    """Original (not analysis-result) CT series of ``collection`` from the offline IDC index, with ``study_yr``."""
    import duckdb

    parquet = Path(parquet) if parquet else index_path()
    if not parquet.exists():
        raise InputError(f"{parquet}: IDC index not found (pip install idc-index-data)")
    query = (f"SELECT {', '.join(INDEX_COLUMNS)} FROM read_parquet(?) "
             "WHERE collection_id = ? AND analysis_result_id IS NULL AND Modality = 'CT'")
    with duckdb.connect() as con:
        table = con.execute(query, [str(parquet), collection]).df()
    table = table.rename(columns={"SeriesInstanceUID": "image_id", "PatientID": "pid"})
    year = pd.to_numeric(table["StudyDate"].str[:4], errors="coerce") - FIRST_SCREENING_YEAR
    table["study_yr"] = year.astype("Int64")
    return table


def evaluation_cohort(nlstx: pd.DataFrame, index: pd.DataFrame, source: str = "NLSTx") -> pd.DataFrame:
    """The NLSTx series with their index rows; every one must be in the index."""
    series = nlstx.drop_duplicates("image_id")[["image_id", "pid", "study_yr"]]
    merged = series.merge(index.drop(columns=["pid", "study_yr"]), on="image_id", how="left", validate="1:1")
    missing = merged.loc[merged["instanceCount"].isna(), "image_id"].tolist()
    if missing:
        raise InputError(f"{source}: {len(missing)} series not in the IDC index, e.g. {missing[:3]}")
    merged["instanceCount"] = merged["instanceCount"].astype(int)
    merged["role"] = "evaluation"
    return merged.reset_index(drop=True)


def training_cohort(index: pd.DataFrame, exclude_pids: Sequence[str], n_patients: int, seed: int = 0,
                    slice_spacing_mm: float = 2.0, min_slices: int = 50, scan_length_mm: float = 350.0
                    ) -> pd.DataFrame:
    """Unlabeled longitudinal cohort: one series per patient and screening year, ``n_patients`` patients.

    The offline index has no slice spacing, so it is estimated as ``scan_length_mm / instanceCount``
    (a low-dose chest scan covers about 350 mm); per patient and year the series closest to
    ``slice_spacing_mm`` with at least ``min_slices`` slices is kept. Patients with fewer than two
    screening years and every patient in ``exclude_pids`` are left out; ``n_patients`` of the rest
    are drawn with ``seed`` (all of them if fewer).
    """
    excluded = {str(p) for p in exclude_pids}
    pool = index[(index["instanceCount"] >= min_slices) & index["study_yr"].isin([0, 1, 2])
                 & ~index["pid"].astype(str).isin(excluded)].copy()
    pool["spacing_estimate_mm"] = scan_length_mm / pool["instanceCount"]
    pool["spacing_error"] = (pool["spacing_estimate_mm"] - slice_spacing_mm).abs()
    pool = pool.sort_values(["pid", "study_yr", "spacing_error", "image_id"])
    chosen = pool.drop_duplicates(["pid", "study_yr"], keep="first")
    years = chosen.groupby("pid")["study_yr"].nunique()
    patients = np.sort(years[years >= 2].index.to_numpy(str))
    rng = np.random.default_rng(seed)
    if n_patients < len(patients):
        patients = np.sort(rng.choice(patients, size=n_patients, replace=False))
    cohort = chosen[chosen["pid"].astype(str).isin(set(patients))].drop(columns=["spacing_error"])
    cohort = cohort.assign(role="training", study_yr=cohort["study_yr"].astype(int))
    return cohort.reset_index(drop=True)


TOTALSEG_SEG = "totalsegmentator_ct_segmentations"


def totalseg_segs(study_uids: Sequence[str], parquet: str | os.PathLike | None = None) -> pd.DataFrame:
    """IDC's TotalSegmentator (1.5.6) DICOM SEG series in the given studies: ``StudyInstanceUID,
    SeriesInstanceUID, series_size_MB``. The offline index does not say which CT series a SEG
    segments (a study may hold several CTs), so this is per study: an upper bound on what the
    selected CT series need."""
    import duckdb

    parquet = Path(parquet) if parquet else index_path()
    query = ("SELECT StudyInstanceUID, SeriesInstanceUID, series_size_MB FROM read_parquet(?) "
             "WHERE analysis_result_id = ? AND Modality = 'SEG'")
    with duckdb.connect() as con:
        table = con.execute(query, [str(parquet), TOTALSEG_SEG]).df()
    return table[table["StudyInstanceUID"].isin(set(map(str, study_uids)))].reset_index(drop=True)


def size_mb(cohort: pd.DataFrame) -> float:
    return float(cohort["series_size_MB"].sum())


def select_cohorts(nlstx_csv: str | os.PathLike, n_patients: int, seed: int = 0, slice_spacing_mm: float = 2.0,
                   min_slices: int = 50, parquet: str | os.PathLike | None = None) -> pd.DataFrame:
    """series.csv of the NLST pipeline: the NLSTx evaluation series, then the training cohort."""
    nlstx = read_nlstx(nlstx_csv)
    index = idc_series("nlst", parquet)
    evaluation = evaluation_cohort(nlstx, index, str(nlstx_csv))
    training = training_cohort(index, nlstx["pid"].unique(), n_patients, seed, slice_spacing_mm, min_slices)
    columns = ["image_id", "role", "pid", "study_yr", "StudyInstanceUID", "instanceCount", "series_size_MB",
               "SeriesDescription"]
    return pd.concat([evaluation[columns], training[columns]], ignore_index=True)


# --------------------------------------------------------------------------- download (idc-index / s5cmd)
Downloader = Callable[[str, Path], None]


def idc_downloader(series_uid: str, folder: Path) -> None:
    """Fetch one series into ``folder`` with idc-index (s5cmd sync: files already there are skipped)."""
    from idc_index import IDCClient

    IDCClient().download_from_selection(downloadDir=str(folder), seriesInstanceUID=[series_uid], dirTemplate=None,
                                        use_s5cmd_sync=True, quiet=True, show_progress_bar=False)


def folder_downloader(source: str | os.PathLike) -> Downloader:
    """A downloader that copies ``<source>/<SeriesInstanceUID>/*.dcm`` (a local copy of NLST, e.g.
    from TCIA, or a rehearsal's series) instead of fetching from IDC."""
    source = Path(source)

    def copy(series_uid: str, folder: Path) -> None:
        files = sorted((source / series_uid).glob("*.dcm"))
        if not files:
            raise InputError(f"{source / series_uid}: no DICOM files of series {series_uid} "
                             "(datasets.nlst.dicom_source)")
        for path in files:
            shutil.copy2(path, folder / path.name)

    return copy


def series_complete(folder: Path, n_files: int) -> bool:
    return (folder / ".complete").exists() and sum(1 for p in folder.glob("*.dcm")) >= n_files


def download_series(series: pd.DataFrame, dicom_dir: str | os.PathLike,
                    downloader: Downloader = idc_downloader) -> pd.DataFrame:
    """Download each series (``image_id``, ``instanceCount``) to ``dicom_dir/<image_id>/``; resumable.

    A series goes to ``.<image_id>.part/`` (kept between attempts, so s5cmd sync resumes it), is
    checked for ``instanceCount`` files, and only then renamed into place with a ``.complete``
    marker; complete series are skipped. Returns ``image_id, path``.
    """
    dicom_dir = Path(dicom_dir)
    dicom_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id, count in zip(series["image_id"], series["instanceCount"], strict=True):
        final = named_path(dicom_dir, str(image_id))
        if not series_complete(final, int(count)):
            part = named_path(dicom_dir, str(image_id), prefix=".", suffix=".part")
            part.mkdir(exist_ok=True)
            downloader(str(image_id), part)
            got = sum(1 for p in part.glob("*.dcm"))
            if got < int(count):
                raise InputError(f"{part}: series {image_id} has {got} of {int(count)} DICOM files after download; "
                                 "run again to resume")
            (part / ".complete").write_text(f"{got}\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(part, final)
        rows.append({"image_id": image_id, "path": str(final)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- boxes -> world mm
def slice_index(series: DicomSeries, slice_number: int, convention: str) -> int | None:
    """Volume slice index (sorted along the normal) of an NLSTx ``Slice number``; None if it is not in the series."""
    if convention not in CONVENTIONS:
        raise InputError(f"slice_number_convention {convention!r}: expected one of {list(CONVENTIONS)}")
    numbers = series.instance_numbers
    if convention == "instance_number":
        matches = [k for k, n in enumerate(numbers) if n == slice_number]
        return matches[0] if len(matches) == 1 else None
    if any(n is None for n in numbers):
        raise InputError(f"{series.folder}: a slice has no InstanceNumber; {convention} needs them")
    by_number = sorted(range(len(numbers)), key=lambda k: (numbers[k], k))
    position = slice_number - (1 if convention == "index1" else 0)
    return by_number[position] if 0 <= position < len(by_number) else None


def box_points(rows: pd.DataFrame, series: DicomSeries, geometry: Geometry, convention: str) -> pd.DataFrame:
    """NLSTx rows of one series -> ``x, y, z`` (box centre, world mm), ``radius_mm`` and box bounds.

    The box bounds (for the lenient convention) reach ``radius_mm`` beyond the slice along its normal.
    """
    out = []
    for _, row in rows.iterrows():
        k = slice_index(series, int(row["slice_number"]), convention)
        if k is None:
            raise InputError(f"{series.folder}: NLSTx Slice number {int(row['slice_number'])} ({convention}) "
                             f"is not a slice of this {len(series.files)}-slice series")
        x0, y0, w, h = (float(row[c]) for c in ("box_x", "box_y", "box_w", "box_h"))
        # the box covers pixels x0 .. x0 + w - 1: its centre index is x0 + (w - 1) / 2
        corners = geometry.index_to_world(np.array([[x0 + (w - 1) / 2, y0 + (h - 1) / 2, k],
                                                    [x0, y0, k], [x0 + w - 1, y0 + h - 1, k]]))
        radius = recist_radius_mm([w, h], geometry.spacing[0])
        # the box is 2-D: across slices it spans the nodule's in-plane radius (a roughly round nodule)
        normal = np.asarray(geometry.direction, float).reshape(3, 3)[:, 2]
        spread = np.abs(normal) * radius
        out.append({"lesion_id": row["lesion_id"], "image_id": row["image_id"], "x": corners[0, 0],
                    "y": corners[0, 1], "z": corners[0, 2], "radius_mm": radius,
                    **{f"box_min_{a}": min(corners[1, i], corners[2, i]) - spread[i] for i, a in enumerate("xyz")},
                    **{f"box_max_{a}": max(corners[1, i], corners[2, i]) + spread[i] for i, a in enumerate("xyz")}})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- --check-slices
def blob_score(array: np.ndarray, k: int | None, row: pd.Series, dense_hu: float = -300.0, lung_hu: float = -500.0
               ) -> float:
    """How well the box on slice ``k`` encloses a dense blob in lung: dense share inside x lung share around.

    ``array`` is (z, y, x) HU. Inside: share of box pixels denser than ``dense_hu``; around: share of
    a ring of half the box size around it lighter than ``lung_hu``. 0 where the slice does not exist.
    """
    if k is None or not 0 <= k < array.shape[0]:
        return 0.0
    x0, y0, w, h = (round(float(row[c])) for c in ("box_x", "box_y", "box_w", "box_h"))
    plane = array[k]
    box = plane[max(y0, 0):y0 + h, max(x0, 0):x0 + w]
    if box.size == 0:
        return 0.0
    my, mx = max(h // 2, 2), max(w // 2, 2)
    ys, xs = slice(max(y0 - my, 0), y0 + h + my), slice(max(x0 - mx, 0), x0 + w + mx)
    outer = plane[ys, xs].astype(float)
    ring_mask = np.ones(outer.shape, bool)
    ring_mask[y0 - ys.start:y0 - ys.start + h, x0 - xs.start:x0 - xs.start + w] = False
    inside = float((box > dense_hu).mean())
    around = float((outer[ring_mask] < lung_hu).mean()) if ring_mask.any() else 0.0
    return inside * around


def slice_scores(nlstx: pd.DataFrame, dicom_dir: str | os.PathLike) -> pd.DataFrame:
    """Each NLSTx row whose series is under ``dicom_dir``, scored under each slice-number
    convention: ``lesion_id, image_id, convention, k`` (the slice it picks) and ``score``
    (:func:`blob_score`)."""
    dicom_dir = Path(dicom_dir)
    rows = []
    for image_id, found in nlstx.groupby("image_id"):
        folder = named_path(dicom_dir, str(image_id))
        if not folder.is_dir():
            continue
        series = dicom_series(folder)
        array = sitk.GetArrayFromImage(series.read())
        for _, row in found.iterrows():
            for convention in CONVENTIONS:
                k = slice_index(series, int(row["slice_number"]), convention)
                rows.append({"lesion_id": row["lesion_id"], "image_id": image_id, "convention": convention,
                             "k": -1 if k is None else k, "score": blob_score(array, k, row)})
    if not rows:
        raise InputError(f"{dicom_dir}: none of the {nlstx['image_id'].nunique()} NLSTx series is downloaded here")
    return pd.DataFrame(rows)


def check_slices(nlstx: pd.DataFrame, dicom_dir: str | os.PathLike) -> pd.DataFrame:
    """Score each slice-number convention on the downloaded NLSTx series: one row per convention.

    ``mean_score`` is the mean :func:`blob_score` over NLSTx rows whose series is under
    ``dicom_dir``; the convention with the highest mean is the one the data supports.
    ``same_slices_as``: the first convention (in ``CONVENTIONS`` order) that picks the same slice
    for every row (itself where none before it does): InstanceNumbers 1..n make
    ``instance_number`` and ``index1`` one answer.
    """
    return summarise_slices(slice_scores(nlstx, dicom_dir))


def summarise_slices(scores: pd.DataFrame) -> pd.DataFrame:
    """:func:`check_slices`' table from :func:`slice_scores`' rows, best first (ties in ``CONVENTIONS`` order)."""
    picked = {c: scores.loc[scores["convention"] == c, "k"].tolist() for c in CONVENTIONS}
    table = pd.DataFrame([{"convention": c, "n": len(picked[c]),
                           "mean_score": float(scores.loc[scores["convention"] == c, "score"].mean()),
                           "same_slices_as": next(o for o in CONVENTIONS if picked[o] == picked[c]),
                           "order": k} for k, c in enumerate(CONVENTIONS)])
    return table.sort_values(["mean_score", "order"], ascending=[False, True], ignore_index=True).drop(columns="order")


# --------------------------------------------------------------------------- pairs.csv and lesions.csv
def nlst_tables(nlstx: pd.DataFrame, volumes: dict[str, str], dicom_dir: str | os.PathLike, convention: str
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs, lesions) in world mm from NLSTx rows; ``volumes`` maps image_id -> converted NIfTI."""
    dicom_dir = Path(dicom_dir)
    points = []
    for image_id, rows in nlstx.groupby("image_id"):
        if image_id not in volumes:
            raise InputError(f"NLSTx series {image_id}: no converted volume")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(volumes[image_id]))
        reader.ReadImageInformation()
        geometry = Geometry(reader.GetOrigin(), reader.GetSpacing(), reader.GetSize(), reader.GetDirection())
        points.append(box_points(rows, dicom_series(named_path(dicom_dir, str(image_id))), geometry, convention))
    lesions = pd.concat(points, ignore_index=True).assign(status="present")
    pairs = nlstx_pairs(nlstx)
    at = lesions.set_index(["lesion_id", "image_id"])
    src = at.loc[list(zip(pairs["lesion_id"], pairs["source_image"], strict=True))]
    tgt = at.loc[list(zip(pairs["lesion_id"], pairs["target_image"], strict=True))]
    for axis in "xyz":
        pairs[f"source_{axis}"] = src[axis].to_numpy()
        pairs[f"target_{axis}"] = tgt[axis].to_numpy()
    pairs["target_radius_mm"] = tgt["radius_mm"].to_numpy()
    for bound in ("min", "max"):
        for axis in "xyz":
            pairs[f"target_box_{bound}_{axis}"] = tgt[f"box_{bound}_{axis}"].to_numpy()
    pairs["split"] = "test"
    pairs["dataset"] = LABEL
    lesions = lesions[LESION_COLUMNS]
    return pairs, lesions


# --------------------------------------------------------------------------- stages (CLI and workflow scripts)
def shards(series: pd.DataFrame, shard_size: int) -> list[list[str]]:
    """image_ids of each shard of series.csv, in row order (evaluation series first)."""
    ids = series["image_id"].astype(str).tolist()
    return [ids[k:k + shard_size] for k in range(0, len(ids), shard_size)]


def select_stage(nlstx_csv: str | os.PathLike, out: str | os.PathLike, n_patients: int, seed: int = 0,
                 slice_spacing_mm: float = 2.0, min_slices: int = 50, log: Callable[[str], None] = print
                 ) -> pd.DataFrame:
    """Write series.csv (both cohorts) and report its download size before anything is fetched."""
    series = select_cohorts(nlstx_csv, n_patients, seed, slice_spacing_mm, min_slices)
    for role, group in series.groupby("role", sort=False):
        log(f"{LABEL} {role}: {len(group)} series of {group['pid'].nunique()} patients, "
            f"{size_mb(group) / 1000:.1f} GB to download")
    log(f"{LABEL} total download: {size_mb(series) / 1000:.1f} GB ({len(series)} series)")
    segs = totalseg_segs(series["StudyInstanceUID"].unique())
    if len(segs):  # landmarks (backend totalseg) can read these instead of running TotalSegmentator
        log(f"{LABEL} TotalSegmentator DICOM SEG in the same studies (optional, for landmarks): {len(segs)} series, "
            f"{segs['series_size_MB'].sum() / 1000:.1f} GB ({segs['series_size_MB'].mean():.0f} MB per SEG "
            f"beside {series['series_size_MB'].mean():.0f} MB per CT series)")
    write_table(series, out)
    return series


def download_stage(series_csv: str | os.PathLike, image_ids: Sequence[str] | None, dicom_dir: str | os.PathLike,
                   out: str | os.PathLike, downloader: Downloader = idc_downloader) -> pd.DataFrame:
    """Download the listed series (all of series.csv when ``image_ids`` is None); write ``image_id, path``."""
    series = read_table(series_csv, required=["image_id", "instanceCount"])
    series["image_id"] = series["image_id"].astype(str)
    if image_ids is not None:
        series = series[series["image_id"].isin(set(image_ids))]
    table = download_series(series, dicom_dir, downloader)
    write_table(table, out)
    return table


def convert_stage(dicom_table: str | os.PathLike, images_dir: str | os.PathLike, out: str | os.PathLike
                  ) -> pd.DataFrame:
    """DICOM series folders (table ``image_id, path``) -> ``images_dir/<image_id>.nii.gz`` + the same table."""
    from tqdm import tqdm


    folders = read_table(dicom_table, required=["image_id", "path"])
    check_ids(folders, ["image_id"], str(dicom_table))
    check_writable(out)
    rows = []
    with staged_folder(images_dir) as staging:  # every series or none: a bad one leaves nothing
        for image_id, folder in tqdm(list(zip(folders["image_id"].astype(str), folders["path"], strict=True)),
                                     desc="convert", unit="series"):
            staged = write_image(read_image(folder), named_path(staging, image_id, suffix=".nii.gz"))
            rows.append({"image_id": image_id, "path": str(Path(images_dir) / staged.name)})
        table = pd.DataFrame(rows, columns=["image_id", "path"])
        write_table(table, out)
    return table


def pairs_stage(nlstx_csv: str | os.PathLike, image_tables: Sequence[str | os.PathLike], dicom_dir: str | os.PathLike,
                convention: str, out_pairs: str | os.PathLike, out_lesions: str | os.PathLike
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    pairs, lesions = nlst_tables(read_nlstx(nlstx_csv), volume_paths(list(image_tables)), dicom_dir, convention)
    write_table(lesions, out_lesions)
    write_table(pairs, out_pairs)
    return pairs, lesions


def images_table(image_tables: Sequence[str | os.PathLike], series_csv: str | os.PathLike,
                 out: str | os.PathLike | None = None) -> pd.DataFrame:
    """The converted series of every shard with ``subject_id`` (NLST pid) and ``split``: ``test``
    for the NLSTx evaluation series, ``train`` for the unlabeled training cohort."""
    table = pd.concat([read_table(t, required=["image_id", "path"]) for t in image_tables], ignore_index=True)
    series = read_table(series_csv, required=["image_id", "role", "pid"]).astype({"image_id": str})
    table = table.astype({"image_id": str}).merge(series[["image_id", "pid", "role"]], on="image_id", how="left",
                                                  validate="1:1")
    table["subject_id"] = table.pop("pid").astype(str)
    table["split"] = table.pop("role").map({"evaluation": "test", "training": "train"}).fillna("unused")
    if out is not None:
        write_table(table, out)
    return table

