"""Rules track_*: predictions of one method for the pairs of one dataset (each row in its direction)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

import torch

from lesiontrack.track.predict import predict_pairs
from lesiontrack.track.registration import use_threads
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    torch.set_num_threads(sm.threads)
    use_threads(sm.threads)  # 1 in every rule: bit-reproducible registrations
    volumes = list(sm.input.volumes) if "volumes" in sm.input.keys() else []
    presence = getattr(sm.input, "presence", [])  # a calibration JSON, or none (an empty list)
    presence = [presence] if isinstance(presence, str) else list(presence)
    registrations = list(sm.input.registrations) if "registrations" in sm.input.keys() else []
    predict_pairs(sm.input.pairs, sm.wildcards.method, sm.output.predictions, sm.params.split, sm.params.embeddings,
                  volumes, sm.params.track, presence_calibration=presence[0] if presence else None,
                  registrations=registrations)
