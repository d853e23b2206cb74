"""Planning at scale: ``snakemake -n`` of this workflow on a 50,000-volume NLST manifest.

    python bench/dag_scale.py [--volumes 50000] [--shard-size 100] [--out bench/out/dag_scale.json]

The manifest is real metadata, no images: the NLST series that the workflow's own selection
(``lesiontrack.data.nlst.select_stage``, from idc-index's offline index and the NLSTx table in
``$LESIONTRACK_TEST_DATA/nlstx``) picks for enough training patients to reach ``--volumes`` series
(cut to exactly that many), written where the checkpoint ``nlst_select`` puts it. Then the
project's Snakefile, in a copy of the workflow, plans everything after it (download, convert,
resample, landmarks per shard of ``--shard-size``; pretraining on the whole cohort; embedding,
tracking, evaluation, figures) with ``snakemake -n``; wall time and peak memory (max RSS of the
snakemake process) are measured with ``/usr/bin/time``-style ``getrusage`` of the child.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOW_FILES = ("Snakefile", "config.yaml", "rules", "workflow_scripts", "lesiontrack", "configs",
                  "report", "envs", "profiles", "pyproject.toml")


def manifest(nlstx_csv: Path, out: Path, volumes: int) -> int:
    """series.csv of the NLST selection with at least ``volumes`` series, cut to ``volumes``."""
    from lesiontrack.data import nlst
    from lesiontrack.io import write_table

    patients = int(volumes / 2.6) + 500  # about 2.7 screening years per selected patient
    series = nlst.select_cohorts(nlstx_csv, patients)
    if len(series) < volumes:
        raise SystemExit(f"NLST has only {len(series)} selectable series (asked for {volumes})")
    write_table(series.iloc[:volumes], out)
    return volumes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=50_000)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--out", default="bench/out/dag_scale.json")
    parser.add_argument("--keep", help="work in this folder and keep it")
    args = parser.parse_args()
    test_data = Path(os.environ.get("LESIONTRACK_TEST_DATA", REPO.parent / "shared" / "data"))
    nlstx = test_data / "nlstx" / "nlstx_dataset.csv"
    work = Path(args.keep or tempfile.mkdtemp(prefix="dag_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, work / name)
    (work / "results" / "nlst").mkdir(parents=True, exist_ok=True)
    shutil.copy2(nlstx, work / "results" / "nlst" / "nlstx_dataset.csv")
    began = time.perf_counter()
    n = manifest(nlstx, work / "results" / "nlst" / "series.csv", args.volumes)
    select_s = time.perf_counter() - began
    overlay = work / "scale.yaml"
    overlay.write_text(f"shard_size: {args.shard_size}\n"
                       "datasets: {synthetic: {enabled: false}, nlst: {enabled: true}}\n"
                       "train: {datasets: [nlst], landmark_backend: heuristic}\n")
    command = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--quiet", "rules", "--rerun-triggers",
               "mtime", "--configfile", str(overlay)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    result = subprocess.run(command, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KB on Linux
    if result.returncode != 0:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
    counts = {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.M)}
    summary = {"volumes": n, "shard_size": args.shard_size, "shards": -(-n // args.shard_size),
               "jobs": counts.get("total"), "jobs_per_rule": {k: v for k, v in counts.items() if k != "total"},
               "dry_run_s": round(seconds, 1), "peak_rss_mb": round(peak_mb), "manifest_s": round(select_s, 1),
               "cpu_user_s": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before.ru_utime, 1)}
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
