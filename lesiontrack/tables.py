"""The one home of every table contract: column lists, the pair id, split selection and validators.

Tables hold world millimetres (SimpleITK physical space). Each validator names the file, the data
row (1 = the first row under the header), the row's id and the column of the first bad value, so a
bad table stops before any work starts::

    >>> import pandas as pd
    >>> points = pd.DataFrame({"lesion_id": ["a", "b"], "x": [1.0, "2,5"], "y": 0.0, "z": 0.0})
    >>> validate_points(points, "points.csv")
    Traceback (most recent call last):
    ...
    lesiontrack.io.InputError: points.csv: row 2 (b): x = '2,5' is not a number
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lesiontrack.io import InputError, check_ids, is_id_column, read_table

KEY = ["pair_id", "direction"]  # one directed pair
ID_COLUMNS = ["pair_id", "lesion_id", "direction", "source_image", "target_image"]
SOURCE_POINT = ["source_x", "source_y", "source_z"]
TARGET_POINT = ["target_x", "target_y", "target_z"]
PRED_POINT = ["pred_x", "pred_y", "pred_z"]
TARGET_BOX = [f"target_box_{m}_{a}" for m in ("min", "max") for a in "xyz"]

# what a tracker needs of a row: pairs.csv, presence queries and own-data points all reduce to it
QUERY_COLUMNS = [*ID_COLUMNS, *SOURCE_POINT]
# pairs.csv: the contract every dataset writes (one row per directed lesion pair)
PAIR_COLUMNS = [*QUERY_COLUMNS, *TARGET_POINT, "target_radius_mm"]
# what the generated datasets (synthetic, DLS) add: the target box, subject, split, type, source size
PAIR_EXTRA_COLUMNS = [*TARGET_BOX, "subject_id", "split", "lesion_type", "source_radius_mm"]
GENERATED_PAIR_COLUMNS = [*PAIR_COLUMNS, *PAIR_EXTRA_COLUMNS]
DLS_PAIR_COLUMNS = [*GENERATED_PAIR_COLUMNS, "dls_entry"]
TRUTH_COLUMNS = [*KEY, *TARGET_POINT, "target_radius_mm"]  # what evaluation reads of pairs.csv
# metrics/<method>-pairs.csv: each pair's errors (mm), then the hits of each convention
PER_PAIR_COLUMNS = [*KEY, "target_radius_mm", "error_x", "error_y", "error_z", "distance_mm"]

# predictions/<method>.csv
PREDICTION_COLUMNS = [*ID_COLUMNS, *PRED_POINT, "confidence", "found", "seconds"]
PREDICTED_COLUMNS = [*KEY, *PRED_POINT]  # what evaluation reads of a predictions table
# a tracker's answers: ``row`` (position of the query), ``rank`` (0: its best), the point, its
# confidence and ``seconds`` (matching that query, repeated on each of its rows; where a tracker
# matches an image pair's queries together, the pair's time over its queries)
CANDIDATE_COLUMNS = ["row", "rank", *PRED_POINT, "confidence", "seconds"]

# results/<dataset>/registrations/<method>/registrations.csv (rule register): one row per image pair
REGISTRATION_COLUMNS = ["source_image", "target_image", "stage", "seconds", "file"]

# lesions.csv
LESION_COLUMNS = ["lesion_id", "image_id", "x", "y", "z", "radius_mm", "status"]
LESION_BOX = [f"box_{m}_{a}" for m in ("min", "max") for a in "xyz"]
SYNTHETIC_LESION_COLUMNS = [*LESION_COLUMNS, "lesion_type", "subject_id", "split", "timepoint", *LESION_BOX]
LONGITUDINAL_LESION_COLUMNS = [*LESION_COLUMNS, "subject_id", "timepoint"]  # what presence needs
LESION_STATUSES = ("present", "new", "disappeared")

# a presence query: a lesion seen at its source, expected ``present`` or ``gone`` at its target
PRESENCE_QUERY_COLUMNS = [*QUERY_COLUMNS, "source_radius_mm", *TARGET_POINT, "target_radius_mm", "expected",
                          "subject_id", "split"]

# own data: points.csv in, the tracked points out
POINT_COLUMNS = ["lesion_id", "x", "y", "z"]
TRACKED_POINT_COLUMNS = [*POINT_COLUMNS, "confidence", "found"]
# follow/history.csv: one row per lesion and timepoint; status present, gone or new (first seen
# there); consistency_mm: the direct (first seen -> here) against the chained (previous -> here)
# prediction, inconsistent where it exceeds the lesion's radius
HISTORY_COLUMNS = ["lesion_id", "timepoint", "scan", "x", "y", "z", "confidence", "found", "status",
                   "consistency_mm", "inconsistent"]
# follow/<method>.csv: each measure of the followed histories beside the pairwise run's
# (lesiontrack.evaluate_follow); share: a fraction, NaN where undefined or not measured
FOLLOW_SUMMARY_COLUMNS = ["measure", "history", "history_counts", "pairwise", "pairwise_counts"]

# truth/pairs.csv of a synthetic DeepLesion (lesiontrack.data.deeplesion_synth): each DLS entry's
# points in world mm as generated, kept apart from what is served
DEEPLESION_TRUTH_COLUMNS = ["split", "dls_entry", "source", "target", *SOURCE_POINT, *TARGET_POINT,
                            "target_radius_mm"]

# tables/<dataset>.csv
RESULT_COLUMNS = ["method", "n", "CPM@10mm", "CPM@Radius", "MEDx", "MEDy", "MEDz", "MED", "p_vs_reference"]


def pair_id(lesion_id: str, timepoint_a: int, timepoint_b: int) -> str:
    """The id of a lesion's pair of timepoints, the same in both directions: ``L_t0t2``."""
    lo, hi = sorted((int(timepoint_a), int(timepoint_b)))
    return f"{lesion_id}_t{lo}t{hi}"


def select_split(pairs: pd.DataFrame, split: str | None, source: str) -> pd.DataFrame:
    """The rows of one split (``split`` column), or all rows where ``split`` is None."""
    if split is None:
        return pairs
    if "split" not in pairs:
        raise InputError(f"{source}: no 'split' column to select split {split!r} from")
    selected = pairs[pairs["split"] == split]
    if selected.empty:
        raise InputError(f"{source}: no pairs in split {split!r} (splits: {sorted(set(pairs['split']))})")
    return selected


def _number(value: object) -> str:
    """A value as a person writes it: ``12.5``, not ``np.float64(12.5)``."""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(value)


def _label(table: pd.DataFrame, k: int, id_columns: Sequence[str]) -> str:
    """``row N (id)`` of the k-th row, N the file's data row (read_table's index + 1)."""
    row = table.iloc[k]
    ids = " ".join(str(row[c]) for c in id_columns if c in table.columns)
    index = table.index[k]
    number = int(index) + 1 if isinstance(index, (int, np.integer)) else k + 1
    return f"row {number}" + (f" ({ids})" if ids else "")


def _check_numeric(table: pd.DataFrame, columns: Sequence[str], source: str, id_columns: Sequence[str],
                   finite: bool = True) -> None:
    for column in columns:
        if column not in table.columns:
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() & table[column].notna()
        if finite:
            bad |= ~np.isfinite(values.to_numpy(float))
        if bad.any():
            k = int(np.flatnonzero(bad.to_numpy())[0])
            what = "is not a number" if pd.isna(values.iloc[k]) and pd.notna(table[column].iloc[k]) \
                else "is not a finite number"
            raise InputError(f"{source}: {_label(table, k, id_columns)}: {column} = "
                             f"{_number(table[column].iloc[k])} {what}")


def _check_positive(table: pd.DataFrame, columns: Sequence[str], source: str, id_columns: Sequence[str],
                    unit: str = "mm") -> None:
    for column in columns:
        if column not in table.columns:
            continue
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(float)
        bad = ~(values > 0) & ~np.isnan(values)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise InputError(f"{source}: {_label(table, k, id_columns)}: {column} = {_number(values[k])} "
                             f"must be > 0 {unit}".rstrip())


def _check_unique(table: pd.DataFrame, key: Sequence[str], source: str) -> None:
    duplicated = table.duplicated(list(key), keep="first").to_numpy()
    if duplicated.any():
        k = int(np.flatnonzero(duplicated)[0])
        first = int(np.flatnonzero((table[list(key)] == table[list(key)].iloc[k]).all(axis=1).to_numpy())[0])
        raise InputError(f"{source}: {_label(table, k, key)}: duplicate {'/'.join(key)} (first at "
                         f"{_label(table, first, ())})")


def _check_columns(table: pd.DataFrame, required: Sequence[str], source: str) -> None:
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(f"{source}: missing column(s) {missing}; found {list(table.columns)}")


def validate_table(table: pd.DataFrame, source: str, *, required: Sequence[str] = (), numeric: Sequence[str] = (),
                   positive: Sequence[str] = (), unit: str = "", unique: Sequence[str] = (),
                   ids: Sequence[str] = ()) -> pd.DataFrame:
    """The checks above for a table whose contract lives elsewhere (a dataset's own input format):
    ``required`` columns present, ``numeric`` columns finite numbers, ``positive`` ones > 0 (in
    ``unit``), one row per ``unique`` key; messages name the row by its ``ids``; ids of
    :func:`lesiontrack.io.is_id_column` (files are named from them) checked by ``check_ids``."""
    _check_columns(table, required, source)
    check_ids(table, [c for c in ids if is_id_column(c)], source)
    _check_numeric(table, [*numeric, *positive], source, ids)
    _check_positive(table, positive, source, ids, unit)
    if unique:
        _check_unique(table, unique, source)
    return table


def validate_points(points: pd.DataFrame, source: str) -> pd.DataFrame:
    """Own-data points (``lesion_id, x, y, z[, radius_mm]``): at least one row, coordinates
    finite numbers, ids unique, radii positive."""
    _check_columns(points, POINT_COLUMNS, source)
    if points.empty:
        raise InputError(f"{source}: no points")
    _check_numeric(points, ["x", "y", "z"], source, ["lesion_id"])
    _check_numeric(points, ["radius_mm"], source, ["lesion_id"])
    _check_positive(points, ["radius_mm"], source, ["lesion_id"])
    check_ids(points, ["lesion_id"], source)
    _check_unique(points, ["lesion_id"], source)
    return points


def validate_pairs(pairs: pd.DataFrame, source: str, required: Sequence[str] = PAIR_COLUMNS) -> pd.DataFrame:
    """A pairs table (or the queries of one): points finite, one row per (pair_id, direction),
    radii positive."""
    _check_columns(pairs, required, source)
    check_ids(pairs, ["pair_id", "lesion_id", "source_image", "target_image"], source)
    _check_numeric(pairs, [*SOURCE_POINT, *TARGET_POINT, "target_radius_mm", "source_radius_mm"], source, KEY)
    _check_positive(pairs, ["target_radius_mm", "source_radius_mm"], source, KEY)
    _check_unique(pairs, KEY, source)
    return pairs


def validate_predictions(predictions: pd.DataFrame, source: str,
                         required: Sequence[str] = PREDICTED_COLUMNS) -> pd.DataFrame:
    """A predictions table: predicted points finite, confidence a number (NaN: none)."""
    _check_columns(predictions, required, source)
    _check_numeric(predictions, PRED_POINT, source, KEY)
    _check_numeric(predictions, ["confidence", "seconds"], source, KEY, finite=False)
    return predictions


def validate_lesions(lesions: pd.DataFrame, source: str, required: Sequence[str] = LESION_COLUMNS) -> pd.DataFrame:
    """A lesions table: points finite, radii positive (0 where disappeared), a known status, one row per
    lesion and image."""
    _check_columns(lesions, required, source)
    ids = ["lesion_id", "image_id"]
    check_ids(lesions, ids, source)
    _check_numeric(lesions, ["x", "y", "z", "radius_mm"], source, ids)
    _check_positive(lesions[lesions["status"] != "disappeared"], ["radius_mm"], source, ids)  # gone: radius 0
    unknown = ~lesions["status"].isin(LESION_STATUSES).to_numpy()
    if unknown.any():
        k = int(np.flatnonzero(unknown)[0])
        raise InputError(f"{source}: {_label(lesions, k, ids)}: status = {lesions['status'].iloc[k]!r} is not one "
                         f"of {list(LESION_STATUSES)}")
    _check_unique(lesions, ids, source)
    return lesions


def read_pairs(path: str | Path, split: str | None = None, required: Sequence[str] = PAIR_COLUMNS) -> pd.DataFrame:
    """A validated pairs table (the rows of ``split``; the index keeps the file's rows)."""
    return select_split(validate_pairs(read_table(path), str(path), required), split, str(path))


def read_predictions(path: str | Path, required: Sequence[str] = PREDICTED_COLUMNS) -> pd.DataFrame:
    return validate_predictions(read_table(path), str(path), required)


def read_lesions(path: str | Path, required: Sequence[str] = LESION_COLUMNS) -> pd.DataFrame:
    return validate_lesions(read_table(path), str(path), required)


def read_points(path: str | Path) -> pd.DataFrame:
    return validate_points(read_table(path), str(path))
