"""Rule table: Table-1-style comparison of the methods on one dataset (CSV, Markdown, LaTeX)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.evaluate import table_files
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    methods = list(zip(sm.params.methods, sm.input.metrics, sm.input.per_pair, strict=True))
    table_files(sm.wildcards.dataset, methods, sm.params.reference, Path(sm.output.csv).parent, sm.params.title)
