rule synthetic_preview:
    input:
        images="results/synthetic/images.csv",
        lesions="results/synthetic/lesions.csv",
        pairs="results/synthetic/pairs.csv",
    output:
        png="results/figures/synthetic_preview.png",
    params:
        dataset_dir="results/synthetic",
        window_hu=lookup(dpath="preprocess/window_hu", within=config),
        code=code("lesiontrack.figures"),
    log:
        "results/logs/synthetic_preview.log",
    benchmark:
        "results/benchmarks/synthetic_preview.tsv"
    conda:
        "../envs/figures.yaml"
    script:
        "../workflow_scripts/synthetic_preview.py"
