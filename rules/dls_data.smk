# DLS on DeepLesion, from download to sub-volume NIfTI and pairs.csv (datasets.dls.download);
# input functions in rules/dls_common.smk.


rule dls_annotations:
    output:
        json="results/dls/annotations/{split}.json",
    log:
        "results/logs/dls_annotations/{split}.log",
    benchmark:
        "results/benchmarks/dls_annotations/{split}.tsv"
    wildcard_constraints:
        split="test|valid",
    conda:
        "../envs/evaluate.yaml"
    params:
        url=lambda wildcards: config["dls"]["annotation_urls"][wildcards.split],
        what=lambda wildcards: f"DLS {wildcards.split} annotations",
        code=code("lesiontrack.download", "lesiontrack.data.dls"),
    script:
        "../workflow_scripts/dls_download.py"


rule dls_info:
    output:
        csv="results/dls/DL_info.csv",
    log:
        "results/logs/dls_info.log",
    benchmark:
        "results/benchmarks/dls_info.tsv"
    conda:
        "../envs/evaluate.yaml"
    params:
        url=lambda wildcards: config["dls"]["dl_info_url"],
        what="DL_info.csv (dls.dl_info_url)",
        code=code("lesiontrack.download", "lesiontrack.data.dls"),
    script:
        "../workflow_scripts/dls_download.py"


rule dls_archive:
    output:
        zip="results/dls/archives/Images_png_{archive}.zip",
    log:
        "results/logs/dls_archive/{archive}.log",
    benchmark:
        "results/benchmarks/dls_archive/{archive}.tsv"
    wildcard_constraints:
        archive=r"\d{2}",
    conda:
        "../envs/evaluate.yaml"
    params:
        url=dls_archive_url,
        what=lambda wildcards: f"DeepLesion archive {wildcards.archive}",
        code=code("lesiontrack.download", "lesiontrack.data.dls"),
    script:
        "../workflow_scripts/dls_download.py"


rule dls_check:
    input:
        archives=dls_archive_files(),
        dl_info=dls_info_files(),
        annotations=expand("results/dls/annotations/{split}.json", split=DLS_SPLITS),
    output:
        json="results/dls/check.json",
        report="results/dls/check.txt",
    log:
        "results/logs/dls_check.log",
    benchmark:
        "results/benchmarks/dls_check.tsv"
    conda:
        "../envs/evaluate.yaml"
    params:
        folder=download_dir_of_output,
        code=code("lesiontrack.check", "lesiontrack.data.dls"),
    script:
        "../workflow_scripts/check.py"


checkpoint dls_archive_index:
    input:
        check="results/dls/check.json",
        archives=dls_archive_files(),
        dl_info=dls_info_files(),
        annotations=expand("results/dls/annotations/{split}.json", split=DLS_SPLITS),
    output:
        index="results/dls/archive_index.csv",
        series="results/dls/series.csv",
    log:
        "results/logs/dls_archive_index.log",
    benchmark:
        "results/benchmarks/dls_archive_index.tsv"
    conda:
        "../envs/evaluate.yaml"
    params:
        shard_size=lookup(dpath="shard_size", within=config),
        pretraining=lookup(dpath="dls/pretraining", within=config),
        code=code("lesiontrack.data.dls"),
    script:
        "../workflow_scripts/dls_index.py"


rule dls_pairs:
    input:
        annotations=expand("results/dls/annotations/{split}.json", split=DLS_SPLITS),
    output:
        pairs="results/dls/pairs.csv",
    log:
        "results/logs/dls_pairs.log",
    benchmark:
        "results/benchmarks/dls_pairs.tsv"
    conda:
        "../envs/evaluate.yaml"
    params:
        splits=DLS_SPLITS,
        code=code("lesiontrack.data.dls", "lesiontrack.evaluate"),
    script:
        "../workflow_scripts/dls_pairs.py"


rule dls_convert:
    input:
        index="results/dls/archive_index.csv",
        dl_info=dls_info_files(),
        annotations=expand("results/dls/annotations/{split}.json", split=DLS_SPLITS),
        archives=dls_shard_archives,
    output:
        table="results/dls/shards/images-{shard}.csv",
    log:
        "results/logs/dls_convert/{shard}.log",
    benchmark:
        "results/benchmarks/dls_convert/{shard}.tsv"
    conda:
        "../envs/resample.yaml"
    params:
        series=dls_shard_series,
        out_dir="results/dls/images",
        code=code("lesiontrack.data.dls", "lesiontrack.io"),
    script:
        "../workflow_scripts/dls_convert.py"


rule dls_images:
    input:
        shards=dls_image_shards,
        series="results/dls/series.csv",
        pairs="results/dls/pairs.csv",
    output:
        table="results/dls/images.csv",
    log:
        "results/logs/dls_images.log",
    benchmark:
        "results/benchmarks/dls_images.tsv"
    conda:
        "../envs/evaluate.yaml"
    params:
        code=code("lesiontrack.data.dls"),
    script:
        "../workflow_scripts/dls_images.py"
