# Input functions of rules/nlst.smk.


def nlst_shards():
    import pandas as pd

    series = pd.read_csv(
        checkpoints.nlst_select.get().output.series, dtype={"image_id": str}
    )
    return nlst_data.shards(series, config["shard_size"])


def nlst_shard_ids(wildcards):
    return nlst_shards()[int(wildcards.shard)]


def nlst_image_tables(wildcards):
    return shard_tables("nlst", "images")
