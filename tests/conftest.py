"""Shared fixtures: repository paths, the real reference data, and one smoke workflow run."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOW_FILES = ("Snakefile", "config.yaml", "rules", "workflow_scripts", "lesiontrack", "configs",
                  "report", "envs", "profiles", "pyproject.toml")


def pytest_configure(config):
    """Tests register single-threaded, as every workflow rule does, here and in the commands they
    start: with more threads ITK's registration metric sums in the order its threads finish, and a
    registered point can move by millimetres between two runs (lesiontrack.track.registration)."""
    from lesiontrack.track.registration import use_threads

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    use_threads(1)


class LocalHTTPServer:
    """A thread on 127.0.0.1 serving ``files`` (URL path -> bytes) with HTTP Range support.

    ``drop_after`` cuts the first response after that many bytes; ``failures`` answers 503 first.
    """

    def __init__(self, files: dict[str, bytes], drop_after: int | None = None, failures: int = 0):
        self.files, self.drop_after, self.failures = files, drop_after, failures
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                if server.failures > 0:
                    server.failures -= 1
                    self.send_error(503, "try again")
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "no such file")
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.drop_after is not None:
                    body, server.drop_after = body[: server.drop_after], None  # cut this one response
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def chromium(tmp_path) -> list[str]:
    """Headless Chromium's command line (its own profile under ``tmp_path``); skipped where it is
    not installed, failed under CI=true (.ci/run installs the Debian package)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium not installed under CI=true (.ci/run installs the Debian package)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return [path, *CHROMIUM_FLAGS, "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'profile'}"]


@pytest.fixture(scope="session")
def test_data() -> Path:
    """``$LESIONTRACK_TEST_DATA`` (default ../shared/data); tests skip where it is absent."""
    path = Path(os.environ.get("LESIONTRACK_TEST_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"reference data folder {path} not found (set LESIONTRACK_TEST_DATA)")
    return path


def copy_workflow(target: Path) -> Path:
    """A copy of the workflow and package (no results), for runs that must not touch the repo."""
    target.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target / name)
    return target


def run_workflow(workdir: Path, configfiles: list[Path] | None = None, targets: list[str] | None = None,
                 dryrun: bool = False, cores: int = 2) -> list[str]:
    """Run the workflow in ``workdir`` (its own Snakefile) through the Snakemake API.

    Returns the output files that the run (re)created.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    updated: list[str] = []
    configfiles = [workdir / "configs" / "smoke.yaml"] if configfiles is None else configfiles
    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings(verbose=False)) as api:
            workflow = api.workflow(
                resource_settings=ResourceSettings(cores=cores),
                config_settings=ConfigSettings(configfiles=[Path(c) for c in configfiles]),
                snakefile=workdir / "Snakefile",
                workdir=workdir,
            )
            dag = workflow.dag(DAGSettings(targets=frozenset(targets or [])))
            dag.execute_workflow(executor="local", pseudo_executor="dryrun" if dryrun else None,
                                 updated_files=updated)
    finally:
        os.chdir(cwd)
    return updated



@contextlib.contextmanager
def planned_jobs(workdir: Path, configfiles: list[Path], snakefile: Path | None = None) -> Iterator[list]:
    """The jobs of a dry run (``snakemake -n``) of the workflow with ``configfiles`` in ``workdir``;
    read them inside the ``with`` block, while the Snakemake API is open."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings(verbose=False)) as api:
            workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                                    config_settings=ConfigSettings(configfiles=[Path(c) for c in configfiles]),
                                    snakefile=snakefile or workdir / "Snakefile", workdir=workdir)
            workflow.dag(DAGSettings()).execute_workflow(executor="local", pseudo_executor="dryrun")
            yield list(workflow._workflow.dag.jobs)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """One smoke run of the whole default workflow (configs/smoke.yaml), shared by workflow tests.

    ``LESIONTRACK_SMOKE_RUN=DIR`` reuses a finished smoke run in DIR (for quick iteration on
    read-only tests; tests that rerun the workflow copy it first)."""
    reuse = os.environ.get("LESIONTRACK_SMOKE_RUN")
    if reuse:
        return Path(reuse)
    workdir = copy_workflow(tmp_path_factory.mktemp("smoke") / "repo")
    run_workflow(workdir)
    return workdir


def made_ct(path: Path, shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0), size=(56, 56, 40),
            spacing=(3.0, 3.0, 3.0), seed: int = 0) -> Path:
    """A small CT-like volume written to ``path`` (int16 HU, LPS): air around an ellipsoidal body of
    soft tissue with smooth texture and a few bright, bone-like blobs, its origin moved by
    ``shift_mm``. Made here, so that tests need no reference data."""
    import numpy as np
    import SimpleITK as sitk
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (nz, ny, nx)), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 < 1.0
    hu = np.where(body, 40.0, -1000.0) + np.where(body, ndimage.gaussian_filter(rng.normal(0, 1, body.shape), 2)
                                                 * 400.0, 0.0)
    for centre in rng.uniform(-0.5, 0.5, (6, 3)):
        hu[((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) < 0.02] = 900.0
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(np.add((-nx * spacing[0] / 2, -ny * spacing[1] / 2, -nz * spacing[2] / 2), shift_mm)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path
