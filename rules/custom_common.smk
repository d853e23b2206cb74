# Input functions and outputs of rules/custom.smk.
from lesiontrack.data import custom as custom_data


def custom_sources(wildcards):
    return list(custom_data.collect(config["datasets"]["custom"]["images"])["source"])


def custom_pairs_csv(wildcards):
    return config["datasets"]["custom"]["pairs"] or []


def custom_outputs():
    outputs = ["results/custom/images.csv"]
    if config["datasets"]["custom"]["pairs"]:
        outputs += ["results/custom/pairs.csv", "results/tables/custom.csv"]
    return outputs


IMAGE_SHARDS["custom"] = lambda: ["000"]  # one shard
DATASET_OUTPUTS["custom"] = custom_outputs
