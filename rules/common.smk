# Input functions and shard lists; no other logic.
from pathlib import Path

from lesiontrack.data import custom as custom_data
from lesiontrack.data import nlst as nlst_data
from lesiontrack.data import synthetic as synthetic_data
from lesiontrack.evaluate import PUBLISHED_DLS, method_slug
from lesiontrack.figures import DATASET_FIGURES
from lesiontrack.provenance import fingerprint
from lesiontrack.track.predict import EMBEDDING_METHODS, REGISTRATION_METHODS

SYNTHETIC = synthetic_data.SyntheticConfig.from_dict(config["synthetic"])
SYNTHETIC_SHARDS = synthetic_data.shards(SYNTHETIC, config["shard_size"])


def code(*modules):
    """Fingerprint of the package modules behind a step; passed as a param so edits rerun it."""
    return fingerprint(workflow.basedir, *modules)


def synthetic_shard_names():
    return [f"{k:03d}" for k in range(len(SYNTHETIC_SHARDS))]


def synthetic_shard_subjects(wildcards):
    return SYNTHETIC_SHARDS[int(wildcards.shard)]


def shard_tables(dataset, name):
    """results/<dataset>/shards/<name>-<shard>.csv of every image shard of the dataset."""
    return expand(
        "results/{dataset}/shards/{name}-{shard}.csv",
        dataset=dataset,
        name=name,
        shard=image_shard_names(dataset),
    )


def dataset_dir_of_output(wildcards, output):
    """results/<dataset> for outputs under results/<dataset>/shards/."""
    return str(Path(output[0]).parent.parent)


def dataset_dir_of_input(wildcards, input):
    """results/<dataset> for inputs directly under it."""
    return str(Path(input[0]).parent)


def resampled_dir(wildcards):
    return f"results/{wildcards.dataset}/resampled"


def gpu_count(wildcards):
    """GPUs an embedding job holds: 1 with train.device = cuda (keeps GPU jobs from overlapping)."""
    return 1 if config["train"]["device"] == "cuda" else 0


def pretrain_gpus(wildcards):
    """GPUs the pretrain job holds: one per data-parallel process with train.device = cuda."""
    return config["train"]["processes"] if config["train"]["device"] == "cuda" else 0


def uses_landmarks():
    return config["train"]["landmark_fraction"] > 0


def landmark_dir(wildcards):
    """Folders of the landmark tables that pretraining draws landmark positives from: the
    landmarks rule's output per training dataset, or the synthetic ground truth (an oracle).
    """
    if not uses_landmarks():
        return []
    if config["train"]["landmark_backend"] == "synthetic":
        return (
            ["results/synthetic/truth"]
            if "synthetic" in config["train"]["datasets"]
            else []
        )
    return [f"results/{name}/landmarks" for name in config["train"]["datasets"]]


def training_landmark_tables(wildcards):
    """Landmark shard tables pretraining waits for (none for the synthetic oracle)."""
    if not uses_landmarks() or config["train"]["landmark_backend"] == "synthetic":
        return []
    return [
        t
        for name in config["train"]["datasets"]
        for t in shard_tables(name, "landmarks")
    ]


def image_shard_names(dataset):
    """Shards of a dataset's images-{shard}.csv (DLS, NLST: known once their checkpoint ran)."""
    if dataset == "synthetic":
        return synthetic_shard_names()
    if dataset == "dls":
        return sorted(set(dls_series_plan()["shard"]))
    if dataset == "nlst":
        return [f"{k:03d}" for k in range(len(nlst_shards()))]
    return ["000"]  # custom: one shard


def dataset_resampled_tables(wildcards):
    return shard_tables(wildcards.dataset, "resampled")


def dataset_image_tables(wildcards):
    return shard_tables(wildcards.dataset, "images")


def training_images(wildcards):
    """images.csv of each dataset that pretraining draws from (train.datasets)."""
    return [f"results/{name}/images.csv" for name in config["train"]["datasets"]]


def training_resampled_tables(wildcards):
    return [
        t
        for name in config["train"]["datasets"]
        for t in shard_tables(name, "resampled")
    ]


def ablation_models():
    return config["ablation"]["models"]


def section_of(name, wildcards):
    """The config's ``train`` or ``model`` section for the model being built: an ablation model's
    own values over the config's."""
    values = dict(config[name])
    values.update(ablation_models().get(wildcards.model, {}).get(name, {}))
    return values


def train_params(wildcards):
    return section_of("train", wildcards)


def model_params(wildcards):
    return section_of("model", wildcards)


def model_checkpoint(wildcards):
    """model.checkpoint when given (no pretraining), else this workflow's pretrained model."""
    return (
        config["model"]["checkpoint"]
        or f"results/models/{wildcards.model}/checkpoint_best.pt"
    )


def embedding_dir(wildcards):
    """Folder of the <image_id>/ embedding caches of one dataset and model."""
    return f"results/{wildcards.dataset}/embeddings/{wildcards.model}"


def model_embedding_dir(wildcards):
    return f"results/{wildcards.dataset}/embeddings/{config['model']['name']}"


def variant_embedding_tables(wildcards):
    """Embedding shard tables of an ablation model (the model wildcard)."""
    return embedding_tables(wildcards, wildcards.model)


def embedding_tables(wildcards, model=None):
    """Embedding shard tables of the shards that may hold volumes of the tracked split (synthetic:
    known from the subjects; other datasets: every shard)."""
    if wildcards.dataset == "synthetic":
        split = config["evaluate"]["split"]
        splits = [s for _, s in synthetic_data.subject_ids(SYNTHETIC)]
        names = [
            f"{k:03d}"
            for k, subjects in enumerate(SYNTHETIC_SHARDS)
            if any(splits[i] == split for i in subjects)
        ]
    else:
        names = image_shard_names(wildcards.dataset)
    return expand(
        "results/{dataset}/shards/embeddings-{model}-{shard}.csv",
        dataset=wildcards.dataset,
        model=model or config["model"]["name"],
        shard=names,
    )


def enabled_datasets():
    return [name for name, spec in config["datasets"].items() if spec["enabled"]]


PUBLISHED_ROWS = {"dls": PUBLISHED_DLS}
PUBLISHED_FIELDS = {method_slug(name): field for name, field in PUBLISHED_DLS.items()}


def tracked_datasets():
    """Enabled datasets with images and ground-truth pairs: our methods run on these."""
    spec = config["datasets"]
    return [
        name
        for name in enabled_datasets()
        if name in ("synthetic", "nlst")
        or (name == "dls" and spec["dls"]["download"])
        or (name == "custom" and spec["custom"]["pairs"])
    ]


def table_rows(dataset):
    """(name, file slug) of each row of the dataset's table: our methods (where the dataset's
    images are downloaded), then published rows."""
    own = config["track"]["methods"] if dataset in tracked_datasets() else []
    published = list(PUBLISHED_ROWS.get(dataset, {}))
    rows = [(name, method_slug(name)) for name in own]
    if dataset in tracked_datasets():
        rows += [
            (f"{method} [{model}]", f"{method}@{model}")
            for model in ablation_models()
            for method in config["ablation"]["methods"]
        ]
    return rows + [(name, method_slug(name)) for name in published]


def method_files(pattern):
    """One file per table row of the dataset (``pattern`` has {dataset} and {method})."""

    def files(wildcards):
        slugs = [slug for _, slug in table_rows(wildcards.dataset)]
        return expand(pattern, dataset=wildcards.dataset, method=slugs)

    return files


def table_row_names(wildcards):
    return [name for name, _ in table_rows(wildcards.dataset)]


def published_field(wildcards):
    return PUBLISHED_FIELDS[wildcards.published]


def reference_predictions(wildcards):
    """Predictions of the table's reference method (evaluate.reference_method)."""
    slug = method_slug(config["evaluate"]["reference_method"])
    return f"results/{wildcards.dataset}/predictions/{slug}.csv"


def landmark_figure_datasets():
    """Enabled datasets with landmark tables (the landmarks rule's, or the synthetic oracle's)."""
    return [
        name
        for name in config["train"]["datasets"]
        if name in enabled_datasets()
        and (config["train"]["landmark_backend"] != "synthetic" or name == "synthetic")
    ]


def landmark_figure_tables(wildcards):
    if config["train"]["landmark_backend"] == "synthetic":
        return []
    return shard_tables(wildcards.dataset, "landmarks")


def landmark_truth_dir(wildcards):
    if config["train"]["landmark_backend"] == "synthetic":
        return f"results/{wildcards.dataset}/truth"
    return None


def figure_outputs():
    """The figures of the run: per tracked dataset, per pretrained model, landmarks."""
    outputs = [
        f"results/figures/{dataset}/{name}.png"
        for dataset in tracked_datasets()
        for name in DATASET_FIGURES
    ]
    training = set(config["train"]["datasets"]) & set(enabled_datasets())
    if not config["model"]["checkpoint"] and (tracked_datasets() or training):
        outputs.append(f"results/figures/training_{config['model']['name']}.png")
    outputs += [
        f"results/figures/{d}/landmarks.png" for d in landmark_figure_datasets()
    ]
    return outputs


def presence_datasets():
    """Datasets whose found/disappeared decision is calibrated (track.presence_datasets) and run."""
    return [d for d in config["track"]["presence_datasets"] if d in tracked_datasets()]


def presence_methods():
    """Methods with a presence decision (identity: none, its point is the source's)."""
    return [m for m in config["track"]["methods"] if m != "identity"]


def presence_calibration(wildcards):
    if wildcards.dataset in presence_datasets():
        return f"results/{wildcards.dataset}/presence/calibration.json"
    return []


def presence_embedding_tables(wildcards):
    return embedding_tables(wildcards) if wildcards.method in EMBEDDING_METHODS else []


def presence_embedding_dir(wildcards):
    return (
        model_embedding_dir(wildcards)
        if wildcards.method in EMBEDDING_METHODS
        else None
    )


def all_outputs():
    outputs = []
    for dataset in presence_datasets():
        outputs += expand(
            "results/{dataset}/presence/{method}.json",
            dataset=dataset,
            method=presence_methods(),
        )
    if "synthetic" in enabled_datasets():
        outputs += [
            "results/synthetic/pairs.csv",
            "results/synthetic/lesions.csv",
            "results/synthetic/images.csv",
            "results/figures/synthetic_preview.png",
            "results/tables/synthetic.csv",
        ]
        outputs += shard_tables("synthetic", "resampled")
        if config["train"]["landmark_backend"] != "synthetic":
            outputs += shard_tables("synthetic", "landmarks")
    training = set(config["train"]["datasets"]) & set(enabled_datasets())
    if not config["model"]["checkpoint"] and (tracked_datasets() or training):
        outputs.append(f"results/models/{config['model']['name']}/checkpoint_best.pt")
    if "dls" in enabled_datasets():
        outputs.append("results/tables/dls.csv")
        if config["datasets"]["dls"]["download"]:
            outputs += ["results/dls/pairs.csv", "results/dls/images.csv"]
    if "nlst" in enabled_datasets():
        outputs += [
            "results/nlst/pairs.csv",
            "results/nlst/lesions.csv",
            "results/nlst/images.csv",
            "results/tables/nlst.csv",
        ]
    outputs += figure_outputs()
    if "custom" in enabled_datasets():
        outputs.append("results/custom/images.csv")
        if config["datasets"]["custom"]["pairs"]:
            outputs += ["results/custom/pairs.csv", "results/tables/custom.csv"]
    return outputs
