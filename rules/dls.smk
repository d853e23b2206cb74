rule download_dlt_predictions:
    output:
        json="results/dls/published/DLTMix.json",
    log:
        "results/logs/download_dlt_predictions.log",
    benchmark:
        "results/benchmarks/download_dlt_predictions.tsv"
    conda:
        "../envs/evaluate.yaml"
    params:
        url=lookup(dpath="dls/dlt_predictions_url", within=config),
        sha256=lookup(dpath="dls/dlt_predictions_sha256", within=config),
        code=code("lesiontrack.download"),
    script:
        "../workflow_scripts/download.py"


rule evaluate_published:
    input:
        predictions="results/dls/published/DLTMix.json",
    output:
        metrics="results/dls/metrics/{published}.json",
        per_pair="results/dls/metrics/{published}-pairs.csv",
    log:
        "results/logs/evaluate/dls-{published}.log",
    benchmark:
        "results/benchmarks/evaluate/dls-{published}.tsv"
    wildcard_constraints:
        published="dlt|affine-dlt-init",
    conda:
        "../envs/evaluate.yaml"
    params:
        field=published_field,
        min_radius_mm=lookup(dpath="evaluate/min_radius_mm", within=config),
        bootstrap_samples=lookup(dpath="evaluate/bootstrap_samples", within=config),
        seed=lookup(dpath="evaluate/seed", within=config),
        code=code("lesiontrack.evaluate"),
    script:
        "../workflow_scripts/evaluate_published.py"
