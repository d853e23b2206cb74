"""The synthetic longitudinal CT generator: determinism, anatomy, motion and ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage

from lesiontrack.data import phantom as ph
from lesiontrack.data import synthetic as sy
from lesiontrack.io import read_table, sha256
from lesiontrack.tables import SYNTHETIC_LESION_COLUMNS
from lesiontrack.vocabulary import LANDMARKS, TOTALSEG_V2, VERTEBRAE

DEFAULT = sy.SyntheticConfig()  # the defaults of config.yaml / the schema
VERTEBRA_LABELS = [TOTALSEG_V2[f"vertebrae_{v}"] for v in VERTEBRAE]


def _first_subject(cfg: sy.SyntheticConfig, protocol: str) -> int:
    for index in range(len(sy.subject_ids(cfg))):
        if sy.plan_subject(cfg, index).scans[0].protocol == protocol:
            return index
    raise AssertionError(f"no {protocol} subject")


@pytest.fixture(scope="module")
def pelvis_scan():
    """Baseline of a chest-abdomen-pelvis subject: the scan that shows every drawn structure."""
    cfg = sy.SyntheticConfig(n_train_subjects=20)
    subject = sy.plan_subject(cfg, _first_subject(cfg, "chest-abdomen-pelvis"))
    rendered = sy.render_subject(cfg, subject)
    scan = subject.scans[0]
    image, label = sy.render_scan(rendered, scan)
    return (rendered, scan, sitk.GetArrayFromImage(image).astype(float), sitk.GetArrayFromImage(label),
            sy.scan_tissue(rendered, scan))


@pytest.fixture(scope="module")
def default_test_truth():
    """Ground truth (no voxels written) of the default config's test subjects."""
    lesion_rows, landmark_counts, subjects = [], [], []
    for index, (_, split) in enumerate(sy.subject_ids(DEFAULT)):
        if split != "test":
            continue
        subject = sy.plan_subject(DEFAULT, index)
        rendered = sy.render_subject(DEFAULT, subject)
        subjects.append(rendered)
        for scan in subject.scans:
            lesion_rows.extend(sy.lesion_rows(rendered, scan))
            landmark_counts.append(len(sy.landmark_table(rendered, scan)))
    lesions = pd.DataFrame(lesion_rows, columns=SYNTHETIC_LESION_COLUMNS)
    return lesions, sy.pair_rows(lesions), landmark_counts, subjects


def _eroded(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3)))


def test_generator_is_deterministic(tmp_path):
    cfg = sy.SyntheticConfig(n_train_subjects=1, n_test_subjects=1, inplane_spacing_mm=(3.0, 3.5),
                             slice_spacing_mm=(4.0, 5.0), canonical_spacing_mm=2.0)
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        images = sy.generate_shard(cfg, [0], out, out / "images.csv", out / "lesions.csv", out / "pairs.csv",
                                   progress=False)
        files = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".gz", ".csv") and p.parent != out)
        digests.append({p.relative_to(out).as_posix(): sha256(p) for p in files})
        digests[-1]["lesions.csv"] = sha256(out / "lesions.csv")
        digests[-1]["pairs.csv"] = sha256(out / "pairs.csv")
        assert len(images) >= 2
    assert digests[0] == digests[1]
    assert len(digests[0]) >= 2 * 3 + 2  # images, labels, truth per scan + tables


def test_structures_present_with_ct_like_hu(pelvis_scan):
    _, _, hu, label, tissue = pelvis_scan
    present = set(np.unique(label)) - {0}
    assert set(TOTALSEG_V2.values()) <= present, "every drawn structure appears in the label map"
    lungs = np.isin(label, [TOTALSEG_V2[n] for n in TOTALSEG_V2 if n.startswith("lung_")])
    assert -900 <= hu[_eroded(lungs)].mean() <= -700
    for fat in (ph.FAT, ph.VISCERAL_FAT):
        assert -120 <= hu[_eroded(tissue == fat)].mean() <= -80
    for organ in ("liver", "spleen", "kidney_left", "kidney_right", "autochthon_left", "autochthon_right",
                  "iliopsoas_left", "iliopsoas_right", "esophagus"):
        mean = hu[_eroded(label == TOTALSEG_V2[organ])].mean()
        assert 20 <= mean <= 80, f"{organ}: mean {mean:.0f} HU"
    assert 20 <= hu[_eroded(tissue == ph.MUSCLE)].mean() <= 80
    for bone in ("vertebrae", "rib_", "hip_", "femur_", "sacrum", "sternum"):
        mask = np.isin(label, [v for n, v in TOTALSEG_V2.items() if n.startswith(bone)])
        assert hu[mask].mean() > 300, f"{bone}: mean {hu[mask].mean():.0f} HU"


def test_vertebrae_are_separate_components(pelvis_scan):
    _, _, _, label, _ = pelvis_scan
    spine = np.isin(label, VERTEBRA_LABELS)
    _, n_components = ndimage.label(spine, structure=np.ones((3, 3, 3)))
    n_vertebrae = len(set(np.unique(label[spine])))
    assert n_vertebrae >= 17
    assert n_components == n_vertebrae


def test_phantom_is_not_left_right_symmetric(pelvis_scan, default_test_truth):
    chest = default_test_truth[3][0]
    for rendered, scan in [(pelvis_scan[0], pelvis_scan[1]), (chest, chest.subject.scans[0])]:
        mean, _ = sy.hu_table(rendered, scan)
        hu = mean[rendered.canvas.tissue].astype(float)
        x = rendered.canvas.axes()[0]
        mid = int(np.argmin(np.abs(x)))  # the midsagittal plane x = 0 of the anatomical frame
        half = min(mid, len(x) - 1 - mid)
        block = hu[:, :, mid - half: mid + half + 1]
        a, b = block - block.mean(), block[:, :, ::-1] - block.mean()
        ncc = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
        assert ncc < 0.95


def test_follow_up_motion_within_configured_ranges():
    for index in range(len(sy.subject_ids(DEFAULT))):
        subject = sy.plan_subject(DEFAULT, index)
        baseline = subject.scans[0]
        lengths = [s.fov_anatomy_z[1] - s.fov_anatomy_z[0] for s in subject.scans]
        for i, a in enumerate(lengths):
            for b in lengths[i + 1:]:
                assert abs(a - b) >= 20.0
        assert len({s.geometry.spacing for s in subject.scans}) == len(subject.scans)
        for scan in subject.scans[1:]:
            delta = np.abs(scan.translation - baseline.translation)
            assert np.all((delta >= 10.0) & (delta <= 50.0))
            angles = np.rad2deg(np.arccos(np.clip((np.trace(scan.rotation) - 1) / 2, -1, 1)))
            assert angles <= 8.0 * np.sqrt(3) + 1e-6
            grid = np.stack(np.meshgrid(np.linspace(-150, 150, 9), np.linspace(-110, 110, 7),
                                        np.linspace(-400, 280, 17), indexing="ij"), -1).reshape(-1, 3)
            peak = np.linalg.norm(scan.deformation(grid), axis=1).max()
            assert 5.0 - 1e-6 <= peak <= 20.0 + 1e-6


def test_marker_at_baseline_landmark_appears_at_mapped_follow_up_point():
    cfg = sy.SyntheticConfig(n_train_subjects=1, n_test_subjects=1, canonical_spacing_mm=1.5)
    subject = sy.plan_subject(cfg, 0)
    baseline, followup = subject.scans[0], subject.scans[1]
    plain = sy.render_subject(cfg, subject)
    names = ["carina", "vertebra_T8", "liver_dome", "kidney_left_upper_pole"]
    truth_base = sy.landmark_table(plain, baseline).set_index("name")
    truth_follow = sy.landmark_table(plain, followup).set_index("name")
    names = [n for n in names if n in truth_base.index and n in truth_follow.index]
    assert len(names) >= 3
    # place markers at the baseline landmarks' world positions, pulled back into the anatomy
    markers = {n: baseline.to_anatomy(truth_base.loc[n, ["x", "y", "z"]].to_numpy(float))[0] for n in names}
    marked = sy.render_subject(cfg, subject, markers=markers)
    for scan, truth in ((baseline, truth_base), (followup, truth_follow)):
        with_marker = sitk.GetArrayFromImage(sy.render_scan(marked, scan)[0]).astype(float)
        without = sitk.GetArrayFromImage(sy.render_scan(plain, scan)[0]).astype(float)
        difference = np.clip(with_marker - without, 0, None)
        blobs, n = ndimage.label(difference > 150)
        centres = ndimage.center_of_mass(difference, blobs, range(1, n + 1))
        world = scan.geometry.index_to_world(np.array(centres)[:, ::-1])
        voxel = max(scan.geometry.spacing)
        for name in names:
            expected = truth.loc[name, ["x", "y", "z"]].to_numpy(float)
            error = np.linalg.norm(world - expected, axis=1).min()
            assert error < voxel, f"{scan.image_id} {name}: marker {error:.2f} mm from truth (voxel {voxel:.2f})"


def test_identity_guess_is_not_enough(default_test_truth):
    _, pairs, _, _ = default_test_truth
    assert len(pairs) >= 40
    source = pairs[["source_x", "source_y", "source_z"]].to_numpy(float)
    target = pairs[["target_x", "target_y", "target_z"]].to_numpy(float)
    hit = np.linalg.norm(source - target, axis=1) < pairs["target_radius_mm"].to_numpy()
    assert hit.mean() <= 0.40


def test_ground_truth_tables(default_test_truth):
    lesions, pairs, landmark_counts, _ = default_test_truth
    assert min(landmark_counts) >= 30
    assert set(lesions["status"]) <= {"present", "new", "disappeared"}
    assert (lesions.loc[lesions["status"] == "disappeared", "radius_mm"] == 0).all()
    assert (pairs["target_radius_mm"] > 0).all()
    # both directions of every pair, with swapped ends
    forward = pairs[pairs["direction"] == "forward"].set_index("pair_id")
    backward = pairs[pairs["direction"] == "backward"].set_index("pair_id")
    assert sorted(forward.index) == sorted(backward.index)
    assert (forward["source_image"] == backward.loc[forward.index, "target_image"]).all()
    target = pairs[[f"target_{a}" for a in "xyz"]].to_numpy()
    box_min = pairs[[f"target_box_min_{a}" for a in "xyz"]].to_numpy()
    box_max = pairs[[f"target_box_max_{a}" for a in "xyz"]].to_numpy()
    assert ((target >= box_min) & (target <= box_max)).all()
    # lesions change: some grow, some shrink between timepoints
    ratio = pairs["target_radius_mm"] / pairs["source_radius_mm"]
    assert (ratio > 1.1).any() and (ratio < 0.9).any()


def test_lesion_radii_like_dls():
    rng = np.random.default_rng(0)
    radii = np.array([sy._sample_radius(rng) for _ in range(20000)])
    assert abs((radii < 5).mean() - 0.08) < 0.01
    assert abs(((radii >= 5) & (radii <= 10)).mean() - 0.37) < 0.015
    assert abs((radii > 10).mean() - 0.55) < 0.015


def test_vocabulary_matches_totalsegmentator_v2(test_data):
    import json

    table = json.loads((test_data / "totalseg" / "class_map_total.json").read_text())["total"]
    for name, label in TOTALSEG_V2.items():
        assert table[str(label)] == name
    assert len(LANDMARKS) >= 30


def test_truth_files_written_by_workflow(smoke_run):
    images = read_table(smoke_run / "results" / "synthetic" / "images.csv")
    for image_id in images["image_id"]:
        truth = read_table(smoke_run / "results" / "synthetic" / "truth" / f"{image_id}.csv",
                           required=["name", "x", "y", "z", "confidence"])
        assert set(truth["name"]) <= set(LANDMARKS)
        assert len(truth) >= 30
