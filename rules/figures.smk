rule synthetic_preview:
    input:
        images="results/synthetic/images.csv",
        lesions="results/synthetic/lesions.csv",
        pairs="results/synthetic/pairs.csv",
    output:
        png=report(
            "results/figures/synthetic_preview.png",
            caption="../report/synthetic_preview.rst",
            category="Data",
        ),
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


rule figures:
    input:
        pairs="results/{dataset}/pairs.csv",
        per_pair=method_files("results/{dataset}/metrics/{method}-pairs.csv"),
        predictions=reference_predictions,
        resampled=dataset_resampled_tables,
        embeddings=embedding_tables,
    output:
        qualitative=report(
            "results/figures/{dataset}/qualitative.png",
            caption="../report/qualitative.rst",
            category="Tracking",
            subcategory="{dataset}",
        ),
        lesion_over_time=report(
            "results/figures/{dataset}/lesion_over_time.png",
            caption="../report/lesion_over_time.rst",
            category="Tracking",
            subcategory="{dataset}",
        ),
        similarity_scales=report(
            "results/figures/{dataset}/similarity_scales.png",
            caption="../report/similarity_scales.rst",
            category="Tracking",
            subcategory="{dataset}",
        ),
        error_cdf=report(
            "results/figures/{dataset}/error_cdf.png",
            caption="../report/error_cdf.rst",
            category="Evaluation",
            subcategory="{dataset}",
        ),
        cpm_vs_radius=report(
            "results/figures/{dataset}/cpm_vs_radius.png",
            caption="../report/cpm_vs_radius.rst",
            category="Evaluation",
            subcategory="{dataset}",
        ),
        axis_errors=report(
            "results/figures/{dataset}/axis_errors.png",
            caption="../report/axis_errors.rst",
            category="Evaluation",
            subcategory="{dataset}",
        ),
        pdf=expand(
            "results/figures/{{dataset}}/{name}.pdf",
            name=[
                "qualitative",
                "lesion_over_time",
                "similarity_scales",
                "error_cdf",
                "cpm_vs_radius",
                "axis_errors",
            ],
        ),
    log:
        "results/logs/figures/{dataset}.log",
    benchmark:
        "results/benchmarks/figures/{dataset}.tsv"
    conda:
        "../envs/pretrain.yaml"
    params:
        methods=table_row_names,
        reference=lookup(dpath="evaluate/reference_method", within=config),
        split=lookup(dpath="evaluate/split", within=config),
        embeddings=model_embedding_dir,
        code=code("lesiontrack.figures", "lesiontrack.track.match"),
    script:
        "../workflow_scripts/figures.py"


rule training_figure:
    input:
        log="results/models/{model}/training_log.tsv",
    output:
        png=report(
            "results/figures/training_{model}.png",
            caption="../report/training.rst",
            category="Training",
        ),
        pdf="results/figures/training_{model}.pdf",
    log:
        "results/logs/figures/training_{model}.log",
    conda:
        "../envs/figures.yaml"
    params:
        code=code("lesiontrack.figures"),
    script:
        "../workflow_scripts/training_figure.py"


rule landmark_figure:
    input:
        images=dataset_resampled_tables,
        splits=["results/{dataset}/images.csv"],  # with split (DLS, NLST: not their shards)
        landmarks=landmark_figure_tables,
    output:
        png=report(
            "results/figures/{dataset}/landmarks.png",
            caption="../report/landmarks.rst",
            category="Data",
            subcategory="{dataset}",
        ),
        pdf="results/figures/{dataset}/landmarks.pdf",
    log:
        "results/logs/figures/landmarks-{dataset}.log",
    conda:
        "../envs/figures.yaml"
    params:
        truth_dir=landmark_truth_dir,
        split=lookup(dpath="evaluate/split", within=config),
        code=code("lesiontrack.figures", "lesiontrack.landmarks"),
    script:
        "../workflow_scripts/landmark_figure.py"
