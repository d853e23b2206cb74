"""Rule embed: whole-volume embeddings of one shard of resampled volumes (those the tracked pairs use)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

import torch

from lesiontrack.track.embed import embed_shard
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    torch.set_num_threads(sm.threads)
    embed_shard(sm.input.checkpoint, sm.input.pairs, sm.input.resampled, sm.params.split, sm.params.out_dir,
                sm.output.table, sm.params.device)
