"""Preflight of a downloaded dataset, before conversion and pretraining (``lesiontrack check``).

Every check gives one finding, ``ok``, ``warn`` or ``FAIL``, with one line of detail naming the
file, series or value; the report lists them all (a failed check does not hide the others) and
fails when any check fails.

- ``dls``: every configured archive there (missing: FAIL) and intact (every member's CRC; a
  truncated or altered archive: FAIL); the DLS series found against the plan (the series the
  annotation files name); spacing agreement (the annotations against each other and against
  DL_info.csv where given); the head-feet orientation of a sample of series (lungs above liver
  along the slice numbers).
- ``nlst``: the NLSTx series downloaded against the plan, each with the IDC index's number of
  slices; NLSTx's ``Slice number`` convention
  scored on the downloaded series (:func:`lesiontrack.data.nlst.slice_scores`) and decided only
  where the best convention wins row by row (:func:`decide_convention`); an undecided convention
  fails unless the config names one, and a named convention that the data clearly contradicts
  fails.
- ``custom``: every volume of images.csv readable, with at least three slices along each axis.

Not checked: the label conventions of segmentations used for landmarks (IDC's TotalSegmentator
v1 SEG of NLST): no landmark backend of this workflow reads them yet.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lesiontrack.data import dls, nlst
from lesiontrack.io import InputError, atomic_path, check_scan, read_image, read_table

CONVENTION_MIN_SCORE = 0.1  # the best convention's mean score (a dense blob ringed by lung where it says)
CONVENTION_P = 0.01  # the sign test of the best convention's scores against each other answer's


@dataclass
class Finding:
    """One check's outcome: ``status`` ``ok``, ``warn`` or ``FAIL``."""

    check: str
    status: str
    detail: str


@dataclass
class Report:
    """The findings of one dataset's preflight and what it decided (e.g. the slice convention)."""

    dataset: str
    findings: list[Finding]
    decided: dict[str, Any]

    @property
    def failed(self) -> bool:
        return any(f.status == "FAIL" for f in self.findings)

    def text(self) -> str:
        width = max((len(f.check) for f in self.findings), default=0)
        lines = [f"lesiontrack check --dataset {self.dataset}: "
                 + ("FAILED" if self.failed else "passed")
                 + f" ({sum(f.status == 'FAIL' for f in self.findings)} failed, "
                 f"{sum(f.status == 'warn' for f in self.findings)} warnings, {len(self.findings)} checks)"]
        lines += [f"{f.status:4s}  {f.check:{width}s}  {f.detail}" for f in self.findings]
        lines += [f"decided: {key} = {value}" for key, value in self.decided.items()]
        return "\n".join(lines) + "\n"

    def write(self, out_json: str | Path | None = None, out_text: str | Path | None = None) -> None:
        if out_text is not None:
            with atomic_path(Path(out_text)) as tmp:
                tmp.write_text(self.text())
        if out_json is not None:
            with atomic_path(Path(out_json)) as tmp:
                tmp.write_text(json.dumps({"dataset": self.dataset, "passed": not self.failed,
                                           "findings": [asdict(f) for f in self.findings], **self.decided},
                                          indent=2) + "\n")


def _guarded(findings: list[Finding], check: str, run: Any) -> Any:
    """Run one check; an :class:`InputError` becomes its FAIL finding (its one line)."""
    try:
        return run()
    except InputError as err:
        findings.append(Finding(check, "FAIL", str(err)))
        return None


# --- DLS ------------------------------------------------------------------------------------------

def _archive_intact(path: Path) -> str:
    """Every member's CRC read back; the one line of what is wrong, or '' where nothing is."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            n = len(zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"{path}: not a readable zip archive ({err}); delete it and download it again"
    if bad is not None:
        return f"{path}: member {bad} fails its CRC check; delete it and download it again"
    return "" if n else f"{path}: an empty archive"


def check_dls(archives: Sequence[str | Path], annotations: Sequence[str | Path], dl_info: str | Path | None = None,
              sample: int = 5) -> Report:
    """Preflight of a DLS download: ``archives`` the configured archive paths (present or not),
    ``annotations`` the DLS JSONs, ``dl_info`` DL_info.csv where there is one; the head-feet check
    on ``sample`` DLS series spread over the sorted series found."""
    findings: list[Finding] = []
    archives = [Path(a) for a in archives]
    present = [a for a in archives if a.exists()]
    missing = [a for a in archives if not a.exists()]
    findings.append(Finding("archives present", "FAIL" if missing else "ok",
                            f"{len(present)} of {len(archives)} configured archives"
                            + (f"; missing: {', '.join(map(str, missing))}" if missing else "")))
    problems = {a: _archive_intact(a) for a in present}  # every byte read once: the longest check
    broken = [problem for problem in problems.values() if problem]
    findings.append(Finding("archive integrity", "FAIL" if broken else "ok",
                            "; ".join(broken) if broken else f"{len(present)} archives, every member's CRC intact"))
    intact = [a for a in present if not problems[a]]
    names = _guarded(findings, "annotations", lambda: dls.split_volume_names(annotations))
    if names is not None:
        wanted = sorted({dls.VolumeName.parse(n).series_id for n in names})
        located = dls.locate_slices(intact)
        found = [s for s in wanted if s in located]
        findings.append(Finding("DLS series found", "ok" if len(found) == len(wanted) else "warn" if found else "FAIL",
                                f"{len(found)} of the {len(wanted)} series the annotations name are in the "
                                f"archives ({len(names)} sub-volumes named)"
                                + ("" if found else "; nothing to evaluate on")))
        spacing = _guarded(findings, "spacing agreement", lambda: dls.checked_spacings(annotations, dl_info))
        if spacing is not None:
            findings.append(Finding("spacing agreement", "ok",
                                    f"{len(wanted)} series' spacings agree across the annotations"
                                    + (f" and with {dl_info}" if dl_info else " (no DL_info.csv to check against)")))
        chosen = [found[int(k)] for k in np.unique(np.linspace(0, len(found) - 1, min(sample, len(found))).round())
                  ] if found else []
        states = []
        with dls.opened_archives() as handles:
            for series_id in chosen:
                def one(series_id: str = series_id) -> str:
                    slices = located[series_id]
                    numbers = sorted(slices)
                    held = ", ".join(sorted({str(archive) for archive, _ in slices.values()}))
                    return dls.head_feet_check(dls.slice_stack(slices, numbers, handles, f"series {series_id}"),
                                               f"series {series_id} ({held})", slice_numbers=numbers)
                state = _guarded(findings, "head-feet", one)
                if state is not None:
                    states.append(state)
        if len(states) == len(chosen):
            findings.append(Finding("head-feet", "ok" if "confirmed" in states or not states else "warn",
                                    f"{states.count('confirmed')} of {len(chosen)} sampled series confirmed "
                                    f"(lungs above liver), {states.count('inconclusive')} inconclusive"))
    return Report("dls", findings, {})


# --- NLST -----------------------------------------------------------------------------------------

def decide_convention(rows: pd.DataFrame, named: str | None) -> tuple[str | None, Finding]:
    """The slice convention from :func:`nlst.slice_scores`' rows and the config's (``named``, None
    where it names none). Conventions that pick the same slices are one answer (the first of
    ``nlst.CONVENTIONS`` stands for them). The best answer (highest mean score) is decided where its
    mean exceeds :data:`CONVENTION_MIN_SCORE` and, against every other answer, a two-sided sign test
    over the rows (the best's score above or below the other's at the same row) gives p <
    :data:`CONVENTION_P`: adjacent slices both cut a nodule, so a ratio of means would not tell
    them apart, while the nodule's own slice wins row by row."""
    from scipy import stats

    table = nlst.summarise_slices(rows)
    best = table.iloc[0]
    answer = str(best["same_slices_as"])
    detail = ", ".join(f"{c} {s:.3f}" for c, s in zip(table["convention"], table["mean_score"], strict=True))
    alike = table.loc[table["same_slices_as"] == answer, "convention"].tolist()
    if len(alike) > 1:
        detail += f"; {' and '.join(alike)} pick the same slices here"
    score = {c: rows.loc[rows["convention"] == c, "score"].to_numpy(float) for c in table["convention"]}
    tests = []
    for other in table.loc[table["same_slices_as"] != answer, "convention"]:
        wins, losses = int((score[answer] > score[other]).sum()), int((score[answer] < score[other]).sum())
        p = stats.binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
        tests.append((other, wins, losses, float(p) if wins > losses else 1.0))
    detail += "".join(f"; against {o}: {w} rows better, {lo} worse (sign test p = {p:.2g})" for o, w, lo, p in tests)
    decided = best["mean_score"] > CONVENTION_MIN_SCORE and all(p < CONVENTION_P for *_, p in tests)
    n = int(best["n"])
    if decided and named is not None and named not in alike:
        return None, Finding("slice convention", "FAIL",
                             f"datasets.nlst.slice_number_convention = {named}, but the {n} downloaded NLSTx boxes "
                             f"support {answer} (mean scores: {detail})")
    if decided:
        chosen = named or answer
        return chosen, Finding("slice convention", "ok", f"{chosen}, decided by the data ({n} boxes; mean scores: "
                                                         f"{detail})")
    if named is not None:
        return named, Finding("slice convention", "warn", f"undecided by the data ({n} boxes; mean scores: {detail}); "
                                                          f"the config names {named}")
    return None, Finding("slice convention", "FAIL",
                         f"undecided: the {n} downloaded NLSTx boxes do not single one out (mean scores: {detail}; "
                         f"needed: best > {CONVENTION_MIN_SCORE} and sign test p < {CONVENTION_P} against each other "
                         "answer); name one in datasets.nlst.slice_number_convention")


def check_nlst(nlstx_csv: str | Path, series_csv: str | Path, dicom_dir: str | Path, convention: str | None = None
               ) -> Report:
    """Preflight of an NLST download: the planned series (``series.csv``) under ``dicom_dir``, and
    NLSTx's slice convention (``convention``: the config's, None where it names none)."""
    findings: list[Finding] = []
    dicom_dir = Path(dicom_dir)
    plan = read_table(series_csv, required=["image_id", "role"]).astype({"image_id": str})
    there = [(dicom_dir / i).is_dir() for i in plan["image_id"]]
    evaluation = (plan["role"] == "evaluation").to_numpy()
    missing = plan.loc[evaluation & ~np.asarray(there, bool), "image_id"].tolist()
    findings.append(Finding("series downloaded", "FAIL" if missing else "ok",
                            f"{sum(there)} of {len(plan)} planned series under {dicom_dir}"
                            + (f"; {len(missing)} evaluation series missing, e.g. {dicom_dir / missing[0]}"
                               if missing else "")))
    if "instanceCount" in plan:  # the index's slice count of each series against the files there
        short = [f"{dicom_dir / i}: {n_files} of {int(n)} slices"
                 for i, n, here in zip(plan["image_id"], plan["instanceCount"], there, strict=True)
                 if here and (n_files := sum(1 for _ in (dicom_dir / i).glob("*.dcm"))) < int(n)]
        findings.append(Finding("slices per series", "FAIL" if short else "ok",
                                "; ".join(short[:3]) + (f" (and {len(short) - 3} more)" if len(short) > 3 else "")
                                if short else "every downloaded series has the IDC index's instanceCount files"))
    decided: dict[str, Any] = {"slice_number_convention": None}
    table = _guarded(findings, "NLSTx table", lambda: nlst.read_nlstx(nlstx_csv))
    if table is not None:
        scores = _guarded(findings, "slice convention", lambda: nlst.slice_scores(table, dicom_dir))
        if scores is not None:
            decided["slice_number_convention"], finding = decide_convention(scores, convention)
            findings.append(finding)
    return Report("nlst", findings, decided)


def convention_of(check_json: str | Path) -> str:
    """The slice convention a passed NLST check decided (``lesiontrack check --dataset nlst``)."""
    report = json.loads(Path(check_json).read_text())
    if not report.get("passed") or not report.get("slice_number_convention"):
        raise InputError(f"{check_json}: the NLST check did not pass; run lesiontrack check --dataset nlst")
    return str(report["slice_number_convention"])


# --- custom ---------------------------------------------------------------------------------------

def check_custom(images_csv: str | Path, min_slices: int = 3) -> Report:
    """Preflight of own volumes: every one of ``images.csv`` readable, >= ``min_slices`` per axis."""
    findings: list[Finding] = []
    table = _guarded(findings, "images table", lambda: read_table(images_csv, required=["image_id", "path"]))
    if table is not None:
        problems = []
        for path in table["path"]:
            try:
                check_scan(read_image(path), path, min_slices)
            except InputError as err:
                problems.append(str(err))
        findings.append(Finding("volumes readable", "FAIL" if problems else "ok",
                                "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3
                                                           else "") if problems
                                else f"{len(table)} volumes, each with >= {min_slices} slices per axis"))
    return Report("custom", findings, {})


def preflight(dataset: str, cfg: dict[str, Any], folder: str | Path, sample: int = 5) -> Report:
    """The check of ``dataset`` on its download in ``folder`` (``results/<dataset>``: the layout
    the workflow and ``lesiontrack download`` write), with the config ``cfg``."""
    folder = Path(folder)
    if dataset == "dls":
        annotations = sorted(folder.glob("annotations/*.json"))
        if not annotations:
            raise InputError(f"{folder / 'annotations'}: no DLS annotation file (test.json, valid.json) here")
        dl_info = folder / "DL_info.csv"
        return check_dls([folder / "archives" / dls.archive_name(n) for n in cfg["dls"]["archives"]], annotations,
                         dl_info if dl_info.exists() else None, sample)
    if dataset == "nlst":
        return check_nlst(folder / "nlstx_dataset.csv", folder / "series.csv", folder / "dicom",
                          cfg["datasets"]["nlst"]["slice_number_convention"])
    if dataset == "custom":
        return check_custom(folder / "images.csv", int(cfg["track"].get("min_slices", 3)))
    raise InputError(f"--dataset {dataset}: expected dls, nlst or custom")
