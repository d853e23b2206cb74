"""Pretraining throughput: patch pairs per second and peak memory per model width.

    python bench/train_throughput.py --volumes results/synthetic/resampled/train00*.nii.gz \
        [--widths 8 64] [--batch 4] [--steps 3] [--device cpu|cuda] [--channels-last]
    python bench/train_throughput.py --volumes results/synthetic/resampled/*.nii.gz --many 1000 \
        --cache-dir /tmp/cache [--widths 8]

``--many N``: N training volumes on disk (links named v0000 ... to the given files in turn, each
its own memory-mapped cache entry, as pretraining reads them: lesiontrack.train.loop.volume_cache),
against the given volumes held in memory; reports the time to build the cache, the sampling rate
(pairs per second, each batch from volumes drawn at random among all N) and the process's peak
RSS, whose growth with N is the point: patches read only their crop's pages.

For each width: the time to sample and augment a batch of patch pairs (TorchIO), and the time of
one optimisation step (forward, negative mining, InfoNCE at 5 scales, backward, AdamW), measured
over ``--steps`` steps after one warm-up step; peak memory is the process's max RSS (CPU) or
torch.cuda.max_memory_allocated (GPU). On CUDA, bfloat16 autocast is timed on and off.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from lesiontrack.model import build_model
from lesiontrack.train import loop
from lesiontrack.train.patches import PatchConfig


def measure(volumes, width: int, batch: int, steps: int, device: torch.device, autocast: bool,
            channels_last: bool) -> dict:
    cfg = loop.TrainConfig(batch_size=batch, amp=autocast)
    patches = PatchConfig(patch_size=cfg.patch_size)
    model = build_model(width, 128).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    sample_s, step_s = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for k in range(steps + 1):
        t0 = time.perf_counter()
        pairs = loop._sample_pairs(volumes, batch, cfg, patches, rng)
        t1 = time.perf_counter()
        loss, _ = loop._pair_loss(model, pairs, cfg, volumes.spacing_mm, rng, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if k:  # the first step warms up
            sample_s.append(t1 - t0)
            step_s.append(t2 - t1)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    step = float(np.mean(step_s))
    sample = float(np.mean(sample_s))
    return {"width": width, "batch": batch, "device": str(device), "autocast": autocast,
            "channels_last_3d": channels_last, "sample_s_per_batch": sample, "step_s": step,
            "pairs_per_s_training_only": batch / step, "pairs_per_s_with_sampling": batch / (step + sample),
            "peak_memory_mb": peak}


def rss_mb() -> float:
    """The process's resident memory now (MB; file-backed pages of mapped volumes included)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sampling_rate(volumes, batches: int, batch: int) -> float:
    """Patch pairs per second of sampling and augmentation alone (one thread)."""
    cfg = loop.TrainConfig(batch_size=batch)
    patches = PatchConfig(patch_size=cfg.patch_size)
    rng = np.random.default_rng(0)
    loop._sample_pairs(volumes, batch, cfg, patches, rng)  # warm-up
    began = time.perf_counter()
    for _ in range(batches):
        loop._sample_pairs(volumes, batch, cfg, patches, rng)
    return batches * batch / (time.perf_counter() - began)


def many(args) -> None:
    """--many: sampling from N memory-mapped volumes on disk against the given volumes in memory."""
    folder = Path(args.cache_dir)
    links = folder / "volumes"
    links.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(args.many):
        link = links / f"v{k:04d}.nii.gz"
        if not link.exists():
            link.symlink_to(Path(args.volumes[k % len(args.volumes)]).resolve())
        paths.append(link)
    baseline = rss_mb()
    began = time.perf_counter()
    mapped = loop._Volumes(paths, cache_dir=folder / "cache")
    open_s = time.perf_counter() - began
    rss_opened = rss_mb()
    rate_many = sampling_rate(mapped, 10, args.batch)
    rss_sampled = rss_mb()
    del mapped
    began = time.perf_counter()
    in_memory = loop._Volumes(args.volumes)
    load_small = time.perf_counter() - began
    rss_loaded = rss_mb()
    rate_small = sampling_rate(in_memory, 10, args.batch)
    disk_gb = sum(p.stat().st_size for p in (folder / "cache").glob("*.npy")) / 1e9
    row = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
           "rss_mb_before": baseline,
           "volumes_in_memory": len(args.volumes), "pairs_per_s_in_memory": rate_small,
           "load_s_in_memory": load_small, "rss_mb_volumes_in_memory": rss_loaded,
           "volumes_on_disk": args.many, "open_s_memory_mapped": open_s, "pairs_per_s_memory_mapped": rate_many,
           "rss_mb_opened_memory_mapped": rss_opened, "rss_mb_after_sampling_memory_mapped": rss_sampled,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cache_gb": disk_gb,
           "batch": args.batch}
    print(json.dumps(row, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(row, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", nargs="+", required=True)
    parser.add_argument("--widths", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--many", type=int, help="N volumes on disk, memory-mapped (see above)")
    parser.add_argument("--cache-dir", help="--many: folder for the links and the volume cache")
    parser.add_argument("--out", default="bench/out/train_throughput.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.many:
        many(args)
        return
    volumes = loop._Volumes(args.volumes)
    machine = (torch.cuda.get_device_name() if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    rows = []
    for width in args.widths:
        for autocast in ([True, False] if device.type == "cuda" else [False]):
            row = measure(volumes, width, args.batch, args.steps, device, autocast, args.channels_last)
            row["machine"] = machine
            rows.append(row)
            print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
