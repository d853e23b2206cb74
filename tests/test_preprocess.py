"""Resampling keeps world positions; windowing; reading real CT (NIfTI and DICOM)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lesiontrack.io import Geometry, read_image
from lesiontrack.preprocess import resample_file, resample_isotropic, window


def _blob_image(center_mm: np.ndarray, geometry: Geometry, sigma_mm: float = 2.5) -> sitk.Image:
    """An int16 image of a small bright Gaussian blob centred (sub-voxel) at ``center_mm``."""
    nx, ny, nz = geometry.size
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    index = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1)
    world = geometry.index_to_world(index)
    d2 = np.sum((world - center_mm) ** 2, axis=1).reshape(nz, ny, nx)
    array = (-1000 + 3000 * np.exp(-d2 / (2 * sigma_mm**2))).astype(np.int16)
    return geometry.stamp(sitk.GetImageFromArray(array))


def _centroid_mm(image: sitk.Image) -> np.ndarray:
    array = sitk.GetArrayFromImage(image).astype(float) + 1000.0
    array[array < 300] = 0
    zyx = np.array(ndimage.center_of_mass(array))
    return Geometry.of(image).index_to_world(zyx[::-1])[0]


@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0, 1, 0, 0, 0, 1),
    tuple(np.array([[0.98480775, -0.17364818, 0], [0.17364818, 0.98480775, 0], [0, 0, 1]]).ravel()),
])
def test_resampling_keeps_marker_world_position(direction):
    geometry = Geometry((-120.3, 35.7, -610.2), (0.78, 0.78, 3.1), (64, 60, 18), direction)
    center = geometry.index_to_world([[31.3, 28.6, 8.4]])[0]
    image = _blob_image(center, geometry)
    assert np.linalg.norm(_centroid_mm(image) - center) < 0.3  # the measurement itself
    resampled = resample_isotropic(image, 2.0)
    assert resampled.GetSpacing() == (2.0, 2.0, 2.0)
    assert resampled.GetOrigin() == pytest.approx(image.GetOrigin())
    assert resampled.GetDirection() == pytest.approx(image.GetDirection())
    assert resampled.GetPixelID() == sitk.sitkInt16
    assert np.linalg.norm(_centroid_mm(resampled) - center) < 1.0  # half a 2 mm voxel


def test_resample_real_ct_nifti_and_dicom(test_data, tmp_path):
    nifti = test_data / "totalseg" / "example_ct_sm.nii.gz"
    out = resample_file(nifti, tmp_path / "ct.nii.gz", 2.0)
    source, target = read_image(nifti), read_image(out)
    assert target.GetSpacing() == (2.0, 2.0, 2.0)
    assert target.GetOrigin() == pytest.approx(source.GetOrigin())
    extent = (np.array(source.GetSize()) - 1) * np.array(source.GetSpacing())
    assert np.all((np.array(target.GetSize()) - 1) * 2.0 <= extent + 1e-6)
    assert np.all((np.array(target.GetSize())) * 2.0 > extent)
    # a point well inside keeps its HU (linear interpolation of a smooth region)
    hu_src = sitk.GetArrayFromImage(source).astype(float)
    hu_dst = sitk.GetArrayFromImage(target).astype(float)
    assert abs(hu_src.mean() - hu_dst.mean()) < 15.0

    dicom = read_image(test_data / "totalseg" / "example_ct_dicom")
    assert dicom.GetSize() == (512, 512, 20)
    assert dicom.GetSpacing() == pytest.approx((0.9765625, 0.9765625, 2.0))  # positions, not SliceThickness
    assert dicom.GetOrigin() == pytest.approx((-249.51171875, -437.51171875, -804.5))


def test_window_maps_range():
    hu = np.array([-2000, -1000, -300, 400, 3000])
    assert window(hu, (-1000, 400)).tolist() == pytest.approx([0, 0, 0.5, 1, 1])
    assert window(hu, (-1000, 400), (-1, 1)).tolist() == pytest.approx([-1, -1, 0, 1, 1])
    with pytest.raises(ValueError, match="window_hu"):
        window(hu, (400, -1000))
