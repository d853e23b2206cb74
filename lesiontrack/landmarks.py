"""Landmark backends: ``totalseg`` (from a TotalSegmentator label map), ``heuristic`` (intensities
only, see :func:`heuristic_landmarks`), ``synthetic`` and ``file`` (tables), and the tables per volume.

:func:`totalseg_landmarks` turns a label map (and its id -> structure-name class map) into a table
``name, x, y, z, confidence`` in world mm (SimpleITK physical space, LPS: +z is superior), with
names from :data:`lesiontrack.vocabulary.LANDMARKS`. Definitions, all on the label voxels:

* vertebra centre (``vertebra_<level>``): centre of the vertebral body, taken as the centroid of
  the mask's voxels in the anterior 40 % of its extent along world y (LPS: anterior is -y). The
  body is the front of a vertebra and the canal and posterior elements the rest; the whole-mask
  centroid lay 12-16 mm dorsal of the body centre on the synthetic data, this rule 0.9 mm (median).
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
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lesiontrack.dicom_seg import is_dicom_seg, read_seg
from lesiontrack.io import Geometry, InputError, named_path, read_image, read_table, write_table
from lesiontrack.vocabulary import LANDMARK_NAMES, LUNG_LABELS, TOTALSEG_V2_NAMES, VERTEBRAE, check_landmark_name

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


BODY_FRACTION = 0.4  # the vertebral body: the anterior 40 % of a vertebra's antero-posterior extent


def vertebral_body_centre(world: np.ndarray) -> np.ndarray:
    """Centre of the vertebral body from a vertebra mask's voxels (N, 3) in world mm (LPS)."""
    y = world[:, 1]
    return world[y <= y.min() + BODY_FRACTION * (y.max() - y.min())].mean(axis=0)


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
        rows.append(_row(name, vertebral_body_centre(geometry.index_to_world(voxels[:, ::-1].astype(float)))))
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


# --- backend "heuristic": intensity only, no model -------------------------------------------

BODY_HU = -500.0  # above: the body; below, inside its outline: lungs, airways, bowel gas
LUNG_MEDIAN_HU = -940.0  # lung regions have a higher median than gas (emphysema included)
MIN_LUNG_ML = 30.0


def _axial(geometry: Geometry, array: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The array with the slice axis (nearest world z) first and running superior; returns
    (array view, that axis in the original (z, y, x) order, its sign)."""
    axis, sign = _slice_axis(geometry)
    view = np.moveaxis(array, axis, 0)
    return (view if sign > 0 else view[::-1]), axis, sign


def _from_axial(voxels: np.ndarray, axis: int, sign: int, shape: tuple[int, ...]) -> np.ndarray:
    """Voxel indices of the :func:`_axial` view back to the original (z, y, x) array."""
    voxels = np.asarray(voxels, float).copy()
    if sign < 0:
        voxels[:, 0] = shape[axis] - 1 - voxels[:, 0]
    order = [axis] + [a for a in range(3) if a != axis]
    back = np.empty_like(voxels)
    back[:, order] = voxels
    return back


def heuristic_landmarks(image: sitk.Image) -> pd.DataFrame:
    """Landmarks from intensities alone (no model, no label map), on any CT in HU.

    Air (below -500 HU inside the body outline):

    * the two largest connected air regions (at least 30 ml each) whose median is above -940 HU
      are lung and airway (bowel gas is darker);
    * the trachea is followed from the highest slice where a small air region (0.5-8 cm^2) lies
      near the body's left-right midline, downwards while one such region continues; the carina
      is the centroid of its lowest slice (where it divides or joins the lungs);
    * the lungs are the lung-and-airway air minus the trachea, split into left and right at the
      trachea's (else the body's) midline; apex and base are the centroids of their most superior
      and most inferior slices, as in the ``totalseg`` backend.

    Bone (above 250 HU inside the body outline, holes filled per slice), see :func:`_bone_landmarks`:
    sternum top and xiphoid tip, pubic symphysis, iliac crests and femoral heads. Vertebral levels
    are not named: telling T12 from L1 by intensity alone (counting from the last rib) is not
    reliable enough to supervise with, so the spine is left to ``totalseg``.

    The same field-of-view rule as ``totalseg``: a pole on the volume's end slice is omitted.
    Confidence 0.5 (intensity rules, not a segmentation).
    """
    from scipy import ndimage

    geometry = Geometry.of(image)
    raw = sitk.GetArrayViewFromImage(image)
    hu, axis, sign = _axial(geometry, raw)
    spacing_zyx = np.asarray(geometry.spacing, float)[::-1]
    spacing = np.r_[spacing_zyx[axis], np.delete(spacing_zyx, axis)]  # of the axial view
    empty = pd.DataFrame(columns=list(COLUMNS)).astype({c: float for c in COLUMNS[1:]})

    dense = hu > BODY_HU
    labels, count = ndimage.label(dense)
    if count == 0:
        return empty
    body = labels == (np.argmax(ndimage.sum_labels(dense, labels, range(1, count + 1))) + 1)
    inside = np.stack([ndimage.binary_fill_holes(s) for s in body])

    def to_world(voxels_axial: np.ndarray) -> np.ndarray:
        """World mm (N, 3) of each voxel of the axial view."""
        return geometry.index_to_world(_from_axial(voxels_axial, axis, sign, raw.shape)[:, ::-1])

    rows: list[dict[str, object]] = []

    def add(name: str, voxels: np.ndarray) -> None:
        rows.append({**_row(name, to_world(voxels).mean(axis=0)), "confidence": 0.5})

    lung_slices = _air_landmarks(hu, inside, body, spacing, to_world, add)
    _bone_landmarks(hu, inside, spacing, to_world, add, lung_slices)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.astype({"x": float, "y": float, "z": float, "confidence": float})


def _air_landmarks(hu: np.ndarray, inside: np.ndarray, body: np.ndarray, spacing: np.ndarray,
                   to_world, add) -> tuple[int, int] | None:
    """Carina and lung apices and bases (see :func:`heuristic_landmarks`); returns the lungs'
    lowest and highest slice of the axial view, or None without lungs."""
    from scipy import ndimage

    voxel_ml = float(np.prod(spacing)) / 1000.0
    pixel_cm2 = float(spacing[1] * spacing[2]) / 100.0
    n_slices = hu.shape[0]
    air = inside & ~body  # below -500 HU within the body outline: lungs, airways, bowel gas
    labels, count = ndimage.label(air)
    if count == 0:
        return None
    index = np.arange(1, count + 1)
    volumes_ml = ndimage.sum_labels(air, labels, index) * voxel_ml
    # lung parenchyma (about -850 HU, with vessels) is told from gas (bowel, about -1000 HU) by
    # its median; the two largest such regions are the lungs (one when they connect)
    large = [k + 1 for k in np.argsort(volumes_ml)[::-1] if volumes_ml[k] >= MIN_LUNG_ML]
    lungs_like = [k for k in large if np.median(hu[labels == k]) > LUNG_MEDIAN_HU]
    lung_air = np.isin(labels, lungs_like[:2])
    if not lung_air.any():
        return None

    midline = np.argwhere(inside).mean(axis=0)[2]  # in-plane column of the body's centroid
    trachea = np.zeros_like(air)
    previous, gap = None, 0
    for z in range(n_slices - 1, -1, -1):  # from the most superior slice down
        regions, n = ndimage.label(air[z])
        if previous is None:
            if n == 0:
                continue
            areas = ndimage.sum_labels(air[z], regions, range(1, n + 1)) * pixel_cm2
            centres = np.array(ndimage.center_of_mass(air[z], regions, range(1, n + 1)))
            near = [k for k in range(n) if 0.5 <= areas[k] <= 8.0 and abs(centres[k][1] - midline) * spacing[2] < 30.0]
            if len(near) != 1:
                continue
            chosen = near[0] + 1
        else:
            # regions that overlap the last trachea slice grown by 2 pixels (partial volume may
            # break the air column for a slice or two: up to 3 slices are bridged)
            touching = sorted(set(regions[ndimage.binary_dilation(previous, iterations=2)].ravel()) - {0})
            areas = {k: (regions == k).sum() * pixel_cm2 for k in touching}
            if sum(a >= 0.3 for a in areas.values()) > 1 or max(areas.values(), default=0.0) > 8.0:
                break  # divided into the main bronchi, or joined the lungs
            if not touching:
                gap += 1
                if gap > 3:
                    break
                continue
            chosen, gap = max(areas, key=areas.get), 0
        previous = regions == chosen
        trachea[z] = previous
    trachea_voxels = np.argwhere(trachea)
    lung_slices = np.flatnonzero(lung_air.any(axis=(1, 2)))
    if len(trachea_voxels):
        lowest, highest = trachea_voxels[:, 0].min(), trachea_voxels[:, 0].max()
        # an airway enters the chest from above the lungs and ends between their top and bottom
        # (a midline gas bubble in the abdomen does not)
        if (highest >= min(n_slices - 1, lung_slices.max()) - 2 and lung_slices.min() < lowest < lung_slices.max()
                and (highest - lowest) * spacing[0] >= 30.0):
            midline = trachea_voxels[:, 2].mean()
            add("carina", trachea_voxels[trachea_voxels[:, 0] == lowest])
        else:
            trachea[:] = False
    lungs = lung_air & ~ndimage.binary_dilation(trachea, iterations=1)
    columns = np.arange(hu.shape[2])
    left_is_high = _left_is_high_column(to_world)
    for side in ("left", "right"):
        half = (columns > midline) if (side == "left") == left_is_high else (columns < midline)
        voxels = np.argwhere(lungs & half[None, None, :])
        if len(voxels) * voxel_ml < MIN_LUNG_ML / 2:
            continue
        top, bottom = voxels[:, 0].max(), voxels[:, 0].min()
        if top < n_slices - 1:
            add(f"lung_apex_{side}", voxels[voxels[:, 0] == top])
        if bottom > 0:
            add(f"lung_base_{side}", voxels[voxels[:, 0] == bottom])
    return int(lung_slices.min()), int(lung_slices.max())


def _left_is_high_column(to_world) -> bool:
    """Whether the axial view's column index grows towards the patient's left (LPS: +x)."""
    ends = to_world(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    return bool(ends[1, 0] > ends[0, 0])


BONE_HU = 250.0  # cortical and cancellous bone; contrast-filled vessels stay below
MIDLINE_MM = 25.0  # anterior midline bone (sternum, symphysis): within this of the body's midline
ANTERIOR_FRACTION = 0.3  # ... and in the front 30 % of the body's depth (vertebral bodies lie behind)
LATERAL_MM = 45.0  # pelvic bone of one side: further than this from the midline (sacrum within)
MIN_HIP_ML = 20.0  # an iliac wing is far larger than any rib below the lungs
MIN_HEAD_RADIUS_MM = 15.0  # femoral head about 22-25 mm; femoral shaft and rami thinner


def _bone_landmarks(hu: np.ndarray, inside: np.ndarray, spacing: np.ndarray, to_world, add,
                    lung_slices: tuple[int, int] | None) -> None:
    """Bone landmarks of the axial view (slices running superior), in world mm via ``to_world``:

    * anterior midline bone (within 25 mm of the body's midline, in the front 30 % of the body's
      depth on its slice) in 3D connected parts of at least 2 ml: the sternum is the largest part
      overlapping the lungs' slices (top slice -> ``sternum_top``, bottom -> ``xiphoid_tip``); the
      pubic symphysis is the centroid of the lowest part entirely below the lungs;
    * bone of one side (more than 45 mm from the midline) below the lungs: its largest connected
      part, when at least 20 ml, is the hip bone, and the centroid of its top slice the iliac crest;
      the femoral head centre is the point of that side's bone deepest inside bone (maximum of the
      distance transform of the hole-filled bone mask, at least 15 mm: the head is the thickest
      round bone of the pelvis) below the iliac crest.

    Poles on the volume's end slice and parts touching it are omitted, as everywhere.
    """
    from scipy import ndimage

    n_slices = hu.shape[0]
    bone = inside & (hu > BONE_HU)
    if not bone.any():
        return
    bone = np.stack([ndimage.binary_fill_holes(s) for s in bone])
    voxel_ml = float(np.prod(spacing)) / 1000.0
    # world x (left-right) and y (antero-posterior) of every voxel of one slice: in-plane axes
    # only; the slice axis is the one nearest world z, so within a slice these barely change
    rows_cols = np.argwhere(np.ones(hu.shape[1:], bool))
    plane = to_world(np.c_[np.zeros(len(rows_cols)), rows_cols])
    x_of = plane[:, 0].reshape(hu.shape[1:])
    y_of = plane[:, 1].reshape(hu.shape[1:])
    midline_x = float(np.median(x_of[inside.any(axis=0)]))
    depth = np.where(inside, y_of[None], np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # slices outside the body: all NaN
        front, back = np.nanmin(depth, axis=(1, 2)), np.nanmax(depth, axis=(1, 2))
    below_lungs = np.arange(n_slices) < (lung_slices[0] if lung_slices else n_slices)

    # anterior midline: sternum and pubic symphysis
    near_midline = np.abs(x_of - midline_x) <= MIDLINE_MM
    anterior = y_of[None] < (front + ANTERIOR_FRACTION * (back - front))[:, None, None]
    parts, count = ndimage.label(bone & near_midline[None] & anterior)
    if count:
        index = np.arange(1, count + 1)
        volume_ml = ndimage.sum_labels(np.ones_like(parts), parts, index) * voxel_ml
        extent = ndimage.find_objects(parts)
        candidates = [(k, extent[k - 1][0]) for k in index if volume_ml[k - 1] >= 2.0]
        if lung_slices:
            chest = [(k, s) for k, s in candidates if s.start <= lung_slices[1] and s.stop - 1 >= lung_slices[0]]
            if chest:
                k, s = max(chest, key=lambda c: volume_ml[c[0] - 1])
                voxels = np.argwhere(parts == k)
                if s.stop - 1 < n_slices - 1:
                    add("sternum_top", voxels[voxels[:, 0] == s.stop - 1])
                if s.start > 0:
                    add("xiphoid_tip", voxels[voxels[:, 0] == s.start])
        pelvis = [(k, s) for k, s in candidates if below_lungs[s.stop - 1] and s.start > 0]
        if pelvis:
            k, _ = min(pelvis, key=lambda c: c[1].start)
            add("pubic_symphysis", np.argwhere(parts == k))

    # one side's pelvic bone: iliac crest and femoral head
    for side in ("left", "right"):
        lateral = (x_of - midline_x) * (1.0 if side == "left" else -1.0)  # LPS: +x is the left
        mask = bone & (lateral > LATERAL_MM)[None] & below_lungs[:, None, None]
        parts, count = ndimage.label(mask)
        if not count:
            continue
        sizes = ndimage.sum_labels(mask, parts, np.arange(1, count + 1)) * voxel_ml
        k = int(np.argmax(sizes)) + 1
        if sizes[k - 1] < MIN_HIP_ML:
            continue
        hip = parts == k
        top = int(np.flatnonzero(hip.any(axis=(1, 2))).max())
        if top < n_slices - 1 and (lung_slices is None or top < lung_slices[0] - 1):
            add(f"iliac_crest_{side}", np.c_[np.full(int(hip[top].sum()), top), np.argwhere(hip[top])])
        thickness = ndimage.distance_transform_edt(mask, sampling=spacing)
        thickness[top:] = 0.0
        centre = np.unravel_index(int(np.argmax(thickness)), thickness.shape)
        radius = float(thickness[centre])
        if radius >= MIN_HEAD_RADIUS_MM and centre[0] * spacing[0] > radius:  # not cut by the bottom slice
            add(f"femoral_head_{side}", np.array([centre], float))


# --- tables per volume and per shard ---------------------------------------------------------

BACKENDS = ("totalseg", "heuristic", "synthetic", "file")
ORACLE_BACKEND = "synthetic"  # the datasets' own ground-truth landmarks (results/<dataset>/truth), no rule


def read_landmarks(path: str | Path) -> pd.DataFrame:
    """A landmark table (``name, x, y, z[, confidence]`` in world mm) checked against the vocabulary."""
    table = read_table(path, required=["name", "x", "y", "z"])
    unknown = sorted(set(table["name"]) - set(LANDMARK_NAMES))
    if unknown:
        raise InputError(f"{path}: landmark name(s) {unknown[:5]} not in lesiontrack.vocabulary.LANDMARKS")
    duplicated = table.loc[table["name"].duplicated(), "name"]
    if len(duplicated):
        raise InputError(f"{path}: landmark {duplicated.iloc[0]!r} given twice")
    if "confidence" not in table.columns:
        table["confidence"] = 1.0
    return table[list(COLUMNS)].astype({"x": float, "y": float, "z": float, "confidence": float})


def check_same_grid(labels: sitk.Image, labels_path: str | Path, image: sitk.Image, image_path: str | Path,
                    tolerance_mm: float = 0.01) -> None:
    """A label map must lie on its image's grid: the same size, spacing, origin and direction
    (within ``tolerance_mm``; resample it onto the image first otherwise)."""
    a, b = Geometry.of(labels), Geometry.of(image)
    checks = (("size", a.size, b.size, 0), ("spacing", a.spacing, b.spacing, 1e-4),
              ("origin", a.origin, b.origin, tolerance_mm), ("direction", a.direction, b.direction, 1e-4))
    for what, mine, theirs, tolerance in checks:
        if np.shape(mine) != np.shape(theirs) or not np.allclose(mine, theirs, rtol=0, atol=tolerance):
            show = [round(float(v), 3) for v in np.ravel(mine)], [round(float(v), 3) for v in np.ravel(theirs)]
            raise InputError(f"{labels_path}: its {what} {show[0]} differs from the image {image_path}'s "
                             f"{show[1]}: a label map must lie on its image's grid")


def check_label_map(label_map: sitk.Image, path: str | Path, class_map: dict[int, str]) -> None:
    """A label map holds non-negative integer ids, some of them ids of ``class_map``."""
    values = np.unique(sitk.GetArrayViewFromImage(label_map))
    if not np.issubdtype(values.dtype, np.integer) and not np.all(values == np.round(values)):
        raise InputError(f"{path}: not a label map: non-integer values ({float(values.min()):g} .. "
                         f"{float(values.max()):g})")
    if values.min() < 0:
        raise InputError(f"{path}: not a label map: negative values ({int(values.min())} .. {int(values.max())}; "
                         f"a CT?)")
    labelled = values[values > 0].astype(int)
    if labelled.size == 0:
        raise InputError(f"{path}: an empty label map (every voxel 0)")
    known = [v for v in labelled if int(v) in class_map]
    if not known:
        raise InputError(f"{path}: none of its label ids ({labelled[:5].tolist()}"
                         f"{' ...' if labelled.size > 5 else ''}) is in the class map ({len(class_map)} ids, "
                         f"{min(class_map)}..{max(class_map)})")


def volume_landmarks(backend: str, image: str | Path | None = None, labels: str | Path | None = None,
                     class_map: str | Path | None = None, table: str | Path | None = None) -> pd.DataFrame:
    """One volume's landmarks by ``backend``: ``totalseg`` (a label map ``labels``: NIfTI with
    TotalSegmentator v2 ids unless ``class_map`` is given, or a DICOM SEG file), ``heuristic``
    (the CT ``image``), ``synthetic`` (the generator's ground truth ``table``, an oracle) or
    ``file`` (a user's ``table``)."""
    if backend == "totalseg":
        if labels is None:
            raise InputError("landmark backend totalseg needs a label map (TotalSegmentator output)")

        if is_dicom_seg(labels):  # segments named by their labels (e.g. IDC's TotalSegmentator SEGs)
            label_map, names = read_seg(labels, read_image(image) if image is not None else None)
        else:
            label_map, names = read_image(labels), TOTALSEG_V2_NAMES
            if image is not None:
                check_same_grid(label_map, labels, read_image(image), image)
        names = read_class_map(class_map) if class_map else names
        check_label_map(label_map, labels, names)
        table = totalseg_landmarks(label_map, names)
        if table.empty:
            raise InputError(f"{labels}: no landmark found in this label map (its structures are all cut by the "
                             f"field of view, or none is one the landmarks use)")
        return table
    if backend == "heuristic":
        if image is None:
            raise InputError("landmark backend heuristic needs the CT image")
        return heuristic_landmarks(read_image(image))
    if backend in ("synthetic", "file"):
        if table is None:
            raise InputError(f"landmark backend {backend} needs a landmark table (name, x, y, z)")
        return read_landmarks(table)
    raise InputError(f"landmark backend {backend!r}: expected one of {BACKENDS}")


def landmarks_shard(images_csv: str | Path, backend: str, out_dir: str | Path, out_table: str | Path,
                    truth_dir: str | Path | None = None) -> pd.DataFrame:
    """Landmark tables ``out_dir/<image_id>.csv`` of every volume of an images shard table
    (``image_id, path``; ``label_path`` for ``totalseg``); the shard table lists them with their
    row counts and seconds."""
    import time


    images = read_table(images_csv, required=["image_id", "path"])
    if backend == "totalseg" and "label_path" not in images.columns:
        raise InputError(f"{images_csv}: no label_path column: the totalseg backend needs a TotalSegmentator "
                         f"label map per volume (use train.landmark_backend: heuristic)")
    rows = []
    for record in images.to_dict("records"):
        began = time.perf_counter()
        truth = named_path(truth_dir, record["image_id"], suffix=".csv") if truth_dir else None
        table = volume_landmarks(backend, record["path"], record.get("label_path"), table=truth)
        out = named_path(out_dir, record["image_id"], suffix=".csv")
        write_table(table, out, float_format="%.4f")
        rows.append({"image_id": record["image_id"], "landmarks": str(out), "rows": len(table),
                     "seconds": round(time.perf_counter() - began, 3)})
    result = pd.DataFrame(rows, columns=["image_id", "landmarks", "rows", "seconds"])
    write_table(result, out_table)
    return result
