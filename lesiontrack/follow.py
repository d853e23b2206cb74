"""A patient's history in one call: every baseline lesion followed through the scans t0..tn, one
id per lesion, new lesions of the follow-ups' own lists given ids and followed from where they
appear (``lesiontrack follow``).

At each follow-up tk a lesion first seen at ts (s < k) is tracked directly from its marked point
(ts -> tk: the reported position) and, where k > s + 1, also chained from its position at t(k-1)
(t(k-1) -> tk); the distance between the two is the row's consistency, and a row is flagged where
it exceeds the lesion's radius (10 mm where no radius was given). Every query of one follow-up goes
to the tracker in one call; each scan is read, resampled and (where the tracker asks) embedded
once for the whole history (:func:`lesiontrack.track.predict.own_scans`).
"""

from __future__ import annotations

import html
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesiontrack.dicom_sr import derived_uid, series_headers, tracking_report
from lesiontrack.evaluate_presence import flag_new
from lesiontrack.figures import display_volume, history_picture
from lesiontrack.io import (
    Geometry,
    InputError,
    check_scan,
    check_writable,
    read_image,
    replaced_folder,
    safe_name,
    write_table,
)
from lesiontrack.tables import HISTORY_COLUMNS, PRED_POINT, read_points
from lesiontrack.track import trackers
from lesiontrack.track.choose import choose
from lesiontrack.track.predict import _calibration, own_scans
from lesiontrack.track.tracker import Context, Scans, check_inside, check_radii

UNSIZED_RADIUS_MM = 10.0  # the consistency flag's bound for a lesion given without radius_mm


def _scan_id(k: int) -> str:
    return f"t{k}"


def _new_ids(listed: pd.DataFrame, taken: set[str], k: int) -> list[str]:
    """Ids of a follow-up's new lesions: the list's own id where no tracked lesion has it, else
    ``<id>@t<k>``."""
    ids = []
    for lesion_id in listed["lesion_id"].astype(str):
        new = lesion_id if lesion_id not in taken else f"{lesion_id}@t{k}"
        taken.add(new)
        ids.append(new)
    return ids


def _followed(ids: list[str], since: int, points: pd.DataFrame) -> pd.DataFrame:
    """Followed lesions: id, the timepoint where each was first seen, its point there and radius."""
    radius = points["radius_mm"].to_numpy(float) if "radius_mm" in points else np.nan
    return pd.DataFrame({"lesion_id": ids, "since": since, "x": points["x"].to_numpy(float),
                         "y": points["y"].to_numpy(float), "z": points["z"].to_numpy(float), "radius_mm": radius})


def follow(scans: list[str | Path], points_csv: str | Path, out_dir: str | Path,
           lesions: list[str | Path] | None = None, checkpoint: str | Path | None = None,
           method: str = "hybrid", track: dict[str, Any] | None = None, device: str = "cpu",
           registration_spacing_mm: float = 2.0, presence_calibration: str | Path | None = None,
           pictures_wanted: bool = True, tracked_scans: Scans | None = None,
           volume_path: Callable[[str], str] | None = None, allow_order: bool = False) -> pd.DataFrame:
    """Follow the lesions of ``points_csv`` (on ``scans[0]``) through ``scans`` (time order; NIfTI
    files or DICOM folders); ``lesions``: optionally one list per follow-up (``lesions[k-1]`` on
    ``scans[k]``, the same columns), whose lesions that no tracked lesion reaches are new. Writes
    ``<out_dir>/history.csv`` (``tables.HISTORY_COLUMNS``), one picture per lesion
    (``lesion_<id>.png``, unless ``pictures_wanted`` is false), ``index.html`` (the table and the
    pictures) and, for each follow-up that is a DICOM series, ``sr_t<k>.dcm`` (its lesions' points as
    a DICOM SR, :mod:`lesiontrack.dicom_sr`), and returns the table. Every input is read and checked
    before anything is tracked; nothing is written where it fails.

    A scan given twice, or DICOM series whose StudyDate (and StudyTime) run backwards, stop it
    unless ``allow_order``.

    ``tracked_scans``: the scans to track in, by ``t<k>``, where the caller has them already (the
    workflow's embedding caches and resampled volumes; ``volume_path`` then gives each one's
    resampled file for the presence test); by default the scans read here, resampled and
    (where the tracker asks) embedded once each."""
    tracker = trackers.get(method)
    if len(scans) < 2:
        raise InputError(f"--scans: a history needs at least two scans, got {len(scans)}")
    if lesions and len(lesions) != len(scans) - 1:
        raise InputError(f"--lesions: one list per follow-up scan ({len(scans) - 1}), got {len(lesions)}")
    out_dir = Path(out_dir)
    check_writable(out_dir, folder=True)
    check_history_folder(out_dir, [*scans, points_csv, *(lesions or []), *(p for p in (checkpoint, presence_calibration)
                                                                            if p is not None)])
    minimum = int((track or {}).get("min_slices", 3))
    images = {_scan_id(k): check_scan(read_image(path), path, minimum) for k, path in enumerate(scans)}
    path_of = {_scan_id(k): path for k, path in enumerate(scans)}
    baseline = read_points(points_csv)
    check_inside(baseline[["x", "y", "z"]].to_numpy(float), Geometry.of(images["t0"]), baseline,
                 str(points_csv), f"scan {scans[0]}")
    check_radii(baseline, Geometry.of(images["t0"]), str(points_csv), f"scan {scans[0]}")
    listed = {}
    for k, path in enumerate(lesions or [], start=1):
        table = read_points(path)
        check_inside(table[["x", "y", "z"]].to_numpy(float), Geometry.of(images[_scan_id(k)]), table, str(path),
                     f"scan {scans[k]}")
        check_radii(table, Geometry.of(images[_scan_id(k)]), str(path), f"scan {scans[k]}")
        listed[k] = table
    # DICOM series get a structured report per follow-up: their headers checked now, before tracking
    headers = {k: series_headers(path) for k, path in enumerate(scans) if Path(path).is_dir()}
    if not allow_order:
        check_time_order(scans, headers)
    baseline_uid = (str(headers[0][0].SeriesInstanceUID) if 0 in headers
                    else derived_uid(str(Path(scans[0]).resolve())))
    sized = "radius_mm" in baseline and all("radius_mm" in t for t in listed.values())
    if presence_calibration is not None and not sized:
        raise InputError(f"{points_csv}: the presence test (--presence) needs a radius_mm column in every list")

    if tracked_scans is None:
        tracked_scans = own_scans(images, method, checkpoint, device, registration_spacing_mm)
    context = Context(tracked_scans, dict(track or {}), False, str(points_csv))
    # the followed lesions: id, the timepoint and point where each was first seen, its radius
    origin = _followed(list(baseline["lesion_id"].astype(str)), 0, baseline)
    rows = [origin.assign(timepoint=0, scan=str(scans[0]), confidence=np.nan, found=True, status="present",
                          consistency_mm=0.0, inconsistent=False)]
    position = origin[["x", "y", "z"]].to_numpy(float)  # each lesion's reported position at t(k-1)
    for k in range(1, len(scans)):
        direct = origin.assign(source=origin["since"].map(_scan_id))
        earlier = origin["since"].to_numpy() < k - 1
        chained = origin[earlier].assign(source=_scan_id(k - 1), x=position[earlier, 0], y=position[earlier, 1],
                                         z=position[earlier, 2])
        both = pd.concat([direct.assign(kind="direct"), chained.assign(kind="chained")], ignore_index=True)
        queries = pd.DataFrame({"pair_id": both["lesion_id"] + ":" + both["kind"], "lesion_id": both["lesion_id"],
                                "direction": "forward", "source_image": both["source"],
                                "target_image": _scan_id(k), "source_x": both["x"], "source_y": both["y"],
                                "source_z": both["z"]})
        if sized:
            queries["source_radius_mm"] = both["radius_mm"].to_numpy(float)
        calibration = _calibration(presence_calibration, queries, str(points_csv))
        candidates = tracker.candidates(queries, context)
        chosen, found = choose(queries, candidates, calibration, track, volume_path or path_of.__getitem__,
                               lambda scan: Geometry.of(images[scan]))
        predicted = candidates.iloc[chosen][PRED_POINT].to_numpy(float)
        confidence = candidates.iloc[chosen]["confidence"].to_numpy(float)
        is_direct = (both["kind"] == "direct").to_numpy()
        now = predicted[is_direct]
        consistency = np.zeros(len(origin))
        consistency[earlier] = np.linalg.norm(predicted[~is_direct] - now[earlier], axis=1)
        bound = origin["radius_mm"].fillna(UNSIZED_RADIUS_MM).to_numpy(float)
        rows.append(origin[["lesion_id", "since", "radius_mm"]].assign(
            timepoint=k, scan=str(scans[k]), x=now[:, 0], y=now[:, 1], z=now[:, 2],
            confidence=confidence[is_direct], found=found[is_direct],
            status=np.where(found[is_direct], "present", "gone"), consistency_mm=consistency,
            inconsistent=consistency > bound))
        position = now
        if k in listed:
            # a listed lesion without radius_mm matches a followed one within flag_new's tolerance
            targets = listed[k] if "radius_mm" in listed[k] else listed[k].assign(radius_mm=0.0)
            followed = pd.DataFrame(now, columns=PRED_POINT).assign(lesion_id=origin["lesion_id"].to_numpy())
            new = listed[k][flag_new(targets, followed)["new"].to_numpy()]
            if len(new):
                appeared = _followed(_new_ids(new, set(origin["lesion_id"]), k), k, new)
                rows.append(appeared.assign(timepoint=k, scan=str(scans[k]), confidence=np.nan, found=True,
                                            status="new", consistency_mm=0.0, inconsistent=False))
                origin = pd.concat([origin, appeared], ignore_index=True)
                position = np.vstack([position, appeared[["x", "y", "z"]].to_numpy(float)])
    history = pd.concat(rows, ignore_index=True).sort_values(["timepoint"], kind="stable")
    history = history[HISTORY_COLUMNS].reset_index(drop=True)
    with replaced_folder(out_dir) as staged:  # all of it lands with the table, replacing an earlier history
        pictures = {}
        if pictures_wanted:
            shown = [display_volume(images[_scan_id(k)]) for k in range(len(scans))]
            for lesion_id, radius in zip(origin["lesion_id"], origin["radius_mm"], strict=True):
                name = picture_name(lesion_id)
                history_picture(shown, history, lesion_id, staged / name, method, float(radius))
                pictures[lesion_id] = f"{name}.png"
        for k in range(1, len(scans)):
            if k in headers:
                tracking_report(history[history["timepoint"] == k], headers[k], staged / f"sr_t{k}.dcm", baseline_uid,
                                method)
        (staged / "index.html").write_text(history_page(history, [str(p) for p in scans], method, pictures))
        write_table(history, staged / "history.csv")
    return history


def check_time_order(scans: list[str | Path], headers: dict[int, list]) -> None:
    """Stop where one scan is given twice (the same path, or the same DICOM series) or where DICOM
    series are not in time order (StudyDate, then StudyTime; scans without them are not compared)."""
    seen: dict[str, int] = {}
    for k, path in enumerate(scans):
        keys = [str(Path(path).resolve())]
        if k in headers:
            keys.append(str(headers[k][0].get("SeriesInstanceUID", "")))
        for key in keys:
            if key and key in seen:
                raise InputError(f"--scans: scan {k + 1} ({path}) is scan {seen[key] + 1} ({scans[seen[key]]}) again; "
                                 "give each timepoint once (or --allow-order)")
            seen[key] = k
    dated = [(k, str(h[0].get("StudyDate", "") or ""), str(h[0].get("StudyTime", "") or "")) for k, h in
             sorted(headers.items())]
    dated = [(k, day, time) for k, day, time in dated if day]
    for (a, day_a, time_a), (b, day_b, time_b) in itertools.pairwise(dated):
        if (day_b, time_b) < (day_a, time_a):
            raise InputError(f"--scans: scan {b + 1} ({scans[b]}) has StudyDate {day_b}, before scan {a + 1} "
                             f"({scans[a]}, StudyDate {day_a}): give the scans in time order (or --allow-order)")


# what follow writes into its folder: a folder holding only these (and history.csv) is an earlier
# history, replaced whole by the next run
HISTORY_FILES = re.compile(r"history\.csv|index\.html|sr_t\d+\.dcm|lesion_[A-Za-z0-9_.~-]+\.png")


def check_history_folder(out_dir: Path, inputs: list) -> None:
    """Stop before any work where ``out_dir`` (replaced whole on success) holds an input, or holds
    anything but an earlier history (a folder of other files is not follow's to replace)."""
    if not out_dir.is_dir():
        return
    inside = [str(p) for p in inputs if out_dir.resolve() in Path(p).resolve().parents or
              Path(p).resolve() == out_dir.resolve()]
    if inside:
        raise InputError(f"--out {out_dir}: holds the input {inside[0]}; follow replaces its folder whole: give "
                         "another folder")
    names = sorted(p.name for p in out_dir.iterdir())
    other = [n for n in names if not HISTORY_FILES.fullmatch(n) or (out_dir / n).is_dir()]
    if names and (other or "history.csv" not in names):
        shown = other[0] if other else names[0]
        raise InputError(f"--out {out_dir}: a folder that is not an earlier history (it holds {shown!r}"
                         f"{f' and {len(names) - 1} more' if len(names) > 1 else ''}); give a new or empty folder, "
                         "or an earlier history to replace")


def picture_name(lesion_id: str) -> str:
    """The file name (without .png) of a lesion's picture: ``lesion_`` and its id as
    :func:`lesiontrack.io.safe_name` writes it (distinct ids, distinct names)."""
    return "lesion_" + safe_name(str(lesion_id))


def history_page(history: pd.DataFrame, scans: list[str], method: str, pictures: dict[str, str]) -> str:
    """``index.html``: the patient's table and each lesion's picture, one static page."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if not np.isfinite(value) else f"{value:.2f}"
        return html.escape(str(value))

    shown = [c for c in HISTORY_COLUMNS if c != "scan"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    body = "".join("<tr" + (' class="flag"' if row["inconsistent"] else "") + ">"
                   + "".join(f"<td>{cell(row[c])}</td>" for c in shown) + "</tr>"
                   for row in history.to_dict("records"))
    listed = "".join(f"<li>t{k}: {html.escape(path)}</li>" for k, path in enumerate(scans))
    figures = "".join(f'<h2 id="{html.escape(picture_name(i))}">{html.escape(i)}</h2>'
                      f'<img src="{html.escape(src)}" alt="lesion {html.escape(i)} at every timepoint">'
                      for i, src in pictures.items())
    n_lesions, n_scans = history["lesion_id"].nunique(), len(scans)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>lesiontrack follow: {n_lesions} lesions over {n_scans} scans</title>
<style>body{{font-family:sans-serif;margin:2em;}} table{{border-collapse:collapse;}}
td,th{{border:1px solid #999;padding:2px 6px;text-align:right;}} tr.flag{{background:#fde2c8;}}
img{{max-width:100%;}}</style></head>
<body><h1>{n_lesions} lesions over {n_scans} scans ({html.escape(method)})</h1>
<ul>{listed}</ul>
<p>status: present, gone, new (first seen there); consistency_mm: the direct prediction against the
chained one; highlighted rows disagree by more than the lesion's radius.</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{figures}
</body></html>
"""
