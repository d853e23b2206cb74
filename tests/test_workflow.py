"""The workflow through the Snakemake API: outputs, logs, benchmarks, and what reruns after a change."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, planned_jobs, run_workflow

from lesiontrack.io import read_table
from lesiontrack.tables import LESION_COLUMNS, PAIR_COLUMNS, PREDICTION_COLUMNS


def _snapshot(workdir: Path) -> dict[str, int]:
    """Modification times (ns) of every volume and table under results/."""
    results = workdir / "results"
    return {p.relative_to(results).as_posix(): p.stat().st_mtime_ns
            for p in results.rglob("*") if p.is_file() and p.suffix in (".gz", ".csv", ".png")}


def _copy_run(smoke_run: Path, target: Path) -> Path:
    shutil.copytree(smoke_run, target, symlinks=True)  # copy2 keeps modification times
    return target


def _resample_targets(workdir: Path) -> list[str]:
    """The resample rule's outputs of the smoke run: rerun tests stop there, and a dry run of the
    whole workflow shows what would follow (rerunning pretraining and tracking would add minutes
    and test nothing more about what a change invalidates)."""
    shards = sorted((workdir / "results" / "synthetic" / "shards").glob("images-*.csv"))
    assert shards
    return [f"results/synthetic/shards/{p.name.replace('images-', 'resampled-')}" for p in shards]


def test_smoke_outputs(smoke_run):
    results = smoke_run / "results"
    pairs = read_table(results / "synthetic" / "pairs.csv", required=PAIR_COLUMNS)
    lesions = read_table(results / "synthetic" / "lesions.csv", required=LESION_COLUMNS)
    images = read_table(results / "synthetic" / "images.csv", required=["image_id", "path", "sha256"])
    assert len(pairs) > 0 and set(pairs["direction"]) == {"forward", "backward"}
    assert set(lesions["image_id"]) <= set(images["image_id"])
    for image_id in images["image_id"]:
        assert (results / "synthetic" / "images" / f"{image_id}.nii.gz").exists()
        assert (results / "synthetic" / "resampled" / f"{image_id}.nii.gz").exists()
    assert (results / "figures" / "synthetic_preview.png").stat().st_size > 50_000
    for rule in ("synth", "resample"):
        benchmarks = list((results / "benchmarks" / rule).glob("*.tsv"))
        logs = list((results / "logs" / rule).glob("*.log"))
        assert benchmarks and logs
        assert all("finished in" in log.read_text() for log in logs)
        assert all(pd.read_csv(b, sep="\t")["s"].iloc[0] > 0 for b in benchmarks)


def test_spacing_change_reruns_resample_not_synth(smoke_run, tmp_path):
    workdir = _copy_run(smoke_run, tmp_path / "repo")
    before = _snapshot(workdir)
    overlay = tmp_path / "spacing.yaml"
    overlay.write_text("preprocess:\n  spacing_mm: 3.5\n")
    configs = [workdir / "configs" / "smoke.yaml", overlay]
    updated = run_workflow(workdir, configs, targets=_resample_targets(workdir))
    after = _snapshot(workdir)
    changed = {name for name in before if after[name] != before[name]}
    assert any(u.startswith("results/synthetic/shards/resampled-") for u in updated)
    assert not any(u.startswith("results/synthetic/shards/images-") for u in updated)
    assert {n for n in changed if n.startswith("synthetic/resampled/")} == {
        n for n in before if n.startswith("synthetic/resampled/")}
    assert not {n for n in changed if n.startswith(("synthetic/images/", "synthetic/labels/", "synthetic/truth/"))}
    resampled = read_table(workdir / "results" / "synthetic" / "shards" / "resampled-000.csv")
    assert (resampled["spacing_mm"] == 3.5).all()
    planned = run_workflow(workdir, configs, dryrun=True)
    assert "results/models/default/checkpoint_best.pt" in planned  # a dependant of resample
    assert not any(u.startswith("results/synthetic/shards/resampled-") for u in planned)  # up to date now


def test_editing_resample_module_reruns_resample_only(smoke_run, tmp_path):
    workdir = _copy_run(smoke_run, tmp_path / "repo")
    before = _snapshot(workdir)
    module = workdir / "lesiontrack" / "preprocess.py"
    module.write_text(module.read_text() + "\n# an edit that changes the module's fingerprint\n")
    updated = run_workflow(workdir, targets=_resample_targets(workdir))
    after = _snapshot(workdir)
    changed = {name for name in before if after[name] != before[name]}
    assert any(u.startswith("results/synthetic/shards/resampled-") for u in updated)
    assert not any(u.startswith("results/synthetic/shards/images-") for u in updated)
    assert any(n.startswith("synthetic/resampled/") for n in changed)
    assert not {n for n in changed if n.startswith(("synthetic/images/", "synthetic/labels/", "synthetic/truth/"))}


def test_nothing_to_do_after_a_run(smoke_run, tmp_path):
    workdir = _copy_run(smoke_run, tmp_path / "repo")
    assert run_workflow(workdir, dryrun=True) == []


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "snakemake", "--lint"],
    [sys.executable, "-m", "snakefmt", "--check", "."],
    [sys.executable, "-m", "ruff", "check", "."],
])
def test_lint_and_format(command):
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    if "--lint" in command:
        assert "Lints for" not in result.stdout + result.stderr


def _readme_commands() -> list[list[str]]:
    """Every ``lesiontrack ...`` command of the README's fenced blocks (continuation lines joined,
    comments dropped), as argument lists."""
    commands, fenced, pending = [], False, ""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            continue
        line = pending + line.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("lesiontrack "):
            commands.append(shlex.split(line, comments=True)[1:])
    return commands


def test_readme_commands_run_as_written(capsys):
    """Each subcommand the README names answers --help, and each README command line parses with
    the options it shows (no option misspelt or gone)."""
    from lesiontrack.cli import build_parser, main

    commands = _readme_commands()
    assert len(commands) >= 15
    for stage in sorted({c[0] for c in commands}):
        with pytest.raises(SystemExit) as exited:
            main([stage, "--help"])
        assert exited.value.code == 0 and f"usage: lesiontrack {stage}" in capsys.readouterr().out, stage
    parser = build_parser()
    for command in commands:
        parser.parse_args(command)  # exits (SystemExit) on an unknown or missing option


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    blocks = [b.split("\n", 1)[1].strip() for b in text.split("```")[1::2]]
    assert blocks[0] == 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/snakemake --cores 2'
    assert blocks[1] == ".venv/bin/python -m pytest --durations=15"
    ci = (REPO / ".ci" / "run").read_text()
    assert blocks[0].replace(" && ", "&&") in ci.replace(" && ", "&&") and blocks[1] in ci


def test_default_run_ends_with_the_table_of_every_method(smoke_run):
    results = smoke_run / "results"
    table = read_table(results / "tables" / "synthetic.csv")
    assert list(table["method"]) == ["identity", "affine", "deformable", "elastix", "single-scale-fine",
                                     "two-scale", "multiscale", "hybrid"]
    # paired tests of hybrid (the reference) against every other row
    assert table.set_index("method")["p_vs_reference"].drop("hybrid").astype(float).between(0, 1).all()
    assert (results / "tables" / "synthetic.md").exists() and (results / "tables" / "synthetic.tex").exists()
    metrics = json.loads((results / "synthetic" / "metrics" / "identity.json").read_text())
    pairs = read_table(results / "synthetic" / "pairs.csv")
    test_pairs = pairs[pairs["split"] == "test"]
    assert metrics["n"] == len(test_pairs) and (table["n"] == len(test_pairs)).all()
    # identity's distance is exactly |source - target|, recomputed here from pairs.csv
    distance = ((test_pairs[["source_x", "source_y", "source_z"]].to_numpy()
                 - test_pairs[["target_x", "target_y", "target_z"]].to_numpy()) ** 2).sum(axis=1) ** 0.5
    assert metrics["med"] == pytest.approx(distance.mean(), rel=1e-6)
    predictions = read_table(results / "synthetic" / "predictions" / "identity.csv")
    assert list(predictions.columns) == PREDICTION_COLUMNS == ["pair_id", "lesion_id", "direction", "source_image",
                                                               "target_image", "pred_x", "pred_y", "pred_z",
                                                               "confidence", "found", "seconds"]


def test_default_run_decides_presence_for_every_method_but_identity(smoke_run):
    results = smoke_run / "results" / "synthetic"
    calibration = json.loads((results / "presence" / "calibration.json").read_text())
    lesions = read_table(results / "lesions.csv")
    train_gone = (lesions["split"] == "train") & (lesions["status"] == "disappeared")
    assert calibration["calibrated"] == bool(train_gone.any())
    pairs = read_table(results / "pairs.csv")
    n_test = int((pairs["split"] == "test").sum())
    for method in ("affine", "deformable", "elastix", "single-scale-fine", "two-scale", "multiscale", "hybrid"):
        report = json.loads((results / "presence" / f"{method}.json").read_text())
        table = read_table(results / "presence" / f"{method}.csv")
        # every test pair is a present query; the gone queries come on top
        assert report["appearance"]["n_present"] == n_test == int((table["expected"] == "present").sum())
        assert report["appearance"]["n_gone"] == int((table["expected"] == "gone").sum())
        predictions = read_table(results / "predictions" / f"{method}.csv")
        decided = table[table["expected"] == "present"].merge(predictions, on=["pair_id", "direction"])
        assert (decided["found_x"].astype(bool) == decided["found_y"].astype(bool)).all()
    assert not (results / "presence" / "identity.json").exists()
    # the reference method's followed histories, their statuses beside its pairwise decisions
    summary = read_table(results / "follow" / "hybrid.csv").set_index("measure")
    assert list(summary.index) == ["identity consistency", "gone precision", "gone recall", "new precision",
                                   "new recall"]
    pairwise = json.loads((results / "presence" / "hybrid.json").read_text())
    for decision, key in (("gone", "appearance"), ("new", "new")):
        counts = pairwise[key]
        assert summary.loc[f"{decision} recall", "pairwise_counts"] == \
            f"tp {counts['tp']}, fp {counts['fp']}, fn {counts['fn']}"
    subjects = json.loads((results / "follow" / "hybrid.json").read_text())["subjects"]
    assert sorted(p.name for p in (results / "follow" / "hybrid").iterdir() if p.is_dir()) == subjects


def test_dls_table_reproduces_published_rows(test_data, tmp_path):
    """With DLS enabled, the workflow downloads DLTMix.json (here from a local server) and its table
    repeats the paper's Table 1 rows "Affine" and "DLT" to the printed digit."""
    from conftest import LocalHTTPServer, copy_workflow

    workdir = copy_workflow(tmp_path / "repo")
    overlay = tmp_path / "dls.yaml"
    with LocalHTTPServer({"/DLTMix.json": (test_data / "dls" / "DLTMix.json").read_bytes()}) as server:
        overlay.write_text("datasets:\n  synthetic: {enabled: false}\n  dls: {enabled: true}\n"
                           f"dls:\n  dlt_predictions_url: {server.url}/DLTMix.json\n")
        run_workflow(workdir, [overlay])
    table = read_table(workdir / "results" / "tables" / "dls.csv").set_index("method")
    columns = ["CPM@10mm", "CPM@Radius", "MEDx", "MEDy", "MEDz", "MED"]
    assert table.loc["DLT", columns].tolist() == [78.85, 86.88, "3.5 ± 5.6", "2.9 ± 4.9", "4.0 ± 6.1", "7.0 ± 8.9"]
    assert table.loc["Affine (DLT init)", columns].tolist() == [
        48.33, 65.21, "4.1 ± 5.0", "5.4 ± 5.6", "7.1 ± 8.3", "11.2 ± 9.9"]
    assert (table["n"] == 960).all()


def test_paper_model_config_plans_paper_training(tmp_path):
    """`snakemake -n --configfile configs/paper-model.yaml` plans pretrain with the paper's settings."""
    with planned_jobs(tmp_path, [REPO / "configs" / "paper-model.yaml"], REPO / "Snakefile") as planned:
        jobs = [job for job in planned if job.rule.name == "pretrain"]
        assert len(jobs) == 1
        params, resources = jobs[0].params, jobs[0].resources
        assert params.model["width"] == 64 and params.model["embedding_dim"] == 128
        assert params.train["batch_size"] == 8 and list(params.train["patch_size"]) == [32, 96, 96]
        assert params.train["max_epochs"] == 64 and params.train["patience"] == 5
        assert params.train["temperature"] == 0.5 and params.train["lr"] == 0.0001
        assert resources["gpu"] == 1
        assert str(jobs[0].output.best) == "results/models/paper/checkpoint_best.pt"


def test_ablation_config_plans_a_second_model_without_landmarks(tmp_path):
    """configs/ablation-landmarks.yaml: a model trained with landmark fraction 0 beside the default
    one (0.1), its multiscale row in the same table, paired against multiscale."""
    with planned_jobs(tmp_path, [REPO / "configs" / "ablation-landmarks.yaml"], REPO / "Snakefile") as planned:
        fractions = {str(job.output.best): job.params.train["landmark_fraction"]
                     for job in planned if job.rule.name == "pretrain"}
        table = next(job for job in planned if job.rule.name == "table")
        rows, reference = list(table.params.methods), table.params.reference
        variant = next(job for job in planned if job.rule.name == "track_variant")
        embeddings = variant.params.embeddings
    assert fractions == {"results/models/default/checkpoint_best.pt": 0.1,
                         "results/models/nolandmarks/checkpoint_best.pt": 0.0}
    assert rows[-1] == "multiscale [nolandmarks]" and reference == "multiscale" and "multiscale" in rows
    assert embeddings == "results/synthetic/embeddings/nolandmarks"


def test_training_budget_ablation_plans_a_model_trained_three_times_longer(tmp_path):
    """configs/ablation-training-budget.yaml: the default model (14 epochs) and one trained for 42
    epochs with every other setting equal, its multiscale row beside multiscale, paired against it."""
    with planned_jobs(tmp_path, [REPO / "configs" / "ablation-training-budget.yaml"], REPO / "Snakefile") as planned:
        trains = {str(job.output.best): job.params.train for job in planned if job.rule.name == "pretrain"}
        table = next(job for job in planned if job.rule.name == "table")
        rows, reference = list(table.params.methods), table.params.reference
    default, long = (trains[f"results/models/{name}/checkpoint_best.pt"] for name in ("default", "long"))
    assert (default["max_epochs"], long["max_epochs"]) == (14, 42)
    assert {k: v for k, v in long.items() if k != "max_epochs"} == {
        k: v for k, v in default.items() if k != "max_epochs"}
    assert rows[-1] == "multiscale [long]" and reference == "multiscale" and "multiscale" in rows


def test_smoke_pretraining_outputs(smoke_run):
    model_dir = smoke_run / "results" / "models" / "default"
    log = pd.read_csv(model_dir / "training_log.tsv", sep="\t")
    train = {**yaml.safe_load((smoke_run / "config.yaml").read_text())["train"],
             **yaml.safe_load((smoke_run / "configs" / "smoke.yaml").read_text())["train"]}
    assert list(log["epoch"]) == list(range(len(log))) and 0 < len(log) <= train["max_epochs"]
    if len(log) < train["max_epochs"]:  # stopped early: no better validation loss in the last `patience` epochs
        best = int(log["validation_loss"].idxmin())
        assert best == len(log) - 1 - train["patience"]
    assert {f"validation_loss_s{k}" for k in range(1, 6)} <= set(log.columns)
    for name in ("checkpoint_best.pt", "checkpoint_latest.pt", "progress.png"):
        assert (model_dir / name).stat().st_size > 0
    # its duration is a benchmark figure (docs/benchmarks.md), not a condition: the file is written
    benchmark = pd.read_csv(smoke_run / "results" / "benchmarks" / "pretrain" / "default.tsv", sep="\t")
    assert len(benchmark) == 1 and benchmark["s"].iloc[0] > 0


def test_kill_int_stops_a_running_pretrain_job(smoke_run, tmp_path):
    """``kill -INT`` of the snakemake process stops the running pretraining within seconds (the
    Snakefile forwards the signal to its jobs), leaves no job process, and the next dry run plans
    pretraining again."""
    import os
    import signal
    import time

    import psutil

    workdir = _copy_run(smoke_run, tmp_path / "repo")
    log = workdir / "results" / "logs" / "pretrain" / "default.log"
    log.unlink()
    target = ["results/models/default/checkpoint_best.pt"]
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "configs/smoke.yaml",
               "--rerun-triggers", "mtime", "--forcerun", "pretrain", *target]
    process = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a hang guard only
        while not (log.exists() and "epoch" in log.read_text()) and time.monotonic() < deadline:
            assert process.poll() is None, "snakemake ended before pretraining started"
            time.sleep(0.5)
        jobs = psutil.Process(process.pid).children(recursive=True)
        assert jobs, "no job process under snakemake"
        os.kill(process.pid, signal.SIGINT)
        process.wait(timeout=120)
        _, alive = psutil.wait_procs(jobs, timeout=30)
        assert not alive, alive
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert "results/models/default/checkpoint_best.pt" in run_workflow(workdir, dryrun=True)
