"""``lesiontrack follow`` against a longitudinal ground truth (the synthetic dataset's lesions.csv).

Each subject of the split with at least :data:`MIN_SCANS` scans is followed from its first scan's
lesions, each follow-up's visible lesions given as that scan's own list (as a reader or a detector
would mark them). Scored over the (lesion, timepoint) rows after the first scan:

- identity consistency: of the rows where the lesion is there (``present`` or ``new`` in the
  truth), the share whose followed point lies within the lesion's radius of the truth;
- ``gone``: a row decided gone, against the lesion not being there (disappeared, or no longer listed);
- ``new``: a row given a new id, against the truth's ``new`` rows (a truly new lesion that the
  history folded into a followed one counts as missed).

:func:`follow_subjects` is the workflow's form (rule ``follow``): the cached embeddings and
resampled volumes of the track rule, one folder per subject (``history.csv``, pictures,
``index.html``) and a summary (``tables.FOLLOW_SUMMARY_COLUMNS``) beside the pairwise presence
decisions of the same method (``results/<dataset>/presence/<method>.json``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesiontrack.follow import follow
from lesiontrack.io import atomic_path, named_path, staged_folder, volume_paths, write_table
from lesiontrack.tables import (
    FOLLOW_SUMMARY_COLUMNS,
    LESION_COLUMNS,
    LONGITUDINAL_LESION_COLUMNS,
    POINT_COLUMNS,
    read_lesions,
)
from lesiontrack.track.predict import workflow_scans
from lesiontrack.track.presence import gone_metrics
from lesiontrack.track.tracker import Scans

MIN_SCANS = 3  # a history: a baseline and at least two follow-ups
VISIBLE = ("present", "new")
LIST_COLUMNS = [*POINT_COLUMNS, "radius_mm"]  # a scan's lesion list, as ``lesiontrack follow`` reads it


def histories(lesions: pd.DataFrame, split: str | None = "test", minimum: int = MIN_SCANS
              ) -> dict[str, list[tuple[str, pd.DataFrame]]]:
    """The subjects (of ``split``) with at least ``minimum`` scans: for each, its scans in time
    order as ``(image_id, visible lesions)`` (``LIST_COLUMNS``)."""
    if split is not None and "split" in lesions:
        lesions = lesions[lesions["split"] == split]
    out = {}
    for subject, rows in lesions.groupby("subject_id", sort=True):
        scans = [(image_id, scan[scan["status"].isin(VISIBLE)][LIST_COLUMNS].reset_index(drop=True))
                 for (_, image_id), scan in rows.groupby(["timepoint", "image_id"], sort=True)]
        if len(scans) >= minimum:
            out[str(subject)] = scans
    return out


def _counts(decided: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """tp, fp, fn, precision and recall of a decision (the presence test's definitions)."""
    metrics = gone_metrics(true, decided)
    return {key: metrics[key] for key in ("tp", "fp", "fn", "precision", "recall")}


def score_history(history: pd.DataFrame, truth: pd.DataFrame, image_ids: list[str]) -> pd.DataFrame:
    """One subject's ``history.csv`` joined to its truth (``lesions.csv`` rows; ``image_ids``: its
    scans in time order, ``history``'s timepoint k being ``image_ids[k]``): per row the truth's
    status (``absent`` where the truth has no row), the error in mm and whether it is within the
    lesion's radius; plus the truly new (lesion, scan) rows the history never listed, as
    ``missed_new`` rows."""
    truth = truth[truth["image_id"].isin(image_ids)]
    truth = truth.assign(timepoint=truth["image_id"].map({image_id: k for k, image_id in enumerate(image_ids)}))
    known = truth[[*LESION_COLUMNS, "timepoint"]].drop(columns="image_id").rename(
        columns={c: f"{c}_truth" for c in ("x", "y", "z", "radius_mm", "status")})
    joined = history.merge(known, on=["lesion_id", "timepoint"], how="left", validate="one_to_one")
    joined["status_truth"] = joined["status_truth"].fillna("absent")
    error = np.linalg.norm(joined[["x", "y", "z"]].to_numpy(float)
                           - joined[["x_truth", "y_truth", "z_truth"]].to_numpy(float), axis=1)
    joined["error_mm"] = error
    joined["within_radius"] = error < joined["radius_mm_truth"].to_numpy(float)
    listed = set(zip(joined["lesion_id"], joined["timepoint"], strict=True))
    truly_new = truth[(truth["status"] == "new")]
    missed = truly_new[[(i, t) not in listed for i, t in zip(truly_new["lesion_id"], truly_new["timepoint"],
                                                                  strict=True)]]
    missed = missed[["lesion_id", "timepoint"]].assign(status="missed_new", status_truth="new")
    return pd.concat([joined, missed], ignore_index=True)


def scores(scored: pd.DataFrame) -> dict[str, Any]:
    """Identity consistency, ``gone`` and ``new`` over scored rows (:func:`score_history`, any
    number of subjects)."""
    later = scored["timepoint"].to_numpy() > 0
    there = scored["status_truth"].isin(VISIBLE).to_numpy()
    listed = (scored["status"] != "missed_new").to_numpy()
    rows = later & there & listed
    within = scored["within_radius"].fillna(False).to_numpy(bool)
    return {"rows": int(listed.sum()), "rows_there_after_baseline": int(rows.sum()),
            "identity_consistency": float(within[rows].mean()) if rows.any() else np.nan,
            "identity_consistent_rows": int(within[rows].sum()),
            "median_error_mm": float(np.median(scored["error_mm"].to_numpy(float)[rows])) if rows.any() else np.nan,
            "inconsistent_flags": int(scored["inconsistent"].fillna(False).astype(bool).sum()),
            "gone": _counts((scored["status"] == "gone").to_numpy() & later & listed, later & ~there & listed),
            "new": _counts((scored["status"] == "new").to_numpy(), (scored["status_truth"] == "new").to_numpy())}


def summary_table(history: dict[str, Any], pairwise: dict[str, Any] | None) -> pd.DataFrame:
    """``tables.FOLLOW_SUMMARY_COLUMNS``: identity consistency and the ``gone`` / ``new``
    precision and recall of the histories, beside the pairwise run's (``presence/<method>.json``)."""
    def counts(metrics: dict[str, Any] | None) -> str:
        return "" if not metrics else f"tp {metrics['tp']}, fp {metrics['fp']}, fn {metrics['fn']}"

    rows = [("identity consistency", history["identity_consistency"],
             f"{history['identity_consistent_rows']} of {history['rows_there_after_baseline']} rows", np.nan, "")]
    for decision, key in (("gone", "appearance"), ("new", "new")):
        theirs = (pairwise or {}).get(key)
        for measure in ("precision", "recall"):
            rows.append((f"{decision} {measure}", history[decision][measure], counts(history[decision]),
                         np.nan if not theirs else theirs[measure], counts(theirs)))
    return pd.DataFrame(rows, columns=FOLLOW_SUMMARY_COLUMNS)


def follow_subjects(lesions_csv: str | Path, images_csv: str | Path, method: str, out_dir: str | Path,
                    scores_json: str | Path, split: str | None = "test", embeddings_dir: str | Path | None = None,
                    volume_tables: list[str | Path] = (), track: dict[str, Any] | None = None,
                    presence_calibration: str | Path | None = None, pictures_wanted: bool = True,
                    registrations: list[str | Path] = ()) -> dict[str, Any]:
    """Follow every subject of ``split`` with :data:`MIN_SCANS` or more scans (``lesions_csv``:
    ``tables.LONGITUDINAL_LESION_COLUMNS``; ``images_csv``: the original scans) with ``method``, in
    the workflow's cached scans (``embeddings_dir``, ``volume_tables``, the stored ``registrations``);
    write ``<out_dir>/<subject>/`` (``lesiontrack follow``'s output) and the scores (:func:`scores`) as JSON,
    and return them."""
    lesions = read_lesions(lesions_csv, LONGITUDINAL_LESION_COLUMNS)
    originals = volume_paths([images_csv])
    subjects = histories(lesions, split)
    cached = workflow_scans(embeddings_dir, volume_tables, str(lesions_csv), registrations)
    resampled = volume_paths(volume_tables)
    scored = []
    with staged_folder(out_dir) as staged:
        for subject, scans in subjects.items():
            ids = [image_id for image_id, _ in scans]
            by_time = {f"t{k}": image_id for k, image_id in enumerate(ids)}
            tracked = Scans(maps=None if cached.maps is None else
                            (lambda sid, voxels, by_time=by_time: cached.maps(by_time[sid], voxels)),
                            image=lambda sid, by_time=by_time: cached.image(by_time[sid]),
                            check_inside=False,  # follow checks every list against the original scans
                            stored_registration=None if cached.stored_registration is None else
                            (lambda s, t, *how, by_time=by_time: cached.stored_registration(by_time[s], by_time[t],
                                                                                            *how)))
            with tempfile.TemporaryDirectory() as lists:
                paths = []
                for k, (_, listed) in enumerate(scans):
                    paths.append(Path(lists) / f"t{k}.csv")
                    listed.to_csv(paths[-1], index=False)
                history = follow([originals[i] for i in ids], paths[0], named_path(staged, str(subject)), paths[1:],
                                 method=method,
                                 track=track, presence_calibration=presence_calibration,
                                 pictures_wanted=pictures_wanted, tracked_scans=tracked,
                                 volume_path=lambda sid, by_time=by_time: resampled[by_time[sid]])
            scored.append(score_history(history, lesions, ids).assign(subject_id=subject))
    table = pd.concat(scored, ignore_index=True) if scored else pd.DataFrame(
        columns=["timepoint", "status", "status_truth", "within_radius", "error_mm", "inconsistent"])
    result = {"method": method, "split": split, "subjects": list(subjects), "min_scans": MIN_SCANS,
              **scores(table)}
    with atomic_path(Path(scores_json)) as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def write_summary(scores_json: str | Path, pairwise_json: str | Path | None, out_csv: str | Path) -> pd.DataFrame:
    """The summary table (:func:`summary_table`) of a ``follow_subjects`` scores JSON beside a
    ``presence/<method>.json``, written to ``out_csv``."""
    history = json.loads(Path(scores_json).read_text())
    pairwise = json.loads(Path(pairwise_json).read_text()) if pairwise_json else None
    table = summary_table(history, pairwise)
    write_table(table, out_csv)
    return table
