# Your own data (datasets.custom): NIfTI files or DICOM series folders, optional pairs in world mm.


rule custom_convert:
    input:
        custom_sources,
    output:
        table="results/custom/images.csv",
        shard="results/custom/shards/images-000.csv",
    log:
        "results/logs/custom/convert.log",
    benchmark:
        "results/benchmarks/custom/convert.tsv"
    conda:
        "../envs/resample.yaml"
    params:
        images=lookup(dpath="datasets/custom/images", within=config),
        images_dir=lambda wildcards, output: os.path.join(
            os.path.dirname(output.table), "images"
        ),
        code=code("lesiontrack.data.custom", "lesiontrack.io"),
    script:
        "../workflow_scripts/custom.py"


rule custom_pairs:
    input:
        pairs=custom_pairs_csv,
        images="results/custom/images.csv",
    output:
        pairs="results/custom/pairs.csv",
    log:
        "results/logs/custom/pairs.log",
    benchmark:
        "results/benchmarks/custom/pairs.tsv"
    conda:
        "../envs/resample.yaml"
    params:
        code=code("lesiontrack.data.custom"),
    script:
        "../workflow_scripts/custom.py"
