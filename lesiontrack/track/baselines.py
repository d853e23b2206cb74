"""Baselines that need no model: ``identity`` (the target point is the source point, in world mm).

Identity is a real baseline: it measures how far the anatomy moved between the two scans'
world frames, which is what every tracker must undo.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

PREDICTION_COLUMNS = ["pair_id", "lesion_id", "direction", "source_image", "target_image", "pred_x", "pred_y",
                      "pred_z", "confidence", "found", "seconds"]


def identity_predictions(pairs: pd.DataFrame) -> pd.DataFrame:
    """Predict each target at its source point. Identity has no confidence (NaN) and never
    decides that a lesion is gone (``found`` is true)."""
    start = time.perf_counter()
    out = pairs[["pair_id", "lesion_id", "direction", "source_image", "target_image"]].copy()
    out["pred_x"], out["pred_y"], out["pred_z"] = (pairs[f"source_{a}"].to_numpy(float) for a in "xyz")
    out["confidence"] = np.nan
    out["found"] = True
    out["seconds"] = (time.perf_counter() - start) / max(len(pairs), 1)
    return out[PREDICTION_COLUMNS]


METHODS = {"identity": identity_predictions}


def predict_file(pairs_csv: str | Path, method: str, out: str | Path, split: str | None = None) -> pd.DataFrame:
    """Predictions CSV of a baseline ``method`` for the pairs (of ``split``) in ``pairs_csv``."""
    from lesiontrack.evaluate import select_split
    from lesiontrack.io import read_table, write_table

    if method not in METHODS:
        raise ValueError(f"method {method!r}: not one of {sorted(METHODS)}")
    columns = ["pair_id", "lesion_id", "direction", "source_image", "target_image", "source_x", "source_y", "source_z"]
    pairs = select_split(read_table(pairs_csv, required=columns), split, str(pairs_csv))
    predictions = METHODS[method](pairs)
    write_table(predictions, out)
    return predictions
