"""Tracked lesions as a DICOM Structured Report that a viewer shows: a Comprehensive 3D SR holding
a TID 1500 measurement report, one TID 1410 group per lesion with its point as a 3D spatial
coordinate (SCOORD3D, POINT) in the scan's frame of reference (DICOM patient coordinates are the
package's world millimetres, LPS) and the lesion id as tracking identifier. A lesion's tracking
UID is derived from the baseline series and its id, so the reports of one history share it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lesiontrack import __version__
from lesiontrack.io import InputError, atomic_path, dicom_series

if TYPE_CHECKING:
    import pydicom

# highdicom and pydicom are imported where a report is read or written: together they cost about
# 0.5 s, which every other ``lesiontrack`` command would otherwise pay at start.
LESION = ("52988006", "SCT", "Lesion")  # the finding type of each group (a CodedConcept's value, scheme, meaning)


def series_headers(folder: str | Path) -> list[pydicom.Dataset]:
    """The headers (no pixel data) of the one DICOM series in ``folder``, in slice order, ready to
    be referenced: a blank SOP class or instance UID is taken from the file meta; a blank study or
    series UID (an anonymiser's) is replaced by one derived from the frame of reference, and said
    on stderr, since the report cannot reference a study that has no UID."""
    import pydicom

    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in dicom_series(folder).files]
    frame = str(getattr(headers[0], "FrameOfReferenceUID", "") or "")
    if not frame:
        raise InputError(f"{folder}: the series has no FrameOfReferenceUID; its points cannot be reported")
    derived = {}
    for header in headers:
        for key, meta in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(header.get(key, "") or ""):
                setattr(header, key, header.file_meta.get(meta, "") or derived_uid(frame, key, str(
                    header.get("InstanceNumber", ""))))
        for key in ("StudyInstanceUID", "SeriesInstanceUID"):
            if not str(header.get(key, "") or ""):
                derived[key] = derived_uid(frame, key)
                setattr(header, key, derived[key])
    for key, uid in derived.items():
        print(f"{folder}: the series has no {key} (anonymised?); the report uses {uid}, derived from its frame "
              "of reference", file=sys.stderr)
    return headers


def derived_uid(*sources: str) -> str:
    """A DICOM UID derived from ``sources`` (the same sources, the same UID)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=list(sources))


def tracking_uid(baseline_series_uid: str, lesion_id: str) -> str:
    """The tracking UID of a lesion in the history that starts at ``baseline_series_uid``."""
    return derived_uid(str(baseline_series_uid), str(lesion_id))


def tracking_report(rows: pd.DataFrame, headers: list[pydicom.Dataset], out: str | Path, baseline_series_uid: str,
                    method: str) -> Path:
    """Write the SR of one scan (its series' ``headers``, :func:`series_headers`): ``rows`` are its
    lesions (``lesion_id, x, y, z, status``, world mm); each group's session says the status and
    the tracker. Returns ``out``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    frame = str(headers[0].FrameOfReferenceUID)
    groups = []
    for row in rows.to_dict("records"):
        point = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                    graphic_data=np.array([[row["x"], row["y"], row["z"]]], float),
                                    frame_of_reference_uid=frame)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid(baseline_series_uid, row["lesion_id"]),
                                                         identifier=str(row["lesion_id"])),
            referenced_region=point, finding_type=hd.sr.CodedConcept(*LESION), session=f"{row['status']} ({method})"))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("lesiontrack", __version__), name=f"lesiontrack {__version__}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=headers, content=report, series_instance_uid=hd.UID(), series_number=9001,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="lesiontrack",
        series_description=f"lesiontrack {method}: tracked lesions")
    out = Path(out)
    with atomic_path(out) as tmp:
        sr.save_as(tmp)
    return out


def read_tracking_report(path: str | Path) -> pd.DataFrame:
    """The lesions of a report written by :func:`tracking_report`: ``lesion_id, x, y, z,
    frame_of_reference_uid, tracking_uid``."""
    import highdicom as hd

    sr = hd.sr.srread(path)
    rows = []
    for group in sr.content.get_planar_roi_measurement_groups():
        region = group.roi
        x, y, z = np.asarray(region.value, float).reshape(-1, 3)[0]
        rows.append({"lesion_id": group.tracking_identifier, "x": x, "y": y, "z": z,
                     "frame_of_reference_uid": str(region.frame_of_reference_uid),
                     "tracking_uid": str(group.tracking_uid)})
    return pd.DataFrame(rows)
