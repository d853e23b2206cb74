"""Rule presence: precision and recall of disappeared for one method (gone lesions tracked here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

import torch

from lesiontrack.evaluate_presence import evaluate_presence
from lesiontrack.track.registration import use_threads
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule) as log:
    torch.set_num_threads(sm.threads)
    use_threads(sm.threads)  # 1 in every rule: bit-reproducible registrations
    report = evaluate_presence(sm.input.pairs, sm.input.lesions, sm.input.predictions, sm.wildcards.method,
                               sm.input.calibration, sm.output.table, sm.output.report, sm.params.split,
                               sm.params.embeddings, list(sm.input.volumes), sm.params.track,
                               list(sm.input.registrations))
    log.info("presence of %s: %s", sm.wildcards.method, report)
