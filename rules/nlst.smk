# NLST (NCI Imaging Data Commons) evaluated on NLSTx pairs: enabled by datasets.nlst.enabled.
# nlst_select is a checkpoint: the series it selects decide the download / convert shards
# (input functions in rules/nlst_common.smk).


rule nlst_nlstx:
    output:
        csv="results/nlst/nlstx_dataset.csv",
    log:
        "results/logs/nlst/nlstx.log",
    benchmark:
        "results/benchmarks/nlst/nlstx.tsv"
    conda:
        "../envs/nlst.yaml"
    params:
        url=lookup(dpath="datasets/nlst/nlstx_url", within=config),
        sha256=lookup(dpath="datasets/nlst/nlstx_sha256", within=config),
        code=code("lesiontrack.download"),
    script:
        "../workflow_scripts/download.py"


checkpoint nlst_select:
    input:
        nlstx="results/nlst/nlstx_dataset.csv",
    output:
        series="results/nlst/series.csv",
    log:
        "results/logs/nlst/select.log",
    benchmark:
        "results/benchmarks/nlst/select.tsv"
    conda:
        "../envs/nlst.yaml"
    params:
        n_patients=lookup(dpath="datasets/nlst/n_training_patients", within=config),
        seed=lookup(dpath="datasets/nlst/seed", within=config),
        slice_spacing_mm=lookup(dpath="datasets/nlst/slice_spacing_mm", within=config),
        min_slices=lookup(dpath="datasets/nlst/min_slices", within=config),
        code=code("lesiontrack.data.nlst"),
    script:
        "../workflow_scripts/nlst.py"


rule nlst_download:
    input:
        series="results/nlst/series.csv",
    output:
        table="results/nlst/shards/dicom-{shard}.csv",
    log:
        "results/logs/nlst/download/{shard}.log",
    benchmark:
        "results/benchmarks/nlst/download/{shard}.tsv"
    conda:
        "../envs/nlst.yaml"
    params:
        image_ids=nlst_shard_ids,
        dicom_dir="results/nlst/dicom",
        source=lookup(dpath="datasets/nlst/dicom_source", within=config),
        code=code("lesiontrack.data.nlst"),
    script:
        "../workflow_scripts/nlst.py"


rule nlst_convert:
    input:
        table="results/nlst/shards/dicom-{shard}.csv",
    output:
        table="results/nlst/shards/images-{shard}.csv",
    log:
        "results/logs/nlst/convert/{shard}.log",
    benchmark:
        "results/benchmarks/nlst/convert/{shard}.tsv"
    conda:
        "../envs/nlst.yaml"
    params:
        images_dir="results/nlst/images",
        code=code("lesiontrack.data.nlst", "lesiontrack.io"),
    script:
        "../workflow_scripts/nlst.py"


rule nlst_check:
    input:
        nlstx="results/nlst/nlstx_dataset.csv",
        series="results/nlst/series.csv",
        dicom=nlst_dicom_tables,
    output:
        json="results/nlst/check.json",
        report="results/nlst/check.txt",
    log:
        "results/logs/nlst/check.log",
    benchmark:
        "results/benchmarks/nlst/check.tsv"
    conda:
        "../envs/nlst.yaml"
    params:
        folder=download_dir_of_output,
        code=code("lesiontrack.check", "lesiontrack.data.nlst"),
    script:
        "../workflow_scripts/check.py"


rule nlst_pairs:
    input:
        nlstx="results/nlst/nlstx_dataset.csv",
        series="results/nlst/series.csv",
        images=nlst_image_tables,
        check="results/nlst/check.json",
    output:
        pairs="results/nlst/pairs.csv",
        lesions="results/nlst/lesions.csv",
        images="results/nlst/images.csv",
    log:
        "results/logs/nlst/pairs.log",
    benchmark:
        "results/benchmarks/nlst/pairs.tsv"
    conda:
        "../envs/nlst.yaml"
    params:
        dicom_dir="results/nlst/dicom",
        code=code("lesiontrack.data.nlst", "lesiontrack.evaluate"),
    script:
        "../workflow_scripts/nlst.py"
