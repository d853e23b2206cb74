"""A small DeepLesion in DeepLesion's own formats, made by the synthetic generator (offline rehearsals).

:func:`write_deeplesion` renders synthetic subjects as DeepLesion series (the DLS-like protocol's
:func:`~lesiontrack.data.synthetic.dls_series`: 5 mm slices in 70 % of series, else 1 mm, slice
numbers from the top of the field of view) and writes what a real run downloads:

- ``Images_png_NN.zip``: 16-bit PNG slices (HU + 32768) as ``Images_png/PPPPPP_SS_SS/NNN.png``,
  for each lesion the slab :func:`~lesiontrack.data.synthetic.dls_subvolume` draws around it
  (slabs of one series that overlap or touch are written as one run of slices, as DeepLesion
  stores a series' slices once);
- ``DL_info.csv`` with DeepLesion's header (``dls.DL_INFO_COLUMNS``), one row per lesion and scan
  (its key slice, RECIST axes and box in pixels, ``Slice_range`` of its run, ``Spacing_mm_px_``);
- ``train.json``, ``valid.json``, ``test.json`` in the DLS conventions of Deep Lesion Tracker's
  files: entries ``"0001"``, ``"0002"``, ... (2k-1 and 2k one lesion pair in both directions),
  ``source`` / ``target`` sub-volume names ``PPPPPP_SS_SS_FFF-LLL.nii.gz``, centres
  ``[column, row, slice offset]`` and boxes ``[xmin, ymin, zmin, w, h, d]`` in voxels (one
  decimal, as published), spacings, RECIST diameters ``[long, short]`` in pixels, the RECIST
  slice ``PPPPPP_SS_SS/NNN.png``;
- the ground truth, kept apart in ``truth/pairs.csv`` (never served): every entry's source and
  target points in world mm from the generator, before any rounding to the JSON's decimals.

Generator test subjects go to ``test.json``, the first ``valid_subjects`` training subjects to
``valid.json``, the others to ``train.json`` (their patients are DeepLesion's "outside the DLS
splits": pretraining data).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lesiontrack.data import dls
from lesiontrack.data import synthetic as syn
from lesiontrack.io import write_table
from lesiontrack.tables import DEEPLESION_TRUTH_COLUMNS

SPLIT_CODE = {"train": 1, "valid": 2, "test": 3}  # DL_info.csv's Train_Val_Test
TYPE_CODE = {"lung": 5, "liver": 4, "node": 7, "kidney": 6, "soft": 3, "bone": 1}  # DeepLesion's coarse types
SHORT_AXIS = 0.8  # the RECIST short axis against the long one


def _numbers(values: Any) -> str:
    return ", ".join(f"{float(v):.6g}" for v in np.atleast_1d(values))


def _runs(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Slice ranges merged where they overlap or touch: DeepLesion holds each slice of a series once."""
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return [(a, b) for a, b in merged]


def _key_offset(voxel: np.ndarray) -> int:
    """The key (RECIST) slice's offset in its sub-volume: the published centre (one decimal) rounded."""
    return round(round(float(voxel[2]), 1))


@dataclasses.dataclass
class _Mark:
    """One lesion on one scan: where DLS and DL_info.csv put it."""

    name: str  # the sub-volume (run) name, .nii.gz
    voxel: np.ndarray  # [column, row, slice offset], continuous
    box: np.ndarray  # [xmin, ymin, zmin, w, h, d] voxels
    spacing: tuple[float, float, float]
    diameters: np.ndarray  # [long, short] pixels
    world: np.ndarray  # the generator's point, world mm of the series frame
    radius_mm: float


def _scan_marks(rendered: syn.RenderedSubject, planned: syn.Scan, series_id: str,
                members: dict[str, dict[int, bytes]]) -> tuple[dict[str, _Mark], list[dict[str, Any]]]:
    """Render one scan as a DeepLesion series into ``members``; its lesions' marks and DL_info rows."""
    rng = np.random.default_rng([rendered.subject.seed, 13, planned.timepoint])
    series = syn.dls_series(planned, series_id, rng)
    rows = [r for r in syn.lesion_rows(rendered, series) if r["status"] != "disappeared"]
    slabs = [dls.VolumeName.parse(syn.dls_subvolume(series, row, rng).image_id) for row in rows]
    runs = _runs([(s.first, s.last) for s in slabs])
    tissue = syn._timepoint_tissue(rendered, planned.timepoint)
    geo = series.geometry
    marks, info = {}, []
    for first, last in runs:
        name = dls.VolumeName(series_id, first, last)
        geometry = dls.dls_geometry(name, geo.spacing, (geo.size[0], geo.size[1]))
        image, _ = syn.render_scan(rendered, dataclasses.replace(series, image_id=name.image_id, geometry=geometry),
                                   tissue)
        for k, hu in enumerate(sitk.GetArrayFromImage(image)):
            members.setdefault(series_id, {})[first + k] = dls.hu_to_png(hu)
        for row, slab in zip(rows, slabs, strict=True):
            if not first <= slab.first <= last:
                continue
            world = np.array([row["x"], row["y"], row["z"]])
            voxel = geometry.world_to_index(world[None])[0]
            low = geometry.world_to_index(np.array([[row[f"box_min_{a}"] for a in "xyz"]]))[0]
            high = geometry.world_to_index(np.array([[row[f"box_max_{a}"] for a in "xyz"]]))[0]
            low, high = np.minimum(low, high), np.maximum(low, high)
            long = 2.0 * row["radius_mm"] / geo.spacing[0]
            marks[row["lesion_id"]] = _Mark(name.filename, voxel, np.r_[low, high - low], tuple(geo.spacing),
                                            np.array([long, SHORT_AXIS * long]), world, float(row["radius_mm"]))
            key = first + _key_offset(voxel)
            cx, cy = voxel[0], voxel[1]
            half_long, half_short = long / 2.0, SHORT_AXIS * long / 2.0
            info.append({
                "File_name": f"{series_id}_{key:03d}.png", "Patient_index": int(series_id[:6]),
                "Study_index": int(series_id[7:9]), "Series_ID": int(series_id[10:12]), "Key_slice_index": key,
                "Measurement_coordinates": _numbers([cx - half_long, cy, cx + half_long, cy, cx, cy - half_short,
                                                     cx, cy + half_short]),
                "Bounding_boxes": _numbers([cx - half_long, cy - half_short, cx + half_long, cy + half_short]),
                "Lesion_diameters_Pixel_": _numbers([long, SHORT_AXIS * long]),
                "Normalized_lesion_location": _numbers([cx / geo.size[0], cy / geo.size[1],
                                                        (key - 1) / max(dls.VolumeName.parse(series.image_id)
                                                                        .n_slices - 1, 1)]),
                "Coarse_lesion_type": TYPE_CODE.get(row["lesion_type"], -1), "Possibly_noisy": 0,
                "Slice_range": f"{first}, {last}", "Spacing_mm_px_": _numbers(geo.spacing),
                "Image_size": f"{geo.size[1]}, {geo.size[0]}", "DICOM_windows": "-175, 275"})
    return marks, info


def _entry(source: _Mark, target: _Mark) -> dict[str, Any]:
    """A DLS entry from ``source`` to ``target``, the published fields rounded as published."""
    entry: dict[str, Any] = {"source": source.name, "target": target.name}
    for end, mark in (("source", source), ("target", target)):
        volume = dls.VolumeName.parse(mark.name)
        center = np.round(mark.voxel, 1).tolist()
        entry[f"{end} box"] = np.round(mark.box, 1).tolist()
        entry[f"{end} center"] = center
        entry[f"{end} spacing"] = [float(s) for s in mark.spacing]
        entry[f"{end} recist slice"] = f"{volume.series_id}/{volume.first + _key_offset(mark.voxel):03d}.png"
        entry[f"{end} recist diameter"] = np.round(mark.diameters, 1).tolist()
        entry[f"{end} recist center"] = center
    return entry


def write_deeplesion(cfg: syn.SyntheticConfig, out_dir: str | Path, n_archives: int = 2, valid_subjects: int = 1
                     ) -> dict[str, Any]:
    """Render every subject of ``cfg`` as a small DeepLesion into ``out_dir`` (see the module
    docstring): ``Images_png_01.zip`` .. ``Images_png_<n_archives>.zip``, ``DL_info.csv``,
    ``train.json``, ``valid.json``, ``test.json`` and ``truth/pairs.csv``. Returns counts."""
    out_dir = Path(out_dir)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    members: dict[str, dict[int, bytes]] = {}
    info: list[dict[str, Any]] = []
    entries: dict[str, list[dict[str, Any]]] = {"train": [], "valid": [], "test": []}
    truth: list[dict[str, Any]] = []
    n_train = 0
    for index, (_, split) in enumerate(syn.subject_ids(cfg)):
        subject = syn.plan_subject(cfg, index)
        rendered = syn.render_subject(cfg, subject)
        if split == "train":
            split, n_train = ("valid" if n_train < valid_subjects else "train"), n_train + 1
        rng = np.random.default_rng([subject.seed, 17])
        gender, age = ("F", "M")[int(rng.integers(2))], int(rng.integers(30, 85))
        marks = []
        for planned in subject.scans:
            series_id = f"{index + 1:06d}_{planned.timepoint + 1:02d}_01"
            scan_marks, scan_info = _scan_marks(rendered, planned, series_id, members)
            marks.append(scan_marks)
            info += [{**row, "Patient_gender": gender, "Patient_age": age, "Train_Val_Test": SPLIT_CODE[split]}
                     for row in scan_info]
        for a in range(len(marks)):
            for b in range(a + 1, len(marks)):
                for lesion_id in sorted(set(marks[a]) & set(marks[b])):
                    for source, target in ((marks[a][lesion_id], marks[b][lesion_id]),
                                           (marks[b][lesion_id], marks[a][lesion_id])):
                        entries[split].append(_entry(source, target))
                        truth.append({"split": split, "dls_entry": f"{len(entries[split]):04d}",
                                      "source": source.name, "target": target.name,
                                      **{f"source_{c}": v for c, v in zip("xyz", source.world, strict=True)},
                                      **{f"target_{c}": v for c, v in zip("xyz", target.world, strict=True)},
                                      "target_radius_mm": target.radius_mm})
    series_ids = sorted(members)
    for k in range(n_archives):  # the series spread over the archives in order, as DeepLesion's are
        chosen = series_ids[k * len(series_ids) // n_archives:(k + 1) * len(series_ids) // n_archives]
        with zipfile.ZipFile(out_dir / dls.archive_name(k + 1), "w") as zf:
            for series_id in chosen:
                for number, png in sorted(members[series_id].items()):
                    zf.writestr(f"Images_png/{series_id}/{number:03d}.png", png)
    pd.DataFrame(info, columns=dls.DL_INFO_COLUMNS).to_csv(out_dir / "DL_info.csv", index=False)
    for split, rows in entries.items():
        (out_dir / f"{split}.json").write_text(json.dumps({f"{k + 1:04d}": e for k, e in enumerate(rows)}, indent=1))
    write_table(pd.DataFrame(truth, columns=DEEPLESION_TRUTH_COLUMNS), out_dir / "truth" / "pairs.csv",
                float_format="%.6f")
    return {"series": len(series_ids), "slices": sum(len(m) for m in members.values()), "lesion_rows": len(info),
            **{f"{split}_entries": len(rows) for split, rows in entries.items()}}
