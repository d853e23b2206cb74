"""The ``lesiontrack`` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path

import pandas as pd
import torch

from lesiontrack import __version__, check, config, evaluate, figures, follow, landmarks, preprocess
from lesiontrack.config import ConfigError
from lesiontrack.data import custom, dls, nlst, synthetic
from lesiontrack.data.datasets import title
from lesiontrack.data.simulate import CONDITIONS, simulate
from lesiontrack.download import DownloadError, download
from lesiontrack.evaluate import method_slug
from lesiontrack.evaluate_presence import evaluate_presence
from lesiontrack.figures import tracking_qa_images
from lesiontrack.io import (
    InputError,
    check_apart,
    check_writable,
    read_image,
    read_table,
    staged_folder,
    volume_paths,
    write_table,
)
from lesiontrack.landmarks import read_landmarks
from lesiontrack.track import predict, presence, registration
from lesiontrack.track.embed import embed_files
from lesiontrack.track.trackers import TRACKERS, check_settings
from lesiontrack.train.loop import image_id_of, model_settings, pretrain, train_settings
from lesiontrack.workflow import forward_interrupts

METHODS = list(TRACKERS)


def check_device(device: str) -> None:
    """Stop before any work on a device this installation cannot use."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available to this PyTorch build "
                         f"({torch.__version__}); use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise InputError(f"--device {device}: expected cpu or cuda[:N]")


def _config(paths: list[str]) -> dict:
    """The config of ``paths`` (none: the packaged defaults, the default run's settings), validated,
    the trackers' settings included."""
    cfg = config.load(paths)
    check_settings(cfg["track"], ", ".join(map(str, paths)) or "the packaged defaults")
    return cfg


def cmd_synth(args: argparse.Namespace) -> None:
    cfg = _config(args.config)
    synth_cfg = synthetic.SyntheticConfig.from_dict(cfg["synthetic"])
    shards = synthetic.shards(synth_cfg, args.shard_size or cfg["shard_size"])
    out = Path(args.out_dir)
    selected = range(len(shards)) if args.shard is None else [args.shard]
    for k in selected:
        if not 0 <= k < len(shards):
            raise InputError(f"--shard {k}: this config has shards 0..{len(shards) - 1}")
        synthetic.generate_shard(synth_cfg, shards[k], out, out / "shards" / f"images-{k:03d}.csv",
                                 out / "shards" / f"lesions-{k:03d}.csv", out / "shards" / f"pairs-{k:03d}.csv")
    if args.shard is None:
        for name in ("images", "lesions", "pairs"):
            synthetic.merge_tables([out / "shards" / f"{name}-{k:03d}.csv" for k in range(len(shards))],
                                   out / f"{name}.csv")
    print(f"wrote {out}")


def cmd_resample(args: argparse.Namespace) -> None:
    for path, folder in ((args.output, False), (args.out_dir, True), (args.table, False)):
        if path is not None:
            check_writable(path, folder)
    if args.images:
        table = preprocess.resample_table(args.images, args.out_dir, args.table, args.spacing)
        print(f"resampled {len(table)} volumes into {args.out_dir}")
    else:
        print(preprocess.resample_file(args.input, args.output, args.spacing))


def cmd_figures(args: argparse.Namespace) -> None:
    needed = {"training": ["log", "out"], "landmarks": ["image", "landmarks", "out"]}.get(args.what, [])
    missing = [f"--{name}" for name in needed if getattr(args, name) is None]
    if missing:
        raise InputError(f"figures {args.what}: {', '.join(missing)} required")
    if args.out is None:
        args.out = ("results/figures/synthetic_preview.png" if args.what == "preview"
                    else f"results/figures/{Path(args.dataset_dir).name}")
    if args.what == "preview":
        written = [figures.synthetic_preview(args.dataset_dir, args.out, tuple(args.window_hu))]
    elif args.what == "training":
        written = figures.training_curves(read_table(args.log), args.out)
    elif args.what == "landmarks":
        written = figures.landmark_overlay(read_image(args.image), read_landmarks(args.landmarks), args.out)
    else:  # a tracked dataset, files found by the Contracts' layout
        folder = Path(args.dataset_dir)
        methods = args.methods or sorted(p.name[: -len("-pairs.csv")] for p in (folder / "metrics").glob("*-pairs.csv"))
        errors = {name: folder / "metrics" / f"{method_slug(name)}-pairs.csv" for name in methods}
        embeddings = folder / "embeddings" / args.model
        written = figures.dataset_figures(
            folder / "pairs.csv", errors, folder / "predictions" / f"{method_slug(args.reference)}.csv",
            sorted((folder / "shards").glob("resampled-*.csv")), embeddings if embeddings.is_dir() else None,
            args.out, args.split, args.reference, tuple(args.window_hu))
    for path in written:
        print(path)


def cmd_evaluate(args: argparse.Namespace) -> None:
    result = evaluate.evaluate_files(args.predictions, args.out, args.pairs, args.prediction_field, args.per_pair,
                                     args.split, args.min_radius_mm, args.bootstrap_samples, args.seed)
    print(f"{Path(args.predictions).name}: n {result['n']}  CPM@10mm {result['cpm_10mm']:.2f}  CPM@Radius "
          f"{result['cpm_radius']:.2f}  MED {result['med']:.2f} +- {result['med_std']:.2f} mm  -> {args.out}")


def cmd_embed(args: argparse.Namespace) -> None:
    volumes = volume_paths(args.images or [])
    volumes.update({image_id_of(path): path for path in args.volumes or []})
    if not volumes:
        raise InputError("give --images TABLE or --volumes FILE ...")
    check_device(args.device)
    rows = embed_files(args.checkpoint, volumes, args.out_dir, args.device, args.max_voxels)
    print(f"embedded {len(rows)} volume(s) into {args.out_dir}")


def cmd_track(args: argparse.Namespace) -> None:
    cfg = _config(args.config)
    track = cfg["track"]
    if args.source or args.target or args.points:
        if not (args.source and args.target and args.points):
            raise InputError("own data needs --source, --target and --points")
        check_writable(args.out)
        if args.qa_dir is not None:
            check_writable(args.qa_dir, folder=True)
        check_device(args.device)
        table = predict.track_points(args.source, args.target, args.points, args.checkpoint, None, args.method,
                                     track, args.device, cfg["preprocess"]["spacing_mm"], args.presence)
        with staged_folder(args.qa_dir) as qa_dir:  # the pictures land only with the predictions
            if qa_dir is not None:
                tracking_qa_images(read_image(args.source), read_image(args.target), read_table(args.points), table,
                                   qa_dir, args.method)
            write_table(table, args.out)
        print(f"{args.method}: {len(table)} point(s) -> {args.out}")
        return
    if not args.pairs:
        raise InputError("give --pairs (workflow form) or --source/--target/--points")
    check_writable(args.out)
    table = predict.predict_pairs(args.pairs, args.method, args.out, args.split, args.embeddings, args.volumes, track,
                                  presence_calibration=args.presence, registrations=args.registrations)
    print(f"{args.method}: {len(table)} predictions -> {args.out}")


def cmd_register(args: argparse.Namespace) -> None:
    check_writable(args.out_dir, folder=True)
    table = predict.register_pairs(args.pairs, args.method, args.out_dir, args.split, args.volumes,
                                   _config(args.config)["track"])
    print(f"{args.method}: {len(table)} image pair(s) registered -> {args.out_dir}")


def cmd_follow(args: argparse.Namespace) -> None:
    cfg = _config(args.config)
    check_writable(args.out, folder=True)
    check_device(args.device)
    history = follow.follow(args.scans, args.points, args.out, args.lesions, args.checkpoint, args.method,
                            cfg["track"], args.device, cfg["preprocess"]["spacing_mm"], args.presence,
                            allow_order=args.allow_order)
    counts = history["status"].value_counts()
    print(f"{args.method}: {history['lesion_id'].nunique()} lesion(s) over {len(args.scans)} scans "
          f"({counts.get('gone', 0)} gone, {counts.get('new', 0)} new, {int(history['inconsistent'].sum())} "
          f"inconsistent row(s)) -> {Path(args.out) / 'history.csv'}")


def cmd_presence_calibrate(args: argparse.Namespace) -> None:
    calibration = presence.calibrate_presence(args.lesions, args.volumes, args.out, args.split)
    print(json.dumps(dataclasses.asdict(calibration), default=float))


def cmd_presence(args: argparse.Namespace) -> None:
    report = evaluate_presence(args.pairs, args.lesions, args.predictions, args.method, args.calibration,
                                        args.out, args.report, args.split, args.embeddings, args.volumes,
                                        _config(args.config)["track"], args.registrations)
    print(json.dumps(report, default=float))


def cmd_table(args: argparse.Namespace) -> None:
    table = evaluate.table_files(args.dataset, [tuple(m) for m in args.method], args.reference, args.out_dir,
                                 title(args.dataset))
    print(table.to_string(index=False))


def cmd_landmarks(args: argparse.Namespace) -> None:
    if args.images:
        if not (args.out_dir and args.table):
            raise InputError("give --out-dir and --table")
        table = landmarks.landmarks_shard(args.images, args.backend, args.out_dir, args.table, args.truth_dir)
        print(f"{len(table)} landmark table(s), {table['rows'].min() if len(table) else 0}-"
              f"{table['rows'].max() if len(table) else 0} rows each -> {args.out_dir}")
        return
    if not args.out:
        raise InputError("give --out (one volume) or --images, --out-dir and --table")

    check_writable(args.out)
    table = landmarks.volume_landmarks(args.backend, args.image, args.labels, args.class_map, args.file)
    write_table(table, args.out)
    print(f"{len(table)} landmarks ({args.backend}) -> {args.out}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    cfg = _config(args.config)
    log = pretrain(args.volumes, args.validation, args.out_dir, train_settings(cfg["train"]),
                   model_settings(cfg["model"]), tuple(cfg["preprocess"]["window_hu"]),
                   landmark_dir=args.landmarks)
    print(log.tail(1).to_string(index=False))


def _download_dls(args: argparse.Namespace) -> None:
    """DLS annotations, DL_info.csv and the DeepLesion archives, then the archive index and the
    series plan (which series to convert, in which shard)."""
    settings = _config(args.config)
    cfg = settings["dls"]
    if args.archives:
        cfg["archives"] = args.archives
    out = Path(args.out_dir or "results/dls")
    if notice := dls.no_dl_info_notice({**settings, "datasets": {"dls": {"enabled": True, "download": True}}}):
        print(notice, file=sys.stderr)
    paths = dls.download_all(cfg, out)
    archives = [p for p in paths if Path(p).name.startswith("Images_png_")]
    annotations = [p for p in paths if Path(p).suffix == ".json"]
    dl_info = next((p for p in paths if Path(p).name == "DL_info.csv"), None)
    index = dls.archive_index(archives, out / "archive_index.csv")
    plan = dls.plan_series(index, dl_info, annotations, args.shard_size or settings["shard_size"],
                           cfg["pretraining"], out / "series.csv")
    print(f"{index['series_id'].nunique()} series in {len(archives)} archive(s); {len(plan)} to convert "
          f"({(plan['role'] == 'dls').sum()} DLS, {(plan['role'] == 'pretrain').sum()} pretraining) -> "
          f"{out / 'series.csv'}")


def _download_nlst(args: argparse.Namespace) -> None:
    """The NLSTx table, the evaluation series and the training cohort from the offline IDC index,
    then every series."""
    spec = _config(args.config)["datasets"]["nlst"]
    out = Path(args.out_dir or "results/nlst")
    nlstx_csv = args.nlstx or download(spec["nlstx_url"], out / "nlstx_dataset.csv", sha256=spec["nlstx_sha256"])
    series = nlst.select_stage(nlstx_csv, out / "series.csv", spec["n_training_patients"], spec["seed"],
                               spec["slice_spacing_mm"], spec["min_slices"])
    if not args.select_only:
        table = nlst.download_stage(out / "series.csv", None, out / "dicom", out / "dicom.csv")
        print(f"{len(table)} of {len(series)} series in {out / 'dicom'}")


def _convert_dls(args: argparse.Namespace) -> None:
    if not (args.index and (args.dl_info or args.annotations) and (args.series or args.plan)):
        raise InputError("--dataset dls: give --index, --dl-info DL_info.csv and/or --annotations JSON ..., and "
                         "--series ID ... or --plan series.csv [--shard N]")
    series = list(args.series or [])
    if args.plan:
        plan = pd.read_csv(args.plan, dtype=str)
        chosen = plan["shard"] == f"{args.shard:03d}" if args.shard is not None else plan["shard"].notna()
        series += plan.loc[chosen, "series_id"].tolist()
    table = dls.convert(args.index, args.dl_info, series, args.images_dir, args.table, check=not args.no_check,
                        split_jsons=args.annotations or ())
    print(f"converted {len(table)} sub-volume(s) of {len(set(series))} series into {args.images_dir}")


def _convert_custom(args: argparse.Namespace) -> None:
    if not args.inputs:
        raise InputError("--dataset custom: give --inputs FILE|FOLDER|GLOB ...")
    table = custom.convert(args.inputs, args.images_dir, args.table)
    print(f"converted {len(table)} series into {args.images_dir}")


def _convert_nlst(args: argparse.Namespace) -> None:
    if not args.dicom_table:
        raise InputError("--dataset nlst: give --dicom-table")
    table = nlst.convert_stage(args.dicom_table, args.images_dir, args.table)
    print(f"converted {len(table)} series into {args.images_dir}")


def _pairs_dls(args: argparse.Namespace, out_dir: Path) -> None:
    if not args.test:
        raise InputError("--dataset dls: give --test test.json [--valid valid.json]")
    splits = {"test": args.test, **({"valid": args.valid} if args.valid else {})}
    table = dls.pairs_table(splits, out_dir / "pairs.csv")
    print(f"{len(table)} directed pairs ({table['pair_id'].nunique()} pair ids per split) -> {out_dir}")


def _pairs_custom(args: argparse.Namespace, out_dir: Path) -> None:
    if not (args.pairs_csv and len(args.images) == 1):
        raise InputError("--dataset custom: give --pairs-csv and one --images table")
    pairs = custom.pairs_stage(args.pairs_csv, args.images[0], out_dir / "pairs.csv")
    print(f"custom: {len(pairs)} pair rows inside their volumes -> {out_dir}")


def _pairs_nlst(args: argparse.Namespace, out_dir: Path) -> None:
    if not (args.nlstx and args.dicom_dir):
        raise InputError("--dataset nlst: give --nlstx and --dicom-dir")
    if args.check_slices:
        scores = nlst.check_slices(nlst.read_nlstx(args.nlstx), args.dicom_dir)
        print(f"{nlst.LABEL} slice-number conventions, best first (mean dense-blob-in-lung score):")
        print(scores.to_string(index=False))
        return
    convention = args.convention or _config(args.config)["datasets"]["nlst"]["slice_number_convention"]
    if convention is None:
        raise InputError("--dataset nlst: NLSTx's Slice number convention is undecided: give --convention "
                         "(lesiontrack check --dataset nlst decides it from the downloaded series)")
    pairs, lesions = nlst.pairs_stage(args.nlstx, args.images, args.dicom_dir, convention,
                                      out_dir / "pairs.csv", out_dir / "lesions.csv")
    print(f"{nlst.LABEL}: {pairs['pair_id'].nunique()} pairs ({len(pairs)} directed), {len(lesions)} nodule "
          f"findings -> {out_dir}")


# what each real dataset does for download / convert / pairs (the synthetic one has `synth`)
DOWNLOADERS = {"dls": _download_dls, "nlst": _download_nlst}
CONVERTERS = {"dls": _convert_dls, "nlst": _convert_nlst, "custom": _convert_custom}
PAIR_MAKERS = {"dls": _pairs_dls, "nlst": _pairs_nlst, "custom": _pairs_custom}


def cmd_download(args: argparse.Namespace) -> None:
    DOWNLOADERS[args.dataset](args)


def cmd_convert(args: argparse.Namespace) -> None:
    CONVERTERS[args.dataset](args)


def cmd_pairs(args: argparse.Namespace) -> None:
    PAIR_MAKERS[args.dataset](args, Path(args.out_dir or f"results/{args.dataset}"))


def _add_dataset_commands(sub) -> None:
    """download / convert / pairs of the real datasets: --dataset dls | nlst | custom."""
    p = sub.add_parser("download", help="select and download a real dataset",
                       description="dls: the DLS annotations, DL_info.csv and the DeepLesion archives of the "
                                   "config's dls section (resumable, retried, verified), then the archive index "
                                   "and the series plan. nlst: fetch the NLSTx table, select the evaluation "
                                   "series and the unlabeled training cohort from the offline IDC index (prints "
                                   "the download size first), then download every series with idc-index (s5cmd); "
                                   "resumable.")
    p.add_argument("--dataset", required=True, choices=list(DOWNLOADERS))
    p.add_argument("--config", action="append", default=[], metavar="YAML")
    p.add_argument("--out-dir", help="default: results/<dataset>")
    p.add_argument("--archives", type=int, nargs="+", help="dls: archive numbers 1..56 (default: config dls.archives)")
    p.add_argument("--shard-size", type=int, help="dls: series per conversion shard (default: config shard_size)")
    p.add_argument("--nlstx", help="nlst: local NLSTx CSV (default: download datasets.nlst.nlstx_url)")
    p.add_argument("--select-only", action="store_true", help="nlst: write series.csv and the size; download nothing")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("convert", help="DICOM series or DeepLesion PNG slices -> NIfTI",
                       description="nlst, custom: convert DICOM series folders (slice spacing from "
                                   "ImagePositionPatient; a missing or irregular slice, or several series in a "
                                   "folder, is rejected) and NIfTI files. dls: runs of contiguous DeepLesion PNG "
                                   "slices -> PPPPPP_SS_SS_FFF-LLL.nii.gz in HU (world mm, LPS), spacing from the "
                                   "DLS annotations and/or DL_info.csv, slices towards the feet; checks lungs "
                                   "above liver.")
    p.add_argument("--dataset", required=True, choices=list(CONVERTERS))
    p.add_argument("--index", help="dls: archive index CSV (written by download --dataset dls)")
    p.add_argument("--dl-info", help="dls: DL_info.csv (needed for series that no --annotations file names)")
    p.add_argument("--annotations", nargs="+", metavar="JSON",
                   help="dls: DLS annotation files (test.json, valid.json): their volumes' spacings, checked "
                        "against --dl-info where both are given")
    p.add_argument("--series", nargs="+", help="dls: series ids PPPPPP_SS_SS")
    p.add_argument("--plan", help="dls: series plan CSV (series.csv of download --dataset dls)")
    p.add_argument("--shard", type=int, help="dls: only this shard of the plan")
    p.add_argument("--no-check", action="store_true", help="dls: skip the head-feet check")
    p.add_argument("--dicom-table", help="nlst: CSV image_id, path (series folders)")
    p.add_argument("--inputs", nargs="+", help="custom: volume files, DICOM series folders or glob patterns")
    p.add_argument("--images-dir", required=True, help="folder for <image_id>.nii.gz")
    p.add_argument("--table", required=True, help="output CSV image_id, path, ...")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("pairs", help="ground-truth pairs.csv and lesions.csv in world mm",
                       description="custom: check a pairs CSV in world mm against its volumes. dls: DLS "
                                   "annotations -> one row per directed pair (entries 2k-1 forward, 2k backward "
                                   "share pair_id k), points in world mm, radius from the RECIST diameter. nlst: "
                                   "NLSTx boxes -> nodule centres (world mm, LPS) and radii; all pairs of screening "
                                   "years, both directions. --check-slices scores each slice-number convention on "
                                   "the downloaded DICOM instead.")
    p.add_argument("--dataset", required=True, choices=list(PAIR_MAKERS))
    p.add_argument("--test", help="dls: DLS test.json")
    p.add_argument("--valid", help="dls: DLS valid.json")
    p.add_argument("--config", action="append", default=[], metavar="YAML")
    p.add_argument("--nlstx", help="nlst: NLSTx CSV")
    p.add_argument("--dicom-dir", help="nlst: folder of <SeriesInstanceUID>/ DICOM series")
    p.add_argument("--pairs-csv", help="custom: pairs CSV in world mm (checked against the --images volumes)")
    p.add_argument("--images", action="append", default=[], metavar="CSV", help="table(s) image_id, path of NIfTI")
    p.add_argument("--convention", choices=["instance_number", "index0", "index1"],
                   help="default: datasets.nlst.slice_number_convention (see lesiontrack check --dataset nlst)")
    p.add_argument("--out-dir", help="default: results/<dataset>")
    p.add_argument("--check-slices", action="store_true",
                   help="score each slice-number convention by a dense blob in lung inside the boxes")
    p.set_defaults(func=cmd_pairs)


def _parser_synth(sub) -> None:
    p = sub.add_parser("synth", help="generate the synthetic longitudinal CT dataset",
                       description="Render synthetic subjects (NIfTI in HU, TotalSegmentator v2 label maps, "
                                   "ground-truth landmarks, lesions.csv and pairs.csv in world mm).")
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="config file(s), later ones override earlier ones (default: the packaged defaults)")
    p.add_argument("--out-dir", default="results/synthetic", help="dataset folder (default: %(default)s)")
    p.add_argument("--shard", type=int, help="render only this shard (default: all, then merge the tables)")
    p.add_argument("--shard-size", type=int, help="volumes per shard (default: config shard_size)")
    p.set_defaults(func=cmd_synth)


def _parser_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="follow-ups of your own scans with known motion, to measure trackers on",
                       description="Insert lesions into each scan and make follow-ups of it with known motion and "
                                   "acquisition changes (lesiontrack.data.simulate): OUT/images/, OUT/images.csv "
                                   "and OUT/pairs.csv (both directions, world mm), ready for track --pairs and "
                                   "evaluate, or the custom dataset.")
    p.add_argument("--scans", nargs="+", required=True, help="NIfTI files or DICOM series folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS), metavar="NAME",
                   help=f"which follow-ups (default: all: {', '.join(CONDITIONS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one follow-up per seed (default: 0)")
    p.add_argument("--lesions", type=int, default=8, help="lesions inserted per scan (default: %(default)s)")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args: argparse.Namespace) -> None:
    if args.lesions < 1:
        raise InputError(f"--lesions {args.lesions}: at least 1")
    check_writable(args.out, folder=True)
    pairs = simulate(args.scans, args.out, args.conditions, args.seeds, args.lesions)
    print(f"{pairs['pair_id'].nunique()} lesion pair(s) in {pairs['subject_id'].nunique()} image pair(s) -> "
          f"{Path(args.out) / 'pairs.csv'}")


def _parser_resample(sub) -> None:
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


def _parser_figures(sub) -> None:
    p = sub.add_parser("figures", help="draw figures (PNG and PDF)",
                       description="dataset: the figures of a tracked dataset from its results folder (qualitative "
                                   "best/median/worst cases, a lesion over three scans, similarity maps per scale, "
                                   "error CDF, CPM against radius, error per axis); training: the training curves "
                                   "of a training_log.tsv; landmarks: a landmark table drawn on its CT; preview: the "
                                   "synthetic dataset preview. Every figure is checked: no overlapping text, "
                                   "colours from the palette only.")
    p.add_argument("what", nargs="?", choices=("dataset", "training", "landmarks", "preview"), default="dataset")
    p.add_argument("--dataset-dir", default="results/synthetic", help="dataset and preview (default: %(default)s)")
    p.add_argument("--out", help="output: a folder for dataset, a file name without suffix for training and "
                                 "landmarks (PNG and PDF), a PNG for preview")
    p.add_argument("--methods", nargs="+", help="dataset: method names (default: every metrics/<m>-pairs.csv)")
    p.add_argument("--reference", default="multiscale", help="dataset: the method shown (default: %(default)s)")
    p.add_argument("--model", default="default", help="dataset: embeddings/<model> for the similarity maps")
    p.add_argument("--split", default="test", help="dataset: the evaluated split (default: %(default)s)")
    p.add_argument("--log", help="training: training_log.tsv")
    p.add_argument("--image", help="landmarks: the CT (NIfTI or DICOM folder)")
    p.add_argument("--landmarks", help="landmarks: table name, x, y, z[, confidence]")
    p.add_argument("--window-hu", type=float, nargs=2, default=(-250.0, 250.0), metavar=("LOW", "HIGH"),
                   help="display window in HU (default: %(default)s)")
    p.set_defaults(func=cmd_figures)


def _parser_landmarks(sub) -> None:
    p = sub.add_parser("landmarks", help="named anatomical landmarks (world mm) of a CT",
                       description="Backends: totalseg (from a TotalSegmentator label map: --labels, v2 ids or "
                                   "--class-map), heuristic (intensities only: lungs, carina; --image), synthetic "
                                   "and file (a table name, x, y, z checked against the vocabulary; --file). "
                                   "Writes name, x, y, z, confidence; a structure cut by the field of view is "
                                   "left out.")
    p.add_argument("--backend", required=True, choices=["totalseg", "heuristic", "synthetic", "file"])
    one = p.add_argument_group("one volume")
    one.add_argument("--image", help="CT (NIfTI or DICOM series folder): for heuristic, and for totalseg with a "
                                     "DICOM SEG (puts the SEG on the CT's grid)")
    one.add_argument("--labels", help="label map (NIfTI, or a DICOM SEG file), for totalseg")
    one.add_argument("--class-map", help="TotalSegmentator class map JSON (default: v2 ids)")
    one.add_argument("--file", help="landmark table, for synthetic and file")
    one.add_argument("--out", help="output CSV")
    many = p.add_argument_group("a table of volumes (workflow form)")
    many.add_argument("--images", help="CSV image_id, path[, label_path]")
    many.add_argument("--truth-dir", help="synthetic: folder of <image_id>.csv ground-truth tables")
    many.add_argument("--out-dir", help="folder for <image_id>.csv")
    many.add_argument("--table", help="output CSV listing the tables")
    p.set_defaults(func=cmd_landmarks)


def _parser_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="self-supervised pretraining of the embedding network",
                       description="Train the multi-scale embedding network on NIfTI volumes resampled to one "
                                   "isotropic spacing (model and train settings from the config); resumes from "
                                   "OUT_DIR/checkpoint_latest.pt.")
    p.add_argument("--volumes", nargs="+", required=True, help="training volumes (NIfTI)")
    p.add_argument("--validation", nargs="+", required=True, help="held-out volumes for early stopping")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--landmarks", nargs="+", help="folders of <image_id>.csv landmark tables (name, x, y, z in "
                                                  "world mm) for landmark positives (train.landmark_fraction)")
    p.add_argument("--config", action="append", default=[], metavar="YAML")
    p.set_defaults(func=cmd_pretrain)


def _parser_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score predictions against ground-truth pairs",
                       description="CPM@10mm, CPM@Radius, MED (DLT evaluator), lenient convention, NLST "
                                   "relaxation, bootstrap intervals and size strata, as a metrics JSON.")
    p.add_argument("--predictions", required=True,
                   help="predictions CSV (pair_id, direction, pred_x/y/z) or a DLS-format JSON")
    p.add_argument("--pairs", help="ground-truth pairs.csv (for a predictions CSV)")
    p.add_argument("--prediction-field", default="predict target center",
                   help="field of a DLS JSON holding the prediction (default: %(default)s)")
    p.add_argument("--out", required=True, help="metrics JSON")
    p.add_argument("--per-pair", help="optional CSV of per-pair distances")
    p.add_argument("--min-radius-mm", type=float, default=0.0, help="NLST relaxation r_eff = max(r, this)")
    p.add_argument("--bootstrap-samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", help="score only the pairs of this split (pairs.csv column 'split')")
    p.set_defaults(func=cmd_evaluate)


def _parser_embed(sub) -> None:
    p = sub.add_parser("embed", help="embed volumes at all 5 scales (cached per volume)",
                       description="Whole-volume embeddings of resampled volumes with a pretraining checkpoint, "
                                   "cached as OUT_DIR/<image_id>/scale<k>.npy (float16) + geometry.json.")
    p.add_argument("--checkpoint", required=True, help="checkpoint_best.pt of lesiontrack pretrain")
    p.add_argument("--images", action="append", metavar="CSV", help="table(s) with columns image_id, path")
    p.add_argument("--volumes", nargs="+", help="NIfTI files (image_id = file name without .nii.gz)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-voxels", type=int, default=64_000_000,
                   help="larger volumes are embedded in overlapping z-slabs (default: %(default)s)")
    p.set_defaults(func=cmd_embed)




def _threads(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads, metavar="N",
                   help="ITK threads for registration (default: all cores); 1 gives bit-identical reruns, as the "
                        "workflow runs it, where more threads can move a registered point between runs")


def _parser_track(sub) -> None:
    p = sub.add_parser("track", help="find lesions of one scan on another",
                       description="Workflow form: predict the target point of every pair of a pairs.csv (world "
                                   "mm) from cached embeddings (--embeddings) or resampled volumes (--volumes, "
                                   "registration). Own data: track --source A --target B --points points.csv "
                                   "--checkpoint ckpt.pt [--method M] --out predictions.csv [--qa-dir DIR], with "
                                   "A and B NIfTI files or DICOM series folders and points.csv holding "
                                   "lesion_id,x,y,z in world mm (LPS; optional radius_mm); writes lesion_id,x,y,z,"
                                   "confidence,found.")
    p.add_argument("--method", default="hybrid", choices=METHODS, help="(default: %(default)s)")
    p.add_argument("--out", required=True, help="predictions CSV")
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="config file(s) for the track section (default: the packaged defaults)")
    workflow = p.add_argument_group("workflow form")
    workflow.add_argument("--pairs", help="pairs.csv")
    workflow.add_argument("--split", help="only the pairs of this split")
    workflow.add_argument("--embeddings", help="folder of <image_id>/ embedding caches (lesiontrack embed)")
    workflow.add_argument("--volumes", action="append", default=[], metavar="CSV",
                          help="table(s) image_id, path of resampled volumes (registration methods; embedding "
                               "methods with track.refine_mm > 0)")
    workflow.add_argument("--registrations", action="append", default=[], metavar="DIR",
                          help="folder(s) of stored registrations (lesiontrack register), read instead of run "
                               "where method and settings agree")
    own = p.add_argument_group("own data")
    own.add_argument("--source", help="scan the points are on (NIfTI file or DICOM series folder)")
    own.add_argument("--target", help="scan to find them on")
    own.add_argument("--points", help="CSV lesion_id,x,y,z[,radius_mm] in world mm (LPS)")
    own.add_argument("--checkpoint", help="pretraining checkpoint (embedding methods)")
    own.add_argument("--qa-dir", help="write one PNG per lesion here (source and target, three views)")
    own.add_argument("--device", default="cpu")
    p.add_argument("--presence", metavar="JSON",
                   help="presence calibration (lesiontrack presence-calibrate): found = its appearance test at each "
                        "match (needs source_radius_mm in pairs.csv, radius_mm in points.csv); default: found always")
    _add_threads(p)
    p.set_defaults(func=cmd_track)


def _parser_register(sub) -> None:
    p = sub.add_parser("register", help="register the image pairs of a pairs.csv once, for the trackers that read them",
                       description="Register every (source, target) image pair of a pairs.csv with affine or "
                                   "deformable (settings: track.registration.<method>) on resampled volumes and "
                                   "store the transforms; track --registrations DIR reads them instead of "
                                   "registering again.")
    p.add_argument("--pairs", required=True, help="pairs.csv")
    p.add_argument("--method", default="deformable", choices=list(registration.METHODS),
                   help="(default: %(default)s)")
    p.add_argument("--out-dir", required=True, help="folder for registrations.csv, settings.json and the transforms")
    p.add_argument("--split", help="only the pairs of this split")
    p.add_argument("--volumes", action="append", default=[], required=True, metavar="CSV",
                   help="table(s) image_id, path of the resampled volumes")
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="config file(s) for the track section (default: the packaged defaults)")
    _add_threads(p)
    p.set_defaults(func=cmd_register)


def _parser_follow(sub) -> None:
    p = sub.add_parser("follow", help="follow a patient's lesions through all their scans",
                       description="Follow the lesions marked on the first scan through every later one (time "
                                   "order), one id per lesion; lesions of a follow-up's own list (--lesions, one "
                                   "CSV per follow-up) that no followed lesion reaches are new and followed from "
                                   "there. Writes OUT/history.csv: lesion_id, timepoint, scan, x, y, z, confidence, "
                                   "found, status (present, gone, new), consistency_mm (direct against chained "
                                   "prediction), inconsistent.")
    p.add_argument("--scans", nargs="+", required=True, help="scans in time order (NIfTI files or DICOM folders)")
    p.add_argument("--points", required=True, help="the first scan's lesions: CSV lesion_id,x,y,z[,radius_mm]")
    p.add_argument("--lesions", nargs="+", metavar="CSV",
                   help="optional: each follow-up's own lesion list, one per scan after the first")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", default="hybrid", choices=METHODS, help="(default: %(default)s)")
    p.add_argument("--checkpoint", help="pretraining checkpoint (embedding methods, hybrid)")
    p.add_argument("--presence", metavar="JSON", help="presence calibration: found and gone by its appearance test")
    p.add_argument("--config", action="append", default=[], metavar="YAML")
    p.add_argument("--device", default="cpu")
    p.add_argument("--allow-order", action="store_true",
                   help="track scans given twice or whose DICOM StudyDates run backwards (refused by default)")
    _add_threads(p)
    p.set_defaults(func=cmd_follow)


def _parser_presence_calibrate(sub) -> None:
    p = sub.add_parser("presence-calibrate", help="calibrate the appearance test that decides found/disappeared",
                       description="Fit the appearance test (lesiontrack.track.presence) on the ground-truth points "
                                   "of the training subjects of a lesions.csv with disappeared lesions.")
    p.add_argument("--lesions", required=True, help="lesions.csv (status present/new/disappeared, timepoint)")
    p.add_argument("--volumes", action="append", default=[], required=True, metavar="CSV",
                   help="table(s) image_id, path of the resampled volumes")
    p.add_argument("--split", default="train", help="(default: %(default)s)")
    p.add_argument("--out", required=True, help="calibration JSON")
    p.set_defaults(func=cmd_presence_calibrate)


def _parser_presence(sub) -> None:
    p = sub.add_parser("presence", help="precision and recall of disappeared for one method",
                       description="Track the lesions that disappeared with the method, decide found for them with "
                                   "the calibrated test and report precision/recall of disappeared over all "
                                   "presence queries (the pairs' decisions are read from the predictions).")
    p.add_argument("--pairs", required=True)
    p.add_argument("--lesions", required=True)
    p.add_argument("--predictions", required=True, help="the method's predictions CSV (found decided)")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--calibration", required=True, help="lesiontrack presence-calibrate JSON")
    p.add_argument("--split")
    p.add_argument("--embeddings", help="folder of <image_id>/ embedding caches (embedding methods)")
    p.add_argument("--volumes", action="append", default=[], metavar="CSV")
    p.add_argument("--registrations", action="append", default=[], metavar="DIR",
                   help="folder(s) of stored registrations (lesiontrack register), read instead of run "
                        "where method and settings agree")
    p.add_argument("--config", action="append", default=[], metavar="YAML")
    p.add_argument("--out", required=True, help="one row per presence query (CSV)")
    p.add_argument("--report", required=True, help="metrics JSON")
    _add_threads(p)
    p.set_defaults(func=cmd_presence)


def _parser_table(sub) -> None:
    p = sub.add_parser("table", help="Table-1-style comparison of methods",
                       description="Rows = methods; CPM@10mm, CPM@Radius, MEDx/y/z, MED and the paired t-test "
                                   "p-value against the reference, as CSV, Markdown and LaTeX.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--method", nargs=3, action="append", required=True, metavar=("NAME", "METRICS", "PER_PAIR"))
    p.add_argument("--reference", required=True, help="method the p-values compare against")
    p.add_argument("--out-dir", default="results/tables")
    p.set_defaults(func=cmd_table)


def cmd_config(args: argparse.Namespace) -> None:
    import yaml

    cfg = _config(args.files)
    if not args.quiet:
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
    print(f"{', '.join(args.files) or 'the packaged defaults'}: valid", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> None:
    report = check.preflight(args.dataset, _config(args.config), args.dir or f"results/{args.dataset}", args.sample)
    report.write(args.json, args.report)
    print(report.text(), end="")
    if report.failed:
        failed = [f for f in report.findings if f.status == "FAIL"]
        more = f" (and {len(failed) - 1} more failed check(s), above)" if len(failed) > 1 else ""
        raise InputError(f"--dataset {args.dataset}: {failed[0].check}: {failed[0].detail}{more}")


def _parser_check(sub) -> None:
    p = sub.add_parser("check", help="preflight of a downloaded dataset before conversion and pretraining",
                       description="dls: every configured archive present and intact (CRC of every member), the "
                                   "DLS series found against the annotations, spacing agreement (annotations, "
                                   "DL_info.csv), head-feet orientation of a sample of series. nlst: the planned "
                                   "series downloaded, NLSTx's Slice number convention decided from the data "
                                   "(refused while undecided unless the config names one). custom: every volume "
                                   "readable. One report; exit status 2 when a check fails.")
    p.add_argument("--dataset", required=True, choices=["dls", "nlst", "custom"])
    p.add_argument("--config", action="append", default=[], metavar="YAML")
    p.add_argument("--dir", help="the download folder (default: results/<dataset>)")
    p.add_argument("--sample", type=int, default=5, help="dls: series whose head-feet orientation is checked")
    p.add_argument("--report", help="also write the report to this text file")
    p.add_argument("--json", help="also write the findings (and what was decided) as JSON")
    p.set_defaults(func=cmd_check)


def _parser_config(sub) -> None:
    p = sub.add_parser("config", help="check config overlays and print the settings they give",
                       description="Validate config files (later ones override earlier ones, over the packaged "
                                   "defaults, as snakemake's --configfile does over config.yaml) and print the "
                                   "merged settings. Where snakemake says only 'Config file is not valid JSON "
                                   "or YAML', this names the file and line.")
    p.add_argument("files", nargs="*", metavar="FILE", help="YAML overlays, in order")
    p.add_argument("--quiet", action="store_true", help="only check; print nothing on success but the verdict")
    p.set_defaults(func=cmd_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lesiontrack", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lesiontrack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_parser_synth, _parser_simulate, _parser_resample, _parser_figures, _parser_landmarks,
                _parser_pretrain, _parser_evaluate, _parser_embed, _parser_track, _parser_register, _parser_follow,
                _parser_presence_calibrate, _parser_presence, _parser_table, _add_dataset_commands, _parser_check,
                _parser_config):
        add(sub)
    return parser


# the arguments that name what a command writes; every other argument naming an existing path is
# an input, and those of SCAN_ARGUMENTS may be DICOM series folders, which nothing is written into
OUTPUT_ARGUMENTS = ("out", "output", "qa_dir", "out_dir", "table", "images_dir", "report")
SCAN_ARGUMENTS = ("--source", "--target", "--scans", "--inputs", "--volumes", "--validation", "--image")


def _outputs_and_inputs(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, str]]:
    """``--flag -> path`` of a parsed command's outputs and of its inputs (``--flag[k]`` for the
    k-th of several)."""
    outputs, inputs = {}, {}
    for dest, value in vars(args).items():
        if dest in ("func", "command") or value is None or isinstance(value, bool):
            continue
        flag = "--" + dest.replace("_", "-")
        if dest in OUTPUT_ARGUMENTS:
            outputs[flag] = str(value)
            continue
        values = value if isinstance(value, list) else [value]
        flat = [v for item in values for v in (item if isinstance(item, list) else [item])]
        texts = [v for v in flat if isinstance(v, str)]
        for k, text in enumerate(texts):
            inputs[flag if len(texts) == 1 else f"{flag}[{k + 1}]"] = text
    return outputs, inputs


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "resample":
        one = args.input and args.output
        many = args.images and args.out_dir and args.table
        if bool(one) == bool(many):
            parser.error("resample: give either --input and --output, or --images, --out-dir and --table")

    registration.use_threads(getattr(args, "threads", None))
    forward_interrupts()  # SIGTERM too unwinds: staging folders and temporary files are removed
    outputs, inputs = _outputs_and_inputs(args)
    try:
        check_apart(outputs, inputs, folders_of_scans=SCAN_ARGUMENTS)
        args.func(args)
    except (ConfigError, InputError, DownloadError) as err:  # bad input: one line, no traceback
        print(f"lesiontrack {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"lesiontrack {args.command}: stopped by {signal.Signals(signum).name}; nothing of this run was left "
              "behind", file=sys.stderr)
        return 128 + signum
    except OSError as err:  # the file system refused (permissions, a full disk): name the path
        if err.filename is None and err.errno is None:
            raise
        where = err.filename or ", ".join(outputs.values()) or "the working folder"  # a write's errno names no file
        print(f"lesiontrack {args.command}: {where}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
