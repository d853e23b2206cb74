# Input functions and shard lists; no other logic.
from pathlib import Path

from lesiontrack.data import datasets
from lesiontrack.evaluate import method_slug, variant_row
from lesiontrack.landmarks import ORACLE_BACKEND
from lesiontrack.figures import DATASET_FIGURES
from lesiontrack.provenance import fingerprint
from lesiontrack.track import registration, trackers

# Filled by each dataset's rules/<name>_common.smk: name -> function.
IMAGE_SHARDS = {}  # () -> the shard names of its images-{shard}.csv
EVALUATION_SHARDS = (
    {}
)  # (split) -> the shards holding volumes of a split (default: every shard)
DATASET_OUTPUTS = {}  # () -> what rule all asks of the dataset when it is enabled


def code(*modules):
    """Fingerprint of the package modules behind a step; passed as a param so edits rerun it."""
    return fingerprint(workflow.basedir, *modules)


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


def download_dir_of_output(wildcards, output):
    """results/<dataset> for outputs directly under it."""
    return str(Path(output[0]).parent)


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


def oracle_landmarks():
    """The synthetic landmark backend: the datasets' ground-truth landmarks, no landmarks rule."""
    return config["train"]["landmark_backend"] == ORACLE_BACKEND


def landmark_dir(wildcards):
    """Folders of the landmark tables that pretraining draws landmark positives from: the
    landmarks rule's output per training dataset, or the synthetic ground truth (an oracle).
    """
    if not uses_landmarks():
        return []
    if oracle_landmarks():
        return [
            f"results/{name}/truth"
            for name in config["train"]["datasets"]
            if datasets.get(name).oracle_landmarks
        ]
    return [f"results/{name}/landmarks" for name in config["train"]["datasets"]]


def training_landmark_tables(wildcards):
    """Landmark shard tables pretraining waits for (none for the synthetic oracle)."""
    if not uses_landmarks() or oracle_landmarks():
        return []
    return [
        t
        for name in config["train"]["datasets"]
        for t in shard_tables(name, "landmarks")
    ]


def image_shard_names(dataset):
    """Shards of a dataset's images-{shard}.csv (DLS, NLST: known once their checkpoint ran)."""
    return IMAGE_SHARDS[dataset]()


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
    """Embedding shard tables of the shards that may hold volumes of the tracked split."""
    shards = EVALUATION_SHARDS.get(wildcards.dataset)
    split = config["evaluate"]["split"]
    names = shards(split) if shards else image_shard_names(wildcards.dataset)
    return expand(
        "results/{dataset}/shards/embeddings-{model}-{shard}.csv",
        dataset=wildcards.dataset,
        model=model or config["model"]["name"],
        shard=names,
    )


def enabled_datasets():
    return [name for name, spec in config["datasets"].items() if spec["enabled"]]


PUBLISHED_FIELDS = {
    method_slug(name): field
    for dataset in datasets.DATASETS.values()
    for name, field in dataset.published.items()
}


def tracked_datasets():
    """Enabled datasets with images and ground-truth pairs: our methods run on these."""
    return [
        name
        for name in enabled_datasets()
        if datasets.get(name).tracked(config["datasets"][name])
    ]


def dataset_title(wildcards):
    return datasets.title(wildcards.dataset)


def table_rows(dataset):
    """(name, file slug) of each row of the dataset's table: our methods (where the dataset's
    images are downloaded), then published rows."""
    own = config["track"]["methods"] if dataset in tracked_datasets() else []
    published = list(datasets.get(dataset).published)
    rows = [(name, method_slug(name)) for name in own]
    if dataset in tracked_datasets():
        rows += [
            variant_row(method, model)
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
        and (not oracle_landmarks() or datasets.get(name).oracle_landmarks)
    ]


def landmark_figure_tables(wildcards):
    if oracle_landmarks():
        return []
    return shard_tables(wildcards.dataset, "landmarks")


def landmark_truth_dir(wildcards):
    if oracle_landmarks():
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
    """Methods whose found the appearance test decides (identity: none, its point is the source's)."""
    return [m for m in config["track"]["methods"] if trackers.get(m).decides_presence]


def presence_calibration(wildcards):
    if wildcards.dataset in presence_datasets():
        return f"results/{wildcards.dataset}/presence/calibration.json"
    return []


def tracker_of(wildcards):
    return trackers.get(wildcards.method)


def track_embedding_tables(wildcards):
    """The embedding shard tables a method reads (none for trackers without embeddings)."""
    return embedding_tables(wildcards) if tracker_of(wildcards).needs.embeddings else []


def track_embedding_dir(wildcards):
    return (
        model_embedding_dir(wildcards)
        if tracker_of(wildcards).needs.embeddings
        else None
    )


def track_registrations(wildcards):
    """The stored registrations a method reads (rule register), made once per dataset."""
    return [
        f"results/{wildcards.dataset}/registrations/{name}"
        for name in tracker_of(wildcards).registrations(config["track"])
    ]


def track_volume_tables(wildcards):
    """The resampled volumes a method reads (registration; the embeddings' refinement)."""
    return (
        dataset_resampled_tables(wildcards)
        if tracker_of(wildcards).needs.volumes
        else []
    )


def track_presence_calibration(wildcards):
    """The calibration that decides found, for trackers with a presence decision."""
    return (
        presence_calibration(wildcards)
        if tracker_of(wildcards).decides_presence
        else []
    )


def follow_outputs(dataset):
    """The reference method's followed histories of a dataset whose found is decided (the
    longitudinal lesions they are scored against are the presence calibration's)."""
    reference = config["evaluate"]["reference_method"]
    if reference not in presence_methods():
        return []
    return [f"results/{dataset}/follow/{reference}.csv"]


def all_outputs():
    outputs = []
    for dataset in presence_datasets():
        outputs += expand(
            "results/{dataset}/presence/{method}.json",
            dataset=dataset,
            method=presence_methods(),
        )
        outputs += follow_outputs(dataset)
    for name in enabled_datasets():
        outputs += DATASET_OUTPUTS[name]()
    training = set(config["train"]["datasets"]) & set(enabled_datasets())
    if not config["model"]["checkpoint"] and (tracked_datasets() or training):
        outputs.append(f"results/models/{config['model']['name']}/checkpoint_best.pt")
    return outputs + figure_outputs()
