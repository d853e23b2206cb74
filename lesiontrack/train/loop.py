"""The pretraining loop: AdamW, early stopping on a held-out loss, checkpoints and exact resume.

Leaves ``checkpoint_latest.pt`` and ``checkpoint_best.pt`` (model, optimizer, epoch, config and
random states), ``training_log.tsv`` (one row per epoch: losses per scale, lr, seconds) and
``progress.png`` in the output folder, as nnU-Net does. Seeded and deterministic on the CPU;
mixed precision (bfloat16 autocast) on CUDA.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from lesiontrack.checkpoint import load_weights, read_checkpoint, save_checkpoint
from lesiontrack.config import settings_from
from lesiontrack.figures import training_curves
from lesiontrack.io import Geometry, InputError, atomic_path, read_image, read_table, write_table
from lesiontrack.model import build_model
from lesiontrack.provenance import machine
from lesiontrack.train.loss import choose_negatives, far_source, multiscale_loss, near_source, sample_levels
from lesiontrack.train.patches import PatchConfig, sample_pair, shared_points

N_SCALES = 5


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` config section (defaults and ranges live in the config schema)."""

    device: str = "cpu"
    batch_size: int = 8
    max_epochs: int = 64
    patience: int = 5
    lr: float = 1e-4
    lr_schedule: str = "constant"  # or "cosine": decay to 1 % of lr over max_epochs
    temperature: float = 0.5
    patch_size: tuple[int, int, int] = (32, 96, 96)
    n_pos: int = 100
    n_hard_neg: int = 100
    n_diverse_neg: int = 200
    neg_exclusion_mm: float = 8.0
    n_candidates: int = 2000
    steps_per_epoch: int = 20
    validation_pairs: int = 8
    seed: int = 0
    landmark_fraction: float = 0.0  # share of positives that are the same landmark in two volumes
    far_negatives: int = 0  # candidates per pair from a sibling patch elsewhere in the same volume
    amp: bool = True  # bfloat16 autocast on CUDA (no effect on the CPU)
    sampler_workers: int = 1  # processes drawing patch pairs ahead (1: one background thread)



@dataclass(frozen=True)
class ModelConfig:
    width: int = 64
    embedding_dim: int = 128
    n_scales: int = 5
    init_resnet18: str | None = None
    norm: str = "none"



TRAIN_WORKFLOW_KEYS = ("datasets", "landmark_backend", "processes", "threads", "validation_subjects")
MODEL_WORKFLOW_KEYS = ("checkpoint", "name")


def train_settings(section: dict[str, Any]) -> TrainConfig:
    """:class:`TrainConfig` of the config's ``train`` section (the workflow's own keys aside)."""
    return settings_from(section, TrainConfig, "train", TRAIN_WORKFLOW_KEYS)


def model_settings(section: dict[str, Any]) -> ModelConfig:
    """:class:`ModelConfig` of the config's ``model`` section (name and checkpoint aside)."""
    return settings_from(section, ModelConfig, "model", MODEL_WORKFLOW_KEYS)


def load_volume(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """A resampled volume as int16 HU [z, y, x] and its geometry."""
    image = read_image(path)
    return sitk.GetArrayFromImage(image).astype(np.int16), Geometry.of(image)


def image_id_of(path: str | Path) -> str:
    return Path(path).name.removesuffix(".gz").removesuffix(".nii")


def body_voxels(array: np.ndarray) -> np.ndarray:
    """Voxels (z, y, x) inside the body (above -500 HU) on a (2, 4, 4) lattice: where crops are centred."""
    return np.stack(np.nonzero(array[::2, ::4, ::4] > -500), axis=1) * np.array([2, 4, 4])


def volume_cache(path: str | Path, cache_dir: str | Path) -> tuple[np.ndarray, Geometry, np.ndarray]:
    """A training volume memory-mapped: ``<cache_dir>/<image_id>.npy`` (int16 HU, z, y, x), written
    once from ``path`` and rewritten when the source's size or modification time changes, with its
    body voxels (``.body.npy``) and geometry (``.json``, written last: it marks a complete entry).

    Patches read only the pages of their crop, so pretraining holds no volume in memory and scales
    to as many volumes as the disk holds; forked sampler processes share the mapping.
    """
    import json

    path, cache_dir = Path(path), Path(cache_dir)
    image_id = image_id_of(path)
    npy, body_npy, meta = (cache_dir / f"{image_id}{suffix}" for suffix in (".npy", ".body.npy", ".json"))
    stat = path.stat()
    source = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    info = json.loads(meta.read_text()) if meta.exists() else None
    if info is None or info["source"] != source or not npy.exists() or not body_npy.exists():
        array, geometry = load_volume(path)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for target, value in ((npy, array), (body_npy, body_voxels(array).astype(np.int32))):
            with atomic_path(target) as tmp, open(tmp, "wb") as fh:
                np.save(fh, value)
        info = {"source": source, "origin": list(geometry.origin), "spacing": list(geometry.spacing),
                "size": list(geometry.size), "direction": list(geometry.direction)}
        with atomic_path(meta) as tmp:
            tmp.write_text(json.dumps(info))
    geometry = Geometry(tuple(info["origin"]), tuple(info["spacing"]), tuple(info["size"]), tuple(info["direction"]))
    return np.load(npy, mmap_mode="r"), geometry, np.load(body_npy, mmap_mode="r")


class _Volumes:
    """Training volumes: memory-mapped from ``cache_dir`` (:func:`volume_cache`), else in memory."""

    def __init__(self, paths: list[str | Path], landmark_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.arrays, self.body, self.landmarks, spacings = [], [], [], set()
        for path in self.paths:
            if cache_dir is None:
                array, geometry = load_volume(path)
                body = body_voxels(array)
            else:
                array, geometry, body = volume_cache(path, cache_dir)
            spacings.add(round(geometry.spacing[0], 4))
            self.arrays.append(array)
            self.body.append(body)
            self.landmarks.append(_landmarks(landmark_dir, path, geometry))
        self.with_landmarks = [k for k, names in enumerate(self.landmarks) if names]
        if len(spacings) > 1:
            raise ValueError(f"training volumes have different spacings {sorted(spacings)}: resample them first")
        self.spacing_mm = spacings.pop()


def _folders(landmark_dir) -> list[str]:
    if not landmark_dir:
        return []
    return [str(landmark_dir)] if isinstance(landmark_dir, (str, Path)) else [str(d) for d in landmark_dir]


def _landmarks(landmark_dir, path: Path, geometry: Geometry) -> dict[str, np.ndarray]:
    """Landmark name -> voxel (z, y, x) of the volume, from ``<landmark_dir>/<image_id>.csv`` (the
    first of several folders that has it)."""
    if landmark_dir is None:
        return {}
    candidates = [Path(f) / f"{image_id_of(path)}.csv" for f in _folders(landmark_dir)]
    table_path = next((c for c in candidates if c.exists()), None)
    if table_path is None:
        return {}
    table = read_table(table_path, required=["name", "x", "y", "z"])
    voxels = geometry.world_to_index(table[["x", "y", "z"]].to_numpy(float))[:, ::-1]
    return dict(zip(table["name"], voxels, strict=True))


def _pair_loss(model, pairs, cfg: TrainConfig, spacing_mm: float, rng, device) -> tuple[torch.Tensor, list[float]]:
    views = torch.stack([p.view1.image for p in pairs] + [p.view2.image for p in pairs]).to(device)
    use_amp = cfg.amp and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()
    with autocast:
        outputs = model(views, dense=False)
    # the loss stays on the network's device; only the random draws (numpy) are on the CPU
    outputs = [o.float() for o in outputs]
    head = model.module.project if hasattr(model, "module") else model.project  # DDP wraps the model
    total, per_scale = torch.zeros((), device=device), torch.zeros(N_SCALES, device=device)
    for b, pair in enumerate(pairs):
        e1 = [o[b] for o in outputs]
        e2 = [o[len(pairs) + b] for o in outputs]
        sources = [near_source(e2, pair.positives2, pair.view2.valid, spacing_mm, cfg.neg_exclusion_mm,
                               cfg.n_candidates, rng)]
        if pair.sibling is not None and cfg.far_negatives:
            sibling = pairs[pair.sibling]
            sources.append(far_source([o[len(pairs) + pair.sibling] for o in outputs], sibling.view2.valid,
                                      sibling.view2.to_volume, pair.positives_volume, spacing_mm,
                                      cfg.neg_exclusion_mm, cfg.far_negatives, rng))
        levels = sample_levels(e1, e2, head, pair.positives1, pair.positives2, sources, cfg.patch_size)
        negatives = choose_negatives(levels, sources, cfg.n_hard_neg, cfg.n_diverse_neg, rng)
        loss, scales = multiscale_loss(levels, pair.positives2, sources, negatives, cfg.temperature)
        if pair.landmark_partner is not None and len(pair.landmarks1):
            # the same landmark in another volume of the batch: anchor here, positive and
            # negatives in the partner's first view
            partner = pairs[pair.landmark_partner]
            e_partner = [o[pair.landmark_partner] for o in outputs]
            sources = [near_source(e_partner, pair.landmarks_partner, partner.view1.valid, spacing_mm,
                                   cfg.neg_exclusion_mm, cfg.n_candidates, rng)]
            levels = sample_levels(e1, e_partner, head, pair.landmarks1, pair.landmarks_partner, sources,
                                   cfg.patch_size)
            negatives = choose_negatives(levels, sources, cfg.n_hard_neg, cfg.n_diverse_neg, rng)
            landmark_loss, landmark_scales = multiscale_loss(levels, pair.landmarks_partner, sources, negatives,
                                                             cfg.temperature)
            loss = loss + landmark_loss
            scales = [a + b for a, b in zip(scales, landmark_scales, strict=True)]
        total = total + loss / len(pairs)
        per_scale = per_scale + torch.stack(scales).detach() / len(pairs)
    return total, per_scale.tolist()


def _sample_pairs(volumes: _Volumes, count: int, cfg: TrainConfig, patches: PatchConfig, rng) -> list:
    """``count`` patch pairs. With ``landmark_fraction`` > 0 and landmark tables, pairs come in
    twos from two volumes, both centred on one landmark they share, and up to that fraction of
    the first pair's positives are landmarks seen in both pairs' first views.

    With ``far_negatives`` > 0, pairs come in siblings: a second pair (or, with landmarks, a second
    couple on another shared landmark) from the same volume(s) elsewhere in the body, whose
    second view supplies far negatives."""
    siblings = cfg.far_negatives > 0
    pairs: list = []
    while len(pairs) < count:
        group = _sample_group(volumes, count - len(pairs), cfg, patches, rng)
        if siblings and count - len(pairs) >= 2 * len(group):
            again = _sample_group(volumes, len(group), cfg, patches, rng, volumes_of=group)
            if len(again) == len(group):
                _shift(again, len(group))
                for k, (first, second) in enumerate(zip(group, again, strict=True)):
                    first.sibling, second.sibling = len(group) + k, k
                group = group + again
        _shift(group, len(pairs))
        pairs += group
    return pairs


def _shift(group: list, offset: int) -> None:
    """Make a group's partner and sibling indices (relative to the group) ``offset`` later."""
    for pair in group:
        if pair.landmark_partner is not None:
            pair.landmark_partner += offset
        if pair.sibling is not None:
            pair.sibling += offset


def _sample_group(volumes: _Volumes, room: int, cfg: TrainConfig, patches: PatchConfig, rng,
                  volumes_of: list | None = None) -> list:
    """One pair, or a landmark couple (two pairs, ``landmark_partner`` relative to the group).
    ``volumes_of``: a group whose volumes to reuse (a sibling group, elsewhere in the body)."""
    with_landmarks = volumes.with_landmarks
    use_landmarks = cfg.landmark_fraction > 0 and len(with_landmarks) >= 2 and room >= 2
    if volumes_of is not None:
        use_landmarks = len(volumes_of) == 2
    if not use_landmarks:
        k = volumes_of[0].volume_index if volumes_of else int(rng.integers(len(volumes.arrays)))
        pair = sample_pair(volumes.arrays[k], volumes.body[k], patches, cfg.n_pos, rng)
        pair.volume_index = k
        return [pair]
    for _ in range(100):
        if volumes_of is not None:
            a, b = volumes_of[0].volume_index, volumes_of[1].volume_index
        else:
            a, b = (int(v) for v in rng.choice(with_landmarks, size=2, replace=False))
        shared = sorted(set(volumes.landmarks[a]) & set(volumes.landmarks[b]))
        if shared:
            break
    else:
        return []
    name = shared[int(rng.integers(len(shared)))]
    first = sample_pair(volumes.arrays[a], volumes.body[a], patches, cfg.n_pos, rng, volumes.landmarks[a][name])
    second = sample_pair(volumes.arrays[b], volumes.body[b], patches, cfg.n_pos, rng, volumes.landmarks[b][name])
    first.volume_index, second.volume_index = a, b
    points_a = np.array([volumes.landmarks[a][n] for n in shared])
    points_b = np.array([volumes.landmarks[b][n] for n in shared])
    here, there = shared_points(first.view1, points_a, second.view1, points_b)
    keep = min(len(here), max(1, round(cfg.landmark_fraction * cfg.n_pos)))
    if keep:
        first.landmark_partner = 1
        first.landmarks1, first.landmarks_partner = here[:keep], there[:keep]
        first.positives1, first.positives2 = first.positives1[keep:], first.positives2[keep:]
        first.positives_volume = first.positives_volume[keep:]
    return [first, second]


def select_volumes(images_csv: str | Path | list, resampled_tables: list[str | Path], split: str = "train",
                   validation_subjects: int = 1) -> tuple[list[str], list[str]]:
    """Resampled volumes of the ``split`` subjects of one or several datasets' ``images.csv``
    (columns ``image_id, subject_id, split``): (training, validation = the last subjects)."""
    tables = [images_csv] if isinstance(images_csv, (str, Path)) else list(images_csv)
    images = pd.concat([read_table(t, required=["image_id", "subject_id", "split"]).astype({"subject_id": str})
                        for t in tables], ignore_index=True)
    resampled = pd.concat([read_table(t, required=["image_id", "path"]) for t in resampled_tables])
    table = images[images["split"] == split].merge(resampled[["image_id", "path"]], on="image_id",
                                                    suffixes=("_native", ""))
    subjects = sorted(table["subject_id"].unique())
    if len(subjects) <= validation_subjects:
        raise InputError(f"{', '.join(map(str, tables))}: {len(subjects)} {split} subject(s); pretraining needs more "
                         f"than train.validation_subjects = {validation_subjects}")
    held_out = set(subjects[-validation_subjects:])
    validation = table["subject_id"].isin(held_out)
    return table.loc[~validation, "path"].tolist(), table.loc[validation, "path"].tolist()


def learning_rate(train: TrainConfig, step: int) -> float:
    """The learning rate of a global step: ``lr`` throughout (``constant``), or a cosine decay from
    ``lr`` to 1 % of it over ``max_epochs * steps_per_epoch`` steps (``cosine``). A function of the
    step alone, so a resumed run continues on the same schedule."""
    if train.lr_schedule == "constant":
        return train.lr
    if train.lr_schedule != "cosine":
        raise ValueError(f"train.lr_schedule = {train.lr_schedule!r}: expected 'constant' or 'cosine'")
    total = max(1, train.max_epochs * train.steps_per_epoch - 1)
    return train.lr * (0.01 + 0.99 * 0.5 * (1.0 + np.cos(np.pi * min(step, total) / total)))


def _draw_batch(volumes: _Volumes, count: int, cfg: TrainConfig, patches: PatchConfig, rank: int,
                step: int) -> list:
    """The patch pairs of one global training step: a function of (seed, rank, step) alone, so a
    batch is the same whichever thread or process draws it, and a resumed run continues the stream.
    TorchIO draws from torch's global generator, which is seeded here too."""
    sequence = np.random.SeedSequence([cfg.seed, rank, 2, step])
    torch.manual_seed(int(sequence.generate_state(1, np.uint64)[0]))
    return _sample_pairs(volumes, count, cfg, patches, np.random.default_rng(sequence))


_WORKER_STATE: tuple | None = None


def _start_worker(*state) -> None:
    global _WORKER_STATE
    torch.set_num_threads(1)
    _WORKER_STATE = state


def _draw_in_worker(step: int) -> list:
    volumes, count, cfg, patches, rank = _WORKER_STATE
    return _draw_batch(volumes, count, cfg, patches, rank, step)


class _Prefetcher:
    """Batches drawn ahead of the training step, ``train.sampler_workers`` at a time: one
    background thread (1; the training step runs meanwhile), or that many forked processes,
    which share the loaded volumes copy-on-write. On a GPU, sampling and augmentation (CPU work)
    are the bottleneck, so give them the allocation's spare cores."""

    def __init__(self, volumes: _Volumes, count: int, cfg: TrainConfig, patches: PatchConfig, rank: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.depth = max(1, cfg.sampler_workers)
        state = (volumes, count, cfg, patches, rank)
        if cfg.sampler_workers <= 1:
            self.pool = ThreadPoolExecutor(max_workers=1)
            self.submit = lambda step: self.pool.submit(_draw_batch, *state, step)
        else:  # fork: the children inherit the volumes without pickling them
            self.pool = ProcessPoolExecutor(cfg.sampler_workers, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_start_worker, initargs=state)
            self.submit = lambda step: self.pool.submit(_draw_in_worker, step)
        self.pending: dict[int, Any] = {}

    def batch(self, step: int, last: int) -> list:
        """The pairs of global ``step``; keeps the next ``depth`` steps (up to ``last``) in flight."""
        for ahead in range(step, min(step + self.depth, last) + 1):
            if ahead not in self.pending:
                self.pending[ahead] = self.submit(ahead)
        return self.pending.pop(step).result()

    def close(self) -> None:
        for future in self.pending.values():
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _distributed(train: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = train.device == "cuda" and torch.cuda.is_available()
    if world == 1:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu")


def _resume_state(latest: Path) -> dict[str, Any]:
    state = read_checkpoint(latest)
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise InputError(f"{latest}: cannot resume: the checkpoint has no {missing} (not written by pretrain)")
    return state


RESUME_KEYS = ("optimizer", "epoch", "best_validation", "bad_epochs", "log", "torch_rng", "loss_rng")


def pretrain(train_paths: list[str | Path], validation_paths: list[str | Path], out_dir: str | Path,
             train: TrainConfig, model_cfg: ModelConfig, window_hu: tuple[float, float] = (-1000.0, 400.0),
             progress: bool = True, landmark_dir: str | Path | list | None = None) -> pd.DataFrame:
    """Train (or resume from ``checkpoint_latest.pt``) until ``max_epochs`` or early stopping.

    Under ``torchrun --nproc_per_node N`` this is data-parallel (DDP; NCCL on GPUs, gloo on the
    CPU): each rank draws ``batch_size / N`` pairs from its own random stream, gradients are
    averaged, and rank 0 writes checkpoints and logs.
    """
    from torch.nn.parallel import DistributedDataParallel

    out_dir = Path(out_dir)
    latest = out_dir / "checkpoint_latest.pt"
    resume = _resume_state(latest) if latest.exists() else None  # before any work: it may be refused
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world, device = _distributed(train)
    if train.batch_size % world:
        raise ValueError(f"train.batch_size = {train.batch_size}: must be a multiple of the {world} processes")
    local_batch = train.batch_size // world
    torch.manual_seed(train.seed)  # the same initial weights on every rank
    # patch pairs: one stream per global step (_draw_batch); candidates and negatives for the
    # loss: one stream saved with the checkpoint
    loss_rng = np.random.default_rng([train.seed, rank, 1])
    patches = PatchConfig(patch_size=tuple(train.patch_size), window_hu=tuple(window_hu))
    cache_dir = out_dir / "volume_cache"  # memory-mapped volumes (written once, shared by the ranks)
    volumes = _Volumes(train_paths, landmark_dir, cache_dir)
    held_out = _Volumes(validation_paths, cache_dir=cache_dir)
    validation_set = _validation_set(held_out, train, patches)
    model = build_model(model_cfg.width, model_cfg.embedding_dim, model_cfg.n_scales, model_cfg.init_resnet18,
                        model_cfg.norm)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr)
    network = model if world == 1 else DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                                                else None)
    config = {"train": asdict(train), "model": asdict(model_cfg), "window_hu": list(window_hu),
              "spacing_mm": volumes.spacing_mm, "landmark_dir": _folders(landmark_dir)}
    log_rows: list[dict[str, Any]] = []
    start_epoch, best, bad_epochs = 0, float("inf"), 0
    if resume is not None:
        load_weights(model, resume, latest)
        load_weights(optimizer, resume, latest, "optimizer")
        if resume.get("world_size", 1) != world:
            raise InputError(f"{latest}: written by {resume.get('world_size', 1)} process(es); resume with as many, "
                             f"not {world}")
        start_epoch, best, bad_epochs = resume["epoch"] + 1, resume["best_validation"], resume["bad_epochs"]
        log_rows = resume["log"]
        torch.set_rng_state(resume["torch_rng"][rank])
        loss_rng.bit_generator.state = resume["loss_rng"][rank]
    sampler = _Prefetcher(volumes, local_batch, train, patches, rank)
    try:
        log_rows = _epochs(network, model, optimizer, sampler, volumes, held_out, validation_set, train, loss_rng,
                           start_epoch, best, bad_epochs, log_rows, config, out_dir, rank, world, device, progress)
    finally:
        sampler.close()
    log = pd.DataFrame(log_rows)
    if rank == 0:
        plot_progress(log, out_dir / "progress.png")
    return log


def _epochs(network, model, optimizer, sampler: _Prefetcher, volumes: _Volumes, held_out: _Volumes, validation_set,
            train: TrainConfig, loss_rng, start_epoch: int, best: float, bad_epochs: int, log_rows: list,
            config: dict, out_dir: Path, rank: int, world: int, device, progress: bool) -> list[dict[str, Any]]:
    import torch.distributed as dist
    from tqdm import tqdm

    last_step = train.max_epochs * train.steps_per_epoch - 1
    trained_on = machine(str(device))
    for epoch in range(start_epoch, train.max_epochs):
        if bad_epochs >= train.patience:
            break
        began = time.perf_counter()
        network.train()
        sums, count = np.zeros(N_SCALES + 1), 0
        for step in tqdm(range(train.steps_per_epoch), desc=f"epoch {epoch}", disable=not progress or rank > 0):
            global_step = epoch * train.steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(train, global_step)
            pairs = sampler.batch(global_step, last_step)
            loss, per_scale = _pair_loss(network, pairs, train, volumes.spacing_mm, loss_rng, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += np.array([loss.item(), *per_scale])
            count += 1
        if world > 1:  # the logged training loss is the mean over ranks
            totals = torch.tensor(sums / count, dtype=torch.float64)
            dist.all_reduce(totals)
            sums, count = totals.numpy() / world, 1
        validation = _validation_loss(network, validation_set, held_out.spacing_mm, train, device)  # same on every rank
        row = {"epoch": epoch, "train_loss": sums[0] / count,
               **{f"train_loss_s{k + 1}": sums[k + 1] / count for k in range(N_SCALES)},
               "validation_loss": validation[0],
               **{f"validation_loss_s{k + 1}": validation[k + 1] for k in range(N_SCALES)},
               "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - began}
        log_rows.append(row)
        improved = validation[0] < best
        best, bad_epochs = (validation[0], 0) if improved else (best, bad_epochs + 1)
        own_states = (torch.get_rng_state(), loss_rng.bit_generator.state)
        random_states = [own_states]
        if world > 1:
            random_states = [None] * world
            dist.all_gather_object(random_states, own_states)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "config": config,
                 "best_validation": best, "bad_epochs": bad_epochs, "log": log_rows, "world_size": world,
                 "torch_rng": [s[0] for s in random_states], "loss_rng": [s[1] for s in random_states],
                 "machine": trained_on}
        if rank == 0:
            if improved:
                save_checkpoint(state, out_dir / "checkpoint_best.pt")
            save_checkpoint(state, out_dir / "checkpoint_latest.pt")
            write_table(pd.DataFrame(log_rows), out_dir / "training_log.tsv", float_format="%.6f")
        if world > 1:
            dist.barrier()
    return log_rows


def _validation_set(held_out: _Volumes, train: TrainConfig, patches: PatchConfig) -> tuple[list, dict]:
    """Fixed held-out patch pairs, drawn once from their own seed, and the random state their
    loss starts from each epoch (the same candidates and random negatives every epoch)."""
    torch_state = torch.get_rng_state()
    torch.manual_seed(train.seed + 1)
    rng = np.random.default_rng(train.seed + 1)
    pairs = _sample_pairs(held_out, train.validation_pairs, train, patches, rng)
    torch.set_rng_state(torch_state)
    return pairs, rng.bit_generator.state


def _validation_loss(model, validation_set: tuple[list, dict], spacing_mm: float, train: TrainConfig,
                     device) -> list[float]:
    """Loss on the fixed held-out pairs of :func:`_validation_set`."""
    pairs, rng_state = validation_set
    rng = np.random.default_rng()
    rng.bit_generator.state = rng_state
    model.eval()
    with torch.no_grad():
        loss, per_scale = _pair_loss(model, pairs, train, spacing_mm, rng, device)
    return [loss.item(), *per_scale]


def plot_progress(log: pd.DataFrame, out_png: str | Path) -> None:
    """``progress.png``: the training curves of :func:`lesiontrack.figures.training_curves`."""
    training_curves(log, Path(out_png).with_suffix(""), formats=("png",))


def pretrain_distributed(train_paths: list[str | Path], validation_paths: list[str | Path], out_dir: str | Path,
                         config: dict[str, Any], processes: int, threads: int,
                         landmark_dir: str | Path | list | None = None) -> pd.DataFrame:
    """:func:`pretrain` in ``processes`` data-parallel processes on this node (``torchrun
    --standalone --nproc_per_node``; one per GPU with ``train.device: cuda``, gloo processes on the
    CPU), each with ``threads / processes`` threads; with 1 process, in this one.

    ``config`` holds the ``train``, ``model`` and ``preprocess`` sections; the processes read
    them from ``<out_dir>/distributed_config.yaml`` through ``lesiontrack pretrain --config``.
    """
    import subprocess
    import sys

    import yaml

    if processes == 1:
        return pretrain(train_paths, validation_paths, out_dir, train_settings(config["train"]),
                        model_settings(config["model"]), tuple(config["preprocess"]["window_hu"]),
                        landmark_dir=landmark_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay = out_dir / "distributed_config.yaml"
    with atomic_path(overlay) as tmp:
        tmp.write_text(yaml.safe_dump({key: config[key] for key in ("train", "model", "preprocess")}))
    dirs = [str(d) for d in ([landmark_dir] if isinstance(landmark_dir, (str, Path)) else landmark_dir or [])]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "lesiontrack.cli", "pretrain", "--volumes", *map(str, train_paths),
               "--validation", *map(str, validation_paths), "--out-dir", str(out_dir), "--config", str(overlay)]
    if dirs:
        command += ["--landmarks", *dirs]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // processes))}
    package_root = str(Path(__file__).resolve().parents[2])  # the package the caller imported, first
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"distributed pretraining ({processes} processes) failed with exit code "
                           f"{result.returncode}: {' '.join(command)}")
    return read_table(out_dir / "training_log.tsv")
