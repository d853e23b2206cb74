"""Score a tracker on the **training** subjects' lesion pairs of a finished run (or every pair of a
tuning run made with another ``synthetic.seed``), with setting variants: the way to choose tracker
settings without looking at the test split.

    python bench/tune_on_training.py --results results --method elastix \\
        --variant g40:elastix.grid_spacing_mm=40 g20:elastix.grid_spacing_mm=20 [--image-pairs 12]
    python bench/tune_on_training.py --results runs/dls-like/results --method hybrid \\
        --embeddings runs/dls-like/emb_train --config configs/dls-like.yaml \\
        --variant t05:hybrid.trust_correlation=0.5 t07:hybrid.trust_correlation=0.7

Each variant is ``NAME:KEY=VALUE,KEY=VALUE`` with dotted keys into the ``track`` section of the
config (``config.yaml`` plus ``--config`` overlays), e.g. ``registration.deformable.iterations``.
The embedding trackers and ``hybrid`` need the pairs' volumes embedded (``lesiontrack embed
--images <run>/results/synthetic/shards/resampled-*.csv --out-dir DIR``, run in the run's folder).
Prints, per variant, CPM@Radius, MED, the median, the share over 20 mm and the seconds per image
pair (tracking only, reading excluded), and writes them as JSON with ``--out`` (beside it, each
variant's distances pair by pair: ``<out>.<variant>.csv``).
``--registrations DIR ...`` reads the pairs' stored registrations (``lesiontrack register
--threads 1``) instead of registering every pair again for every variant.
``--image-pairs N`` takes the first N image pairs (sorted) for a quicker look. Registration runs
single-threaded, as in every workflow rule, so that a variant's score repeats itself
(lesiontrack.track.registration; before 2026-12-04 it ran on all cores).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
from pathlib import Path

import yaml

from lesiontrack import config as lt_config
from lesiontrack.evaluate import metrics, per_pair
from lesiontrack.io import InputError, read_table, write_table
from lesiontrack.track.predict import track_table
from lesiontrack.track.registration import check_stores, use_threads


def variant_track(track: dict, values: dict) -> dict:
    """``track`` with the dotted keys of ``values`` set."""
    track = copy.deepcopy(track)
    for key, value in values.items():
        *path, last = key.split(".")
        section = track
        for part in path:
            section = section.setdefault(part, {})
        section[last] = value
    return track


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME:KEY=VALUE,KEY=VALUE`` (values in YAML, lists as ``[4,2,0]``) as (name, {key: value});
    a malformed one stops the run in one line naming it."""
    name, _, assignments = text.partition(":")
    values = {}
    for item in filter(None, re.split(r",(?=[A-Za-z_][\w.]*=)", assignments)):  # commas inside [..] stay
        key, equals, value = item.partition("=")
        loose = "," in re.sub(r"\[[^\]]*\]|\{[^}]*\}", "", value)  # a comma outside [..] starts no KEY=
        if not (equals and re.fullmatch(r"[A-Za-z_][\w.]*", key)) or loose:
            raise SystemExit(f"--variant {text}: {item!r} is not KEY=VALUE")
        try:
            values[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise SystemExit(f"--variant {text}: {key} = {value!r} is not a YAML value "
                             f"({str(error).splitlines()[0]})") from None
    return name, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", type=Path)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--method", required=True)
    parser.add_argument("--config", nargs="*", default=[], help="config overlays (the run's)")
    parser.add_argument("--embeddings", type=Path, default=None, help="folder of the pairs' embeddings")
    parser.add_argument("--splits", nargs="+", default=["train"], help="splits scored (a tuning run: train test)")
    parser.add_argument("--presence", action="store_true",
                        help="decide found and choose among candidates with the run's presence calibration, as "
                             "the workflow does (results/<dataset>/presence/calibration.json)")
    parser.add_argument("--registrations", nargs="*", type=Path, default=[],
                        help="folders of stored registrations (lesiontrack register), read instead of registering "
                             "every pair again for every variant")
    parser.add_argument("--variant", nargs="*", default=["default:"])
    parser.add_argument("--image-pairs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    variants = [parse_variant(text) for text in args.variant]  # every variant checked before any work
    use_threads(1)

    track = lt_config.load(["config.yaml", *args.config])["track"]
    embeddings = args.embeddings.resolve() if args.embeddings else None
    out = args.out.resolve() if args.out else None
    stored = [folder.resolve() for folder in args.registrations]
    try:  # before any work: a folder that lesiontrack register did not write
        check_stores(stored)
    except InputError as err:
        parser.error(f"--registrations {err}")
    os.chdir(args.results.resolve().parent)  # the volume tables' paths are relative to the run
    results = Path(args.results.resolve().name)
    pairs = read_table(results / args.dataset / "pairs.csv")
    pairs = pairs[pairs["split"].isin(args.splits)].reset_index(drop=True)
    image_pairs = sorted(set(zip(pairs["source_image"], pairs["target_image"], strict=True)))
    if args.image_pairs:
        keep = set(image_pairs[: args.image_pairs])
        pairs = pairs[[p in keep for p in zip(pairs["source_image"], pairs["target_image"], strict=True)]]
        image_pairs = sorted(keep)
    volumes = sorted((results / args.dataset / "shards").glob("resampled-*.csv"))
    report = {}
    for name, values in variants:
        calibration = results / args.dataset / "presence" / "calibration.json" if args.presence else None
        predictions = track_table(pairs, args.method, embeddings, volumes, variant_track(track, values),
                                  progress=False, presence_calibration=calibration, registrations=stored)
        scored = per_pair(pairs, predictions)
        summary = metrics(scored, bootstrap_samples=0)
        if out:  # each pair's distance, to name the lesions a variant moves
            write_table(scored, out.with_name(f"{out.stem}.{name}.csv"))
        seconds = float(predictions["seconds"].sum()) / len(image_pairs)
        row = {k: summary[k] for k in ("n", "cpm_radius", "med", "median", "over_20mm")}
        row["seconds_per_image_pair"] = seconds
        report[name] = {"settings": values, **row}
        print(f"{name:>16}: n {row['n']}  CPM@Radius {row['cpm_radius']:.1f} %  MED {row['med']:.2f} mm  "
              f"median {row['median']:.2f} mm  >20 mm {row['over_20mm']:.1f} %  {seconds:.1f} s per image pair",
              flush=True)
    if out:
        out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
