"""NLST-like DICOM series and an NLSTx-format table for them, made by the synthetic generator
(offline rehearsals of the NLST path: :func:`write_nlst`).

Each planned series (``series.csv`` rows of ``lesiontrack download --dataset nlst --select-only``:
``image_id`` = SeriesInstanceUID, ``pid``, ``study_yr``, ``instanceCount``) becomes a synthetic
chest scan of its patient (one synthetic subject per ``pid``, one timepoint per screening year)
written as a CT DICOM series with exactly ``instanceCount`` slices into
``<out_dir>/dicom/<SeriesInstanceUID>/``, the layout ``datasets.nlst.dicom_source`` reads. Slices
run along +z; their InstanceNumber grows towards the feet (1 at the top), as on NLST's CTs.

For the ``evaluation`` series an NLSTx table (NLSTx's columns) gives every nodule on every
screening year: ``Slice number`` = the InstanceNumber of the slice nearest the nodule's centre,
the box ``2h + 1`` pixels wide around its centre pixel (h from the radius), so that NLSTx's
conventions put it within half a voxel of the generator's point, which ``truth.csv`` keeps apart
(world mm: ``pid, nodule, study_yr, image_id, x, y, z, radius_mm``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lesiontrack.data import synthetic as syn
from lesiontrack.io import Geometry, write_table

NLSTX_HEADER = ["fold", "PID", "study_yr", "malignancy", "seriesinstanceuids", "Abnormality UID", "Slice number",
                "Bounding box x (pixels)", "Bounding box y (pixels)", "Bounding box width (pixels)",
                "Bounding box height (pixels)"]


def _write_dicom(image: sitk.Image, folder: Path, series_uid: str, pid: str, study_yr: int) -> None:
    """A CT series of ``image`` (axis-aligned, slices along +z), one file per slice."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    volume = sitk.GetArrayFromImage(image).astype(np.int16)  # (z, y, x)
    geometry = Geometry.of(image)
    study_uid = generate_uid(entropy_srcs=[pid, str(study_yr), "study"])
    frame_uid = generate_uid(entropy_srcs=[series_uid, "frame"])
    folder.mkdir(parents=True, exist_ok=True)
    n = volume.shape[0]
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientID, ds.StudyDate = "CT", pid, f"{1999 + study_yr}0102"
        ds.InstanceNumber = n - k  # 1 at the top, growing towards the feet
        ds.ImagePositionPatient = [float(v) for v in geometry.index_to_world(np.array([[0, 0, k]]))[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [geometry.spacing[1], geometry.spacing[0]]
        ds.SliceThickness = geometry.spacing[2]
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = volume[k].tobytes()
        ds.save_as(folder / f"{k:04d}.dcm", enforce_file_format=True)


def _series_scan(planned: syn.Scan, n_slices: int, inplane: int) -> syn.Scan:
    """The planned scan on a grid of ``inplane`` x ``inplane`` x ``n_slices`` voxels over its field of view."""
    geo = planned.geometry
    extent = (np.asarray(geo.size) - 1) * np.asarray(geo.spacing)
    spacing = (extent[0] / (inplane - 1), extent[1] / (inplane - 1), extent[2] / (n_slices - 1))
    geometry = Geometry(geo.origin, tuple(round(float(s), 4) for s in spacing), (inplane, inplane, n_slices))
    return dataclasses.replace(planned, geometry=geometry)


def _nodule_row(row: dict[str, Any], scan: syn.Scan, pid: str, study_yr: int, series_uid: str, nodule: int
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The NLSTx row of one nodule on one series, and its truth."""
    geo = scan.geometry
    index = geo.world_to_index(np.array([[row["x"], row["y"], row["z"]]]))[0]
    cx, cy, k = (int(np.rint(v)) for v in index)
    half = max(1, int(np.rint(row["radius_mm"] / geo.spacing[0])))
    nlstx = {"fold": 0, "PID": int(pid), "study_yr": study_yr, "malignancy": "B", "seriesinstanceuids": series_uid,
             "Abnormality UID": float(nodule), "Slice number": geo.size[2] - k, "Bounding box x (pixels)": cx - half,
             "Bounding box y (pixels)": cy - half, "Bounding box width (pixels)": 2 * half + 1,
             "Bounding box height (pixels)": 2 * half + 1}
    truth = {"pid": pid, "nodule": f"{float(nodule):g}", "study_yr": study_yr, "image_id": series_uid,
             "x": row["x"], "y": row["y"], "z": row["z"], "radius_mm": row["radius_mm"]}
    return nlstx, truth


def write_nlst(cfg: syn.SyntheticConfig, series: pd.DataFrame, out_dir: str | Path, inplane: int = 96
               ) -> dict[str, Any]:
    """Write ``<out_dir>/dicom/<uid>/`` for every row of ``series`` and, for the ``evaluation``
    rows, ``<out_dir>/nlstx_dataset.csv`` and ``<out_dir>/truth.csv`` (see the module docstring)."""
    out_dir = Path(out_dir)
    nlstx_rows, truth_rows = [], []
    cfg = dataclasses.replace(cfg, n_train_subjects=series["pid"].nunique(), n_test_subjects=0)
    for index, (pid, rows) in enumerate(series.groupby("pid", sort=True)):
        rows = rows.sort_values("study_yr")
        n_years = len(rows)
        subject_cfg = dataclasses.replace(cfg, followups=(n_years - 1, n_years - 1))
        subject = syn.plan_subject(subject_cfg, index)
        rendered = syn.render_subject(subject_cfg, subject)
        for planned, row in zip(subject.scans, rows.to_dict("records"), strict=True):
            scan = _series_scan(planned, int(row["instanceCount"]), inplane)
            image, _ = syn.render_scan(rendered, scan, syn._timepoint_tissue(rendered, planned.timepoint))
            _write_dicom(image, out_dir / "dicom" / str(row["image_id"]), str(row["image_id"]), str(pid),
                         int(row["study_yr"]))
            if row["role"] != "evaluation":
                continue
            for lesion in syn.lesion_rows(rendered, scan):
                if lesion["status"] == "disappeared":
                    continue
                nodule = int(lesion["lesion_id"].rsplit("_L", 1)[1]) + 1
                found, truth = _nodule_row(lesion, scan, str(pid), int(row["study_yr"]), str(row["image_id"]),
                                           nodule)
                nlstx_rows.append(found)
                truth_rows.append(truth)
    pd.DataFrame(nlstx_rows, columns=NLSTX_HEADER).to_csv(out_dir / "nlstx_dataset.csv", index=False)
    write_table(pd.DataFrame(truth_rows), out_dir / "truth.csv", float_format="%.6f")
    return {"series": len(series), "nodule_rows": len(nlstx_rows)}
