"""Summarise a run's Snakemake ``benchmark:`` files: wall time and peak memory per rule.

    python bench/workflow_benchmarks.py [results]

Prints a Markdown table (rule, jobs, total s, max s per job, max RSS MB) as quoted in the README.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    rows = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = path.parent.name if path.parent.name != "benchmarks" else path.stem
        table = pd.read_csv(path, sep="\t")
        rows.append({"rule": rule, "s": float(table["s"].iloc[0]), "max_rss": float(table["max_rss"].iloc[0])})
    frame = pd.DataFrame(rows)
    summary = frame.groupby("rule").agg(jobs=("s", "size"), total_s=("s", "sum"), max_s=("s", "max"),
                                        max_rss_mb=("max_rss", "max")).reset_index()
    print("| rule | jobs | total s | max s per job | max RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for row in summary.itertuples():
        print(f"| {row.rule} | {row.jobs} | {row.total_s:.1f} | {row.max_s:.1f} | {row.max_rss_mb:.0f} |")


if __name__ == "__main__":
    main()
