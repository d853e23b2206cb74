"""Rule dls_pairs: DLS annotation files -> pairs.csv in world mm."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.data import dls
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    dls.pairs_table(dict(zip(sm.params.splits, sm.input.annotations, strict=True)), sm.output.pairs)
