"""Rule dls_images: merge the shard tables of converted DLS sub-volumes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.data import synthetic
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    synthetic.merge_tables(list(sm.input), sm.output.table)
