"""Rule synthetic_preview: baseline and follow-up of one subject with landmarks and lesions."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.figures import synthetic_preview
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    synthetic_preview(sm.params.dataset_dir, sm.output.png)
