"""Every tracker on follow-ups of real scans with known motion (``lesiontrack simulate``), per
condition, side by side in one run, with the count of lesions ``hybrid`` loses on image pairs
where ``deformable`` has every lesion within its radius.

    python bench/real_anatomy.py --checkpoint results/models/default/checkpoint_best.pt \
        [--scans A.nii.gz B_dicom/ ...] [--conditions smooth ...] [--seeds 0] \
        [--methods deformable elastix multiscale hybrid] [--out bench/out/real_anatomy]

``--scans`` defaults to the real CTs of ``$LESIONTRACK_TEST_DATA`` (the TotalSegmentator abdomen
and its 20-slice DICOM series). Writes ``<out>/table.md`` and ``<out>/table.csv`` (CPM@Radius,
CPM@10mm, MED, median, share over 20 mm per condition and method, and ``hybrid``'s losses) and
each method's per-pair distances; the volumes are resampled and embedded once, as the workflow does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lesiontrack import config  # noqa: E402
from lesiontrack.data.simulate import CONDITIONS, simulate  # noqa: E402
from lesiontrack.evaluate import hits_10mm, hits_radius, lost_on_perfect, per_pair  # noqa: E402
from lesiontrack.io import read_table, volume_paths  # noqa: E402
from lesiontrack.preprocess import resample_table  # noqa: E402
from lesiontrack.tables import read_pairs  # noqa: E402
from lesiontrack.track.embed import embed_files  # noqa: E402
from lesiontrack.track.predict import predict_pairs  # noqa: E402
from lesiontrack.track.registration import use_threads  # noqa: E402
from lesiontrack.track.trackers import TRACKERS  # noqa: E402


def default_scans() -> list[str]:
    data = Path(os.environ.get("LESIONTRACK_TEST_DATA", REPO.parent / "shared" / "data")) / "totalseg"
    return [str(data / "example_ct_sm.nii.gz"), str(data / "example_ct_dicom")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", nargs="+", default=None)
    parser.add_argument("--checkpoint", help="pretraining checkpoint (the embedding trackers and hybrid)")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--lesions", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=["identity", "affine", "deformable", "elastix", "multiscale",
                                                         "hybrid"], choices=list(TRACKERS))
    parser.add_argument("--config", action="append", default=[], metavar="YAML")
    parser.add_argument("--out", default="bench/out/real_anatomy")
    args = parser.parse_args()
    use_threads(1)  # as the workflow: reruns identical to the bit
    cfg = config.load(args.config)
    out = Path(args.out)
    scans = args.scans or default_scans()
    started = time.perf_counter()
    simulate(scans, out / "sim", args.conditions, args.seeds, args.lesions)
    spacing = cfg["preprocess"]["spacing_mm"]
    resample_table(out / "sim" / "images.csv", out / "resampled", out / "resampled.csv", spacing, progress=False)
    volumes = [out / "resampled.csv"]
    embedded = None
    if any(TRACKERS[m].needs.embeddings for m in args.methods):
        if not args.checkpoint:
            parser.error("the embedding trackers and hybrid need --checkpoint")
        embed_files(args.checkpoint, volume_paths(volumes), out / "embeddings", progress=False)
        embedded = out / "embeddings"
    pairs = read_pairs(out / "sim" / "pairs.csv")
    distances, seconds = {}, {}
    for method in args.methods:
        began = time.perf_counter()
        predicted = predict_pairs(out / "sim" / "pairs.csv", method, out / "predictions" / f"{method}.csv",
                                  embeddings_dir=embedded, volume_tables=volumes, track=cfg["track"], progress=False)
        seconds[method] = time.perf_counter() - began
        distances[method] = per_pair(pairs, predicted, method)
        distances[method].to_csv(out / "predictions" / f"{method}-pairs.csv", index=False)
    subjects = pairs.set_index(["pair_id", "direction"])["subject_id"]
    condition_of = subjects.str.extract(f"_({'|'.join(CONDITIONS)})_s\\d+$")[0]
    rows = []
    for condition in [*args.conditions, "all"]:
        def of_condition(table: pd.DataFrame, condition: str = condition) -> pd.DataFrame:
            if condition == "all":
                return table
            keys = pd.MultiIndex.from_frame(table[["pair_id", "direction"]])
            return table[(condition_of.loc[keys] == condition).to_numpy()]

        chosen = {m: of_condition(t) for m, t in distances.items()}
        lost, rescued = (lost_on_perfect(chosen["hybrid"], chosen["deformable"], pairs)
                         if {"hybrid", "deformable"} <= set(chosen) else ("", ""))
        for method in args.methods:
            part = chosen[method]
            d, r = part["distance_mm"].to_numpy(float), part["target_radius_mm"].to_numpy(float)
            keys = pd.MultiIndex.from_frame(part[["pair_id", "direction"]])
            rows.append({"condition": condition, "method": method, "n": len(d),
                         "image pairs": subjects.loc[keys].nunique(),
                         "CPM@Radius": 100 * hits_radius(d, r).mean(), "CPM@10mm": 100 * hits_10mm(d, r).mean(),
                         "MED": d.mean(), "median": float(pd.Series(d).median()), "over 20 mm": 100 * (d > 20).mean(),
                         "lost on perfect deformable": lost if method == "hybrid" else "",
                         "rescued": rescued if method == "hybrid" else "",
                         "s per image pair": seconds[method] / max(1, 2 * pairs["subject_id"].nunique())})
    table = pd.DataFrame(rows)
    table.to_csv(out / "table.csv", index=False, float_format="%.2f")
    (out / "table.md").write_text(table.to_markdown(index=False, floatfmt=".1f") + "\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"{time.perf_counter() - started:.0f} s; volumes {read_table(out / 'sim' / 'images.csv').shape[0]}")


if __name__ == "__main__":
    main()
