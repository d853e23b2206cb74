"""Config validation: defaults, ranges, unknown keys, one clear message before any job runs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import REPO, copy_workflow

from lesiontrack import config


def _default() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_default_config_is_valid_and_gets_defaults():
    cfg = config.validate(_default())
    assert cfg["preprocess"]["spacing_mm"] == 2.0
    assert cfg["synthetic"]["canonical_spacing_mm"] == 1.5  # filled in from the schema


@pytest.mark.parametrize(("overlay", "message"), [
    ({"preprocess": {"spacing_mm": "two"}}, "preprocess.spacing_mm = 'two': expected number"),
    ({"synthetic": {"n_test_subjects": -3}}, "synthetic.n_test_subjects = -3: must be >= 1"),
    ({"shard_size": 0}, "shard_size = 0: must be >= 1"),
    ({"synthetic": {"followups": [2, 1]}}, "synthetic.followups = [2, 1]: must be [low, high]"),
    ({"preprocess": {"spacingmm": 2}}, "unknown key 'preprocess.spacingmm'"),
])
def test_bad_values_named(overlay, message):
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.validate(config.merge(_default(), overlay))


@pytest.mark.parametrize(("overlay", "message", "key"), [
    ("preprocess:\n  spacing_mm: two\n", "preprocess.spacing_mm = 'two': expected number", "spacing_mm"),
    # a tracker's own setting, which only its tracker reads: checked at start-up all the same
    ("track:\n  hybrid:\n    choice_overlap: 2\n", "track.hybrid: choice_overlap = 2: must lie in [0, 1]",
     "choice_overlap"),
])
def test_bad_config_stops_snakemake_before_any_job(tmp_path, overlay, message, key):
    workdir = copy_workflow(tmp_path / "repo")
    (tmp_path / "bad.yaml").write_text(overlay)
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "--configfile",
                             str(tmp_path / "bad.yaml")], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert message in output
    assert output.count(key) == 1
    assert not (workdir / "results").exists()


def test_reference_method_must_be_tracked():
    with pytest.raises(config.ConfigError, match=r"evaluate\.reference_method = 'hybrid': must be one of"):
        config.validate(config.merge(_default(), {"track": {"methods": ["identity", "affine"]}}))
