"""Pretraining throughput: patch pairs per second and peak memory per model width.

    python bench/train_throughput.py --volumes results/synthetic/resampled/train00*.nii.gz \
        [--widths 8 64] [--batch 4] [--steps 3] [--device cpu|cuda] [--channels-last]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", nargs="+", required=True)
    parser.add_argument("--widths", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", default="bench/out/train_throughput.json")
    args = parser.parse_args()
    device = torch.device(args.device)
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
