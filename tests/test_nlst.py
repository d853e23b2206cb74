"""NLST / NLSTx pipeline: DICOM conversion, offline IDC cohort selection, download, NLSTx boxes, --check-slices."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from lesiontrack.io import InputError, dicom_series, read_image


@pytest.fixture(scope="module")
def dicom_dir(test_data) -> Path:
    return test_data / "totalseg" / "example_ct_dicom"


def test_example_dicom_converts_with_header_values(dicom_dir):
    pydicom = pytest.importorskip("pydicom")
    image = read_image(dicom_dir)
    assert image.GetSize() == (512, 512, 20)
    assert image.GetSpacing() == pytest.approx((0.9765625, 0.9765625, 2.0))
    assert image.GetOrigin() == pytest.approx((-249.51171875, -437.51171875, -804.5))
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(dicom_dir.iterdir())]
    assert {float(h.SliceThickness) for h in headers} == {3.0}  # the tag is not what the converter uses
    z = sorted(float(h.ImagePositionPatient[2]) for h in headers)
    assert image.GetSpacing()[2] == pytest.approx(np.diff(z).mean())
    lowest = min(headers, key=lambda h: float(h.ImagePositionPatient[2]))
    assert image.GetOrigin() == pytest.approx([float(v) for v in lowest.ImagePositionPatient])
    assert dicom_series(dicom_dir).instance_numbers[0] == 286  # InstanceNumber grows towards the feet


def test_missing_slice_is_rejected_naming_the_folder(dicom_dir, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(dicom_dir, folder)
    files = dicom_series(folder).files
    Path(files[7]).unlink()
    with pytest.raises(InputError, match=f"{folder}: missing or irregular slice") as err:
        read_image(folder)
    assert str(err.value).count(str(folder)) == 1


def test_second_series_in_folder_is_rejected_naming_the_folder(dicom_dir, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    folder = tmp_path / "two"
    shutil.copytree(dicom_dir, folder)
    for k, path in enumerate(sorted(dicom_dir.iterdir())[:5]):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{k}"
        ds.save_as(folder / f"second-{k}.dcm")
    with pytest.raises(InputError, match=f"{folder}: folder holds 2 DICOM series"):
        read_image(folder)
