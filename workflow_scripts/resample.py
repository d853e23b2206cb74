"""Rule resample: resample one shard of volumes to isotropic spacing."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.preprocess import resample_table
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    resample_table(sm.input.images, sm.params.out_dir, sm.output.table, sm.params.spacing_mm)
