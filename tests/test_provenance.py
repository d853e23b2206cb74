"""Code fingerprints follow the package imports of each rule's entry module."""

from __future__ import annotations

from conftest import REPO

from lesiontrack.provenance import modules_used


def test_modules_used():
    resample = {p.name for p in modules_used(REPO, "lesiontrack.preprocess")}
    synth = {p.relative_to(REPO).as_posix() for p in modules_used(REPO, "lesiontrack.data.synthetic")}
    assert resample == {"preprocess.py", "io.py", "tables.py", "__init__.py"}
    assert "lesiontrack/data/phantom.py" in synth and "lesiontrack/vocabulary.py" in synth
    assert "lesiontrack/preprocess.py" not in synth  # so editing it reruns resample only
