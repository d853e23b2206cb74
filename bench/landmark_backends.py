"""Landmark backends against the synthetic ground truth: error per landmark (median and 90th
percentile, mm), rows per volume and seconds per volume; and heuristic against totalseg.

    python bench/landmark_backends.py --dataset-dir results/synthetic [--out bench/out/landmark_backends.json]

``totalseg`` runs on the generator's label maps (TotalSegmentator v2 ids), ``heuristic`` on the CT
alone; the ground truth is the generator's own landmark table (``truth/<image_id>.csv``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lesiontrack.io import read_image
from lesiontrack.landmarks import heuristic_landmarks, totalseg_landmarks
from lesiontrack.vocabulary import TOTALSEG_V2_NAMES


def _errors(found: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    both = found.merge(reference, on="name", suffixes=("", "_ref"))
    distance = np.linalg.norm(both[["x", "y", "z"]].to_numpy() - both[["x_ref", "y_ref", "z_ref"]].to_numpy(), axis=1)
    return pd.DataFrame({"name": both["name"], "error_mm": distance})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", default="results/synthetic")
    parser.add_argument("--out", default="bench/out/landmark_backends.json")
    args = parser.parse_args()
    folder = Path(args.dataset_dir)
    images = pd.read_csv(folder / "images.csv")
    errors, volumes = [], []
    for record in images.to_dict("records"):
        truth = pd.read_csv(folder / "truth" / f"{record['image_id']}.csv")
        began = time.perf_counter()
        totalseg = totalseg_landmarks(read_image(folder.parent.parent / record["label_path"]), TOTALSEG_V2_NAMES)
        middle = time.perf_counter()
        heuristic = heuristic_landmarks(read_image(folder.parent.parent / record["path"]))
        end = time.perf_counter()
        volumes.append({"image_id": record["image_id"], "truth_rows": len(truth), "totalseg_rows": len(totalseg),
                        "heuristic_rows": len(heuristic), "totalseg_s": middle - began, "heuristic_s": end - middle})
        comparisons = (("totalseg vs truth", totalseg, truth), ("heuristic vs truth", heuristic, truth),
                       ("heuristic vs totalseg", heuristic, totalseg))
        for label, found, reference in comparisons:
            errors.append(_errors(found, reference).assign(comparison=label, image_id=record["image_id"]))
    table = pd.concat(errors, ignore_index=True)
    summary = (table.groupby(["comparison", "name"])["error_mm"]
               .agg(n="count", median="median", p90=lambda e: float(np.percentile(e, 90))).reset_index())
    overall = (table.groupby("comparison")["error_mm"]
               .agg(n="count", median="median", p90=lambda e: float(np.percentile(e, 90))).reset_index())
    per_volume = pd.DataFrame(volumes)
    print(overall.round(1).to_string(index=False))
    print(summary.round(1).to_string(index=False))
    print(per_volume.describe().round(2).to_string())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"overall": overall.to_dict("records"), "per_landmark": summary.to_dict("records"),
              "per_volume": per_volume.to_dict("records")}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
