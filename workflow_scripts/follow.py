"""Rule follow: every test subject with three or more scans followed as one history, scored against the truth."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

import torch

from lesiontrack.evaluate_follow import follow_subjects
from lesiontrack.track.registration import use_threads
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule) as log:
    torch.set_num_threads(sm.threads)
    use_threads(sm.threads)  # 1 in every rule: bit-reproducible registrations
    presence = getattr(sm.input, "presence", [])  # a calibration JSON, or none (an empty list)
    presence = [presence] if isinstance(presence, str) else list(presence)
    result = follow_subjects(sm.input.lesions, sm.input.images, sm.wildcards.method, sm.output.subjects,
                             sm.output.scores, sm.params.split, sm.params.embeddings, list(sm.input.volumes),
                             sm.params.track, presence[0] if presence else None,
                             registrations=list(sm.input.registrations))
    log.info("follow of %s: %s", sm.wildcards.method, result)
