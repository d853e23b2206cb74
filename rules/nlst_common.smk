# Input functions and outputs of rules/nlst.smk.
import pandas as pd

from lesiontrack.data import nlst as nlst_data


def nlst_shards():
    series = pd.read_csv(
        checkpoints.nlst_select.get().output.series, dtype={"image_id": str}
    )
    return nlst_data.shards(series, config["shard_size"])


def nlst_shard_ids(wildcards):
    return nlst_shards()[int(wildcards.shard)]


def nlst_dicom_tables(wildcards):
    return shard_tables("nlst", "dicom")


def nlst_image_tables(wildcards):
    return shard_tables("nlst", "images")


def nlst_outputs():
    return [
        "results/nlst/pairs.csv",
        "results/nlst/lesions.csv",
        "results/nlst/images.csv",
        "results/tables/nlst.csv",
    ]


IMAGE_SHARDS["nlst"] = lambda: [f"{k:03d}" for k in range(len(nlst_shards()))]
DATASET_OUTPUTS["nlst"] = nlst_outputs
