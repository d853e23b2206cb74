"""Score a registration tracker (``affine``, ``deformable``, ``elastix``) on the **training**
subjects' lesion pairs of a finished run, with setting variants: the way to choose registration
settings without looking at the test split.

    python bench/tune_registration.py --results results --method elastix \\
        --variant g40:grid_spacing_mm=40 g20:grid_spacing_mm=20 [--image-pairs 12] [--threads 1]

Each variant is ``NAME:KEY=VALUE,KEY=VALUE`` laid over the method's settings (``track.elastix`` for
``elastix``, ``track.registration.<method>`` for the others). Prints, per variant, CPM@Radius, MED,
the median, the share over 20 mm and the seconds per image pair (registration and mapping only),
and writes them as JSON with ``--out``. ``--image-pairs N`` takes the first N training image pairs
(sorted) for a quicker look.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from lesiontrack.evaluate import metrics, per_pair
from lesiontrack.io import read_table
from lesiontrack.track.predict import track_table


def variant_track(method: str, values: dict) -> dict:
    """The ``track`` section that lays ``values`` over ``method``'s settings."""
    if method == "elastix":
        return {"elastix": values}
    return {"registration": {method: values}}


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, assignments = text.partition(":")
    values = {}
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        values[key] = yaml.safe_load(value)
    return name, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", type=Path)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--method", required=True)
    parser.add_argument("--variant", nargs="*", default=["default:"])
    parser.add_argument("--image-pairs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    pairs = read_table(args.results / args.dataset / "pairs.csv")
    pairs = pairs[pairs["split"] == "train"].reset_index(drop=True)
    image_pairs = sorted(set(zip(pairs["source_image"], pairs["target_image"], strict=True)))
    if args.image_pairs:
        keep = set(image_pairs[: args.image_pairs])
        pairs = pairs[[p in keep for p in zip(pairs["source_image"], pairs["target_image"], strict=True)]]
        image_pairs = sorted(keep)
    volumes = sorted((args.results / args.dataset / "shards").glob("resampled-*.csv"))
    report = {}
    for text in args.variant:
        name, values = parse_variant(text)
        predictions = track_table(pairs, args.method, volume_tables=volumes,
                                  track=variant_track(args.method, values), progress=False)
        summary = metrics(per_pair(pairs, predictions), bootstrap_samples=0)
        seconds = float(predictions["seconds"].sum()) / len(image_pairs)
        row = {k: summary[k] for k in ("n", "cpm_radius", "med", "median", "over_20mm")}
        row["seconds_per_image_pair"] = seconds
        report[name] = {"settings": values, **row}
        print(f"{name:>16}: n {row['n']}  CPM@Radius {row['cpm_radius']:.1f} %  MED {row['med']:.2f} mm  "
              f"median {row['median']:.2f} mm  >20 mm {row['over_20mm']:.1f} %  {seconds:.1f} s per image pair",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
