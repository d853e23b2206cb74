"""Rules nlst_check, dls_check: the preflight of a download (lesiontrack check); a failed check stops the run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.check import preflight
from lesiontrack.io import InputError
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule) as log:
    dataset = sm.rule.removesuffix("_check")
    report = preflight(dataset, sm.config, sm.params.folder)
    log.info("%s", report.text())
    if report.failed:
        failed = next(f for f in report.findings if f.status == "FAIL")
        raise InputError(f"lesiontrack check --dataset {dataset}: {failed.check}: {failed.detail}")
    report.write(sm.output.json, sm.output.report)
