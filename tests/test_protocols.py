"""The synthetic protocols: DLS-like sub-volumes, NLST-like chest scans, coverage mismatch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from lesiontrack.data import dls
from lesiontrack.data import phantom as ph
from lesiontrack.data import synthetic as sy

DLS_LIKE = sy.SyntheticConfig(n_train_subjects=1, n_test_subjects=1, export="dls-subvolumes")


def test_dls_extents_and_spacings_match_the_measured_percentiles():
    """The sub-volume extents have DLS's 5th / 50th / 95th percentiles (61 / 84 / 155 mm)."""
    rng = np.random.default_rng(0)
    extents = np.array([sy.dls_extent(rng) for _ in range(20000)])
    assert np.allclose(np.percentile(extents, [5, 50, 95]), sy.DLS_EXTENT_MM, rtol=0.03)


def test_dls_percentiles_are_those_of_the_dls_test_split(test_data):
    """The constants come from dls/test.json (per entry: the extent slices x sz, the slice spacing)."""
    path = test_data / "dls" / "test.json"
    extents, thick = [], []
    for entry in json.loads(path.read_text()).values():
        for end in ("source", "target"):
            name = dls.VolumeName.parse(entry[end])
            extents.append(name.n_slices * entry[f"{end} spacing"][2])
            thick.append(entry[f"{end} spacing"][2] == 5.0)
    assert np.allclose(np.percentile(extents, [5, 50, 95]), sy.DLS_EXTENT_MM, atol=8.0)
    assert abs(np.mean(thick) - sy.DLS_THICK_FRACTION) < 0.03


@pytest.fixture(scope="module")
def dls_like_subject():
    subject = sy.plan_subject(DLS_LIKE, 0)
    rendered = sy.render_subject(DLS_LIKE, subject)
    exported = [(scan, sub, owners) for scan in subject.scans
                for sub, owners in sy.exported_scans(DLS_LIKE, rendered, scan, 0)]
    return rendered, exported


def test_dls_subvolumes_are_placed_as_dls_volumes_and_show_their_lesion(dls_like_subject):
    """Each sub-volume has the geometry dls.py gives its name (origin from the slice numbers), its
    series' one slice spacing, and its lesion's truth point lies on that lesion's voxels."""
    rendered, exported = dls_like_subject
    index = {lesion.lesion_id: k for k, lesion in enumerate(rendered.lesions)}
    series_spacing: dict[str, float] = {}
    for _, sub, owners in exported:
        name = dls.VolumeName.parse(sub.image_id)
        assert sub.geometry == dls.dls_geometry(name, sub.geometry.spacing, sub.geometry.size[:2])
        assert series_spacing.setdefault(name.series_id, sub.geometry.spacing[2]) == sub.geometry.spacing[2]
        assert sub.geometry.spacing[2] in sy.DLS_SLICE_SPACINGS_MM
        tissue = sy.scan_tissue(rendered, sub)
        rows = {r["lesion_id"]: r for r in sy.lesion_rows(rendered, sub)}
        for lesion_id in owners:
            row = rows[lesion_id]
            if row["status"] == "disappeared":
                continue
            i, j, k = np.round(sub.geometry.world_to_index([[row["x"], row["y"], row["z"]]])[0]).astype(int)
            assert tissue[k, j, i] == ph.FIRST_LESION_TISSUE + index[lesion_id]
    baseline, follow_up = sorted(series_spacing)
    assert baseline.split("_")[1] == "01" and follow_up.split("_")[1] == "02"


def test_dls_subvolumes_cover_every_lesion_in_their_own_frames(dls_like_subject):
    """One sub-volume per lesion and scan; the two scans' frames are unrelated (the world point of a
    lesion differs by far more than the motion), while the anatomy point is the same."""
    rendered, exported = dls_like_subject
    per_scan: dict[int, dict[str, tuple]] = {}
    for scan, sub, owners in exported:
        for row in sy.lesion_rows(rendered, sub):
            if row["lesion_id"] in owners:
                per_scan.setdefault(scan.timepoint, {})[row["lesion_id"]] = (sub, row)
    whole = {tp: {r["lesion_id"] for r in sy.lesion_rows(rendered, scan)} for tp, scan in
             enumerate(rendered.subject.scans)}
    assert {tp: set(v) for tp, v in per_scan.items()} == whole
    shared = set(per_scan[0]) & set(per_scan[1])
    assert shared
    for lesion_id in shared:
        lesion = rendered.lesions[[les.lesion_id for les in rendered.lesions].index(lesion_id)]
        for tp in (0, 1):
            sub, row = per_scan[tp][lesion_id]
            anatomy = sub.to_anatomy(np.array([[row["x"], row["y"], row["z"]]]))[0]
            assert np.linalg.norm(anatomy - lesion.center) < 0.01
        a, b = per_scan[0][lesion_id][1], per_scan[1][lesion_id][1]
        assert np.linalg.norm([a["x"] - b["x"], a["y"] - b["y"], a["z"] - b["z"]]) > 0.0


def test_nlst_like_radii_and_chest_only_fields():
    """68 % of NLST-like nodule radii under 5 mm; chest-only scans hold lung lesions only."""
    rng = np.random.default_rng(1)
    radii = np.array([sy._sample_radius(rng, "nlst") for _ in range(20000)])
    assert abs(np.mean(radii < 5.0) - 0.68) < 0.01
    cfg = sy.SyntheticConfig(n_train_subjects=1, n_test_subjects=0, region="chest", lesion_types=("lung",),
                             lesion_radii="nlst")
    subject = sy.plan_subject(cfg, 0)
    assert {scan.protocol for scan in subject.scans} == {"chest"}
    lengths = [scan.fov_anatomy_z[1] - scan.fov_anatomy_z[0] for scan in subject.scans]
    assert max(lengths) < 380.0  # shorter than any chest-abdomen field
    rendered = sy.render_subject(cfg, subject)
    assert rendered.lesions and {lesion.kind for lesion in rendered.lesions} == {"lung"}


def test_every_nlst_like_subject_is_planned():
    """Chest fields vary over a short range of lengths: three scans whose lengths differ pairwise by
    20 mm are still drawn (the greedy draw could wait forever for a length that no longer fitted).
    In a child process with a time limit, so that a regression fails instead of hanging."""
    code = ("from lesiontrack import config as C; from lesiontrack.data import synthetic as sy\n"
            "cfg = sy.SyntheticConfig.from_dict(C.load(['config.yaml', 'configs/nlst-like.yaml'])['synthetic'])\n"
            "for i in range(cfg.n_train_subjects + cfg.n_test_subjects):\n"
            "    lengths = [b - a for a, b in (s.fov_anatomy_z for s in sy.plan_subject(cfg, i).scans)]\n"
            "    print(len(lengths), min(abs(x - y) for x in lengths for y in lengths if x is not y))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    planned = [line.split() for line in done.stdout.splitlines()]
    assert len(planned) == 12 and any(n == "3" for n, _ in planned)
    assert all(float(gap) >= 20.0 for _, gap in planned)


@pytest.mark.parametrize("coverage", ["partial", "slab"])
def test_coverage_mismatch_fields_and_frames(coverage):
    """partial: follow-ups from the baseline's bottom over 40-60 % of its length; slab: 61-155 mm-like
    slabs inside the baseline, 200-600 mm away in z; lesions lie inside every field."""
    cfg = sy.SyntheticConfig(n_train_subjects=6, n_test_subjects=0, coverage=coverage)
    for index in range(6):
        subject = sy.plan_subject(cfg, index)
        (b0, t0), follow_ups = subject.scans[0].fov_anatomy_z, subject.scans[1:]
        for scan in follow_ups:
            b, t = scan.fov_anatomy_z
            if coverage == "partial":
                assert b == b0 and 0.4 <= (t - b) / (t0 - b0) <= 0.6
            else:
                assert b0 <= b < t <= t0 and 20.0 <= t - b <= 400.0
                assert 150.0 <= abs(scan.translation[2] - subject.scans[0].translation[2]) <= 660.0
    subject = sy.plan_subject(cfg, 0)
    rendered = sy.render_subject(cfg, subject)
    assert rendered.lesions
    for scan in subject.scans:
        assert {r["lesion_id"] for r in sy.lesion_rows(rendered, scan)} >= \
            {les.lesion_id for les in rendered.lesions if les.radii[scan.timepoint] > 0}
