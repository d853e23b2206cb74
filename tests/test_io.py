"""World <-> voxel conversion against SimpleITK, atomic writes, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from lesiontrack.io import Geometry, InputError, read_image, read_table, write_image


def test_geometry_matches_simpleitk():
    image = sitk.Image(20, 30, 10, sitk.sitkInt16)
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetSpacing((0.7, 0.9, 2.5))
    rotation = sitk.VersorTransform((0.1, -0.2, 0.3), 0.4).GetMatrix()
    image.SetDirection(rotation)
    geometry = Geometry.of(image)
    index = np.array([[0, 0, 0], [3.5, 7.25, 2.0], [19, 29, 9]])
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index])
    np.testing.assert_allclose(geometry.index_to_world(index), expected, atol=1e-9)
    np.testing.assert_allclose(geometry.world_to_index(expected), index, atol=1e-9)
    assert geometry.contains(expected).tolist() == [True, True, True]
    assert not geometry.contains(geometry.index_to_world([[-1, 0, 0]]))[0]
    corners = {image.TransformIndexToPhysicalPoint((i, j, k)) for i in (0, 19) for j in (0, 29) for k in (0, 9)}
    assert len(geometry.corners()) == 8
    for point in geometry.corners():
        assert min(np.linalg.norm(np.subtract(point, c)) for c in corners) < 1e-9


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "x.nii.gz"
    with pytest.raises(TypeError):
        write_image("not an image", target)  # type: ignore[arg-type]
    assert list((tmp_path / "out").iterdir()) == []


def test_a_staged_folder_replaces_an_earlier_run_of_it_folders_included(tmp_path):
    """Writing a command's folder again (lesiontrack follow's per-subject folders) replaces what
    the first run wrote, a folder whole, keeps files the new run does not write, and leaves no
    temporary folder; a failed run changes nothing."""
    from lesiontrack.io import staged_folder

    out = tmp_path / "follow"
    with staged_folder(out) as staged:
        (staged / "s1").mkdir()
        (staged / "s1" / "history.csv").write_text("first")
        (staged / "s1" / "lesion_a.png").write_text("first")
        (staged / "scores.json").write_text("first")
    with staged_folder(out) as staged:
        (staged / "s1").mkdir()
        (staged / "s1" / "history.csv").write_text("second")
        (staged / "s2").mkdir()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["s1", "s1/history.csv", "s2", "scores.json"]
    assert (out / "s1" / "history.csv").read_text() == "second"
    with pytest.raises(RuntimeError), staged_folder(out) as staged:
        (staged / "s1").mkdir()
        raise RuntimeError("the run failed")
    assert (out / "s1" / "history.csv").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["follow"]


def test_written_files_have_the_usual_mode(tmp_path):
    """Atomic writes go through a temporary file (owner-only), but the result has the mode a plain
    write gives, 0666 less the umask: readable by others where the umask allows (shared clusters)."""
    import os

    from lesiontrack.io import write_table

    old = os.umask(0o022)
    os.umask(old)
    path = write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
    assert path.stat().st_mode & 0o777 == 0o666 & ~old


def test_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not a nifti")
    with pytest.raises(InputError, match=r"bad\.nii\.gz"):
        read_image(bad)
    table = tmp_path / "t.csv"
    table.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"t\.csv: missing column\(s\) \['image_id'\]"):
        read_table(table, required=["image_id"])
