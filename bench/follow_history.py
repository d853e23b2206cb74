"""``lesiontrack follow`` on the default run's test subjects with three or more scans, against the
ground truth, and its cost against the pairwise ``lesiontrack track`` calls that do the same work.

Accuracy: the workflow rule ``follow``'s measure (:mod:`lesiontrack.evaluate_follow`: identity
consistency, ``gone`` and ``new`` precision and recall), but each history made by the installed
command from the original scans (the own-data path, which resamples and embeds them itself), with
the run's presence calibration. Cost (``--timing``): one subject's first three scans and 10 points (its lesions repeated
under new ids), ``follow`` once against ``track`` t0 -> t1, t0 -> t2 and t1 -> t2, each as the
installed command (load, resample, embed, match, write), per method.

    python bench/follow_history.py --results results [--method hybrid] [--timing hybrid multiscale]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from lesiontrack import evaluate_follow
from lesiontrack.io import read_table

POINTS = ["lesion_id", "x", "y", "z", "radius_mm"]


def _subjects(results: Path, minimum: int = 3) -> tuple[pd.DataFrame, pd.Series, dict[str, list[int]]]:
    lesions = read_table(results / "synthetic" / "lesions.csv")
    lesions = lesions[lesions["split"] == "test"]
    images = read_table(results / "synthetic" / "images.csv").set_index("image_id")["path"]
    scans = {s: sorted(g["timepoint"].unique()) for s, g in lesions.groupby("subject_id")}
    return lesions, images, {s: t for s, t in scans.items() if len(t) >= minimum}


def _command(*args: str) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "lesiontrack"), *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr.strip())


def accuracy(results: Path, method: str, model: str) -> dict:
    """The workflow rule's measure (:mod:`lesiontrack.evaluate_follow`), but each history through
    the installed command on the original scans (own-data path: resampled and embedded there)."""
    lesions = read_table(results / "synthetic" / "lesions.csv")
    images = read_table(results / "synthetic" / "images.csv").set_index("image_id")["path"]
    scored = []
    subjects = evaluate_follow.histories(lesions, "test")
    with tempfile.TemporaryDirectory() as tmp:
        for subject, scans in subjects.items():
            lists = []
            for k, (_, listed) in enumerate(scans):
                lists.append(Path(tmp) / f"{subject}_t{k}.csv")
                listed.to_csv(lists[-1], index=False)
            out = Path(tmp) / subject
            ids = [image_id for image_id, _ in scans]
            _command("follow", "--scans", *[str(results.parent / images[i]) for i in ids], "--points", str(lists[0]),
                     "--lesions", *map(str, lists[1:]), "--method", method,
                     "--checkpoint", str(results / "models" / model / "checkpoint_best.pt"),
                     "--presence", str(results / "synthetic" / "presence" / "calibration.json"), "--out", str(out))
            scored.append(evaluate_follow.score_history(read_table(out / "history.csv"), lesions, ids))
    return {"method": method, "subjects": list(subjects), **evaluate_follow.scores(pd.concat(scored))}


def timing(results: Path, methods: list[str], model: str, n_points: int = 10) -> dict:
    lesions, images, subjects = _subjects(results)
    subject, timepoints = next(iter(subjects.items()))
    first = lesions[(lesions["subject_id"] == subject) & (lesions["timepoint"] == timepoints[0])
                    & (lesions["status"] == "present")]
    points = pd.concat([first] * (n_points // len(first) + 1)).head(n_points)[POINTS[1:]]
    points.insert(0, "lesion_id", [f"P{k:02d}" for k in range(n_points)])
    scans = [str(results.parent / images[f"{subject}_t{k}"]) for k in timepoints[:3]]
    checkpoint = str(results / "models" / model / "checkpoint_best.pt")
    out = {"subject": subject, "points": n_points}
    with tempfile.TemporaryDirectory() as tmp:
        points.to_csv(Path(tmp) / "points.csv", index=False)
        for method in methods:
            began = time.perf_counter()
            _command("follow", "--scans", *scans, "--points", f"{tmp}/points.csv", "--method", method,
                     "--checkpoint", checkpoint, "--out", f"{tmp}/{method}")
            out[f"{method}_follow_s"] = time.perf_counter() - began
            began = time.perf_counter()
            for a, b in ((0, 1), (0, 2), (1, 2)):
                _command("track", "--source", scans[a], "--target", scans[b], "--points", f"{tmp}/points.csv",
                         "--method", method, "--checkpoint", checkpoint, "--out", f"{tmp}/{method}_{a}{b}.csv")
            out[f"{method}_three_tracks_s"] = time.perf_counter() - began
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--method", default="hybrid")
    parser.add_argument("--timing", nargs="*", default=["hybrid", "multiscale"])
    args = parser.parse_args()
    report = {"accuracy": accuracy(args.results.resolve(), args.method, args.model)}
    print(json.dumps(report["accuracy"], indent=1), flush=True)
    if args.timing:
        report["timing"] = timing(args.results.resolve(), args.timing, args.model)
        print(json.dumps(report["timing"], indent=1))


if __name__ == "__main__":
    main()
