"""Rule track_baseline: predictions of a model-free baseline (identity) for one dataset."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.track.baselines import predict_file
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    predict_file(sm.input.pairs, sm.wildcards.method, sm.output.predictions, sm.params.split)
