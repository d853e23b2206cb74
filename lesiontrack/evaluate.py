"""Tracking metrics with the Deep Lesion Tracker evaluator's definitions, intervals and paired tests.

One function owns each definition: :func:`recist_radius_mm` (lesion radius), :func:`hits_radius`
(CPM@Radius), :func:`hits_10mm` (CPM@10mm), :func:`hits_box` (the lenient box convention).
Distances are millimetres in the target volume's frame. Every ground-truth pair counts, whatever
a prediction's ``found`` flag; a pair with no prediction is an error.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesiontrack.io import InputError, atomic_path, read_table, write_table
from lesiontrack.tables import (
    KEY,
    PRED_POINT,
    PREDICTED_COLUMNS,
    RESULT_COLUMNS,
    TARGET_BOX,
    TARGET_POINT,
    TRUTH_COLUMNS,
    select_split,
    validate_pairs,
    validate_predictions,
)

# Published rows of the DLS table: name -> field of DLTMix.json holding that method's prediction.
PUBLISHED_DLS = {"DLT": "predict target center", "Affine (DLT init)": "initial center"}
SIZE_STRATA = {"r_lt_5": (0.0, 5.0, False), "r_5_to_10": (5.0, 10.0, True), "r_gt_10": (10.0, math.inf, False)}


def recist_radius_mm(recist_diameter_px, spacing_x_mm: float) -> float:
    """Lesion radius as the DLT evaluator: max(RECIST diameters in pixels) / 2 x pixel spacing."""
    return float(max(recist_diameter_px)) / 2.0 * float(spacing_x_mm)


def hits_radius(distance_mm: np.ndarray, radius_mm: np.ndarray) -> np.ndarray:
    """CPM@Radius hit: d < r (strict)."""
    return np.asarray(distance_mm) < np.asarray(radius_mm)


def hits_10mm(distance_mm: np.ndarray, radius_mm: np.ndarray) -> np.ndarray:
    """CPM@10mm hit (the DLT evaluator's adjustable threshold): d <= min(r, 10 mm)."""
    return np.asarray(distance_mm) <= np.minimum(np.asarray(radius_mm), 10.0)


def hits_box(points: np.ndarray, box_min: np.ndarray, box_max: np.ndarray) -> np.ndarray:
    """Lenient convention: the predicted point lies inside the target box, bounds inclusive."""
    return np.all((points >= box_min) & (points <= box_max), axis=1)


def _check_finite(table: pd.DataFrame, columns: list[str], source: str) -> None:
    values = table[columns].to_numpy(float)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        row = table.loc[bad].iloc[0]
        raise InputError(f"{source}: pair {row['pair_id']} ({row['direction']}) has a non-finite value in "
                         f"{columns}: {row[columns].tolist()}")


def per_pair(truth: pd.DataFrame, predictions: pd.DataFrame, source: str = "predictions") -> pd.DataFrame:
    """Join predictions to ground truth on (pair_id, direction); distances in mm per pair.

    ``truth``: ``pair_id, direction, target_x/y/z, target_radius_mm`` [+ ``target_box_min/max_x/y/z``];
    ``predictions``: ``pair_id, direction, pred_x/y/z``. Missing, duplicate or unknown pairs are errors.
    """
    truth = truth.copy()
    predictions = predictions.copy()
    for table in (truth, predictions):
        table["pair_id"] = table["pair_id"].astype(str)
    duplicated = predictions[predictions.duplicated(KEY)]
    if not duplicated.empty:
        row = duplicated.iloc[0]
        raise InputError(f"{source}: more than one prediction for pair {row['pair_id']} ({row['direction']})")
    merged = truth.merge(predictions[[*KEY, *PRED_POINT]], on=KEY, how="outer", indicator=True)
    unknown = merged[merged["_merge"] == "right_only"]
    if not unknown.empty:
        row = unknown.iloc[0]
        raise InputError(f"{source}: prediction for unknown pair {row['pair_id']} ({row['direction']})")
    missing = merged[merged["_merge"] == "left_only"]
    if not missing.empty:
        row = missing.iloc[0]
        hint = (f" (the pairs hold splits {sorted(set(truth['split'].astype(str)))}: give --split for the "
                f"predicted one)" if "split" in truth and truth["split"].nunique() > 1 else "")
        raise InputError(f"{source}: no prediction for pair {row['pair_id']} ({row['direction']}); "
                         f"{len(missing)} pair(s) missing{hint}")
    merged = merged.drop(columns="_merge")
    _check_finite(merged, PRED_POINT, source)
    _check_finite(merged, [*TARGET_POINT, "target_radius_mm"], "ground truth")
    delta = merged[PRED_POINT].to_numpy(float) - merged[TARGET_POINT].to_numpy(float)
    out = merged[[*KEY, "target_radius_mm"]].copy()
    out["error_x"], out["error_y"], out["error_z"] = np.abs(delta).T
    out["distance_mm"] = np.linalg.norm(delta, axis=1)
    box_columns = TARGET_BOX
    if set(box_columns) <= set(merged.columns):
        out["inside_box"] = hits_box(merged[PRED_POINT].to_numpy(float),
                                     merged[box_columns[:3]].to_numpy(float), merged[box_columns[3:]].to_numpy(float))
    return out


def _summary(pairs: pd.DataFrame, min_radius_mm: float = 0.0) -> dict[str, float]:
    d = pairs["distance_mm"].to_numpy(float)
    r = np.maximum(pairs["target_radius_mm"].to_numpy(float), min_radius_mm)
    if len(d) == 0:
        return {"n": 0}
    return {
        "n": len(d),
        "cpm_10mm": 100.0 * hits_10mm(d, r).mean(),
        "cpm_radius": 100.0 * hits_radius(d, r).mean(),
        "med": float(d.mean()),
        "med_std": float(d.std()),
        "med_x": float(pairs["error_x"].mean()),
        "med_y": float(pairs["error_y"].mean()),
        "med_z": float(pairs["error_z"].mean()),
        "med_x_std": float(pairs["error_x"].std(ddof=0)),
        "med_y_std": float(pairs["error_y"].std(ddof=0)),
        "med_z_std": float(pairs["error_z"].std(ddof=0)),
        "median": float(np.median(d)),
        "over_20mm": 100.0 * float((d > 20.0).mean()),
    }


def bootstrap_ci(pairs: pd.DataFrame, samples: int = 2000, seed: int = 0, level: float = 0.95
                 ) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of CPM@10mm, CPM@Radius and MED, resampling lesion pairs
    (both directions of a pair together), seeded."""
    groups = pairs.groupby("pair_id", sort=True).indices
    members = list(groups.values())
    rng = np.random.default_rng(seed)
    d = pairs["distance_mm"].to_numpy(float)
    r = pairs["target_radius_mm"].to_numpy(float)
    hit10, hitr = hits_10mm(d, r), hits_radius(d, r)
    sums = np.array([[hit10[m].sum(), hitr[m].sum(), d[m].sum(), len(m)] for m in members], float)
    draws = rng.integers(0, len(members), size=(samples, len(members)))
    totals = sums[draws].sum(axis=1)
    values = {"cpm_10mm": 100.0 * totals[:, 0] / totals[:, 3], "cpm_radius": 100.0 * totals[:, 1] / totals[:, 3],
              "med": totals[:, 2] / totals[:, 3]}
    tail = 100.0 * (1.0 - level) / 2.0
    return {k: [float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail))] for k, v in values.items()}


def metrics(pairs: pd.DataFrame, min_radius_mm: float = 0.0, bootstrap_samples: int = 2000, seed: int = 0
            ) -> dict[str, Any]:
    """The metrics JSON: DLT-evaluator figures, lenient convention, NLST relaxation, CIs, size strata."""
    out: dict[str, Any] = _summary(pairs)
    d = pairs["distance_mm"].to_numpy(float)
    lenient: dict[str, float] = {"cpm_10mm": 100.0 * float((d <= 10.0).mean())}
    if "inside_box" in pairs:
        lenient["cpm_box"] = 100.0 * float(pairs["inside_box"].mean())
    out["lenient"] = lenient
    relaxed = _summary(pairs, min_radius_mm)
    out["nlst"] = {"min_radius_mm": min_radius_mm, "cpm_10mm": relaxed["cpm_10mm"],
                   "cpm_radius": relaxed["cpm_radius"]}
    out["ci"] = bootstrap_ci(pairs, bootstrap_samples, seed) if bootstrap_samples else {}
    out["ci"]["level"] = 0.95
    out["ci"]["samples"] = bootstrap_samples
    radius = pairs["target_radius_mm"].to_numpy(float)
    by_size = {}
    for name, (low, high, inclusive) in SIZE_STRATA.items():
        keep = (radius >= low) & ((radius <= high) if inclusive else (radius < high))
        summary = _summary(pairs[keep])
        by_size[name] = {k: summary[k] for k in ("n", "cpm_10mm", "cpm_radius", "med") if k in summary}
    out["by_size"] = by_size
    return out


def lost_on_perfect(method: pd.DataFrame, reference: pd.DataFrame, pairs: pd.DataFrame) -> tuple[int, int]:
    """(lesions ``method`` misses on image pairs where ``reference`` has every lesion, lesions it
    has where ``reference`` misses), by CPM@Radius; ``method`` and ``reference``: per-pair
    distances (:func:`per_pair`) of the same lesion pairs; an image pair is the two images of
    ``pairs``, either direction."""
    images = pairs.set_index(["pair_id", "direction"])[["source_image", "target_image"]].astype(str)
    image_pair = pd.Series(["|".join(sorted(two)) for two in images.to_numpy()], index=images.index)
    hit = {}
    for name, table in (("method", method), ("reference", reference)):
        table = table.set_index(["pair_id", "direction"])
        hit[name] = pd.Series(hits_radius(table["distance_mm"], table["target_radius_mm"]), index=table.index)
    hit["method"] = hit["method"].loc[hit["reference"].index]
    group = image_pair.loc[hit["reference"].index].to_numpy()
    perfect = hit["reference"].groupby(group).transform("all").to_numpy()
    lost = int((perfect & ~hit["method"].to_numpy()).sum())
    rescued = int((~hit["reference"].to_numpy() & hit["method"].to_numpy()).sum())
    return lost, rescued


def paired_comparison(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
    """Compare two methods on the same pairs: paired t-test on distances (as the paper), Wilcoxon
    signed-rank on distances, exact McNemar on CPM@Radius hit/miss. Two methods that placed every
    lesion at the same distance (a hybrid that trusted its registration everywhere) differ by
    nothing: t = 0 and p = 1 for every test, where the t-test alone would be 0 / 0."""
    from scipy import stats  # here, not at the top: importing it costs every lesiontrack command 0.6 s

    joined = a.merge(b, on=KEY, suffixes=("_a", "_b"), how="outer", indicator=True)
    if (joined["_merge"] != "both").any():
        row = joined[joined["_merge"] != "both"].iloc[0]
        raise InputError(f"paired comparison: pair {row['pair_id']} ({row['direction']}) is scored by one method only")
    da, db = joined["distance_mm_a"].to_numpy(float), joined["distance_mm_b"].to_numpy(float)
    diff = da - db
    same = not np.any(diff != 0)
    t = stats.ttest_rel(da, db) if not same else None
    t_statistic, t_p = (float(t.statistic), float(t.pvalue)) if t is not None else (0.0, 1.0)
    wilcoxon = stats.wilcoxon(da, db) if not same else None
    wilcoxon_w = float(wilcoxon.statistic) if wilcoxon else 0.0
    wilcoxon_p = float(wilcoxon.pvalue) if wilcoxon else 1.0
    ha = hits_radius(da, joined["target_radius_mm_a"].to_numpy(float))
    hb = hits_radius(db, joined["target_radius_mm_b"].to_numpy(float))
    only_a, only_b = int((ha & ~hb).sum()), int((~ha & hb).sum())
    mcnemar_p = float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    return {"n": len(da), "t": t_statistic, "df": len(da) - 1, "p_ttest": t_p,
            "wilcoxon_w": wilcoxon_w, "p_wilcoxon": wilcoxon_p, "mcnemar_only_a": only_a,
            "mcnemar_only_b": only_b, "p_mcnemar": mcnemar_p}


# --- Deep Lesion Tracker (DLS) JSON, converted here, at the edge --------------------------------


MAX_DLS_JSON_BYTES = 64 << 20  # the published files are under 2 MB
MAX_DLS_ENTRIES = 100_000  # DeepLesion has 32,735 lesions in all


def load_dls_entries(path: str | Path) -> list[dict[str, Any]]:
    """Entries of a DLS-format JSON in any published shape: an object keyed by entry id
    (``test.json``), a list, or ``{"results": [...]}`` (``DLTMix.json``); in entry order."""
    return dls_document(path)[0]


def dls_document(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The entries of a DLS-format JSON and their ids (``0001`` ... where the file has none). A
    file over :data:`MAX_DLS_JSON_BYTES` is refused before it is parsed, one of over
    :data:`MAX_DLS_ENTRIES` entries before any entry is read."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_DLS_JSON_BYTES:
        raise InputError(f"{path}: {size / 2**20:.0f} MB: not a DLS annotation file (the published ones are under "
                         f"2 MB; at most {MAX_DLS_JSON_BYTES >> 20} MB read)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text (JSON) file") from None
    if isinstance(data, dict) and "results" in data:
        entries, keys = list(data["results"]), None
    elif isinstance(data, dict):
        keys = sorted(data)
        entries = [data[key] for key in keys]
    elif isinstance(data, list):
        entries, keys = data, None
    else:
        raise InputError(f"{path}: expected an object or a list of DLS entries, found {type(data).__name__}")
    if len(entries) > MAX_DLS_ENTRIES:
        raise InputError(f"{path}: {len(entries)} entries: more than DeepLesion holds (at most {MAX_DLS_ENTRIES})")
    return entries, keys or [f"{n:04d}" for n in range(1, len(entries) + 1)]


def _numbers(entry: dict[str, Any], name: str, n: int, path: Path, number: int) -> np.ndarray:
    """Field ``name`` of DLS entry ``number`` as ``n`` finite numbers, or one clear error."""
    try:
        value = np.asarray(entry[name], float)
    except (TypeError, ValueError):
        value = None
    if value is None or value.shape != (n,) or not np.isfinite(value).all():
        raise InputError(f"{path}: entry {number} field {name!r} = {entry[name]!r}: expected {n} finite numbers")
    return value


def dls_tables(path: str | Path, field: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ground truth and predictions (``field``, e.g. ``predict target center``) of a DLS JSON.

    Voxel coordinates ``[x=column, y=row, z=slice]`` become millimetres in the target sub-volume's
    frame (voxel x spacing); distances are those of the DLT evaluator. Entries 2k-1 and 2k are one
    pair (DLTMix's ``lesion pair id`` where present): ``forward`` for the odd entry.
    """
    path = Path(path)
    truth_rows, prediction_rows = [], []
    required = ["target center", "target spacing", "target recist diameter", "target box", field]
    for number, entry in enumerate(load_dls_entries(path), start=1):
        missing = [k for k in required if k not in entry]
        if missing:
            raise InputError(f"{path}: entry {number} lacks field(s) {missing}")
        spacing = _numbers(entry, "target spacing", 3, path, number)
        for name in ("target center", field):
            _numbers(entry, name, 3, path, number)
        _numbers(entry, "target box", 6, path, number)
        _numbers(entry, "target recist diameter", 2, path, number)
        pair_id = entry.get("lesion pair id")
        pair_id = str(int(pair_id)) if pair_id is not None else str((number + 1) // 2)
        key = {"pair_id": pair_id, "direction": "forward" if number % 2 else "backward"}
        target = np.asarray(entry["target center"], float) * spacing
        box = np.asarray(entry["target box"], float)
        truth_rows.append({**key, "dls_entry": number, "target_x": target[0], "target_y": target[1],
                           "target_z": target[2],
                           "target_radius_mm": recist_radius_mm(entry["target recist diameter"], spacing[0]),
                           **{f"target_box_min_{a}": v for a, v in zip("xyz", box[:3] * spacing, strict=True)},
                           **{f"target_box_max_{a}": v for a, v in zip("xyz", (box[:3] + box[3:]) * spacing,
                                                                          strict=True)}})
        predicted = np.asarray(entry[field], float) * spacing
        prediction_rows.append({**key, "pred_x": predicted[0], "pred_y": predicted[1], "pred_z": predicted[2]})
    return pd.DataFrame(truth_rows), pd.DataFrame(prediction_rows)


# --- files: one call for the command line and the workflow ----------------------------------------



def evaluate_files(predictions: str | Path, out: str | Path, pairs: str | Path | None = None,
                   prediction_field: str = "predict target center", per_pair_out: str | Path | None = None,
                   split: str | None = None, min_radius_mm: float = 0.0, bootstrap_samples: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Score a predictions CSV against ``pairs`` (or a DLS-format JSON on its own); write the
    metrics JSON (and the per-pair distances). Nothing is written if any input is bad."""
    source = Path(predictions)
    if source.suffix == ".json":
        truth, predicted = dls_tables(source, prediction_field)
    else:
        if pairs is None:
            raise InputError(f"{source}: a predictions CSV needs the ground-truth pairs.csv (--pairs)")
        truth = select_split(validate_pairs(read_table(pairs), str(pairs), TRUTH_COLUMNS), split, str(pairs))
        predicted = validate_predictions(read_table(source), str(source), PREDICTED_COLUMNS)
    scored = per_pair(truth, predicted, source=str(source))
    result = metrics(scored, min_radius_mm, bootstrap_samples, seed)
    result["source"] = {"predictions": str(source), "pairs": str(pairs) if pairs else None, "split": split,
                        "field": prediction_field if source.suffix == ".json" else None,
                        "convention": "DLT evaluator: CPM@Radius d < r, CPM@10mm d <= min(r, 10 mm); "
                                      "lenient: point in target box, d <= 10 mm"}
    if per_pair_out:
        write_table(scored, per_pair_out)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result


# --- Table 1 style comparison -------------------------------------------------------------------

def method_slug(name: str) -> str:
    """File-name form of a method name: ``Affine (DLT init)`` -> ``affine-dlt-init``."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def variant_row(method: str, model: str) -> tuple[str, str]:
    """Table row name and file slug of ``method`` tracking with the ablation model ``model``:
    ``multiscale [long]``, ``multiscale@long``."""
    return f"{method} [{model}]", f"{method}@{model}"


def row_slug(name: str) -> str:
    """File-name form of a table row's name: an ablation row (:func:`variant_row`) its slug, any
    other row :func:`method_slug`."""
    variant = re.fullmatch(r"(\S+) \[(\S+)\]", name)
    return variant_row(variant[1], variant[2])[1] if variant else method_slug(name)


def relaxation(result: dict[str, Any]) -> float:
    """The NLST relaxation a metrics result was scored with (0: none)."""
    return float((result.get("nlst") or {}).get("min_radius_mm") or 0.0)


def _same_pairs(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two per-pair tables score the same (pair, direction)s: a published row scored on
    the whole DLS test split is paired with ours only where ours covers the same pairs (not where
    a run downloaded part of DeepLesion)."""
    return set(map(tuple, a[KEY].astype(str).to_numpy())) == set(map(tuple, b[KEY].astype(str).to_numpy()))


def method_table(results: dict[str, tuple[dict[str, Any], pd.DataFrame]], reference: str | None) -> pd.DataFrame:
    """Rows = methods; CPM in percent, MEDs as "mean ± std" mm, and the paired t-test p-value of each
    method's distances against ``reference`` (as the paper) on the same pairs (none if ``None``, NaN
    for a method scored on other pairs: :func:`_same_pairs`).
    Where a result was scored with the NLST relaxation (``nlst.min_radius_mm`` > 0) its CPM columns
    are the relaxed ones, as the paper's Table 2."""
    if reference is not None and reference not in results:
        raise InputError(f"reference method {reference!r} is not among the methods {sorted(results)}")
    rows = []
    for method, (result, pairs) in results.items():
        p_value = (math.nan if reference is None or method == reference or not _same_pairs(pairs, results[reference][1])
                   else paired_comparison(pairs, results[reference][1])["p_ttest"])
        cpm = result["nlst"] if relaxation(result) else result
        rows.append({"method": method, "n": result["n"], "CPM@10mm": round(cpm["cpm_10mm"], 2),
                     "CPM@Radius": round(cpm["cpm_radius"], 2),
                     **{f"MED{a}": f"{result[f'med_{a}']:.1f} ± {result[f'med_{a}_std']:.1f}" for a in "xyz"},
                     "MED": f"{result['med']:.1f} ± {result['med_std']:.1f}", "p_vs_reference": p_value})
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _p_text(p: float) -> str:
    if not np.isfinite(p):
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def write_tables(table: pd.DataFrame, out_prefix: str | Path, caption: str) -> list[Path]:
    """Write ``<prefix>.csv``, ``.md`` and ``.tex`` (each atomically)."""
    out_prefix = Path(out_prefix)
    paths = [write_table(table, out_prefix.with_suffix(".csv"), float_format="%.6g")]
    shown = table.assign(p_vs_reference=table["p_vs_reference"].map(_p_text))
    header = "| " + " | ".join(shown.columns) + " |"
    lines = [caption, "", header, "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    with atomic_path(out_prefix.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    paths.append(out_prefix.with_suffix(".md"))

    def tex(value: Any) -> str:
        text = str(value).replace("±", r"$\pm$").replace("%", r"\%").replace("_", r"\_")
        return text.replace("<=", r"$\le$").replace("<", r"$<$")

    body = [r"\begin{table}", r"\centering", rf"\caption{{{tex(caption)}}}",
            r"\begin{tabular}{l" + "r" * (len(shown.columns) - 1) + "}", r"\hline",
            " & ".join(tex(c) for c in shown.columns) + r" \\", r"\hline"]
    body += [" & ".join(tex(v) for v in row) + r" \\" for row in shown.itertuples(index=False)]
    body += [r"\hline", r"\end{tabular}", r"\end{table}"]
    with atomic_path(out_prefix.with_suffix(".tex")) as tmp:
        tmp.write_text("\n".join(body) + "\n")
    paths.append(out_prefix.with_suffix(".tex"))
    return paths


def table_files(dataset: str, methods: list[tuple[str, str | Path, str | Path]], reference: str,
                out_dir: str | Path, title: str | None = None) -> pd.DataFrame:
    """Read each method's metrics JSON and per-pair CSV; write ``<out_dir>/<dataset>.{csv,md,tex}``
    with the caption ``title`` (default: the dataset's name).

    Rows keep the order of ``methods``; p-values are against ``reference`` where it is among them.
    """
    results = {name: (json.loads(Path(metrics_path).read_text()), read_table(per_pair_path))
               for name, metrics_path, per_pair_path in methods}
    present = reference if reference in results else None
    table = method_table(results, present)
    against = (f"p: paired t-test on distances against {reference}" if present
               else f"no p-values: {reference} has not been run on {dataset}")
    relaxed = {relaxation(result) for result, _ in results.values()}
    convention = ("CPM@Radius d < r, CPM@10mm d <= min(r, 10 mm)" if len(relaxed) != 1 or 0.0 in relaxed else
                  f"CPM@Radius d < r_eff, CPM@10mm d <= min(r_eff, 10 mm) with r_eff = max(r, {relaxed.pop():g} mm), "
                  "the NLST relaxation")
    caption = (f"{title or dataset}: tracking accuracy (DLT evaluator convention: {convention}; MED in mm, "
               f"mean ± std; {against})")
    write_tables(table, Path(out_dir) / dataset, caption)
    return table
