"""Helpers for the thin scripts in workflow_scripts/: logging to the rule's log file."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def logged(log_path: str | Path, rule: str) -> Iterator[logging.Logger]:
    """Send stderr (tqdm progress, warnings, tracebacks) and a logger to the rule's log file."""
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
        except BaseException:
            logger.exception("rule %s failed", rule)
            raise
        finally:
            logger.removeHandler(handler)
            sys.stderr = old_stderr
