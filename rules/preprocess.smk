rule resample:
    input:
        images="results/{dataset}/shards/images-{shard}.csv",
    output:
        table="results/{dataset}/shards/resampled-{shard}.csv",
    log:
        "results/logs/resample/{dataset}-{shard}.log",
    benchmark:
        "results/benchmarks/resample/{dataset}-{shard}.tsv"
    conda:
        "../envs/resample.yaml"
    params:
        spacing_mm=lookup(dpath="preprocess/spacing_mm", within=config),
        out_dir=resampled_dir,
        code=code("lesiontrack.preprocess"),
    script:
        "../workflow_scripts/resample.py"
