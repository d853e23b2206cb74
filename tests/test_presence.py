"""found / disappeared: the appearance test on hand-made scans with a known lesion, its queries and
its calibration, and the decision inside ``predict_pairs``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from lesiontrack import evaluate_presence
from lesiontrack.io import Geometry, write_image, write_table
from lesiontrack.track import choose, presence
from lesiontrack.track.predict import predict_pairs

SOURCE_POINT = np.array([10.0, -5.0, 20.0])
ROTATED = tuple(sitk.Euler3DTransform((0, 0, 0), 0.1, -0.05, 0.2).GetMatrix())


def _scan(lesion_mm, origin, spacing, direction, seed: int, radius_mm: float = 7.0, background_hu: float = 60.0,
          lesion_hu: float = 20.0) -> sitk.Image:
    """A 48^3 noisy soft-tissue block with a hypodense ball (a liver lesion) at ``lesion_mm`` (world mm)."""
    geometry = Geometry(tuple(origin), tuple(spacing), (48, 48, 48), tuple(direction))
    zyx = np.indices((48, 48, 48)).reshape(3, -1)
    world = geometry.index_to_world(zyx[::-1].T)
    hu = np.full(world.shape[0], background_hu)
    if lesion_mm is not None:
        hu[np.linalg.norm(world - lesion_mm, axis=1) <= radius_mm] = lesion_hu
    hu += np.random.default_rng(seed).normal(0.0, 8.0, hu.shape)
    return geometry.stamp(sitk.GetImageFromArray(hu.reshape(48, 48, 48).astype(np.float32)))


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, str]:
    """Source with the lesion; targets on a rotated anisotropic grid: the lesion there (present),
    not there (gone), and there in a later contrast phase (organ -40 HU, lesion -10 HU: fainter)."""
    folder = tmp_path_factory.mktemp("presence")
    grid = ((-38.0, -53.0, -28.0), (2.0, 2.0, 2.0), np.eye(3).ravel())
    target_origin = SOURCE_POINT - np.asarray(ROTATED).reshape(3, 3) @ (np.array([24.0, 22.0, 26.0]) * [1.8, 1.8, 2.5])
    target = (target_origin, (1.8, 1.8, 2.5), ROTATED)
    images = {"source": _scan(SOURCE_POINT, *grid, 1), "present": _scan(SOURCE_POINT, *target, 2),
              "gone": _scan(None, *target, 3),
              "faded": _scan(SOURCE_POINT, *target, 4, background_hu=20.0, lesion_hu=10.0)}
    paths = {}
    for name, image in images.items():
        paths[name] = str(folder / f"{name}.nii.gz")
        write_image(image, paths[name])
    return paths


def _measure(scans, target: str, point=SOURCE_POINT, **settings) -> dict[str, float]:
    return presence.measure(presence.Volume(scans["source"]), presence.Volume(scans[target]), SOURCE_POINT,
                            np.asarray(point, float), 7.0, presence.PresenceSettings(**settings))


def test_contrast_is_measured_in_world_mm_and_separates_present_from_gone(scans):
    present, gone = _measure(scans, "present", search_mm=0.0), _measure(scans, "gone", search_mm=0.0)
    assert present["source_contrast_hu"] == pytest.approx(-40.0, abs=6.0)
    assert present["target_contrast_hu"] == pytest.approx(-40.0, abs=6.0)
    assert abs(gone["target_contrast_hu"]) < 6.0
    scores = presence.presence_score(pd.DataFrame([present, gone]), slope=0.0, relative_sd=0.3)
    assert scores[0] > 0.0 > scores[1]  # LLR: closer to "still there" vs closer to "gone"


def test_the_search_finds_the_lesion_again_after_a_tracking_error(scans):
    off = SOURCE_POINT + np.array([6.0, -3.0, 0.0])  # the ball (7 mm) barely covers the inner sample
    missed = _measure(scans, "present", off, search_mm=0.0)
    found = _measure(scans, "present", off, search_mm=8.0)
    assert abs(missed["target_contrast_hu"]) < 25.0
    assert found["target_contrast_hu"] == pytest.approx(-40.0, abs=6.0)
    assert abs(_measure(scans, "gone", off, search_mm=8.0)["target_contrast_hu"]) < 8.0


def test_enhancement_correction_expects_the_fainter_lesion_of_the_new_phase(scans):
    faded = _measure(scans, "faded", search_mm=0.0)  # contrast -40 -> -10 HU, organ -40 HU
    assert faded["target_shell_hu"] - faded["source_shell_hu"] == pytest.approx(-40.0, abs=5.0)
    assert faded["target_contrast_hu"] == pytest.approx(-10.0, abs=5.0)
    # the slope recovered from present lesions whose contrast changed by -0.75 x the organ's change
    rng = np.random.default_rng(0)
    d_shell = rng.uniform(-40, 40, 30)
    table = pd.DataFrame({"source_shell_hu": 50.0, "target_shell_hu": 50.0 + d_shell, "source_contrast_hu": -30.0,
                          "target_contrast_hu": -30.0 - 0.75 * d_shell + rng.normal(0, 1, 30)})
    assert presence.fit_slope(table) == pytest.approx(-0.75, abs=0.03)
    # a lung nodule (800 HU against air) does not enter the fit
    nodule = pd.DataFrame({"source_shell_hu": [-850.0], "target_shell_hu": [-800.0], "source_contrast_hu": [800.0],
                           "target_contrast_hu": [700.0]})
    assert presence.fit_slope(pd.concat([table, nodule])) == pytest.approx(-0.75, abs=0.03)
    # without the correction the faded lesion looks gone; with it, still there
    frame = pd.DataFrame([faded])
    assert presence.presence_score(frame, slope=0.0, relative_sd=0.3)[0] < 0.0
    assert presence.presence_score(frame, slope=-0.75, relative_sd=0.3)[0] > 0.0


def test_presence_queries_label_gone_lesions_in_both_scan_orders():
    rows = [("s_L0", "s_t0", 0, "present", 5.0), ("s_L0", "s_t1", 1, "present", 6.0),
            ("s_L1", "s_t0", 0, "present", 8.0), ("s_L1", "s_t1", 1, "disappeared", 0.0),
            ("s_L2", "s_t1", 1, "new", 4.0)]
    lesions = pd.DataFrame([{"lesion_id": lid, "image_id": image, "x": 1.0, "y": 2.0, "z": 3.0, "radius_mm": r,
                             "status": status, "subject_id": "s", "timepoint": t, "split": "train"}
                            for lid, image, t, status, r in rows])
    queries = presence.presence_queries(lesions).set_index(["lesion_id", "direction"])
    assert set(queries.index) == {("s_L0", "forward"), ("s_L0", "backward"), ("s_L1", "forward")}
    assert queries.loc[("s_L1", "forward"), "expected"] == "gone"
    assert queries.loc[("s_L0", "backward"), "pair_id"] == "s_L0_t0t1"
    assert queries.loc[("s_L0", "backward"), "source_image"] == "s_t1"
    assert presence.presence_queries(lesions, split="test").empty


def test_threshold_falls_between_separated_groups_and_nan_is_undecided():
    values = np.array([-3.0, -2.0, 1.0, 2.0, 5.0])
    gone = np.array([True, True, False, False, False])
    threshold = presence.best_threshold(values, gone)
    assert threshold == pytest.approx(-0.5)
    assert presence.decide(np.array([np.nan, -1.0, 0.0]), threshold).tolist() == [True, False, True]
    assert presence.gone_metrics(gone, ~presence.decide(values, threshold))["f1"] == 1.0
    with pytest.raises(ValueError, match="both present and gone"):
        presence.best_threshold(values, np.zeros(5, bool))


def test_predict_pairs_decides_found_with_a_calibration(scans, tmp_path):
    volumes = tmp_path / "volumes.csv"
    write_table(pd.DataFrame({"image_id": list(scans), "path": list(scans.values())}), volumes)
    pairs = pd.DataFrame([{"pair_id": f"L_{name}", "lesion_id": "L", "direction": "forward", "source_image": "source",
                           "target_image": name, "source_x": SOURCE_POINT[0], "source_y": SOURCE_POINT[1],
                           "source_z": SOURCE_POINT[2], "source_radius_mm": 7.0} for name in ("present", "gone")])
    write_table(pairs, tmp_path / "pairs.csv")
    calibration = presence.Calibration(True, 0.0, 0.0, "train", {"present": 1, "gone": 1}, {},
                                       dataclasses.asdict(presence.PresenceSettings()))
    calibration.to_json(tmp_path / "calibration.json")
    out = predict_pairs(tmp_path / "pairs.csv", "identity", tmp_path / "predictions.csv",
                        volume_tables=[volumes], presence_calibration=tmp_path / "calibration.json")
    assert out.set_index("target_image")["found"].to_dict() == {"present": True, "gone": False}
    assert len(out) == 2  # a decision, never a dropped pair
    # uncalibrated (no gone lesions to calibrate on): nothing is decided
    json_path = tmp_path / "none.json"
    json_path.write_text(json.dumps({**dataclasses.asdict(calibration), "calibrated": False}))
    out = predict_pairs(tmp_path / "pairs.csv", "identity", tmp_path / "p2.csv", volume_tables=[volumes],
                        presence_calibration=json_path)
    assert out["found"].all()


def test_the_candidate_where_the_lesion_is_seen_wins_over_a_better_ranked_empty_one(scans):
    """presence_rerank: the best-ranked candidate that passes the appearance test, else the best."""
    queries = pd.DataFrame([{"source_image": "source", "target_image": name, "source_x": SOURCE_POINT[0],
                             "source_y": SOURCE_POINT[1], "source_z": SOURCE_POINT[2], "source_radius_mm": 7.0}
                            for name in ("present", "gone", "present")])
    off = SOURCE_POINT + np.array([0.0, 0.0, 24.0])  # plain tissue, beyond the 8 mm search
    near = SOURCE_POINT + np.array([2.0, 0.0, 0.0])
    points = {0: [off, SOURCE_POINT], 1: [off, SOURCE_POINT], 2: [SOURCE_POINT, near]}
    candidates = pd.DataFrame([{"row": row, "rank": rank, "pred_x": p[0], "pred_y": p[1], "pred_z": p[2]}
                               for row, ps in points.items() for rank, p in enumerate(ps)])
    calibration = presence.Calibration(True, 0.0, 0.0, "train", {"present": 1, "gone": 1}, {},
                                       dataclasses.asdict(presence.PresenceSettings()))
    chosen, found = choose.choose_present(queries, candidates, calibration, scans.__getitem__)
    # present: the second candidate (the lesion) over the empty first; gone: the best candidate,
    # not found; both candidates showing the lesion: the better ranked
    assert candidates.iloc[chosen]["rank"].tolist() == [1, 0, 0]
    assert found.tolist() == [True, False, True]
    # one candidate per query: the plain decision at it
    first = candidates[candidates["rank"] == 0].reset_index(drop=True)
    chosen, found = choose.choose_present(queries, first, calibration, scans.__getitem__)
    assert chosen.tolist() == [0, 1, 2] and found.tolist() == [False, False, True]
    # another candidate must favour "still there" (score > 0), not merely pass a lower threshold:
    # the faded lesion (contrast -40 -> -10 HU, no enhancement correction) scores between
    faded = queries.iloc[[0]].assign(target_image="faded")
    two = candidates[candidates["row"] == 0]
    scores = presence.score_at(pd.concat([faded, faded]), two[["pred_x", "pred_y", "pred_z"]].to_numpy(),
                               calibration, scans.__getitem__)
    assert scores[0] < -3.0 < scores[1] < 0.0
    low = dataclasses.replace(calibration, threshold=-3.0)
    chosen, found = choose.choose_present(faded, two, low, scans.__getitem__)
    assert chosen.tolist() == [0] and found.tolist() == [False]


def test_new_lesions_are_the_targets_no_tracked_source_reaches_mutually():
    targets = pd.DataFrame({"lesion_id": ["A", "B", "C"], "x": [0.0, 30.0, 60.0], "y": 0.0, "z": 0.0,
                            "radius_mm": [5.0, 5.0, 5.0]})
    # A tracked onto A, B's prediction 8 mm off (within 5 + 5 mm), nothing reaches C; a second
    # source lands nearer B than B's own prediction: B goes to the nearer one, mutually
    tracked = pd.DataFrame({"lesion_id": ["A", "B", "D"], "pred_x": [1.0, 38.0, 33.0], "pred_y": 0.0,
                            "pred_z": 0.0})
    flagged = evaluate_presence.flag_new(targets, tracked).set_index("lesion_id")
    assert flagged["new"].to_dict() == {"A": False, "B": False, "C": True}
    assert flagged.loc["B", "matched_source"] == "D"
    lesions = pd.DataFrame({"lesion_id": ["A", "B", "A", "B", "C"], "image_id": ["s0", "s0", "s1", "s1", "s1"],
                            "status": ["present", "present", "present", "present", "new"], "x": [0.0, 30, 0, 30, 60],
                            "y": 0.0, "z": 0.0, "radius_mm": 5.0})
    table = tracked.iloc[:2].assign(source_image="s0", target_image="s1")
    metrics = evaluate_presence.new_lesion_metrics(lesions, table)
    assert (metrics["tp"], metrics["fp"], metrics["fn"]) == (1, 0, 0)
