"""The package as a user installs it: a wheel, outside the repository, with its packaged defaults."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from conftest import REPO

from lesiontrack.io import read_table


def test_wheel_outside_the_repository_tracks_with_its_packaged_defaults(test_data, tmp_path):
    """Build the wheel from a copy of the package, install it into a folder of its own (the
    dependencies come from this environment), and from an unrelated folder run ``lesiontrack
    track --help`` and an own-data ``affine`` track of a real CT against a copy moved by a known
    translation: the console script finds its defaults inside the package, and the shift is
    recovered."""
    source_tree = tmp_path / "source"
    for name in ("lesiontrack", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, source_tree / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                 if (REPO / name).is_dir() else {}))
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    # setuptools of this environment where it has one (a fresh Python 3.11 venv does), else pip's own
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(wheels),
                    str(source_tree)], check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("lesiontrack-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    assert (site / "lesiontrack" / "config.schema.yaml").exists() and not (site / "config.yaml").exists()

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PATH": f"{site / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    where = subprocess.run([sys.executable, "-c", "import lesiontrack; print(lesiontrack.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    assert Path(where).is_relative_to(site)  # the installed copy, not the repository's
    helped = subprocess.run(["lesiontrack", "track", "--help"], cwd=work, env=env, capture_output=True, text=True,
                            timeout=300)
    assert helped.returncode == 0 and "usage: lesiontrack track" in helped.stdout

    image = sitk.ReadImage(str(test_data / "totalseg" / "example_ct_sm.nii.gz"))
    shift = np.array([9.0, -6.0, 6.0])  # mm: the follow-up is the scan moved by this
    moved = sitk.Resample(image, image, sitk.TranslationTransform(3, tuple(-shift)), sitk.sitkLinear, -1024.0)
    sitk.WriteImage(image, str(work / "baseline.nii.gz"))
    sitk.WriteImage(moved, str(work / "followup.nii.gz"))
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(np.asarray(image.GetSize()) / 2 - 0.5))
    points = pd.DataFrame({"lesion_id": ["a", "b"], "x": centre[0] + np.array([-30.0, 30.0]),
                           "y": centre[1], "z": centre[2]})
    points.to_csv(work / "points.csv", index=False)
    tracked = subprocess.run(["lesiontrack", "track", "--source", "baseline.nii.gz", "--target", "followup.nii.gz",
                              "--points", "points.csv", "--method", "affine", "--out", "tracked.csv"], cwd=work,
                             env=env, capture_output=True, text=True, timeout=600)
    assert tracked.returncode == 0, tracked.stderr[-3000:]
    out = read_table(work / "tracked.csv")
    error = out[["x", "y", "z"]].to_numpy(float) - (points[["x", "y", "z"]].to_numpy(float) + shift)
    assert np.linalg.norm(error, axis=1).max() < 2.0  # mm, at 3 mm voxels
