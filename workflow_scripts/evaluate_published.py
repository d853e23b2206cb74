"""Rule evaluate_published: score a published method's predictions (a field of DLTMix.json)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.evaluate import evaluate_files
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    evaluate_files(sm.input.predictions, sm.output.metrics, prediction_field=sm.params.field,
                   per_pair_out=sm.output.per_pair, min_radius_mm=sm.params.min_radius_mm,
                   bootstrap_samples=sm.params.bootstrap_samples, seed=sm.params.seed)
