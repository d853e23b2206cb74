"""Landmark backend ``totalseg``: anatomical landmarks from a TotalSegmentator label map.

:func:`totalseg_landmarks` turns a label map (and its id -> structure-name class map) into a table
``name, x, y, z, confidence`` in world mm (SimpleITK physical space, LPS: +z is superior), with
names from :data:`lesiontrack.vocabulary.LANDMARKS`. Definitions, all on the label voxels:

* vertebra centre (``vertebra_<level>``): centroid of the whole vertebra mask (body and posterior
  elements; a simplification of "centre of the vertebral body", biased dorsally by a few mm).
* pole landmarks (lung apex/base, liver dome/tip, spleen top/tip, kidney poles, carina = lowest
  trachea slice, aortic arch top, sternum top, xiphoid tip, iliac crests): centroid of the mask's
  voxels in its most superior (or most inferior) slice. "Slice" is a plane of the array axis whose
  direction cosine has the largest world-z component; superior/inferior follow the sign of that
  component, never the array order. For oblique grids this is the nearest axial-like axis.

A row is written only when the structure is present and not cut by the field of view: a pole
landmark is omitted when the mask reaches the volume's end slice on its side (a lung base when the
lung touches the most inferior slice) or when its voxels in the pole slice touch the in-plane edge;
a centre landmark is omitted when the mask touches any face of the volume. Confidence is 1.0 (the
definitions are deterministic given the label map).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lesiontrack.io import Geometry
from lesiontrack.vocabulary import LUNG_LABELS, VERTEBRAE, check_landmark_name

COLUMNS = ("name", "x", "y", "z", "confidence")

# landmark name -> (structures whose union is the mask, "superior" or "inferior")
POLES: dict[str, tuple[tuple[str, ...], str]] = {
    "lung_apex_left": (tuple(n for n in LUNG_LABELS if n.endswith("_left")), "superior"),
    "lung_base_left": (tuple(n for n in LUNG_LABELS if n.endswith("_left")), "inferior"),
    "lung_apex_right": (tuple(n for n in LUNG_LABELS if n.endswith("_right")), "superior"),
    "lung_base_right": (tuple(n for n in LUNG_LABELS if n.endswith("_right")), "inferior"),
    "carina": (("trachea",), "inferior"),
    "aortic_arch_top": (("aorta",), "superior"),
    "liver_dome": (("liver",), "superior"),
    "liver_tip": (("liver",), "inferior"),
    "spleen_top": (("spleen",), "superior"),
    "spleen_tip": (("spleen",), "inferior"),
    "kidney_left_upper_pole": (("kidney_left",), "superior"),
    "kidney_left_lower_pole": (("kidney_left",), "inferior"),
    "kidney_right_upper_pole": (("kidney_right",), "superior"),
    "kidney_right_lower_pole": (("kidney_right",), "inferior"),
    "sternum_top": (("sternum",), "superior"),
    "xiphoid_tip": (("sternum",), "inferior"),
    "iliac_crest_left": (("hip_left",), "superior"),
    "iliac_crest_right": (("hip_right",), "superior"),
}

# landmark name -> structures whose union's centroid it is
CENTRES: dict[str, tuple[str, ...]] = {f"vertebra_{v}": (f"vertebrae_{v}",) for v in VERTEBRAE}


def read_class_map(path: str | Path) -> dict[int, str]:
    """Read a TotalSegmentator class map json (``{"source": ..., "<task>": {id: name}}``) -> {id: name}.

    The one key besides ``source`` is the task (``total``, ``total_v1``); a bare ``{id: name}``
    mapping is accepted too.
    """
    data = json.loads(Path(path).read_text())
    tasks = {key: value for key, value in data.items() if key != "source" and isinstance(value, dict)}
    if len(tasks) == 1:
        data = next(iter(tasks.values()))
    elif tasks:
        raise ValueError(f"{path}: several class maps {sorted(tasks)}; expected one")
    try:
        return {int(label): str(name) for label, name in data.items() if label != "source"}
    except ValueError as err:
        raise ValueError(f"{path}: not a TotalSegmentator class map (label ids must be integers)") from err


def _slice_axis(geometry: Geometry) -> tuple[int, int]:
    """(numpy axis of the array (z, y, x order), +1 or -1): the axis nearest world z and its sign."""
    direction = np.asarray(geometry.direction, float).reshape(3, 3)
    z_row = direction[2]  # world-z component of each index axis (x, y, z)
    index_axis = int(np.argmax(np.abs(z_row)))
    return 2 - index_axis, 1 if z_row[index_axis] > 0 else -1


def _to_world(geometry: Geometry, voxels_zyx: np.ndarray) -> np.ndarray:
    centroid_xyz = voxels_zyx.mean(axis=0)[::-1]
    return geometry.index_to_world(centroid_xyz)[0]


def _row(name: str, point: np.ndarray) -> dict[str, object]:
    x, y, z = (float(c) for c in point)
    return {"name": check_landmark_name(name), "x": x, "y": y, "z": z, "confidence": 1.0}


def totalseg_landmarks(label_map: sitk.Image, class_map: dict[int, str]) -> pd.DataFrame:
    """Landmarks of a TotalSegmentator label map (see the module docstring for the definitions).

    ``class_map`` maps label ids to TotalSegmentator structure names (v1 or v2, as read by
    :func:`read_class_map`). Returns one row per landmark found, columns ``name, x, y, z, confidence``.
    """
    geometry = Geometry.of(label_map)
    labels = sitk.GetArrayViewFromImage(label_map)  # (z, y, x)
    ids = {name: label for label, name in class_map.items()}
    axis, sign = _slice_axis(geometry)
    last = labels.shape[axis] - 1

    def mask_of(structures: tuple[str, ...]) -> np.ndarray | None:
        present = [ids[s] for s in structures if s in ids]
        if not present:
            return None
        mask = np.isin(labels, present)
        return mask if mask.any() else None

    rows: list[dict[str, object]] = []
    for name, structures in CENTRES.items():
        mask = mask_of(structures)
        if mask is None:
            continue
        voxels = np.argwhere(mask)
        if (voxels.min(axis=0) == 0).any() or (voxels.max(axis=0) == np.asarray(labels.shape) - 1).any():
            continue  # cut by the field of view
        rows.append(_row(name, _to_world(geometry, voxels)))
    for name, (structures, side) in POLES.items():
        mask = mask_of(structures)
        if mask is None:
            continue
        voxels = np.argwhere(mask)
        # the end of the slice axis that is `side`: the highest index when it points that way
        towards_high = (sign > 0) == (side == "superior")
        end = int(voxels[:, axis].max()) if towards_high else int(voxels[:, axis].min())
        if end == (last if towards_high else 0):
            continue  # the structure reaches the volume's end slice on this side
        pole = voxels[voxels[:, axis] == end]
        in_plane = [a for a in range(3) if a != axis]
        upper = np.asarray(labels.shape)[in_plane] - 1
        if (pole[:, in_plane] == 0).any() or (pole[:, in_plane] == upper).any():
            continue  # the pole slice is cut by the in-plane edge of the field of view
        rows.append(_row(name, _to_world(geometry, pole)))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({"x": float, "y": float, "z": float, "confidence": float})
