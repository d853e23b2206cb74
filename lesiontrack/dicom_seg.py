"""DICOM Segmentation objects (SEG) -> a label map in world space and its class map.

The Imaging Data Commons publishes TotalSegmentator segmentations of NLST as DICOM SEG
(``analysis_result_id = totalsegmentator_ct_segmentations``, made with TotalSegmentator 1.5.6).
Their segment numbers are not TotalSegmentator's label ids, so segments are named by their
``SegmentLabel`` (compared with TotalSegmentator's structure names, case, spaces and hyphens
ignored); a segment whose label is not a known structure keeps its own label and no landmark
uses it. Read with pydicom: binary or fractional SEG (fractional thresholded at 0.5), frames
placed by ``ImagePositionPatient`` along the slice normal, so slice order and gaps in the file do
not matter.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from lesiontrack.io import InputError
from lesiontrack.vocabulary import TOTALSEG_V2

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _key(text: str) -> str:
    return re.sub(r"[\s_\-]+", "_", str(text).strip().lower())


KNOWN_STRUCTURES: dict[str, str] = {_key(name): name for name in TOTALSEG_V2}


def structure_name(segment_label: str) -> str:
    """TotalSegmentator structure name for a SegmentLabel ("Vertebrae L1" -> "vertebrae_L1"), or
    the label itself where it names no known structure."""
    return KNOWN_STRUCTURES.get(_key(segment_label), str(segment_label))


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """True for a DICOM file whose SOP class is Segmentation Storage."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] != b"DICM":
        return False
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID) == SEG_SOP_CLASS


def read_seg(path: str | os.PathLike, reference: sitk.Image | None = None) -> tuple[sitk.Image, dict[int, str]]:
    """A DICOM SEG file -> (uint16 label map, {segment number: name}).

    With ``reference`` (the segmented CT) the label map is put on the CT's grid (nearest
    neighbour), so that a structure cut by the CT's field of view is seen to be cut. Without it
    the grid is the SEG's frames plus one empty slice above and below: a SEG stores only frames
    that hold a segment, so where the CT ended is unknown along the slice axis.
    Overlapping segments: the higher segment number wins (TotalSegmentator's outputs do not overlap).
    """
    import pydicom

    ds = pydicom.dcmread(path)
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise InputError(f"{path}: not a DICOM Segmentation (SOP class {ds.get('SOPClassUID', 'missing')})")
    names = {int(s.SegmentNumber): structure_name(s.SegmentLabel) for s in ds.SegmentSequence}
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    if str(ds.get("SegmentationType", "BINARY")) == "FRACTIONAL":
        frames = frames >= 0.5 * float(ds.get("MaximumFractionalValue", 255))
    per_frame = ds.PerFrameFunctionalGroupsSequence
    positions = np.array([f.PlanePositionSequence[0].ImagePositionPatient for f in per_frame], float)
    # the segment of each frame: per frame, or once for all frames in the shared groups
    shared_segment = shared.get("SegmentIdentificationSequence")
    segments = [int((f.get("SegmentIdentificationSequence") or shared_segment)[0].ReferencedSegmentNumber)
                for f in per_frame]
    x_axis, y_axis = orientation[:3], orientation[3:]
    normal = np.cross(x_axis, y_axis)
    heights = positions @ normal
    levels = np.unique(np.round(heights, 3))
    # a SEG holds frames only where a segment is present: slices may be missing between frames
    declared = shared.PixelMeasuresSequence[0].get("SpacingBetweenSlices")
    steps = np.diff(levels)
    spacing = float(declared) if declared else (float(steps.min()) if len(steps) else 1.0)
    if len(steps) and not np.allclose(steps / spacing, np.round(steps / spacing), atol=0.05):
        raise InputError(f"{path}: frame positions along the slice normal are not on a {spacing:g} mm grid "
                         f"(steps {np.round(steps[:5], 3).tolist()} mm)")
    first = positions[np.argmin(heights)]
    n_slices = int(np.rint((levels[-1] - levels[0]) / spacing)) + 1
    labels = np.zeros((n_slices, int(ds.Rows), int(ds.Columns)), np.uint16)
    for frame, height, segment in sorted(zip(frames, heights, segments, strict=True), key=lambda t: t[2]):
        k = int(np.rint((height - levels[0]) / spacing))
        labels[k][frame.astype(bool)] = segment
    image = sitk.GetImageFromArray(labels)
    image.SetOrigin(tuple(float(v) for v in first))
    image.SetSpacing((column_spacing, row_spacing, spacing))  # x: along a row (columns), y: down the rows
    image.SetDirection(tuple(np.column_stack([x_axis, y_axis, normal]).ravel().tolist()))
    if reference is not None:
        return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16), names
    return sitk.ConstantPad(image, (0, 0, 1), (0, 0, 1), 0), names
