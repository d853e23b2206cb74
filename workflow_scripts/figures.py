"""Rule figures: the figures of one tracked dataset (qualitative cases, similarity maps, error plots)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.figures import dataset_figures
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule) as log:
    written = dataset_figures(
        sm.input.pairs,
        dict(zip(sm.params.methods, sm.input.per_pair, strict=True)),
        sm.input.predictions,
        list(sm.input.resampled),
        sm.params.embeddings,
        Path(sm.output.qualitative).parent,
        sm.params.split,
        sm.params.reference,
    )
    log.info("wrote %s", ", ".join(str(p) for p in written))
