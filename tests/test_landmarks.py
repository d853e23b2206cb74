"""Landmark backends: ``totalseg`` (TotalSegmentator label maps), ``heuristic`` (intensities), ``file``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from lesiontrack.landmarks import read_class_map, totalseg_landmarks
from lesiontrack.vocabulary import LANDMARKS, TOTALSEG_V2, TOTALSEG_V2_NAMES


@pytest.fixture(scope="module")
def example(test_data: Path) -> tuple[sitk.Image, dict[int, str]]:
    folder = test_data / "totalseg"
    seg, class_map = folder / "example_seg.nii.gz", folder / "class_map_total.json"
    if not (seg.is_file() and class_map.is_file()):
        pytest.skip(f"TotalSegmentator example {seg} / {class_map} not found")
    return sitk.ReadImage(str(seg)), read_class_map(class_map)


def by_hand(image: sitk.Image, class_map: dict[int, str], structures: tuple[str, ...], end: str | None) -> np.ndarray:
    """World point by numpy alone: centroid of the mask's anterior 40 % along world y (end "body"), or
    of its top / bottom world-z voxels."""
    array = sitk.GetArrayFromImage(image)
    ids = [label for label, name in class_map.items() if name in structures]
    voxels_xyz = np.argwhere(np.isin(array, ids))[:, ::-1].astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    world = np.array(image.GetOrigin()) + (voxels_xyz * np.array(image.GetSpacing())) @ direction.T
    if end == "body":
        y = world[:, 1]
        world = world[y <= y.min() + 0.4 * (y.max() - y.min())]
    elif end == "superior":
        world = world[np.isclose(world[:, 2], world[:, 2].max())]
    elif end == "inferior":
        world = world[np.isclose(world[:, 2], world[:, 2].min())]
    return world.mean(axis=0)


def test_read_class_map_v1_and_v2(test_data: Path, tmp_path: Path):
    v2_path, v1_path = (test_data / "totalseg" / f"class_map_{task}.json" for task in ("total", "total_v1"))
    if not (v2_path.is_file() and v1_path.is_file()):
        pytest.skip("TotalSegmentator class maps not found in the test data")
    v2, v1 = read_class_map(v2_path), read_class_map(v1_path)
    assert all(v2[label] == name for label, name in TOTALSEG_V2_NAMES.items())
    assert v1[7] == "aorta" and v2[52] == "aorta" and v1[1] == v2[1] == "spleen"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"source": "x", "total": {"one": "spleen"}}))
    with pytest.raises(ValueError, match="label ids must be integers"):
        read_class_map(bad)


def test_real_ct_landmarks_match_numpy(example):
    image, class_map = example
    assert image.GetSize() == (122, 101, 30)
    table = totalseg_landmarks(image, class_map)
    assert list(table.columns) == ["name", "x", "y", "z", "confidence"]
    assert set(table["name"]) <= set(LANDMARKS)
    points = table.set_index("name")[["x", "y", "z"]]
    expected = {
        "vertebra_L1": by_hand(image, class_map, ("vertebrae_L1",), "body"),
        "lung_base_left": by_hand(image, class_map, ("lung_upper_lobe_left", "lung_lower_lobe_left"), "inferior"),
        "lung_base_right": by_hand(image, class_map, ("lung_upper_lobe_right", "lung_middle_lobe_right",
                                                      "lung_lower_lobe_right"), "inferior"),
        "kidney_left_upper_pole": by_hand(image, class_map, ("kidney_left",), "superior"),
        "kidney_right_upper_pole": by_hand(image, class_map, ("kidney_right",), "superior"),
    }
    spacing = np.array(image.GetSpacing())
    for name, point in expected.items():
        assert name in points.index, name
        assert np.all(np.abs(points.loc[name].to_numpy() - point) <= spacing), (name, points.loc[name], point)
    # cut by the field of view: liver and kidneys reach an end slice, T11/T12/L2 touch the top or bottom
    for name in ("liver_dome", "kidney_left_lower_pole", "kidney_right_lower_pole",
                 "vertebra_T11", "vertebra_T12", "vertebra_L2", "lung_apex_left", "lung_apex_right"):
        assert name not in points.index, name
    assert (table["confidence"] == 1.0).all()


def label_map(direction: tuple[float, ...], origin: tuple[float, float, float] = (-50.0, -40.0, 80.0)) -> sitk.Image:
    """40x40x40 grid at 2 mm: a kidney_left sphere (r 12 mm) and an L1 sphere (r 6 mm) at known world points."""
    image = sitk.Image(40, 40, 40, sitk.sitkUInt8)
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin(origin)
    image.SetDirection(direction)
    index = np.stack(np.meshgrid(*(np.arange(40.0),) * 3, indexing="ij"), axis=-1).reshape(-1, 3)  # (x, y, z)
    world = np.array(origin) + (index * 2.0) @ np.array(direction).reshape(3, 3).T
    array = np.zeros((40, 40, 40), np.uint8)  # (z, y, x)
    for name, centre, radius in (("kidney_left", KIDNEY, 12.0), ("vertebrae_L1", L1, 6.0)):
        inside = index[np.linalg.norm(world - centre, axis=1) <= radius].astype(int)
        array[inside[:, 2], inside[:, 1], inside[:, 0]] = TOTALSEG_V2[name]
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
FLIPPED_Z = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
PERMUTED = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0)  # index x runs to world -z, index z to world +x
KIDNEY, L1 = np.array([-10.0, 0.0, 40.0]), np.array([0.0, 0.0, 30.0])


@pytest.mark.parametrize("direction, origin", [(IDENTITY, (-50.0, -40.0, 0.0)), (FLIPPED_Z, (-50.0, -40.0, 78.0)),
                                                (PERMUTED, (-50.0, -40.0, 78.0))])
def test_synthetic_poles_follow_world_z(direction, origin):
    image = label_map(direction, origin)
    table = totalseg_landmarks(image, TOTALSEG_V2_NAMES).set_index("name")
    assert set(table.index) == {"kidney_left_upper_pole", "kidney_left_lower_pole", "vertebra_L1"}
    upper, lower = table.loc["kidney_left_upper_pole"], table.loc["kidney_left_lower_pole"]
    assert upper["z"] == pytest.approx(KIDNEY[2] + 12.0) and lower["z"] == pytest.approx(KIDNEY[2] - 12.0)
    for pole in (upper, lower):
        assert pole["x"] == pytest.approx(KIDNEY[0]) and pole["y"] == pytest.approx(KIDNEY[1])
    # the body centre of a sphere: the centroid of its cap in front (-y) of 40 % of its depth
    x, y, z = table.loc["vertebra_L1", ["x", "y", "z"]].to_numpy(float)
    assert (x, z) == pytest.approx((L1[0], L1[2])) and L1[1] - 4.0 < y < L1[1] - 2.0


def test_synthetic_cut_structures_are_omitted():
    # flipped z, origin z 50: world z runs 50 (array slice 0) down to -28; the kidney (28..52) reaches slice 0,
    # the most superior slice, so its upper pole is cut; L1 (24..36) lies inside.
    image = label_map(FLIPPED_Z, (-50.0, -40.0, 50.0))
    table = totalseg_landmarks(image, TOTALSEG_V2_NAMES)
    assert set(table["name"]) == {"kidney_left_lower_pole", "vertebra_L1"}
    # the grid starting at the kidney's centre in x: both pole slices touch the in-plane edge
    table = totalseg_landmarks(label_map(IDENTITY, (-10.0, -40.0, 0.0)), TOTALSEG_V2_NAMES)
    assert set(table["name"]) == {"vertebra_L1"}
    # a class map without the structures gives an empty table with the columns
    empty = totalseg_landmarks(image, {99: "brain"})
    assert empty.empty and list(empty.columns) == ["name", "x", "y", "z", "confidence"]
    assert isinstance(empty, pd.DataFrame)


def test_heuristic_agrees_with_totalseg_on_the_real_ct(example, test_data: Path):
    """Intensities alone find both lung bases of the real CT where the TotalSegmentator mask puts
    them (measured: 3.7 and 2.3 mm), and nothing outside its 9-cm field of view (no apex, no
    carina); bowel gas (median about -970 HU) is not taken for lung."""
    from lesiontrack.landmarks import heuristic_landmarks

    image = sitk.ReadImage(str(test_data / "totalseg" / "example_ct_sm.nii.gz"))
    heuristic = heuristic_landmarks(image).set_index("name")
    reference = totalseg_landmarks(*example).set_index("name")
    assert sorted(heuristic.index) == ["lung_base_left", "lung_base_right"]
    errors = np.linalg.norm(heuristic[["x", "y", "z"]] - reference.loc[heuristic.index, ["x", "y", "z"]], axis=1)
    assert errors.max() < 8.0
    assert (heuristic["confidence"] == 0.5).all()


def _bony_phantom(direction: tuple[float, ...]) -> tuple[sitk.Image, dict[str, np.ndarray]]:
    """A water body (2 mm voxels) with two air lungs above, a sternum in front of them, hip
    bones with an iliac wing and a femoral head (a 22-mm ball) on each side, and a pubic block in
    front; returns the image and where each landmark is by construction (world mm, LPS)."""
    spacing = 2.0
    size = np.array([110, 90, 160])  # x, y, z
    origin = np.array([-110.0, -90.0, -320.0]) if direction[0] > 0 else np.array([108.0, 88.0, -320.0])
    flip = np.sign(np.array(direction).reshape(3, 3).diagonal())
    x, y, z = (origin[a] + flip[a] * spacing * np.arange(size[a]) for a in range(3))
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    hu = np.full(X.shape, -1000.0)
    hu[(X / 100.0) ** 2 + (Y / 80.0) ** 2 <= 1.0] = 40.0
    for side in (-1, 1):  # lungs: z -80 .. -10 (base at -80)
        hu[((X - side * 45.0) / 30.0) ** 2 + (Y / 40.0) ** 2 + ((Z + 45.0) / 35.0) ** 2 <= 1.0] = -860.0
    sternum = (np.abs(X) <= 12.0) & (Y >= -72.0) & (Y <= -60.0) & (Z >= -70.0) & (Z <= -20.0)
    hu[sternum] = 700.0
    for side in (-1, 1):
        wing = (side * X >= 55.0) & (side * X <= 85.0) & (np.abs(Y - 20.0) <= 15.0) & (Z >= -200.0) & (Z <= -150.0)
        hu[wing] = 700.0
        head = (X - side * 75.0) ** 2 + (Y - 10.0) ** 2 + (Z + 250.0) ** 2 <= 22.0 ** 2
        hu[head] = 700.0
    pubis = (np.abs(X) <= 10.0) & (Y >= -60.0) & (Y <= -44.0) & (Z >= -270.0) & (Z <= -250.0)
    hu[pubis] = 700.0
    image = sitk.GetImageFromArray(np.transpose(hu, (2, 1, 0)).astype(np.int16))
    image.SetSpacing((spacing,) * 3)
    image.SetOrigin(tuple(origin))
    image.SetDirection(direction)

    def centroid(mask: np.ndarray) -> np.ndarray:
        return np.array([X[mask].mean(), Y[mask].mean(), Z[mask].mean()])

    top_z, bottom_z = Z[sternum].max(), Z[sternum].min()
    truth = {"sternum_top": centroid(sternum & (Z == top_z)), "xiphoid_tip": centroid(sternum & (Z == bottom_z)),
             "pubic_symphysis": centroid(pubis)}
    for side, name in ((1, "left"), (-1, "right")):
        wing = (side * X >= 55.0) & (side * X <= 85.0) & (np.abs(Y - 20.0) <= 15.0) & (Z >= -200.0) & (Z <= -150.0)
        truth[f"iliac_crest_{name}"] = centroid(wing & (Z == Z[wing].max()))
        truth[f"femoral_head_{name}"] = np.array([side * 75.0, 10.0, -250.0])
    return image, truth


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1)])
def test_heuristic_bone_landmarks_are_found_where_they_were_built(direction):
    """Sternum top and xiphoid tip, iliac crests, femoral heads and the pubic symphysis, by
    intensity alone, within one voxel (2 mm) of where the phantom put them, whichever way the
    grid's x and y axes run (the real example CT's direction is (-1, -1, 1))."""
    from lesiontrack.landmarks import heuristic_landmarks

    image, truth = _bony_phantom(direction)
    found = heuristic_landmarks(image).set_index("name")
    assert set(truth) <= set(found.index), sorted(found.index)
    for name, point in truth.items():
        assert np.linalg.norm(found.loc[name, ["x", "y", "z"]].to_numpy(float) - point) <= 2.0, name
    assert found.loc["iliac_crest_left", "x"] > 0 > found.loc["iliac_crest_right", "x"]  # LPS: +x is left


def test_landmark_tables_of_the_smoke_run(smoke_run: Path):
    """Every volume of the smoke run has a totalseg landmark table of at least 20 vocabulary rows;
    the heuristic backend finds the carina and the lung poles there within 15 mm of the oracle."""
    from lesiontrack.landmarks import heuristic_landmarks, read_landmarks

    folder = smoke_run / "results" / "synthetic" / "shards"
    images = pd.concat([pd.read_csv(p) for p in sorted(folder.glob("images-*.csv"))])
    shards = pd.concat([pd.read_csv(p) for p in sorted(folder.glob("landmarks-*.csv"))])
    assert sorted(shards["image_id"]) == sorted(images["image_id"])
    for path in shards["landmarks"]:
        assert len(read_landmarks(smoke_run / path)) >= 20
    first = images.iloc[0]
    found = heuristic_landmarks(sitk.ReadImage(str(smoke_run / first["path"]))).set_index("name")
    truth = pd.read_csv(smoke_run / "results/synthetic/truth" / f"{first['image_id']}.csv").set_index("name")
    assert {"carina", "lung_base_left", "lung_base_right"} <= set(found.index)
    errors = np.linalg.norm(found[["x", "y", "z"]] - truth.loc[found.index, ["x", "y", "z"]], axis=1)
    assert np.median(errors) < 15.0


def test_file_backend_rejects_names_outside_the_vocabulary(tmp_path: Path):
    from lesiontrack.cli import main

    table = tmp_path / "mine.csv"
    pd.DataFrame({"name": ["carina", "left_thumb"], "x": [0.0, 1.0], "y": [0.0, 1.0], "z": [0.0, 1.0]}).to_csv(
        table, index=False)
    assert main(["landmarks", "--backend", "file", "--file", str(table), "--out", str(tmp_path / "out.csv")]) == 2
    assert not (tmp_path / "out.csv").exists()
    table.write_text("name,x,y,z\ncarina,1,2,3\n")
    assert main(["landmarks", "--backend", "file", "--file", str(table), "--out", str(tmp_path / "out.csv")]) == 0
    assert pd.read_csv(tmp_path / "out.csv").to_dict("records") == [
        {"name": "carina", "x": 1.0, "y": 2.0, "z": 3.0, "confidence": 1.0}]


def _write_seg(folder: Path, out: Path, blocks: dict[str, tuple[slice, slice, slice]]) -> Path:
    """A DICOM SEG written with highdicom on the CT series in ``folder``: one segment per
    SegmentLabel, painted as a (slice, row, column) block over the CT's frames in position order."""
    hd = pytest.importorskip("highdicom")
    import pydicom
    from pydicom.sr.codedict import codes

    source = sorted((pydicom.dcmread(p) for p in folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for d in source:  # the example series is anonymised down to empty UIDs, which a SEG must reference
        d.SOPClassUID = d.SOPClassUID or d.file_meta.MediaStorageSOPClassUID
        d.SOPInstanceUID = d.SOPInstanceUID or pydicom.uid.generate_uid()
        d.StudyInstanceUID = d.StudyInstanceUID or study
        d.SeriesInstanceUID = d.SeriesInstanceUID or series
        d.PatientID = d.PatientID or "anonymous"
    mask = np.zeros((len(source), int(source[0].Rows), int(source[0].Columns)), np.uint8)
    descriptions = []
    algorithm = hd.AlgorithmIdentificationSequence(name="TotalSegmentator", version="1.5.6",
                                                   family=codes.cid7162.ArtificialIntelligence)
    for number, (label, block) in enumerate(blocks.items(), start=1):
        mask[block] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Organ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    seg = hd.seg.Segmentation(
        source_images=source, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=300,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="lesiontrack tests",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0")
    seg.save_as(out)
    return out


def test_dicom_seg_landmarks_by_segment_label(test_data: Path, tmp_path: Path):
    """A SEG that highdicom writes on the real DICOM series: segments are named by SegmentLabel
    (not by number), land on the CT's voxels, and give the landmarks computed by hand."""
    from lesiontrack.dicom_seg import is_dicom_seg, read_seg
    from lesiontrack.io import read_image
    from lesiontrack.landmarks import volume_landmarks

    folder = test_data / "totalseg" / "example_ct_dicom"
    liver, l1 = (slice(4, 12), slice(200, 260), slice(120, 200)), (slice(6, 14), slice(300, 340), slice(240, 280))
    seg_path = _write_seg(folder, tmp_path / "seg.dcm", {"Vertebrae L1": l1, "liver": liver, "Kidney Cyst": l1})
    assert is_dicom_seg(seg_path) and not is_dicom_seg(next(folder.iterdir()))
    ct = read_image(folder)
    labels, names = read_seg(seg_path, ct)
    assert names == {1: "vertebrae_L1", 2: "liver", 3: "Kidney Cyst"}
    array = sitk.GetArrayFromImage(labels)  # on the CT grid: (slice, row, column) as painted
    assert labels.GetSize() == ct.GetSize() and (array[liver] == 2).all() and (array[l1] == 3).all()
    assert (array > 0).sum() == 8 * 60 * 80 + 8 * 40 * 40
    # landmarks: the liver dome is the centroid of the block's top slice; "Kidney Cyst" (no
    # TotalSegmentator structure) painted over all of L1, so no L1 landmark
    table = volume_landmarks("totalseg", image=folder, labels=seg_path).set_index("name")
    assert set(table.index) == {"liver_dome", "liver_tip"}
    top = np.argwhere(array == 2)
    top = top[top[:, 0] == top[:, 0].max()][:, ::-1].astype(float)
    expected = np.array([ct.TransformContinuousIndexToPhysicalPoint(tuple(v)) for v in top]).mean(axis=0)
    assert table.loc["liver_dome", ["x", "y", "z"]].to_numpy(float) == pytest.approx(expected, abs=1e-3)
    # alone (and without the CT: the SEG's own frames), L1's body centre is the centroid of the
    # block's anterior 40 % (smallest world y = smallest rows here)
    seg_only = volume_landmarks("totalseg", labels=_write_seg(folder, tmp_path / "l1.dcm", {"Vertebrae L1": l1}))
    rows = np.arange(300, 340)
    anterior = rows[rows <= 300 + 0.4 * 39]
    expected_l1 = np.array([ct.TransformContinuousIndexToPhysicalPoint((float(c), float(r), float(k)))
                            for k in range(6, 14) for r in anterior for c in range(240, 280)]).mean(axis=0)
    assert seg_only.set_index("name").loc["vertebra_L1", ["x", "y", "z"]].to_numpy(float) == pytest.approx(
        expected_l1, abs=1e-3)
