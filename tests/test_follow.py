"""``lesiontrack follow``: a 3-scan synthetic subject followed end to end (ids, statuses, the
consistency column), its page opened in Chromium, each scan embedded once, bad input stopped
before any tracking."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lesiontrack import evaluate_follow
from lesiontrack.follow import follow
from lesiontrack.io import InputError, read_table
from lesiontrack.tables import HISTORY_COLUMNS
from lesiontrack.track import predict

SUBJECT = "train001"  # the smoke run's subject with three scans: one lesion gone and one new at t2


def _subject(smoke_run, tmp_path):
    """The subject's scans (original volumes), its t0 lesions and each follow-up's own list (the
    lesions visible there, as a reader would mark them), and the ground truth."""
    synthetic = smoke_run / "results" / "synthetic"
    lesions = read_table(synthetic / "lesions.csv")
    mine = lesions[lesions["subject_id"] == SUBJECT]
    scans = [synthetic / "images" / f"{SUBJECT}_t{k}.nii.gz" for k in range(3)]
    lists = []
    for k in range(3):
        visible = mine[(mine["timepoint"] == k) & mine["status"].isin(["present", "new"])]
        path = tmp_path / f"lesions_t{k}.csv"
        visible[["lesion_id", "x", "y", "z", "radius_mm"]].to_csv(path, index=False)
        lists.append(path)
    return scans, lists, mine


def test_a_three_scan_history_keeps_one_id_per_lesion(smoke_run, tmp_path):
    scans, lists, truth = _subject(smoke_run, tmp_path)
    history = follow(scans, lists[0], tmp_path / "out", lists[1:], method="deformable")
    assert list(history.columns) == HISTORY_COLUMNS
    assert read_table(tmp_path / "out" / "history.csv")["lesion_id"].tolist() == history["lesion_id"].tolist()
    baseline = set(truth.loc[truth["timepoint"] == 0, "lesion_id"])
    new = set(truth.loc[truth["status"] == "new", "lesion_id"])
    assert new and not new & baseline
    # every baseline lesion has a row at every timepoint; the new one from where it appears, as new
    assert set(history["lesion_id"]) == baseline | new
    for lesion_id in baseline:
        assert history.loc[history["lesion_id"] == lesion_id, "timepoint"].tolist() == [0, 1, 2]
    for lesion_id in new:
        rows = history[history["lesion_id"] == lesion_id]
        first = int(truth.loc[(truth["lesion_id"] == lesion_id) & (truth["status"] == "new"), "timepoint"].iloc[0])
        assert rows["timepoint"].min() == first and rows.iloc[0]["status"] == "new"
    # the id lands on its lesion wherever the lesion is there (within its radius)
    visible = truth[truth["status"].isin(["present", "new"])]
    joined = history.merge(visible, on=["lesion_id", "timepoint"], suffixes=("", "_truth"))
    distance = np.linalg.norm(joined[["x", "y", "z"]].to_numpy(float)
                              - joined[["x_truth", "y_truth", "z_truth"]].to_numpy(float), axis=1)
    assert len(joined) >= 10 and (distance < joined["radius_mm"].to_numpy(float)).all(), distance
    # consistency: zero where the direct and the chained prediction are the same call (first step);
    # at t2 the distance to the chain t0 -> t1 -> t2, recomputed here, and flagged beyond the radius
    at1 = history[history["timepoint"] == 1]
    assert (at1["consistency_mm"] == 0).all()
    at2 = history[(history["timepoint"] == 2) & history["lesion_id"].isin(baseline)].set_index("lesion_id")
    step = at1[at1["lesion_id"].isin(baseline)][["lesion_id", "x", "y", "z"]]
    step.to_csv(tmp_path / "at1.csv", index=False)
    chained = predict.track_points(scans[1], scans[2], tmp_path / "at1.csv", None, None, "deformable")
    chained = chained.set_index("lesion_id").loc[at2.index]
    expected = np.linalg.norm(chained[["x", "y", "z"]].to_numpy(float) - at2[["x", "y", "z"]].to_numpy(float), axis=1)
    np.testing.assert_allclose(at2["consistency_mm"].to_numpy(float), expected, atol=0.5)
    radius = truth[truth["timepoint"] == 0].set_index("lesion_id").loc[at2.index, "radius_mm"].to_numpy(float)
    assert (at2["inconsistent"].to_numpy() == (at2["consistency_mm"].to_numpy(float) > radius)).all()


def test_the_history_page_opens_with_its_table_and_pictures(smoke_run, tmp_path, chromium):
    """index.html in headless Chromium: one table row per history row, one picture per lesion, each
    loaded (its natural width counted by a script added to a copy of the page), not blank."""
    scans, lists, _ = _subject(smoke_run, tmp_path)
    out = tmp_path / "out"
    history = follow(scans, lists[0], out, lists[1:], method="affine")
    lesions = sorted(history["lesion_id"].unique())
    assert sorted(p.name for p in out.glob("lesion_*.png")) == sorted(f"lesion_{i}.png" for i in lesions)
    for picture in out.glob("lesion_*.png"):
        pixels = np.asarray(Image.open(picture).convert("L"), float)
        assert pixels.shape[1] > 400 and pixels.std() > 10.0, picture
    page = (out / "index.html").read_text()
    probe = out / "probe.html"
    probe.write_text(page.replace("</body>", "<script>window.addEventListener('load', () => {"
                                  "document.body.dataset.loaded = [...document.images].filter("
                                  "i => i.naturalWidth > 0).length; "
                                  "document.body.dataset.rows = document.querySelectorAll('tbody tr').length;"
                                  "});</script></body>"))
    dom = subprocess.run([*chromium, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=300)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-loaded="{len(lesions)}"' in dom.stdout and f'data-rows="{len(history)}"' in dom.stdout


def test_each_scan_is_embedded_once_for_the_whole_history(smoke_run, tmp_path, monkeypatch):
    scans, lists, _ = _subject(smoke_run, tmp_path)
    embedded = []
    real = predict.embed_volume

    def counting(model, image, *args, **kwargs):
        embedded.append(image.GetSize())
        return real(model, image, *args, **kwargs)

    monkeypatch.setattr(predict, "embed_volume", counting)
    checkpoint = smoke_run / "results" / "models" / "default" / "checkpoint_best.pt"
    history = follow(scans, lists[0], tmp_path / "out", checkpoint=checkpoint, method="multiscale")
    # three trackings (t0 -> t1, t0 -> t2, t1 -> t2) over three scans: each embedded once
    assert len(embedded) == 3
    assert history["timepoint"].value_counts().sort_index().tolist() == [4, 4, 4]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda lists: (lists[1:2], None), r"--lesions: one list per follow-up scan \(2\), got 1"),
    (lambda lists: (lists[1:], 1), r"lesions_t1\.csv.*outside"),
])
def test_bad_history_input_is_named_before_any_tracking(smoke_run, tmp_path, monkeypatch, mutate, message):
    scans, lists, _ = _subject(smoke_run, tmp_path)
    followups, broken = mutate(lists)
    if broken is not None:
        table = pd.read_csv(lists[broken])
        table.loc[0, "z"] = 1e5
        table.to_csv(lists[broken], index=False)

    def never(*args, **kwargs):
        raise AssertionError("tracked before the input was checked")

    monkeypatch.setattr(predict, "own_scans", never)
    monkeypatch.setattr("lesiontrack.follow.own_scans", never)
    with pytest.raises(InputError, match=message):
        follow(scans, lists[0], tmp_path / "out", followups, method="deformable")
    assert not (tmp_path / "out" / "history.csv").exists()


def test_dicom_follow_ups_get_a_structured_report_a_viewer_reads(test_data, tmp_path, capsys):
    """The real DICOM series as baseline and two follow-ups: each follow-up's SR, read back with
    highdicom, holds every lesion's point of history.csv (within 0.01 mm) in the series' frame of
    reference, tracked under the lesion id with one tracking UID across the reports."""
    import pydicom

    from lesiontrack.dicom_sr import read_tracking_report
    from lesiontrack.io import read_image

    series = test_data / "totalseg" / "example_ct_dicom"
    image = read_image(series)
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([n / 2 for n in image.GetSize()]))
    points = tmp_path / "points.csv"
    pd.DataFrame({"lesion_id": ["liver-1", "kidney 2"], "x": [centre[0], centre[0] + 40.5],
                  "y": [centre[1], centre[1] - 12.25], "z": [centre[2], centre[2] + 6.0],
                  "radius_mm": [8.0, 5.0]}).to_csv(points, index=False)
    out = tmp_path / "out"
    # the one real series as every timepoint: a scan given again is refused unless allowed
    history = follow([series, series, series], points, out, method="affine", allow_order=True)
    frame = pydicom.dcmread(next(p for p in sorted(series.iterdir()) if p.is_file()),
                            stop_before_pixels=True).FrameOfReferenceUID
    assert "has no StudyInstanceUID (anonymised?)" in capsys.readouterr().err  # this series' UIDs were removed
    uids = {}
    for k in (1, 2):
        report = read_tracking_report(out / f"sr_t{k}.dcm").set_index("lesion_id")
        expected = history[history["timepoint"] == k].set_index("lesion_id")
        assert sorted(report.index) == sorted(expected.index)
        np.testing.assert_allclose(report.loc[expected.index, ["x", "y", "z"]].to_numpy(float),
                                   expected[["x", "y", "z"]].to_numpy(float), atol=0.01)
        assert (report["frame_of_reference_uid"] == str(frame)).all()
        uids[k] = report["tracking_uid"].to_dict()
    assert uids[1] == uids[2] and len(set(uids[1].values())) == 2
    assert not (out / "sr_t0.dcm").exists()  # the baseline's points are the reader's own


def _row(lesion_id, image_id, timepoint, x, y, radius, status):
    return {"lesion_id": lesion_id, "image_id": image_id, "timepoint": timepoint, "x": x, "y": y, "z": 0.0,
            "radius_mm": radius, "status": status, "subject_id": "s", "split": "test"}


def test_history_scores_count_each_miss_where_it_happens():
    """A made-up history against its truth: lesion A drifts 7 mm (radius 5) at t2 and is wrongly
    called gone at t1; B disappears at t2 and is called gone; C is new at t1; D is new at t2 and
    the history never lists it."""
    truth = pd.DataFrame([_row("A", f"s_t{k}", k, 0, 0, 5, "present") for k in range(3)]
                         + [_row("B", "s_t0", 0, 50, 0, 4, "present"), _row("B", "s_t1", 1, 50, 0, 4, "present"),
                            _row("B", "s_t2", 2, 50, 0, 4, "disappeared"), _row("C", "s_t1", 1, 0, 50, 6, "new"),
                            _row("C", "s_t2", 2, 0, 50, 6, "present"), _row("D", "s_t2", 2, 0, -50, 3, "new")])
    history = pd.DataFrame([("A", 0, 0, 0, "present"), ("A", 1, 1, 0, "gone"), ("A", 2, 7, 0, "present"),
                            ("B", 0, 50, 0, "present"), ("B", 1, 50, 1, "present"), ("B", 2, 20, 0, "gone"),
                            ("C", 1, 0, 50, "new"), ("C", 2, 0, 51, "present")],
                           columns=["lesion_id", "timepoint", "x", "y", "status"]).assign(z=0.0, inconsistent=False)
    scored = evaluate_follow.score_history(history, truth, ["s_t0", "s_t1", "s_t2"])
    result = evaluate_follow.scores(scored)
    # there after the baseline: A t1, A t2, B t1, C t1, C t2; A t2 is 7 mm off
    assert result["rows_there_after_baseline"] == 5 and result["identity_consistency"] == pytest.approx(0.8)
    assert result["gone"] == {"tp": 1, "fp": 1, "fn": 0, "precision": 0.5, "recall": 1.0}
    assert result["new"] == {"tp": 1, "fp": 0, "fn": 1, "precision": 1.0, "recall": 0.5}
    pairwise = {"appearance": {"tp": 4, "fp": 1, "fn": 0, "precision": 0.8, "recall": 1.0},
                "new": {"tp": 3, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0}}
    table = evaluate_follow.summary_table(result, pairwise).set_index("measure")
    assert list(table.index) == ["identity consistency", "gone precision", "gone recall", "new precision",
                                 "new recall"]
    assert table.loc["gone precision", ["history", "pairwise"]].tolist() == [0.5, 0.8]
    assert table.loc["new recall", "history_counts"] == "tp 1, fp 0, fn 1"


def test_the_workflow_form_follows_each_subject_in_the_cached_scans(smoke_run, tmp_path):
    """follow_subjects on the smoke run's training subject with three scans (one lesion gone and
    one new at t2), in the workflow's resampled volumes: every id on its lesion, the gone and the
    new one found, one folder per subject."""
    results = smoke_run / "results" / "synthetic"
    volumes = sorted(str(p) for p in (results / "shards").glob("resampled-*.csv"))
    cwd = Path.cwd()
    try:  # images.csv's paths are relative to the workflow's folder
        os.chdir(smoke_run)
        result = evaluate_follow.follow_subjects(
            results / "lesions.csv", results / "images.csv", "deformable", tmp_path / "follow", tmp_path / "s.json",
            split="train", volume_tables=volumes, presence_calibration=results / "presence" / "calibration.json",
            pictures_wanted=False)
    finally:
        os.chdir(cwd)
    assert result["subjects"] == [SUBJECT]
    assert result["identity_consistency"] == 1.0 and result["rows_there_after_baseline"] >= 8
    assert (result["new"]["tp"], result["new"]["fn"]) == (1, 0)
    assert (result["gone"]["tp"], result["gone"]["fn"]) == (1, 0)
    assert json.loads((tmp_path / "s.json").read_text())["subjects"] == [SUBJECT]
    assert sorted(p.name for p in (tmp_path / "follow" / SUBJECT).iterdir()) == ["history.csv", "index.html"]
