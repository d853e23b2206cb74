"""Rule landmark_figure: the landmarks of one volume of a dataset drawn on its projections."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.figures import landmark_figure
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    landmark_figure(list(sm.input.images), list(sm.input.landmarks), Path(sm.output.png).with_suffix(""),
                    sm.params.split, sm.params.truth_dir, list(sm.input.splits))
