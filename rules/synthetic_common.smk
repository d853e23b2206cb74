# The synthetic dataset's shards, input functions and outputs.
from lesiontrack.data import synthetic as synthetic_data

SYNTHETIC = synthetic_data.SyntheticConfig.from_dict(config["synthetic"])
SYNTHETIC_SHARDS = synthetic_data.shards(SYNTHETIC, config["shard_size"])


def synthetic_shard_names():
    return [f"{k:03d}" for k in range(len(SYNTHETIC_SHARDS))]


def synthetic_shard_subjects(wildcards):
    return SYNTHETIC_SHARDS[int(wildcards.shard)]


def synthetic_split_shards(split):
    """The shards holding subjects of ``split`` (known from the subjects before any run)."""
    splits = [s for _, s in synthetic_data.subject_ids(SYNTHETIC)]
    return [
        f"{k:03d}"
        for k, subjects in enumerate(SYNTHETIC_SHARDS)
        if any(splits[i] == split for i in subjects)
    ]


def synthetic_outputs():
    outputs = [
        "results/synthetic/pairs.csv",
        "results/synthetic/lesions.csv",
        "results/synthetic/images.csv",
        "results/figures/synthetic_preview.png",
        "results/tables/synthetic.csv",
    ]
    outputs += shard_tables("synthetic", "resampled")
    if not oracle_landmarks():
        outputs += shard_tables("synthetic", "landmarks")
    return outputs


IMAGE_SHARDS["synthetic"] = synthetic_shard_names
EVALUATION_SHARDS["synthetic"] = synthetic_split_shards
DATASET_OUTPUTS["synthetic"] = synthetic_outputs
