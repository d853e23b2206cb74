"""Rule pretrain: self-supervised pretraining on the training subjects' resampled volumes."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

import torch

from lesiontrack.train.loop import ModelConfig, TrainConfig, pretrain, select_volumes
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule) as log:
    torch.set_num_threads(sm.threads)
    train_config = TrainConfig.from_dict(sm.params.train)
    training, validation = select_volumes(list(sm.input.images), sm.input.resampled, "train",
                                          sm.params.train["validation_subjects"])
    log.info("%d training and %d validation volumes", len(training), len(validation))
    pretrain(training, validation, Path(sm.output.latest).parent, train_config, ModelConfig.from_dict(sm.params.model),
             tuple(sm.params.window_hu), landmark_dir=sm.params.landmark_dir)
