rule evaluate:
    input:
        pairs="results/{dataset}/pairs.csv",
        predictions="results/{dataset}/predictions/{method}.csv",
    output:
        metrics="results/{dataset}/metrics/{method}.json",
        per_pair="results/{dataset}/metrics/{method}-pairs.csv",
    log:
        "results/logs/evaluate/{dataset}-{method}.log",
    benchmark:
        "results/benchmarks/evaluate/{dataset}-{method}.tsv"
    conda:
        "../envs/evaluate.yaml"
    params:
        split=lookup(dpath="evaluate/split", within=config),
        min_radius_mm=lookup(dpath="evaluate/min_radius_mm", within=config),
        bootstrap_samples=lookup(dpath="evaluate/bootstrap_samples", within=config),
        seed=lookup(dpath="evaluate/seed", within=config),
        code=code("lesiontrack.evaluate"),
    script:
        "../workflow_scripts/evaluate.py"


rule table:
    input:
        metrics=method_files("results/{dataset}/metrics/{method}.json"),
        per_pair=method_files("results/{dataset}/metrics/{method}-pairs.csv"),
    output:
        csv=report(
            "results/tables/{dataset}.csv",
            caption="../report/table.rst",
            category="Evaluation",
            subcategory="{dataset}",
        ),
        md="results/tables/{dataset}.md",
        tex="results/tables/{dataset}.tex",
    log:
        "results/logs/table/{dataset}.log",
    benchmark:
        "results/benchmarks/table/{dataset}.tsv"
    conda:
        "../envs/evaluate.yaml"
    params:
        methods=table_row_names,
        reference=lookup(dpath="evaluate/reference_method", within=config),
        title=dataset_title,
        code=code("lesiontrack.evaluate"),
    script:
        "../workflow_scripts/table.py"


rule follow:
    input:
        lesions="results/{dataset}/lesions.csv",
        images="results/{dataset}/images.csv",
        embeddings=track_embedding_tables,
        volumes=dataset_resampled_tables,
        presence=track_presence_calibration,
        registrations=track_registrations,
    output:
        scores="results/{dataset}/follow/{method}.json",
        subjects=directory("results/{dataset}/follow/{method}"),
    log:
        "results/logs/follow/{dataset}-{method}.log",
    benchmark:
        "results/benchmarks/follow/{dataset}-{method}.tsv"
    wildcard_constraints:
        method="|".join(trackers.names()),
    conda:
        "../envs/pretrain.yaml"
    threads: 1
    params:
        split=lookup(dpath="evaluate/split", within=config),
        track=lookup(dpath="track", within=config),
        embeddings=track_embedding_dir,
        code=code("lesiontrack.evaluate_follow", "lesiontrack.follow"),
    script:
        "../workflow_scripts/follow.py"


rule follow_summary:
    input:
        scores="results/{dataset}/follow/{method}.json",
        pairwise="results/{dataset}/presence/{method}.json",
    output:
        summary=report(
            "results/{dataset}/follow/{method}.csv",
            caption="../report/follow.rst",
            category="Tracking",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/follow/{dataset}-{method}-summary.log",
    conda:
        "../envs/evaluate.yaml"
    params:
        code=code("lesiontrack.evaluate_follow"),
    script:
        "../workflow_scripts/follow_summary.py"
