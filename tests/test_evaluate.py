"""Metrics reproduce the published DLS figures; boundary cases; paired tests by hand; bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from lesiontrack import evaluate as ev
from lesiontrack import tables
from lesiontrack.cli import main as cli
from lesiontrack.io import InputError


def _scores(test_data, name, field):
    truth, predictions = ev.dls_tables(test_data / "dls" / name, field)
    scored = ev.per_pair(truth, predictions)
    return scored, ev.metrics(scored, bootstrap_samples=2000, seed=0)


@pytest.mark.parametrize(("name", "field", "expected", "lenient"), [
    ("DLTMix.json", "predict target center", (78.85, 86.88, 6.98), (95.31, 86.67)),
    ("DLTMix.json", "initial center", (48.33, 65.21, 11.23), (81.88, 58.02)),
    ("test.json", "predict target center", (48.33, 65.10, 11.23), None),  # DLT's rounded affine start
])
def test_published_dls_figures(test_data, name, field, expected, lenient):
    _, result = _scores(test_data, name, field)
    assert result["n"] == 960
    assert (round(result["cpm_10mm"], 2), round(result["cpm_radius"], 2), round(result["med"], 2)) == expected
    if lenient:
        assert (round(result["lenient"]["cpm_box"], 2), round(result["lenient"]["cpm_10mm"], 2)) == lenient


def test_bootstrap_reproducible_and_contains_estimate(test_data):
    scored, first = _scores(test_data, "DLTMix.json", "predict target center")
    second = ev.metrics(scored, bootstrap_samples=2000, seed=0)
    low, high = first["ci"]["cpm_radius"]
    assert [round(low, 2), round(high, 2)] == [round(v, 2) for v in second["ci"]["cpm_radius"]]
    assert low < 86.88 < high
    assert scored["pair_id"].nunique() == 480  # both directions resampled together


def test_boundaries():
    assert not ev.hits_radius(np.array([5.0]), np.array([5.0]))[0]  # d == r misses CPM@Radius
    assert ev.hits_10mm(np.array([5.0]), np.array([5.0]))[0]  # d == min(r, 10) hits CPM@10mm
    assert ev.hits_10mm(np.array([10.0]), np.array([12.0]))[0]
    assert not ev.hits_10mm(np.array([10.01]), np.array([12.0]))[0]
    assert ev.recist_radius_mm([20.0, 12.0], 0.8) == pytest.approx(8.0)


def _pairs(distances, radius=5.0):
    n = len(distances)
    truth = pd.DataFrame({"pair_id": [str(i // 2) for i in range(n)], "direction": ["forward", "backward"] * (n // 2),
                          "target_x": 0.0, "target_y": 0.0, "target_z": 0.0, "target_radius_mm": radius})
    predictions = truth[["pair_id", "direction"]].assign(pred_x=distances, pred_y=0.0, pred_z=0.0)
    return truth, predictions


def test_paired_tests_by_hand():
    a = np.array([1.0, 4.0, 6.0, 2.0, 9.0, 3.0])
    b = np.array([2.0, 7.0, 5.0, 6.0, 12.0, 4.0])
    scored_a = ev.per_pair(*_pairs(a))
    scored_b = ev.per_pair(*_pairs(b))
    result = ev.paired_comparison(scored_a, scored_b)
    # by hand: differences -1, -3, 1, -4, -3, -1; mean -11/6; sample sd sqrt(16.8333 / 5) = 1.834848
    t = (-11 / 6) / (math.sqrt((16 + 5 / 6) / 5) / math.sqrt(6))
    assert t == pytest.approx(-2.447468, abs=1e-6)
    assert result["t"] == pytest.approx(t)
    assert result["df"] == 5
    assert result["p_ttest"] == pytest.approx(0.058117, abs=1e-6)  # two-sided, Student t with 5 df
    # Wilcoxon: |d| ranks 2, 4.5, 2, 6, 4.5, 2; the one positive difference has rank 2 -> W+ = 2
    assert result["wilcoxon_w"] == 2.0
    # CPM@Radius hits at r = 5 (d < 5): a hits 1, 4, 2, 3; b hits 2, 4 -> a only: 4 (b 7) and 2 (b 6)
    assert result["mcnemar_only_a"] == 2
    assert result["mcnemar_only_b"] == 0
    assert result["p_mcnemar"] == pytest.approx(0.5)  # exact binomial: 2 * 0.5**2


def test_identical_methods_differ_by_nothing():
    # hybrid trusting its registration on every pair places each lesion where deformable does:
    # the t statistic would be 0 / 0; the comparison says no difference (t = 0, every p = 1)
    a = np.array([1.0, 4.0, 6.0, 2.0])
    result = ev.paired_comparison(ev.per_pair(*_pairs(a)), ev.per_pair(*_pairs(a.copy())))
    assert (result["t"], result["p_ttest"], result["p_wilcoxon"], result["p_mcnemar"]) == (0.0, 1.0, 1.0, 1.0)
    table = ev.method_table({"deformable": ({"n": 4, "cpm_10mm": 100.0, "cpm_radius": 75.0,
                                              **{f"med{s}": 1.0 for s in ("", "_x", "_y", "_z")},
                                              **{f"med{s}_std": 0.5 for s in ("", "_x", "_y", "_z")}},
                                             ev.per_pair(*_pairs(a))),
                             "hybrid": ({"n": 4, "cpm_10mm": 100.0, "cpm_radius": 75.0,
                                         **{f"med{s}": 1.0 for s in ("", "_x", "_y", "_z")},
                                         **{f"med{s}_std": 0.5 for s in ("", "_x", "_y", "_z")}},
                                        ev.per_pair(*_pairs(a)))}, reference="hybrid")
    assert table.set_index("method").loc["deformable", "p_vs_reference"] == 1.0


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda t, p: (t, p.iloc[1:]), r"no prediction for pair 0 \(forward\); 1 pair\(s\) missing"),
    (lambda t, p: (t, pd.concat([p, p.iloc[:1].assign(pair_id="99")])), r"unknown pair 99 \(forward\)"),
    (lambda t, p: (t, p.assign(pred_y=[0.0, float("nan"), 0.0, 0.0])), r"pair 0 \(backward\) has a non-finite"),
])
def test_bad_predictions_named(mutate, message):
    truth, predictions = mutate(*_pairs(np.array([1.0, 2.0, 3.0, 4.0])))
    with pytest.raises(InputError, match=message):
        ev.per_pair(truth, predictions)


def test_cli_on_dls_json_and_bad_entry(test_data, tmp_path):
    out = tmp_path / "metrics.json"
    assert cli(["evaluate", "--predictions", str(test_data / "dls" / "DLTMix.json"), "--out", str(out),
                "--bootstrap-samples", "200"]) == 0
    result = json.loads(out.read_text())
    for key in ("n", "cpm_10mm", "cpm_radius", "med", "med_std", "med_x", "med_y", "med_z"):
        assert key in result
    assert {"cpm_box", "cpm_10mm"} <= set(result["lenient"]) and "r_5_to_10" in result["by_size"]
    entries = json.loads((test_data / "dls" / "DLTMix.json").read_text())["results"][:4]
    entries[2]["predict target center"] = [1.0, 2.0]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(entries))
    bad_out = tmp_path / "bad_metrics.json"
    assert cli(["evaluate", "--predictions", str(bad), "--out", str(bad_out)]) == 2
    assert not bad_out.exists()
    with pytest.raises(InputError, match=r"entry 3 field 'predict target center' = \[1.0, 2.0\]"):
        ev.dls_tables(bad, "predict target center")


def test_table_rows_and_p_values(tmp_path):
    truth, a_pred = _pairs(np.array([1.0, 4.0, 6.0, 2.0, 9.0, 3.0]))
    _, b_pred = _pairs(np.array([2.0, 7.0, 5.0, 6.0, 12.0, 4.0]))
    scored = {"ours": ev.per_pair(truth, a_pred), "baseline": ev.per_pair(truth, b_pred)}
    results = {name: (ev.metrics(pairs, bootstrap_samples=100), pairs) for name, pairs in scored.items()}
    table = ev.method_table(results, reference="ours")
    assert list(table.columns) == tables.RESULT_COLUMNS
    ours, baseline = table.set_index("method").loc["ours"], table.set_index("method").loc["baseline"]
    assert math.isnan(ours["p_vs_reference"])
    assert baseline["p_vs_reference"] == pytest.approx(0.058117, abs=1e-6)
    assert ours["CPM@Radius"] == pytest.approx(100 * 4 / 6, abs=0.01)
    assert ours["MED"] == f"{np.mean([1, 4, 6, 2, 9, 3]):.1f} ± {np.std([1, 4, 6, 2, 9, 3]):.1f}"
    paths = ev.write_tables(table, tmp_path / "demo", caption="demo")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    assert "| baseline |" in (tmp_path / "demo.md").read_text()
    assert r"$\pm$" in (tmp_path / "demo.tex").read_text()
    with pytest.raises(InputError, match="reference method 'dlt'"):
        ev.method_table(results, reference="dlt")


def test_table_reports_the_nlst_relaxation_where_it_was_scored(tmp_path):
    """With evaluate.min_radius_mm = 6 the table's CPM columns are the relaxed ones (as the paper's
    Table 2): a 4 mm miss of a 2 mm nodule counts, a 7 mm one does not."""
    truth, predicted = _pairs(np.array([4.0, 7.0, 1.0, 5.0, 9.0, 3.0]))
    truth["target_radius_mm"] = 2.0
    scored = ev.per_pair(truth, predicted)
    strict = ev.method_table({"m": (ev.metrics(scored, bootstrap_samples=0), scored)}, None)
    relaxed = ev.method_table({"m": (ev.metrics(scored, min_radius_mm=6.0, bootstrap_samples=0), scored)}, None)
    assert strict["CPM@Radius"].iloc[0] == pytest.approx(100 / 6, abs=0.01)  # only the 1 mm miss
    assert relaxed["CPM@Radius"].iloc[0] == pytest.approx(100 * 4 / 6, abs=0.01)  # 4, 1, 5 and 3 mm
    metrics_path, per_pair_path = tmp_path / "m.json", tmp_path / "m.csv"
    metrics_path.write_text(json.dumps(ev.metrics(scored, min_radius_mm=6.0, bootstrap_samples=0)))
    scored.to_csv(per_pair_path, index=False)
    ev.table_files("nlst-like", [("m", metrics_path, per_pair_path)], "m", tmp_path)
    assert "r_eff = max(r, 6 mm), the NLST relaxation" in (tmp_path / "nlst-like.md").read_text()
    metrics_path.write_text(json.dumps(ev.metrics(scored, bootstrap_samples=0)))
    ev.table_files("strict", [("m", metrics_path, per_pair_path)], "m", tmp_path)
    assert "CPM@Radius d < r, CPM@10mm d <= min(r, 10 mm);" in (tmp_path / "strict.md").read_text()


def test_a_table_rows_name_gives_back_its_files_slug():
    """The table names an ablation row ``method [model]`` and its files ``method@model``; anything
    reading a finished table (bench/protocol_table.py) finds each row's files by its name."""
    assert ev.variant_row("multiscale", "long") == ("multiscale [long]", "multiscale@long")
    assert ev.row_slug("multiscale [long]") == "multiscale@long"
    assert ev.row_slug("single-scale-fine") == "single-scale-fine"
    assert ev.row_slug("Affine (DLT init)") == "affine-dlt-init" == ev.method_slug("Affine (DLT init)")


def test_protocol_table_reads_an_ablation_rows_own_metrics(tmp_path):
    """bench/protocol_table.py on a table with an ablation row: each row's median from its own file."""
    import subprocess
    import sys
    from pathlib import Path

    results = tmp_path / "results"
    (results / "tables").mkdir(parents=True)
    (results / "synthetic" / "metrics").mkdir(parents=True)
    pd.DataFrame({"method": ["multiscale", "multiscale [long]"], "CPM@10mm": [92.0, 89.1],
                  "CPM@Radius": [92.8, 90.6], "MED": ["3.6 ± 5.0", "3.8 ± 4.9"],
                  "p_vs_reference": [float("nan"), 0.389]}).to_csv(results / "tables" / "synthetic.csv", index=False)
    for slug, median in (("multiscale", 2.3), ("multiscale@long", 2.4)):
        metrics = {"median": median, "over_20mm": 1.4}
        (results / "synthetic" / "metrics" / f"{slug}.json").write_text(json.dumps(metrics))
    bench = Path(__file__).resolve().parents[1] / "bench" / "protocol_table.py"
    out = subprocess.run([sys.executable, str(bench), str(results)], capture_output=True, text=True, check=True).stdout
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines()[2:]}
    assert rows["multiscale"][4] == "2.3" and rows["multiscale [long]"][4] == "2.4"
    assert rows["multiscale [long]"][6] == "0.389"


def test_lost_on_perfect_counts_only_pairs_the_reference_has_whole():
    """Image pair a|b: the reference has both lesions, the method misses one (lost 1); image pair
    c|d: the reference misses one that the method has (rescued 1), the method's other miss there
    is not counted as lost (the reference was not perfect on c|d)."""
    from lesiontrack.evaluate import lost_on_perfect

    pairs = pd.DataFrame({"pair_id": ["1", "1", "2", "3", "4"],
                          "direction": ["forward", "backward", "forward", "forward", "forward"],
                          "source_image": ["a", "b", "a", "c", "d"], "target_image": ["b", "a", "b", "d", "c"]})
    radius = 5.0
    reference = pairs[["pair_id", "direction"]].assign(distance_mm=[1.0, 1.0, 2.0, 9.0, 1.0], target_radius_mm=radius)
    method = pairs[["pair_id", "direction"]].assign(distance_mm=[1.0, 7.0, 2.0, 1.0, 8.0], target_radius_mm=radius)
    assert lost_on_perfect(method, reference, pairs) == (1, 1)
    assert lost_on_perfect(reference, reference, pairs) == (0, 0)
