# Input functions of the DLS data rules (rules/dls_data.smk); no other logic.
import sys

import pandas as pd

from lesiontrack.data import dls as dls_data

DLS_SPLITS = ["test", "valid"]


def dls_info_files():
    """DL_info.csv where dls.dl_info_url is set; without it the DLS JSONs give the spacings."""
    return ["results/dls/DL_info.csv"] if config["dls"]["dl_info_url"] else []


def dls_archive_files():
    return [
        f"results/dls/archives/Images_png_{n:02d}.zip"
        for n in config["dls"]["archives"]
    ]


def dls_archive_url(wildcards):
    from lesiontrack.data.dls import archive_url

    return archive_url(int(wildcards.archive), config["dls"].get("archive_urls"))


def dls_series_plan():
    """The checkpoint's series table (series_id, role, shard); planning stops here until it exists."""
    plan = checkpoints.dls_archive_index.get().output.series
    return pd.read_csv(plan, dtype=str)


def dls_shard_series(wildcards):
    plan = dls_series_plan()
    return sorted(plan.loc[plan["shard"] == wildcards.shard, "series_id"])


def dls_shard_archives(wildcards):
    index = pd.read_csv(checkpoints.dls_archive_index.get().output.index, dtype=str)
    return sorted(
        set(index.loc[index["series_id"].isin(dls_shard_series(wildcards)), "archive"])
    )


def dls_image_shards(wildcards):
    return shard_tables("dls", "images")


def dls_outputs():
    outputs = ["results/tables/dls.csv"]
    if config["datasets"]["dls"]["download"]:
        outputs += ["results/dls/pairs.csv", "results/dls/images.csv"]
    return outputs


if notice := dls_data.no_dl_info_notice(config):
    print(notice, file=sys.stderr)

IMAGE_SHARDS["dls"] = lambda: sorted(set(dls_series_plan()["shard"]))
DATASET_OUTPUTS["dls"] = dls_outputs
