"""Rule follow_summary: the followed histories' scores beside the same method's pairwise presence decisions."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.evaluate_follow import write_summary
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    write_summary(sm.input.scores, sm.input.pairwise, sm.output.summary)
