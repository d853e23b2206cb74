"""Helpers for the workflow: logging to the rule's log file (the thin scripts in
workflow_scripts/), and interrupts that reach the running jobs (the Snakefile)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from lesiontrack.config import ConfigError
from lesiontrack.download import DownloadError
from lesiontrack.io import InputError


class Stopped(KeyboardInterrupt):
    """A SIGINT or SIGTERM, raised where the process is, so that ``finally`` blocks (staging
    folders, temporary files) run before it ends."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def forward_interrupts() -> None:
    """Make ``kill -INT`` (or ``-TERM``) of the snakemake process reach the jobs it runs.

    Snakemake answers an interrupt by waiting for its running jobs ("Terminating processes on user
    request"); only a Ctrl-C in a terminal, which signals the whole process group, stops them. This
    handler sends the signal on to every descendant process first, so a job (pretraining, say)
    stops within seconds; the interrupted job is incomplete and reruns on the next run. Installed
    once per process, from the main thread only (a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if getattr(previous, "forwards_to_jobs", False):
            continue

        def handler(number, frame, previous=previous):
            for child in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.send_signal(number)
            if callable(previous):
                previous(number, frame)
            elif number == signal.SIGINT or previous == signal.SIG_DFL:
                raise Stopped(number)

        handler.forwards_to_jobs = True
        signal.signal(signum, handler)


@contextlib.contextmanager
def logged(log_path: str | Path, rule: str) -> Iterator[logging.Logger]:
    """Send stderr (tqdm progress, warnings, tracebacks) and a logger to the rule's log file.

    Bad input (:class:`~lesiontrack.io.InputError`, a config or download error) ends the job with
    one line, in the log and on snakemake's console, and exit status 1; anything else is a bug
    and keeps its traceback in the log."""

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", buffering=1) as stream:
        old_stderr = sys.stderr
        sys.stderr = stream
        logger = logging.getLogger(f"lesiontrack.{rule}")
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        start = time.perf_counter()
        try:
            logger.info("rule %s started", rule)
            yield logger
            logger.info("rule %s finished in %.1f s", rule, time.perf_counter() - start)
        except (InputError, ConfigError, DownloadError) as error:
            logger.error("rule %s failed: %s", rule, error)
            print(f"lesiontrack rule {rule}: {error}", file=old_stderr)
            raise SystemExit(1) from None
        except BaseException:
            logger.exception("rule %s failed", rule)
            raise
        finally:
            logger.removeHandler(handler)
            sys.stderr = old_stderr
