"""The docs' form of a finished run's table: every method's CPM (the NLST-relaxed ones where the run
was scored with ``evaluate.min_radius_mm``), MED, the median and the share over 20 mm beside it,
the paired t-test against the reference, and the wall time of the method's ``track`` job (from its
Snakemake benchmark file) plus that of the stored registrations it reads (rule ``register``; shared
by ``deformable`` and ``hybrid``, so counted in both rows); under the table, the lesions ``hybrid``
loses on image pairs where ``deformable`` has every lesion, and those it has that ``deformable``
misses. Nothing is recomputed but that count: the table, the metrics and the benchmarks are the
run's own. An ablation row ``method [model]`` reads what its tracker reads.

    python bench/protocol_table.py runs/dls-like/results [--dataset synthetic] [--config configs/dls-like.yaml]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

from lesiontrack.evaluate import lost_on_perfect, row_slug
from lesiontrack.io import read_table
from lesiontrack.track import trackers

TAB = "\t"


def rows(results: Path, dataset: str, config: dict) -> list[str]:
    table = read_table(results / "tables" / f"{dataset}.csv")
    out = ["| method | CPM@10mm | CPM@Radius | MED (mm) | median (mm) | > 20 mm | p vs reference | track (s) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in table.to_dict("records"):
        method, slug = row["method"], row_slug(row["method"])
        metrics = json.loads((results / dataset / "metrics" / f"{slug}.json").read_text())
        benches = [results / "benchmarks" / "track" / f"{dataset}-{slug}.tsv",
                   *[results / "benchmarks" / "register" / f"{dataset}-{name}.tsv"
                     for name in trackers.get(slug.split("@")[0]).registrations(config.get("track"))]]
        seconds = (f"{sum(pd.read_csv(b, sep=TAB)['s'].iloc[-1] for b in benches):.0f}"
                   if all(b.exists() for b in benches) else "")
        p = float(row["p_vs_reference"])
        p_text = "-" if p != p else "< 0.001" if p < 0.001 else f"{p:.3f}"
        out.append(f"| {method} | {row['CPM@10mm']:.1f} | {row['CPM@Radius']:.1f} | {row['MED']} | "
                   f"{metrics['median']:.1f} | {metrics['over_20mm']:.1f} % | {p_text} | {seconds} |")
    distances = {m: results / dataset / "metrics" / f"{m}-pairs.csv" for m in ("hybrid", "deformable")}
    if all(path.exists() for path in distances.values()):
        lost, rescued = lost_on_perfect(read_table(distances["hybrid"]), read_table(distances["deformable"]),
                                        read_table(results / dataset / "pairs.csv"))
        out += ["", f"`hybrid` loses {lost} lesion(s) on image pairs where `deformable` has every lesion and has "
                    f"{rescued} that `deformable` misses."]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--config", type=Path, help="the run's track settings (which registrations each reads); "
                                                     "default: the packaged defaults")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text()) if args.config else {}
    print("\n".join(rows(args.results, args.dataset, config or {})))


if __name__ == "__main__":
    main()
