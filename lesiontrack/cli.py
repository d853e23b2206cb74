"""The ``lesiontrack`` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lesiontrack import __version__


def _config(paths: list[str]) -> dict:
    from lesiontrack import config

    root = Path(__file__).resolve().parent.parent
    return config.load(paths or [root / "config.yaml"])


def cmd_synth(args: argparse.Namespace) -> None:
    from lesiontrack.data import synthetic

    cfg = _config(args.config)
    synth_cfg = synthetic.SyntheticConfig.from_dict(cfg["synthetic"])
    shards = synthetic.shards(synth_cfg, args.shard_size or cfg["shard_size"])
    out = Path(args.out_dir)
    selected = range(len(shards)) if args.shard is None else [args.shard]
    for k in selected:
        if not 0 <= k < len(shards):
            raise SystemExit(f"--shard {k}: this config has shards 0..{len(shards) - 1}")
        synthetic.generate_shard(synth_cfg, shards[k], out, out / "shards" / f"images-{k:03d}.csv",
                                 out / "shards" / f"lesions-{k:03d}.csv", out / "shards" / f"pairs-{k:03d}.csv")
    if args.shard is None:
        for name in ("images", "lesions", "pairs"):
            synthetic.merge_tables([out / "shards" / f"{name}-{k:03d}.csv" for k in range(len(shards))],
                                   out / f"{name}.csv")
    print(f"wrote {out}")


def cmd_resample(args: argparse.Namespace) -> None:
    from lesiontrack import preprocess

    if args.images:
        table = preprocess.resample_table(args.images, args.out_dir, args.table, args.spacing)
        print(f"resampled {len(table)} volumes into {args.out_dir}")
    else:
        print(preprocess.resample_file(args.input, args.output, args.spacing))


def cmd_figures(args: argparse.Namespace) -> None:
    from lesiontrack import figures

    print(figures.synthetic_preview(args.dataset_dir, args.out, tuple(args.window_hu)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lesiontrack", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lesiontrack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate the synthetic longitudinal CT dataset",
                       description="Render synthetic subjects (NIfTI in HU, TotalSegmentator v2 label maps, "
                                   "ground-truth landmarks, lesions.csv and pairs.csv in world mm).")
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="config file(s), later ones override earlier ones (default: the repository's config.yaml)")
    p.add_argument("--out-dir", default="results/synthetic", help="dataset folder (default: %(default)s)")
    p.add_argument("--shard", type=int, help="render only this shard (default: all, then merge the tables)")
    p.add_argument("--shard-size", type=int, help="volumes per shard (default: config shard_size)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("resample", help="resample volumes to isotropic spacing",
                       description="Linear resampling to isotropic spacing; world coordinates are preserved.")
    p.add_argument("--spacing", type=float, default=2.0, help="isotropic spacing in mm (default: %(default)s)")
    one = p.add_argument_group("one volume")
    one.add_argument("--input", help="NIfTI file or DICOM series folder")
    one.add_argument("--output", help="output NIfTI (.nii.gz)")
    many = p.add_argument_group("a table of volumes")
    many.add_argument("--images", help="CSV with columns image_id, path")
    many.add_argument("--out-dir", help="folder for <image_id>.nii.gz")
    many.add_argument("--table", help="output CSV listing the resampled volumes")
    p.set_defaults(func=cmd_resample)

    p = sub.add_parser("figures", help="draw figures", description="Draw the synthetic dataset preview.")
    p.add_argument("--dataset-dir", default="results/synthetic")
    p.add_argument("--out", default="results/figures/synthetic_preview.png")
    p.add_argument("--window-hu", type=float, nargs=2, default=(-250.0, 250.0), metavar=("LOW", "HIGH"),
                   help="display window in HU (default: %(default)s)")
    p.set_defaults(func=cmd_figures)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "resample":
        one = args.input and args.output
        many = args.images and args.out_dir and args.table
        if bool(one) == bool(many):
            parser.error("resample: give either --input and --output, or --images, --out-dir and --table")
    from lesiontrack.config import ConfigError
    from lesiontrack.io import InputError

    try:
        args.func(args)
    except (ConfigError, InputError) as err:
        print(f"lesiontrack {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
