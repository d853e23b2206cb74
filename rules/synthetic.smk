rule synth:
    output:
        images="results/synthetic/shards/images-{shard}.csv",
        lesions="results/synthetic/shards/lesions-{shard}.csv",
        pairs="results/synthetic/shards/pairs-{shard}.csv",
    log:
        "results/logs/synth/{shard}.log",
    benchmark:
        "results/benchmarks/synth/{shard}.tsv"
    conda:
        "../envs/synth.yaml"
    params:
        synthetic=lookup(dpath="synthetic", within=config),
        subjects=synthetic_shard_subjects,
        out_dir=dataset_dir_of_output,
        code=code("lesiontrack.data.synthetic"),
    script:
        "../workflow_scripts/synth.py"


rule synth_tables:
    input:
        images=shard_tables("synthetic", "images"),
        lesions=shard_tables("synthetic", "lesions"),
        pairs=shard_tables("synthetic", "pairs"),
    output:
        images="results/synthetic/images.csv",
        lesions="results/synthetic/lesions.csv",
        pairs="results/synthetic/pairs.csv",
    log:
        "results/logs/synth_tables.log",
    benchmark:
        "results/benchmarks/synth_tables.tsv"
    conda:
        "../envs/synth.yaml"
    params:
        code=code("lesiontrack.data.synthetic"),
    script:
        "../workflow_scripts/synth_tables.py"
