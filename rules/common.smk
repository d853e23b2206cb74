# Input functions and shard lists; no other logic.
from pathlib import Path

from lesiontrack.data import custom as custom_data
from lesiontrack.data import nlst as nlst_data
from lesiontrack.data import synthetic as synthetic_data
from lesiontrack.evaluate import PUBLISHED_DLS, method_slug
from lesiontrack.provenance import fingerprint

SYNTHETIC = synthetic_data.SyntheticConfig.from_dict(config["synthetic"])
SYNTHETIC_SHARDS = synthetic_data.shards(SYNTHETIC, config["shard_size"])


def code(*modules):
    """Fingerprint of the package modules behind a step; passed as a param so edits rerun it."""
    return fingerprint(workflow.basedir, *modules)


def synthetic_shard_names():
    return [f"{k:03d}" for k in range(len(SYNTHETIC_SHARDS))]


def synthetic_shard_subjects(wildcards):
    return SYNTHETIC_SHARDS[int(wildcards.shard)]


def synthetic_shard_tables(name):
    return expand(
        "results/synthetic/shards/{name}-{shard}.csv",
        name=name,
        shard=synthetic_shard_names(),
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
    """GPUs a training job holds: 1 with train.device = cuda (keeps GPU jobs from overlapping)."""
    return 1 if config["train"]["device"] == "cuda" else 0


def landmark_dir(wildcards):
    """Folder of the landmark tables that pretraining draws landmark positives from."""
    backends = {"synthetic": "results/synthetic/truth"}
    return backends[config["train"]["landmark_backend"]]


def embedding_dir(wildcards):
    """Folder of the <image_id>/ embedding caches of one dataset and model."""
    return f"results/{wildcards.dataset}/embeddings/{wildcards.model}"


def model_embedding_dir(wildcards):
    return f"results/{wildcards.dataset}/embeddings/{config['model']['name']}"


def embedding_splits(wildcards):
    """Splits whose volumes are embedded: the one that is tracked."""
    return [config["evaluate"]["split"]]


def embedding_tables(wildcards):
    """Embedding shard tables of the shards that hold volumes of the tracked split."""
    split = config["evaluate"]["split"]
    splits = [s for _, s in synthetic_data.subject_ids(SYNTHETIC)]
    names = [
        f"{k:03d}"
        for k, subjects in enumerate(SYNTHETIC_SHARDS)
        if any(splits[i] == split for i in subjects)
    ]
    return expand(
        "results/{dataset}/shards/embeddings-{model}-{shard}.csv",
        dataset=wildcards.dataset,
        model=config["model"]["name"],
        shard=names,
    )


def enabled_datasets():
    return [name for name, spec in config["datasets"].items() if spec["enabled"]]


PUBLISHED_ROWS = {"dls": PUBLISHED_DLS}
PUBLISHED_FIELDS = {method_slug(name): field for name, field in PUBLISHED_DLS.items()}


def table_rows(dataset):
    """(name, file slug) of each row of the dataset's table: our methods, then published rows.

    Our methods run where the dataset's images exist: so far the synthetic dataset."""
    own = config["track"]["methods"] if dataset == "synthetic" else []
    published = list(PUBLISHED_ROWS.get(dataset, {}))
    return [(name, method_slug(name)) for name in own + published]


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


def all_outputs():
    outputs = []
    if "synthetic" in enabled_datasets():
        outputs += [
            "results/synthetic/pairs.csv",
            "results/synthetic/lesions.csv",
            "results/synthetic/images.csv",
            "results/figures/synthetic_preview.png",
            "results/tables/synthetic.csv",
            f"results/models/{config['model']['name']}/checkpoint_best.pt",
        ]
        outputs += expand(
            "results/synthetic/shards/resampled-{shard}.csv",
            shard=synthetic_shard_names(),
        )
    if "dls" in enabled_datasets():
        outputs.append("results/tables/dls.csv")
        if config["datasets"]["dls"]["download"]:
            outputs += ["results/dls/pairs.csv", "results/dls/images.csv"]
    if "nlst" in enabled_datasets():
        outputs += [
            "results/nlst/pairs.csv",
            "results/nlst/lesions.csv",
            "results/nlst/images.csv",
        ]
    if "custom" in enabled_datasets():
        outputs.append("results/custom/images.csv")
        if config["datasets"]["custom"]["pairs"]:
            outputs.append("results/custom/pairs.csv")
    return outputs
