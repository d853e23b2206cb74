"""The workflow on a real one-node SLURM cluster (Debian's munge, slurmctld, slurmd, slurm-client).

The test writes a minimal ``slurm.conf``, starts ``munged``, ``slurmctld`` and ``slurmd`` (as root:
``SlurmUser=root``), runs a smoke target through the SLURM executor plugin with
``--workflow-profile profiles/slurm``, checks that every job went through SLURM and that its tables
equal a local run's, and stops the daemons it started by their process ids. Under ``CI=true`` it
must run: a missing package or user is a failure there, a skip elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import copy_workflow, run_workflow

pytestmark = pytest.mark.slurm

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")  # srun inside a job finds its config only here
MARKER = "# written by lesiontrack tests/test_slurm.py"
TINY_TRAIN = "train:\n  max_epochs: 1\n  steps_per_epoch: 4\n"
TARGETS = ["results/synthetic/shards/resampled-000.csv", "results/synthetic/shards/landmarks-000.csv",
           "results/models/default/checkpoint_best.pt"]
TIMING_COLUMNS = {"seconds", "s", "h:m:s"}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"SLURM test cannot run under CI=true: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(pid_file: Path) -> None:
    """SIGTERM the process whose id ``pid_file`` holds and wait (up to 20 s) until it is gone."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM cluster for this module: (folder, environment for the client commands)."""
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "srun", "sinfo") if not shutil.which(c)]
    if missing:
        _unavailable(f"not installed: {', '.join(missing)} (apt-get install munge slurmctld slurmd slurm-client)")
    if os.geteuid() != 0:
        _unavailable("the test cluster runs its daemons as root (SlurmUser=root)")
    if SYSTEM_CONF.exists() and MARKER not in SYSTEM_CONF.read_text():
        _unavailable(f"{SYSTEM_CONF} exists: this machine has its own SLURM configuration")
    folder = tmp_path_factory.mktemp("slurm")
    for name in ("state", "spool", "munge"):
        (folder / name).mkdir()
    (folder / "munge").chmod(0o755)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    socket_path = folder / "munge" / "munge.socket"
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    conf = f"""{MARKER}
ClusterName=lesiontrack-test
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=600
# the profile asks for the memory a cluster node needs; this node takes it on trust
SlurmdParameters=config_overrides
StateSaveLocation={folder / "state"}
SlurmdSpoolDir={folder / "spool"}
SlurmctldPidFile={folder / "slurmctld.pid"}
SlurmdPidFile={folder / "slurmd.pid"}
SlurmctldLogFile={folder / "slurmctld.log"}
SlurmdLogFile={folder / "slurmd.log"}
NodeName={host} CPUs={cpus} RealMemory=256000 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.write_text(conf)
    env = {**os.environ, "SLURM_CONF": str(SYSTEM_CONF)}
    pid_files = [folder / "munge" / "munged.pid", folder / "slurmctld.pid", folder / "slurmd.pid"]
    try:
        subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={socket_path}",
                        f"--pid-file={pid_files[0]}", f"--log-file={folder / 'munge' / 'munged.log'}",
                        f"--seed-file={folder / 'munge' / 'seed'}"], check=True, env=env, timeout=300)
        subprocess.run(["slurmctld", "-i"], check=True, env=env, timeout=300)
        subprocess.run(["slurmd"], check=True, env=env, timeout=300)
        deadline = time.monotonic() + 300  # a hang guard: a busy machine can take a while
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout
            if "idle" in state or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if "idle" not in state:
            pytest.fail(f"the test node did not come up: sinfo says {state!r}; see {folder}/slurm*.log")
        yield folder, env
    finally:
        for pid_file in reversed(pid_files):  # slurmd, slurmctld, munged: by their own process ids
            _stop(pid_file)
        if SYSTEM_CONF.exists() and MARKER in SYSTEM_CONF.read_text():
            SYSTEM_CONF.unlink()


def _tables(results: Path) -> dict[str, Path]:
    """CSV, TSV and JSON outputs under ``results`` by relative path (not logs, benchmarks, or the
    training volume cache, whose entries record their sources' modification times)."""
    return {p.relative_to(results).as_posix(): p for p in results.rglob("*")
            if p.suffix in (".csv", ".tsv", ".json") and p.relative_to(results).parts[0] not in ("logs", "benchmarks")
            and "volume_cache" not in p.parts}


def _assert_same(a: Path, b: Path) -> None:
    if a.suffix == ".json":
        x, y = json.loads(a.read_text()), json.loads(b.read_text())
        x, y = pd.json_normalize(x), pd.json_normalize(y)
    else:
        sep = "\t" if a.suffix == ".tsv" else ","
        x, y = pd.read_csv(a, sep=sep), pd.read_csv(b, sep=sep)
    assert list(x.columns) == list(y.columns) and len(x) == len(y), a.name
    for column in x.columns:
        if column in TIMING_COLUMNS:
            continue
        if pd.api.types.is_numeric_dtype(x[column]) and pd.api.types.is_numeric_dtype(y[column]):
            np.testing.assert_allclose(x[column].to_numpy(float), y[column].to_numpy(float), rtol=0, atol=1e-6,
                                       err_msg=f"{a.name}: {column}")
        else:
            assert x[column].astype(str).tolist() == y[column].astype(str).tolist(), f"{a.name}: {column}"


def test_smoke_target_runs_through_slurm_and_equals_a_local_run(slurm_cluster, smoke_run, tmp_path):
    """synth -> resample, landmarks, synth_tables -> a tiny pretrain: every job an sbatch job that
    SLURM completed, and every table equal to a local run's within 1e-6 (timings aside)."""
    folder, env = slurm_cluster
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(TINY_TRAIN)
    cluster = copy_workflow(tmp_path / "cluster")
    command = [sys.executable, "-m", "snakemake", "--workflow-profile", "profiles/slurm",
               "--configfile", "configs/smoke.yaml", str(overlay), "--slurm-status-command", "squeue",
               "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2", *TARGETS]
    result = subprocess.run(command, cwd=cluster, env=env, capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", output)
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output)
    assert len(submitted) == len(finished) >= 6, output[-3000:]
    assert {"synth", "resample", "landmarks", "synth_tables", "pretrain"} <= set(finished)
    controller = (folder / "slurmctld.log").read_text()
    for job in submitted:  # SLURM itself ran each one to completion
        assert re.search(rf"_job_complete: JobId={job} done", controller), f"SLURM job {job} not completed"

    # the local run: the smoke run (results and Snakemake's records, modification times kept), where
    # synth, resample and landmarks are up to date and the tiny training reruns pretrain
    local = Path(shutil.copytree(smoke_run, tmp_path / "local", symlinks=True))
    run_workflow(local, [local / "configs" / "smoke.yaml", overlay], targets=TARGETS)
    slurm_tables, local_tables = _tables(cluster / "results"), _tables(local / "results")
    assert "models/default/training_log.tsv" in slurm_tables
    for name, path in slurm_tables.items():
        _assert_same(path, local_tables[name])
