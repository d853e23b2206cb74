# Input functions and shard lists; no other logic.
from pathlib import Path

from lesiontrack.data import synthetic as synthetic_data
from lesiontrack.provenance import fingerprint

SYNTHETIC = synthetic_data.SyntheticConfig.from_dict(config["synthetic"])
SYNTHETIC_SHARDS = synthetic_data.shards(SYNTHETIC, config["shard_size"])


def code(*modules):
    """Fingerprint of the package modules behind a step; passed as a param so edits rerun it."""
    return fingerprint(workflow.basedir, *modules)


def shard_names(dataset):
    return [f"{k:03d}" for k in range(len(SYNTHETIC_SHARDS))]


def synthetic_shard_subjects(wildcards):
    return SYNTHETIC_SHARDS[int(wildcards.shard)]


def synthetic_shard_tables(name):
    return expand(
        "results/synthetic/shards/{name}-{shard}.csv",
        name=name,
        shard=shard_names("synthetic"),
    )


def dataset_dir_of_output(wildcards, output):
    """results/<dataset> for outputs under results/<dataset>/shards/."""
    return str(Path(output[0]).parent.parent)


def dataset_dir_of_input(wildcards, input):
    """results/<dataset> for inputs directly under it."""
    return str(Path(input[0]).parent)


def resampled_dir(wildcards):
    return f"results/{wildcards.dataset}/resampled"


def enabled_datasets():
    return [name for name, spec in config["datasets"].items() if spec["enabled"]]


def method_files(pattern):
    """One file per tracking method of the dataset (``pattern`` has {dataset} and {method})."""

    def files(wildcards):
        return expand(
            pattern, dataset=wildcards.dataset, method=config["track"]["methods"]
        )

    return files


def all_outputs():
    outputs = []
    if "synthetic" in enabled_datasets():
        outputs += [
            "results/synthetic/pairs.csv",
            "results/synthetic/lesions.csv",
            "results/synthetic/images.csv",
            "results/figures/synthetic_preview.png",
        ]
    for dataset in enabled_datasets():
        outputs.append(f"results/tables/{dataset}.csv")
        outputs += expand(
            "results/{dataset}/shards/resampled-{shard}.csv",
            dataset=dataset,
            shard=shard_names(dataset),
        )
    return outputs
