"""Tracking speed on the same pairs in one run: embedding, matching (full and coarse-to-fine),
and the registration baselines, with peak memory.

    python bench/track_speed.py --results results [--model default] [--pairs 8] [--lesions 20] \
        [--out bench/out/track_speed.json]

Takes the first ``--pairs`` directed image pairs of the test split whose 2 mm volumes have at
least 175 x 175 x 150 voxels, and per pair: seconds to embed each volume (whole volume, all 5
scales), seconds per lesion to match (full and coarse-to-fine, each with the paper's matching and
with the configured ``track`` settings: context points and intensity refinement; and how often
coarse-to-fine lands within one voxel of full), seconds per
registration for ``affine`` and ``deformable``. Peak memory is the process's max RSS.

``--own-data N`` also times the own-data command end to end, as a user runs it, for ``affine``,
``deformable``, ``elastix`` and ``hybrid`` in the same run: ``lesiontrack track --source --target
--points`` on the original (not resampled) volumes of the first N image pairs, ``--lesions`` points
each (load, resample, embed where the method needs it, match, refine, register, write), wall-clock
seconds of the whole command per pair (the median of ``--repeats`` runs, the methods taking turns
in the orders of a Williams square, :func:`williams_order`;
every run's seconds, and the median and range of ``hybrid`` minus ``deformable`` run by run)
and the distance of its points to the generator's truth; and ``hybrid`` on the same points with the
workflow's cached embeddings and resampled volumes (``track_table``, as the ``track`` rule runs it):
seconds per lesion, reading included; and the same with the pair's registration stored first, as
rule ``register`` stores it (``hybrid_stored_s_per_lesion``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from lesiontrack.io import read_image, read_table
from lesiontrack.track import registration
from lesiontrack.track.embed import embed_volume, load_model
from lesiontrack.track.embedding import match_settings, windowed_voxels
from lesiontrack.track.match import MatchSettings, VolumeMaps, match_point
from lesiontrack.track.predict import track_table, workflow_scans
from lesiontrack.track.registration import register_queries, registration_settings

MIN_SIZE = (175, 175, 150)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--model", default="default")
    parser.add_argument("--pairs", type=int, default=6, help="directed image pairs")
    parser.add_argument("--lesions", type=int, default=20, help="points matched per image pair")
    parser.add_argument("--out", default="bench/out/track_speed.json")
    parser.add_argument("--config", default="config.yaml", help="its track section: the configured matching")
    parser.add_argument("--own-data", type=int, default=0, metavar="N",
                        help="also time the own-data command on N image pairs (affine, deformable, elastix, hybrid)")
    parser.add_argument("--repeats", type=int, default=1, help="own-data runs per method and pair (median)")
    args = parser.parse_args()
    if args.own_data:
        own_data(Path(args.results), args.model, args.own_data, args.lesions, args.repeats,
                 Path(args.out).with_suffix(".own.json"), yaml.safe_load(Path(args.config).read_text()))
    results = Path(args.results)
    track = yaml.safe_load(Path(args.config).read_text()).get("track") or {}
    configured = match_settings("multiscale", {**track, "coarse_to_fine": False})
    variants = {"paper_full": MatchSettings(), "paper_coarse_to_fine": MatchSettings(coarse_to_fine=True),
                "configured_full": configured,
                "configured_coarse_to_fine": dataclasses.replace(configured, coarse_to_fine=True)}
    model, config = load_model(results / "models" / args.model / "checkpoint_best.pt")
    window_hu = tuple(config["window_hu"])
    pairs = read_table(results / "synthetic" / "pairs.csv")
    pairs = pairs[pairs["split"] == "test"]
    volumes = pd.concat([read_table(p) for p in sorted((results / "synthetic" / "shards").glob("resampled-*.csv"))])
    paths = dict(zip(volumes["image_id"], volumes["path"], strict=True))
    rng = np.random.default_rng(0)
    rows = []
    for (source_id, target_id), group in pairs.groupby(["source_image", "target_image"], sort=True):
        if len(rows) == args.pairs:
            break
        source, target = read_image(paths[source_id]), read_image(paths[target_id])
        if any(np.any(np.asarray(image.GetSize()) < MIN_SIZE) for image in (source, target)):
            continue
        row = {"source": source_id, "target": target_id, "source_size": source.GetSize(),
               "target_size": target.GetSize()}
        began = time.perf_counter()
        embeddings = [embed_volume(model, image, window_hu) for image in (source, target)]
        row["embed_s_per_volume"] = (time.perf_counter() - began) / 2
        maps = [VolumeMaps(e, image=windowed_voxels(image, window_hu))
                for e, image in zip(embeddings, (source, target), strict=True)]
        # the pair's lesions, then random body points of the source up to --lesions
        points = group[["source_x", "source_y", "source_z"]].to_numpy(float)
        geometry = maps[0].geometry
        while len(points) < args.lesions:
            index = rng.uniform(0.2, 0.8, size=3) * (np.asarray(geometry.size) - 1)
            points = np.vstack([points, geometry.index_to_world(index)])
        points = points[: args.lesions]
        for label, settings in variants.items():
            began = time.perf_counter()
            found = [match_point(maps[0], maps[1], p, settings).point_mm for p in points]
            row[f"match_{label}_s_per_lesion"] = (time.perf_counter() - began) / len(points)
            row[f"_{label}"] = np.array(found)
        for kind in ("paper", "configured"):
            distance = np.linalg.norm(row.pop(f"_{kind}_full") - row.pop(f"_{kind}_coarse_to_fine"), axis=1)
            row[f"{kind}_coarse_to_fine_agrees"] = float(np.mean(distance <= geometry.spacing[0]))
        for method in registration.METHODS:
            began = time.perf_counter()
            registration.register(source, target, method)
            row[f"{method}_s_per_pair"] = time.perf_counter() - began
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    frame = pd.DataFrame(rows)
    summary = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
               "pairs": len(frame), "lesions_per_pair": args.lesions,
               **{c: float(frame[c].mean()) for c in frame.columns if c.endswith(("_s", "_s_per_volume",
                                                                                 "_s_per_lesion", "_s_per_pair",
                                                                                 "_agrees"))},
               "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "pairs": frame.astype(str).to_dict("records")},
                                         indent=1))


OWN_METHODS = ("affine", "deformable", "elastix", "hybrid")


def _cached_hybrid(results: Path, model: str, queries: pd.DataFrame, config: dict,
                   registrations: list[Path] = ()) -> float:
    """Seconds of ``hybrid`` on ``queries`` with the workflow's cached embeddings and resampled
    volumes (reading included), as the ``track`` rule runs it; with ``registrations``, the
    workflow's stored registrations (rule ``register``) read instead of run."""
    volumes = sorted((results / "synthetic" / "shards").glob("resampled-*.csv"))
    began = time.perf_counter()
    track_table(queries, "hybrid", results / "synthetic" / "embeddings" / model, volumes,
                config.get("track") or {}, progress=False, registrations=registrations)
    return time.perf_counter() - began


def williams_order(methods: tuple[str, ...], run: int) -> list[str]:
    """The methods in the order of row ``run`` of a Williams square: over len(methods) runs each
    method runs once in each place and right after each other method once (an even number of
    methods). In one fixed order ``hybrid`` always ran right after elastix's 20 s on both cores."""
    n = len(methods)
    first = [0] + [k // 2 + 1 if k % 2 == 0 else n - (k + 1) // 2 for k in range(n - 1)]
    return [methods[(j + run) % n] for j in first]


def own_data(results: Path, model: str, n_pairs: int, n_lesions: int, repeats: int, out: Path, config: dict
             ) -> None:
    """``lesiontrack track`` on own-data files, end to end, per method on the same pairs and points."""
    pairs = read_table(results / "synthetic" / "pairs.csv")
    pairs = pairs[pairs["split"] == "test"]
    images = read_table(results / "synthetic" / "images.csv").set_index("image_id")["path"]
    checkpoint = results / "models" / model / "checkpoint_best.pt"
    rows = []
    for (source_id, target_id), group in list(pairs.groupby(["source_image", "target_image"], sort=True))[:n_pairs]:
        group = pd.concat([group] * (n_lesions // len(group) + 1)).head(n_lesions)  # lesions repeated up to N
        with tempfile.TemporaryDirectory() as tmp:
            points = Path(tmp) / "points.csv"
            frame = group[["source_x", "source_y", "source_z"]].set_axis(["x", "y", "z"], axis=1)
            frame.insert(0, "lesion_id", [f"L{k:02d}" for k in range(len(frame))])
            frame.to_csv(points, index=False)
            truth = group[["target_x", "target_y", "target_z"]].to_numpy(float)
            row = {"source": source_id, "target": target_id, "lesions": len(frame)}
            seconds = {method: [] for method in OWN_METHODS}
            for run in range(repeats):
                for method in williams_order(OWN_METHODS, run):
                    command = [str(Path(sys.executable).parent / "lesiontrack"), "track",  # the installed command
                               "--source", str(images[source_id]), "--target", str(images[target_id]),
                               "--points", str(points), "--method", method,
                               "--checkpoint", str(checkpoint), "--out", f"{tmp}/{method}.csv"]
                    began = time.perf_counter()
                    done = subprocess.run(command, capture_output=True, text=True)
                    if done.returncode:
                        raise SystemExit(f"{method}: {done.stderr.strip()}")
                    seconds[method].append(time.perf_counter() - began)
                    tracked = read_table(f"{tmp}/{method}.csv")[["x", "y", "z"]].to_numpy(float)
                    row[f"{method}_median_mm"] = float(np.median(np.linalg.norm(tracked - truth, axis=1)))
            row.update({f"{method}_s": float(np.median(s)) for method, s in seconds.items()})
            row.update({f"{method}_s_runs": [round(v, 3) for v in s] for method, s in seconds.items()})
            # the methods take turns, so run k of each saw about the same state of the machine: paired differences
            paired = np.subtract(seconds["hybrid"], seconds["deformable"])
            row["hybrid_minus_deformable_s"] = float(np.median(paired))
            row["hybrid_minus_deformable_s_range"] = [round(float(paired.min()), 3), round(float(paired.max()), 3)]
            queries = group.reset_index(drop=True)
            row["hybrid_cached_s_per_lesion"] = _cached_hybrid(results, model, queries, config) / len(group)
            stored = Path(tmp) / "registrations"  # what rule register stores, made here for this pair
            volumes = sorted((results / "synthetic" / "shards").glob("resampled-*.csv"))
            register_queries(queries, workflow_scans(None, volumes, "pairs").image, "deformable",
                             registration_settings("deformable", config.get("track")), stored, progress=False)
            row["hybrid_stored_s_per_lesion"] = _cached_hybrid(results, model, queries, config, [stored]) / len(group)
        rows.append(row)
        print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    frame = pd.DataFrame(rows)
    summary = {"machine": f"{platform.processor() or platform.machine()}", "pairs": len(frame),
               "lesions_per_pair": n_lesions, "repeats": repeats,
               **{c: float(frame[c].mean()) for c in frame.columns if c.endswith(("_s", "_s_per_lesion"))}}
    print(json.dumps(summary, indent=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "pairs": frame.to_dict("records")}, indent=1))


if __name__ == "__main__":
    main()
