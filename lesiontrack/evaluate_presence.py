"""Evaluation of the gone and new decisions: precision and recall of ``disappeared`` per method on
the presence queries, ``new`` by mutual matching, and the confidence-only rule beside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesiontrack.io import InputError, atomic_path, read_table, write_table
from lesiontrack.tables import KEY, LONGITUDINAL_LESION_COLUMNS, PRED_POINT, read_lesions
from lesiontrack.track.predict import track_table
from lesiontrack.track.presence import Calibration, best_threshold, decide, gone_metrics, presence_queries
from lesiontrack.track.registration import check_stores


def flag_new(targets: pd.DataFrame, tracked: pd.DataFrame, tolerance_mm: float = 5.0) -> pd.DataFrame:
    """Flag the target scan's lesions that no tracked source lesion reaches (``new``).

    ``targets``: the target scan's lesions, ``lesion_id, x, y, z, radius_mm`` (world mm);
    ``tracked``: the source scan's lesions' predictions, ``lesion_id, pred_x, pred_y, pred_z`` (all
    of them, also those decided gone: a present lesion wrongly decided gone would otherwise make
    its own target ``new``). A source and a target lesion match when each is the other's nearest
    among the pairs within the target's radius + ``tolerance_mm``. Returns ``targets`` with
    ``matched_source`` (a lesion id or empty) and ``new``.
    """
    out = targets.reset_index(drop=True).copy()
    target_xyz = out[["x", "y", "z"]].to_numpy(float).reshape(-1, 3)
    reach = out["radius_mm"].to_numpy(float) + tolerance_mm
    predicted = tracked[PRED_POINT].to_numpy(float).reshape(-1, 3)
    distance = np.linalg.norm(predicted[:, None, :] - target_xyz[None, :, :], axis=2)  # (sources, targets)
    masked = np.where(distance <= reach[None, :], distance, np.inf)
    matched = [""] * len(out)
    if masked.size:
        nearest_target, nearest_source = masked.argmin(axis=1), masked.argmin(axis=0)
        ids = tracked["lesion_id"].astype(str).to_numpy()
        for s, t in enumerate(nearest_target):
            if np.isfinite(masked[s, t]) and nearest_source[t] == s:
                matched[t] = ids[s]
    out["matched_source"] = matched
    out["new"] = out["matched_source"] == ""
    return out


def new_lesion_metrics(lesions: pd.DataFrame, table: pd.DataFrame, tolerance_mm: float = 5.0) -> dict[str, Any]:
    """Precision and recall of ``new`` over the ordered scan pairs of the presence ``table`` (its
    tracked points): a target lesion is truly new there when the source scan shows no lesion of
    that id."""
    visible = lesions[lesions["status"].isin(["present", "new"])]
    tp = fp = fn = 0
    for (source_image, target_image), rows in table.groupby(["source_image", "target_image"]):
        targets = visible[visible["image_id"] == target_image]
        flagged = flag_new(targets, rows, tolerance_mm)["new"].to_numpy()
        truth = (~targets["lesion_id"].isin(visible.loc[visible["image_id"] == source_image, "lesion_id"])).to_numpy()
        tp += int((truth & flagged).sum())
        fp += int((~truth & flagged).sum())
        fn += int((truth & ~flagged).sum())
    return {"tolerance_mm": tolerance_mm, "n_new": tp + fn, "tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else np.nan, "recall": tp / (tp + fn) if tp + fn else np.nan}


def _auc_gone(confidence: np.ndarray, gone: np.ndarray) -> float:
    """Probability that a gone query has a lower confidence than a present one (ties half)."""
    ok = np.isfinite(confidence)
    low, high = confidence[ok & gone], confidence[ok & ~gone]
    if not low.size or not high.size:
        return float("nan")
    return float(((low[:, None] < high[None, :]) + 0.5 * (low[:, None] == high[None, :])).mean())


def evaluate_presence(pairs_csv: str | Path, lesions_csv: str | Path, predictions_csv: str | Path, method: str,
                      calibration_json: str | Path, out_csv: str | Path, out_json: str | Path,
                      split: str | None = None, embeddings_dir: str | Path | None = None,
                      volume_tables: list[str | Path] = (), track: dict[str, Any] | None = None,
                      registrations: list[str | Path] = ()) -> dict[str, Any]:
    """Precision and recall of ``disappeared`` for one method on the presence queries of ``split``.

    The present queries are the pairs: their ``found`` is read from the method's predictions (the
    decision the track rule made). The gone queries (a lesion visible in the source scan and
    ``disappeared`` in the target) are tracked here with the same method and decided by the same
    test; the stored registrations of ``registrations`` (rule ``register``) serve the image pairs
    they hold, as in the track rule. New lesions: on each ordered scan pair, the target scan's
    lesions that no tracked source lesion reaches after mutual matching (:func:`flag_new`). Beside
    it, the confidence-only rule: the tracker's confidence with the threshold that maximises the F1
    of ``gone`` on these very queries (an optimistic bound, there being no calibration of it on
    training subjects), and its AUC. Writes one row per query (``out_csv``) and the metrics
    (``out_json``).
    """
    check_stores(registrations)  # before any work, also where no lesion is gone
    lesions = read_lesions(lesions_csv, LONGITUDINAL_LESION_COLUMNS)
    queries = presence_queries(lesions, split)
    predictions = read_table(predictions_csv, required=[*KEY, *PRED_POINT, "confidence", "found"])
    present = queries[queries["expected"] == "present"].merge(
        predictions[[*KEY, *PRED_POINT, "confidence", "found"]], on=KEY, how="left",
        validate="one_to_one")
    if present["found"].isna().any():
        k = int(np.flatnonzero(present["found"].isna())[0])
        raise InputError(f"{predictions_csv}: no prediction for {tuple(present.loc[k, KEY])} of {lesions_csv}")
    gone = queries[queries["expected"] == "gone"].reset_index(drop=True)
    if len(gone):
        tracked = track_table(gone, method, embeddings_dir, volume_tables, track, progress=False,
                              source=str(lesions_csv), presence_calibration=calibration_json,
                              registrations=registrations)
        gone = gone.join(tracked[[*PRED_POINT, "confidence", "found"]])
    table = pd.concat([present, gone], ignore_index=True)
    table["found"] = table["found"].astype(bool)
    truth = (table["expected"] == "gone").to_numpy()
    calibration = Calibration.from_json(calibration_json)
    report: dict[str, Any] = {"method": method, "split": split, "calibrated": calibration.calibrated,
                              "threshold": calibration.threshold, "appearance": gone_metrics(truth, ~table["found"])}
    confidence = table["confidence"].to_numpy(float)
    if truth.any() and (~truth).any() and np.isfinite(confidence).all():
        threshold = best_threshold(confidence, truth)
        report["confidence_only"] = {"threshold_on_these_queries": threshold, "auc": _auc_gone(confidence, truth),
                                     **gone_metrics(truth, ~decide(confidence, threshold))}
    else:
        report["confidence_only"] = None  # no confidence (registration) or one class only
    if len(table):
        report["new"] = new_lesion_metrics(lesions if split is None or "split" not in lesions
                                           else lesions[lesions["split"] == split], table)
    write_table(table, out_csv)
    with atomic_path(Path(out_json)) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report
