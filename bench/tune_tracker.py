"""Train with config overrides and score the tracker on the validation subjects' pairs, never on
the test split: the way to choose training settings.

    python bench/tune_tracker.py --results results --out-dir bench/out/tune/far \\
        --set far_negatives=1000 neg_exclusion_mm=4 [--model width=8] [--seed 0 1]

Uses the default run's tables (``results/synthetic/images.csv``, ``pairs.csv``, the resampled
shard tables and the landmark truth) and ``config.yaml``'s ``train`` and ``model`` sections. The
training subjects are split as the workflow splits them (the last ``validation_subjects`` held out);
the held-out subjects' lesion pairs are tracked (coarse-to-fine, or ``--full``) and CPM@Radius,
MED, the median error, the share over 20 mm and MEDz are printed per seed and as mean +- spread
over seeds (one run is noisy: settings that differ by a few points are not told apart by one seed).
``--checkpoint`` scores a trained model instead; ``--variant`` compares matching settings
(``track.context_mm``, ``refine_mm``, ``presence_rerank``, ...) on the same embeddings. With
``--presence-calibration`` the same subjects' presence queries (gone lesions included) are tracked
too and the ``gone`` decision is scored as the presence rule makes it (precision, recall, F1, the
false counts).

The validation subject has only 16 pairs. ``--tuning-results DIR`` also scores every pair of a
second synthetic run made with another seed, which shares no phantom with the test split:

    printf 'synthetic: {seed: 1, n_train_subjects: 1, n_test_subjects: 6}\\n' > /tmp/tune/overlay.yaml
    snakemake -d /tmp/tune --configfile /tmp/tune/overlay.yaml --cores 2 results/synthetic/pairs.csv \\
        results/synthetic/shards/resampled-000.csv results/synthetic/shards/resampled-001.csv
    python bench/tune_tracker.py --results results --full --tuning-results /tmp/tune/results ...
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from lesiontrack.evaluate import metrics, per_pair
from lesiontrack.io import read_image, read_table
from lesiontrack.track.choose import choose
from lesiontrack.track.embed import Embeddings, embed_volume, load_model
from lesiontrack.track.embedding import windowed_voxels
from lesiontrack.track.match import VolumeMaps
from lesiontrack.track.predict import from_candidates
from lesiontrack.track.presence import Calibration, gone_metrics, presence_queries
from lesiontrack.track.tracker import Context, Scans
from lesiontrack.track.trackers import get as tracker
from lesiontrack.train.loop import image_id_of, model_settings, pretrain, select_volumes, train_settings


def _overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def score(checkpoint: Path, results: Path, subjects: list[str] | None, full: bool,
          variants: dict[str, dict] | None = None, presence_calibration: Path | None = None) -> dict[str, float]:
    """Track the subjects' pairs (all pairs when ``subjects`` is None) with the checkpoint (each
    volume embedded once) and summarise them with the evaluation's own metrics; one summary per
    matching variant (``track`` settings: context_mm, refine_mm, ...), keys prefixed by its name.
    With ``presence_calibration`` ``found`` is decided as the track rule decides it (among the
    candidates with ``presence_rerank``) and scored on the pairs and the gone lesions' queries."""
    model, config = load_model(checkpoint)
    pairs = read_table(results / "synthetic" / "pairs.csv")
    if subjects is not None:
        pairs = pairs[pairs["subject_id"].isin(subjects)]
    resampled = results / "synthetic" / "resampled"
    cache = Path(tempfile.mkdtemp(prefix="tune-embeddings-"))  # each volume embedded once, read per variant

    def load(image_id: str, voxels: bool = True) -> VolumeMaps:
        image = read_image(resampled / f"{image_id}.nii.gz")
        if not (cache / image_id / "geometry.json").exists():
            embed_volume(model, image, tuple(config["window_hu"])).save(cache / image_id)
        return VolumeMaps(Embeddings.load(cache / image_id), image=windowed_voxels(image, config["window_hu"]))

    calibration = Calibration.from_json(presence_calibration) if presence_calibration is not None else None
    gone_queries = None
    if calibration is not None:
        # the presence queries of lesions still there are the pairs themselves; the gone ones are added
        queries = presence_queries(read_table(results / "synthetic" / "lesions.csv"))
        gone_queries = queries[(queries["expected"] == "gone")
                               & (subjects is None or queries["subject_id"].isin(subjects))].reset_index(drop=True)

    def path_of(image_id: str) -> Path:
        return resampled / f"{image_id}.nii.gz"

    out = {}
    for name, track in (variants or {"": {}}).items():
        context = Context(Scans(maps=load), {"coarse_to_fine": not full, **track}, progress=False)
        candidates = tracker("multiscale").candidates(pairs, context)
        predictions = from_candidates(pairs, candidates, *choose(pairs, candidates, calibration, track, path_of))
        summary = metrics(per_pair(pairs, predictions), bootstrap_samples=0)
        prefix = f"{name}_" if name else ""
        out[f"{prefix}pairs"] = summary["n"]
        out.update({f"{prefix}{k}": summary[k] for k in ("cpm_radius", "med", "median", "over_20mm", "med_z")})
        if gone_queries is not None and len(gone_queries):
            # found decided as the presence rule decides it (at the best candidate, or among all
            # with presence_rerank), on the pairs (present) and the gone queries
            candidates = tracker("multiscale").candidates(gone_queries, context)
            _, found = choose(gone_queries, candidates, calibration, track, path_of)
            gone = gone_metrics(np.repeat([False, True], [len(pairs), len(gone_queries)]),
                                ~np.concatenate([predictions["found"].to_numpy(bool), found]))
            out.update({f"{prefix}gone_{k}": gone[k] for k in ("n_gone", "fp", "fn", "precision", "recall", "f1")})
    shutil.rmtree(cache)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", type=Path)
    parser.add_argument("--config", default="config.yaml", type=Path)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--set", nargs="*", default=[], help="train.KEY=VALUE overrides")
    parser.add_argument("--model", nargs="*", default=[], help="model.KEY=VALUE overrides")
    parser.add_argument("--seed", nargs="+", type=int, default=[0])
    parser.add_argument("--full", action="store_true", help="full matching instead of coarse-to-fine")
    parser.add_argument("--tuning-results", type=Path, default=None,
                        help="also score on every pair of a second synthetic run made with another "
                             "synthetic.seed (a tuning set that shares no phantom with the test split)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="score this checkpoint instead of training (one row; --set/--seed unused)")
    parser.add_argument("--variant", nargs="*", default=[],
                        help="matching variants NAME:KEY=VALUE,KEY=VALUE (track settings, e.g. "
                             "ctx:context_mm=16 ctxref:context_mm=16,refine_mm=20); default: the config's track")
    parser.add_argument("--presence-calibration", type=Path, default=None,
                        help="a presence calibration (results/synthetic/presence/calibration.json): decide "
                             "found (and choose with presence_rerank=true) and score gone")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = yaml.safe_load(args.config.read_text())
    train_section = {**config["train"], **_overrides(args.set)}
    model_section = {**config["model"], **_overrides(args.model)}
    synthetic = args.results / "synthetic"
    tables = sorted(glob.glob(str(synthetic / "shards" / "resampled-*.csv")))
    training, validation = select_volumes(synthetic / "images.csv", tables, "train",
                                          train_section.get("validation_subjects", 1))
    images = read_table(synthetic / "images.csv")
    held_out = sorted(images[images["image_id"].isin([image_id_of(p) for p in validation])]["subject_id"].unique())
    track = {k: v for k, v in (config.get("track") or {}).items() if k not in ("methods", "registration")}
    variants = {"": track}
    if args.variant:
        variants = {}
        for item in args.variant:
            name, _, settings = item.partition(":")
            variants[name] = {**track, **_overrides([x for x in settings.split(",") if x])}
    rows = []
    for seed in [None] if args.checkpoint else args.seed:
        began = time.perf_counter()
        if args.checkpoint is None:
            out = args.out_dir / f"seed{seed}"
            pretrain(training, validation, out, train_settings({**train_section, "seed": seed}),
                     model_settings(model_section), tuple(config["preprocess"]["window_hu"]), progress=False,
                     landmark_dir=synthetic / "truth")
        checkpoint = args.checkpoint or out / "checkpoint_best.pt"
        row = {"seed": seed, "train_s": time.perf_counter() - began,
               **score(checkpoint, args.results, held_out, args.full, variants, args.presence_calibration)}
        if args.tuning_results is not None:
            tuned = score(checkpoint, args.tuning_results, None, args.full, variants, args.presence_calibration)
            row.update({f"tuning_{k}": v for k, v in tuned.items()})
        rows.append(row)
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    keys = [k for k in rows[0] if k not in ("seed", "train_s") and not k.endswith(("pairs", "n_gone", "fp", "fn"))]
    summary = {k: f"{np.mean([r[k] for r in rows]):.1f} +- {np.std([r[k] for r in rows]):.1f}" for k in keys}
    print("validation subjects", held_out, "overrides", args.set, args.model, "->", summary)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "summary.json").write_text(json.dumps({"rows": rows, "summary": summary,
                                                           "overrides": args.set + args.model,
                                                           "variants": variants}, indent=1))


if __name__ == "__main__":
    main()
