rule embed:
    input:
        checkpoint=model_checkpoint,
        pairs="results/{dataset}/pairs.csv",
        resampled="results/{dataset}/shards/resampled-{shard}.csv",
    output:
        table="results/{dataset}/shards/embeddings-{model}-{shard}.csv",
    log:
        "results/logs/embed/{dataset}-{model}-{shard}.log",
    benchmark:
        "results/benchmarks/embed/{dataset}-{model}-{shard}.tsv"
    # before the registration baselines, which would leave one of two cores idle while it waits
    priority: 10
    conda:
        "../envs/pretrain.yaml"
    threads: lookup(dpath="train/threads", within=config)
    resources:
        gpu=gpu_count,
    params:
        out_dir=embedding_dir,
        split=lookup(dpath="evaluate/split", within=config),
        device=lookup(dpath="train/device", within=config),
        code=code("lesiontrack.track.embed"),
    script:
        "../workflow_scripts/embed.py"


rule register:
    input:
        pairs="results/{dataset}/pairs.csv",
        volumes=dataset_resampled_tables,
        # not read: that two-thread job first keeps a registration from starting beside a landmark
        # job and delaying pretraining while one core idles
        after=presence_calibration,
    output:
        registrations=directory("results/{dataset}/registrations/{registration}"),
    log:
        "results/logs/register/{dataset}-{registration}.log",
    benchmark:
        "results/benchmarks/register/{dataset}-{registration}.tsv"
    wildcard_constraints:
        registration="|".join(registration.METHODS),
    # the longest jobs after pretraining, as the registration tracks were before they read them
    priority: 6
    conda:
        "../envs/pretrain.yaml"
    threads: 1
    params:
        split=lookup(dpath="evaluate/split", within=config),
        settings=lookup(dpath="track/registration", within=config),
        code=code("lesiontrack.track.registration"),
    script:
        "../workflow_scripts/register.py"


rule track:
    input:
        pairs="results/{dataset}/pairs.csv",
        embeddings=track_embedding_tables,
        volumes=track_volume_tables,
        registrations=track_registrations,  # read, not run again, by every tracker that needs them
        presence=track_presence_calibration,  # decides found (datasets of track.presence_datasets)
    output:
        predictions="results/{dataset}/predictions/{method}.csv",
    log:
        "results/logs/track/{dataset}-{method}.log",
    benchmark:
        "results/benchmarks/track/{dataset}-{method}.tsv"
    wildcard_constraints:
        method="|".join(trackers.names()),
    # before the embedding tracks' end: the registrations are the longest jobs after pretraining
    priority: 6
    conda:
        "../envs/pretrain.yaml"
    threads: 1
    params:
        split=lookup(dpath="evaluate/split", within=config),
        track=lookup(dpath="track", within=config),
        embeddings=track_embedding_dir,
        code=code("lesiontrack.track.predict"),
    script:
        "../workflow_scripts/track.py"


rule track_variant:
    input:
        pairs="results/{dataset}/pairs.csv",
        embeddings=variant_embedding_tables,
        volumes=dataset_resampled_tables,
    output:
        predictions="results/{dataset}/predictions/{method}@{model}.csv",
    log:
        "results/logs/track/{dataset}-{method}@{model}.log",
    benchmark:
        "results/benchmarks/track/{dataset}-{method}@{model}.tsv"
    wildcard_constraints:
        method="|".join(trackers.names(embeddings=True)),
    conda:
        "../envs/pretrain.yaml"
    threads: 1
    params:
        split=lookup(dpath="evaluate/split", within=config),
        track=lookup(dpath="track", within=config),
        embeddings=embedding_dir,
        code=code("lesiontrack.track.predict"),
    script:
        "../workflow_scripts/track.py"


rule presence_calibration:
    input:
        lesions="results/{dataset}/lesions.csv",
        volumes=dataset_resampled_tables,
    output:
        calibration="results/{dataset}/presence/calibration.json",
    log:
        "results/logs/presence/{dataset}-calibration.log",
    benchmark:
        "results/benchmarks/presence/{dataset}-calibration.tsv"
    conda:
        "../envs/pretrain.yaml"
    # both cores: a barrier that keeps the long registration baselines (which need it) from
    # starting beside a landmark job and delaying pretraining while one core idles
    threads: 2
    params:
        code=code("lesiontrack.track.presence"),
    script:
        "../workflow_scripts/presence_calibration.py"


rule presence:
    input:
        pairs="results/{dataset}/pairs.csv",
        lesions="results/{dataset}/lesions.csv",
        predictions="results/{dataset}/predictions/{method}.csv",
        calibration="results/{dataset}/presence/calibration.json",
        embeddings=track_embedding_tables,
        volumes=dataset_resampled_tables,
        registrations=track_registrations,  # the gone lesions' image pairs, registered once
    output:
        table="results/{dataset}/presence/{method}.csv",
        report="results/{dataset}/presence/{method}.json",
    log:
        "results/logs/presence/{dataset}-{method}.log",
    benchmark:
        "results/benchmarks/presence/{dataset}-{method}.tsv"
    wildcard_constraints:
        method="|".join(trackers.names(decides_presence=True)),
    conda:
        "../envs/pretrain.yaml"
    threads: 1
    params:
        split=lookup(dpath="evaluate/split", within=config),
        track=lookup(dpath="track", within=config),
        embeddings=track_embedding_dir,
        code=code("lesiontrack.evaluate_presence"),
    script:
        "../workflow_scripts/presence.py"
