"""envs/*.yaml are generated from the exact pins in pyproject.toml and agree with them."""

from __future__ import annotations

from conftest import REPO

from lesiontrack import envs


def test_env_files_agree_with_pins():
    expected = envs.expected(REPO)
    assert sorted(p.name for p in (REPO / "envs").glob("*.yaml")) == sorted(p.name for p in expected)
    for path, text in expected.items():
        assert path.read_text() == text, f"{path.name} is stale: run python -m lesiontrack.envs"


def test_required_pins():
    pins = envs.pins(REPO / "pyproject.toml")
    assert pins["snakemake"] == "snakemake[reports]==9.27.1"  # the HTML report (pygments)
    assert pins["snakemake-executor-plugin-slurm"] == "snakemake-executor-plugin-slurm==2.8.0"
    assert pins["torch"] == "torch==2.13.0"
    assert "torchvision" not in pins
