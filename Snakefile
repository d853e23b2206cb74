# lesiontrack: lesion tracking across longitudinal CT with multi-scale anatomical embeddings.
# Wiring only: every rule is a thin call into the lesiontrack package (see README).
import os
import sys

sys.path.insert(0, workflow.basedir)  # the package beside this Snakefile

from lesiontrack.config import validate
from lesiontrack.track.trackers import check_settings
from lesiontrack.workflow import forward_interrupts

forward_interrupts()  # kill -INT of snakemake stops its running jobs too


configfile: os.path.join(workflow.basedir, "config.yaml")


report: "report/workflow.rst"


validate(config, source="config (config.yaml + --configfile overlays)")
check_settings(config["track"], source="config (config.yaml + --configfile overlays)")


wildcard_constraints:
    shard=r"\d{3}",
    dataset="synthetic|dls|nlst|custom",
    model=r"[A-Za-z0-9_.]+",


include: "rules/common.smk"
include: "rules/synthetic_common.smk"
include: "rules/dls_common.smk"
include: "rules/nlst_common.smk"
include: "rules/custom_common.smk"
include: "rules/synthetic.smk"
include: "rules/preprocess.smk"
include: "rules/landmarks.smk"
include: "rules/pretrain.smk"
include: "rules/track.smk"
include: "rules/evaluate.smk"
include: "rules/dls.smk"
include: "rules/dls_data.smk"
include: "rules/figures.smk"
include: "rules/nlst.smk"
include: "rules/custom.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
