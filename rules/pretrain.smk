rule pretrain:
    input:
        images=training_images,
        resampled=training_resampled_tables,
        landmarks=training_landmark_tables,
    output:
        best="results/models/{model}/checkpoint_best.pt",
        latest="results/models/{model}/checkpoint_latest.pt",
        log="results/models/{model}/training_log.tsv",
        progress="results/models/{model}/progress.png",
    log:
        "results/logs/pretrain/{model}.log",
    benchmark:
        "results/benchmarks/pretrain/{model}.tsv"
    # first whenever it can start: it holds every core for minutes, and a long single-threaded job
    # started beside the last landmark job would leave a core idle until it ends
    priority: 20
    conda:
        "../envs/pretrain.yaml"
    threads: lookup(dpath="train/threads", within=config)
    resources:
        gpu=pretrain_gpus,
    params:
        train=train_params,
        model=model_params,
        window_hu=lookup(dpath="preprocess/window_hu", within=config),
        landmark_dir=landmark_dir,
        code=code("lesiontrack.train.loop"),
    script:
        "../workflow_scripts/pretrain.py"
