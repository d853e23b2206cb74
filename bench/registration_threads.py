"""Does a registration repeat itself? ``affine`` or ``deformable`` of the same image pairs run once
single-threaded (the reference: what every workflow rule computes) and ``--repeats`` times with
``--threads`` ITK threads, in one process, with nothing else changed.

    python bench/registration_threads.py --results results [--split test] [--image-pairs 6] \
        [--method deformable] [--threads 2] [--repeats 10] [--out bench/out/registration_threads.json]

Per directed image pair of ``pairs.csv`` (the first ``--image-pairs`` of ``--split``; all splits
where none is given) and its source points: each threaded run's largest distance (mm) of a mapped
point from the single-threaded reference, and the seconds of each registration. The summary counts
the runs that moved some point by more than 0.01 mm and by more than 1 mm, and gives the median
seconds single-threaded and threaded.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from lesiontrack.io import read_image, read_table, volume_paths
from lesiontrack.track.registration import map_points, register


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--split", help="only the pairs of this split (default: every split)")
    parser.add_argument("--image-pairs", type=int, help="the first N directed image pairs (default: all)")
    parser.add_argument("--method", default="deformable", choices=["affine", "deformable"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/out/registration_threads.json"))
    args = parser.parse_args()

    pairs = read_table(args.results / "synthetic" / "pairs.csv")
    if args.split:
        pairs = pairs[pairs["split"] == args.split]
    groups = list(pairs.groupby(["source_image", "target_image"], sort=False))[:args.image_pairs]
    tables = sorted((args.results / "synthetic" / "shards").glob("resampled-*.csv"))
    volumes = {image: args.results.parent / path for image, path in volume_paths(tables).items()}
    rows = []
    for (source, target), queries in groups:
        fixed, moving = read_image(volumes[source]), read_image(volumes[target])
        points = queries[["source_x", "source_y", "source_z"]].to_numpy(float)
        start = time.perf_counter()
        reference = map_points(register(fixed, moving, args.method, threads=1), points)
        single_s = time.perf_counter() - start
        moved, seconds = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            mapped = map_points(register(fixed, moving, args.method, threads=args.threads), points)
            seconds.append(time.perf_counter() - start)
            moved.append(float(np.linalg.norm(mapped - reference, axis=1).max()))
        rows.append({"source": source, "target": target, "points": len(points), "single_s": single_s,
                     "threaded_s": seconds, "max_moved_mm": moved})
        print(f"{source} -> {target}: {args.threads} threads moved a point by "
              + ", ".join(f"{m:.3f}" for m in moved) + f" mm; {single_s:.2f} s single, "
              f"{np.median(seconds):.2f} s threaded (median)", flush=True)
    moved = np.array([m for row in rows for m in row["max_moved_mm"]])
    summary = {"runs": int(moved.size), "moved_over_0.01mm": int((moved > 0.01).sum()),
               "moved_over_1mm": int((moved > 1.0).sum()), "largest_mm": float(moved.max()),
               "pairs_with_a_move_over_1mm": sum(max(r["max_moved_mm"]) > 1.0 for r in rows),
               "median_single_s": float(np.median([r["single_s"] for r in rows])),
               "median_threaded_s": float(np.median([s for r in rows for s in r["threaded_s"]]))}
    print(json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": vars(args) | {"results": str(args.results), "out": str(args.out)},
                                    "machine": platform.processor() or platform.machine(),
                                    "summary": summary, "pairs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
