rule synthetic_preview:
    input:
        images="results/synthetic/images.csv",
        lesions="results/synthetic/lesions.csv",
        pairs="results/synthetic/pairs.csv",
    output:
        png="results/figures/synthetic_preview.png",
    log:
        "results/logs/synthetic_preview.log",
    benchmark:
        "results/benchmarks/synthetic_preview.tsv"
    conda:
        "../envs/figures.yaml"
    params:
        dataset_dir=dataset_dir_of_input,
        code=code("lesiontrack.figures"),
    script:
        "../workflow_scripts/synthetic_preview.py"
