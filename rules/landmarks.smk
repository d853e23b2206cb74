# Named anatomical landmarks per volume (backend train.landmark_backend), sharded like the images.


rule landmarks:
    input:
        images="results/{dataset}/shards/images-{shard}.csv",
    output:
        table="results/{dataset}/shards/landmarks-{shard}.csv",
    log:
        "results/logs/landmarks/{dataset}-{shard}.log",
    benchmark:
        "results/benchmarks/landmarks/{dataset}-{shard}.tsv"
    conda:
        "../envs/resample.yaml"
    params:
        backend=lookup(dpath="train/landmark_backend", within=config),
        out_dir="results/{dataset}/landmarks",
        code=code("lesiontrack.landmarks"),
    script:
        "../workflow_scripts/landmarks.py"
