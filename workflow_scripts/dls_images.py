"""Rule dls_images: merge the shard tables of converted DLS sub-volumes, with subject and split."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.data import dls
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    dls.images_table(list(sm.input.shards), sm.input.series, sm.input.pairs, sm.output.table)
