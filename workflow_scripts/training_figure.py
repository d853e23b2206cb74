"""Rule training_figure: training curves (loss per scale per epoch) of one pretrained model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.figures import training_curves
from lesiontrack.io import read_table
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    out_base = Path(sm.output.png).with_suffix("")
    training_curves(read_table(sm.input.log), out_base, title=f"Pretraining of model {sm.wildcards.model}")
