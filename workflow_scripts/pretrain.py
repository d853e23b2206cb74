"""Rule pretrain: self-supervised pretraining on the training subjects' resampled volumes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

import torch

from lesiontrack.provenance import machine
from lesiontrack.train.loop import pretrain_distributed, select_volumes
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule) as log:
    torch.set_num_threads(sm.threads)
    training, validation = select_volumes(list(sm.input.images), sm.input.resampled, "train",
                                          sm.params.train["validation_subjects"])
    log.info("%d training and %d validation volumes", len(training), len(validation))
    processes = sm.params.train["processes"]
    log.info("%d process(es), %d threads", processes, sm.threads)
    log.info("machine (kept in the checkpoints as 'machine'): %s", machine(sm.params.train["device"]))
    config = {"train": sm.params.train, "model": sm.params.model, "preprocess": {"window_hu": sm.params.window_hu}}
    pretrain_distributed(training, validation, Path(sm.output.latest).parent, config, processes, sm.threads,
                         landmark_dir=sm.params.landmark_dir)
