"""Whole-volume embeddings at all 5 scales, computed once per volume and cached.

Cache layout (the Contracts): ``<dir>/<image_id>/scale<k>.npy`` (k = 1..5, finest first), each a
float16 array (C, d, h, w) in (z, y, x) order, memory-mappable, and ``geometry.json`` with the
input grid and one grid per scale (origin, spacing, direction, size in SimpleITK's (x, y, z)
order, LPS mm). Voxel ``i`` of scale ``k`` (cumulative stride ``s``) sits at input voxel
``(i + 0.5) * s - 0.5``: the convention that training uses when it samples maps of a patch
(``align_corners=False`` over the same extent as the input), so that inference reads the maps
exactly as training wrote them.

The volume is windowed as in training, padded with air at the high end of every axis to a
multiple of the coarsest stride (4, 32, 32), and embedded in one pass; volumes larger than
``max_voxels`` are embedded in overlapping slabs along z (the central part of each slab is kept).
The network normalises per voxel (no statistics over the input), so a slab differs from one pass
only where the receptive field reaches past the slab's overlap: mostly at the coarse scales.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from lesiontrack.checkpoint import load_weights, read_checkpoint
from lesiontrack.io import (
    Geometry,
    InputError,
    atomic_path,
    named_path,
    read_image,
    read_table,
    sha256,
    volume_paths,
    write_table,
)
from lesiontrack.model import CUMULATIVE_STRIDES, MultiScaleEmbedding, build_model
from lesiontrack.preprocess import window

COARSEST = CUMULATIVE_STRIDES[-1]
PAD_VALUE = -1.0  # windowed units: air, as the padding of training views


SCALES = tuple(range(1, len(CUMULATIVE_STRIDES) + 1))  # the model's levels: 1 (finest) .. 5


def scale_to_input(index: np.ndarray, stride: np.ndarray | int) -> np.ndarray:
    """Input-grid voxel coordinates of scale-grid voxel ``index`` (cumulative ``stride``)."""
    return (np.asarray(index) + 0.5) * stride - 0.5


def input_to_scale(index: np.ndarray, stride: np.ndarray | int) -> np.ndarray:
    """Scale-grid voxel coordinates (cumulative ``stride``) of input-grid voxel ``index``."""
    return (np.asarray(index) + 0.5) / stride - 0.5


def scale_to_scale(index: np.ndarray, from_stride: np.ndarray, to_stride: np.ndarray) -> np.ndarray:
    """Voxel ``index`` of the grid of ``from_stride`` on the grid of ``to_stride``."""
    return (np.asarray(index) + 0.5) * from_stride / to_stride - 0.5


def scale_geometry(geometry: Geometry, stride_zyx: tuple[int, int, int], shape_zyx: tuple[int, int, int]) -> Geometry:
    """Grid of an embedding map with cumulative ``stride_zyx`` and array shape ``shape_zyx`` over
    a volume of ``geometry``: voxel i lies at input voxel (i + 0.5) * stride - 0.5."""
    stride_xyz = np.asarray(stride_zyx[::-1], float)
    origin = geometry.index_to_world((stride_xyz - 1.0) / 2.0)[0]
    return Geometry(tuple(float(v) for v in origin), tuple(float(v) for v in np.asarray(geometry.spacing) * stride_xyz),
                    tuple(int(n) for n in shape_zyx[::-1]), geometry.direction)


@dataclass
class Embeddings:
    """The embedding maps of one volume: ``maps[k]`` is (C, d, h, w) for scale k + 1."""

    maps: list[np.ndarray]
    grids: list[Geometry]
    geometry: Geometry  # the input (resampled) volume's grid
    info: dict

    def save(self, folder: str | Path) -> Path:
        """Write ``scale<k>.npy`` (float16) and ``geometry.json`` into ``folder`` (atomically per file;
        ``geometry.json`` last, so its presence marks a complete cache)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for k, array in enumerate(self.maps, start=1):
            with atomic_path(folder / f"scale{k}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array, dtype=np.float16))
        document = {"input": _grid_dict(self.geometry), "scales": [_grid_dict(g) for g in self.grids],
                    "strides_zyx": [list(s) for s in CUMULATIVE_STRIDES[: len(self.grids)]], **self.info}
        with atomic_path(folder / "geometry.json") as tmp:
            tmp.write_text(json.dumps(document, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> Embeddings:
        folder = Path(folder)
        meta_path = folder / "geometry.json"
        if not meta_path.exists():
            raise InputError(f"{folder}: no embedding cache (geometry.json missing); run `lesiontrack embed`")
        document = json.loads(meta_path.read_text())
        grids = [_grid_of(g) for g in document["scales"]]
        maps = [np.load(folder / f"scale{k}.npy", mmap_mode="r" if mmap else None) for k in range(1, len(grids) + 1)]
        info = {k: v for k, v in document.items() if k not in ("input", "scales", "strides_zyx")}
        return cls(maps, grids, _grid_of(document["input"]), info)


def _grid_dict(geometry: Geometry) -> dict:
    return {"origin": list(geometry.origin), "spacing": list(geometry.spacing), "size": list(geometry.size),
            "direction": list(geometry.direction)}


def _grid_of(values: dict) -> Geometry:
    return Geometry(tuple(values["origin"]), tuple(values["spacing"]), tuple(values["size"]),
                    tuple(values["direction"]))


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[MultiScaleEmbedding, dict]:
    """The network of a pretraining checkpoint, in eval mode, and the checkpoint's config."""
    state = read_checkpoint(checkpoint)
    model_cfg = state["config"]["model"]
    model = build_model(model_cfg["width"], model_cfg["embedding_dim"], model_cfg.get("n_scales", 5),
                        norm=model_cfg.get("norm", "group"))
    load_weights(model, state, checkpoint)
    model.to(device).eval()
    return model, state["config"]


def initial_model(config: dict) -> MultiScaleEmbedding:
    """The network of a checkpoint's ``config`` as pretraining started it (the same seed and
    architecture, untrained), in eval mode: the reference a trained model is compared with."""
    model_cfg = config["model"]
    torch.manual_seed(config["train"]["seed"])
    model = build_model(model_cfg["width"], model_cfg["embedding_dim"], model_cfg.get("n_scales", 5),
                        model_cfg.get("init_resnet18"), norm=model_cfg.get("norm", "group"))
    return model.eval()


def _padded(array: np.ndarray, multiple: tuple[int, int, int]) -> torch.Tensor:
    pad = [(-n) % m for n, m in zip(array.shape, multiple, strict=True)]
    x = torch.from_numpy(array)[None, None]
    return F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), value=PAD_VALUE)


@torch.no_grad()
def _forward(model: MultiScaleEmbedding, x: torch.Tensor, device: torch.device) -> list[np.ndarray]:
    return [m[0].float().cpu().numpy().astype(np.float16) for m in model(x.to(device))]


def embed_volume(model: MultiScaleEmbedding, image: sitk.Image, window_hu: tuple[float, float],
                 max_voxels: int = 64_000_000, overlap: int = 32, device: str | torch.device = "cpu",
                 spacing_mm: float | None = None, source: str = "volume") -> Embeddings:
    """Embeddings of a volume (already resampled to the training spacing) at every scale."""
    geometry = Geometry.of(image)
    if spacing_mm is not None and not np.allclose(geometry.spacing, spacing_mm, atol=1e-3):
        raise InputError(f"{source}: spacing {tuple(round(s, 4) for s in geometry.spacing)} mm; the model was "
                         f"trained at {spacing_mm} mm isotropic: resample first")
    device = torch.device(device)
    began = time.perf_counter()
    array = window(sitk.GetArrayViewFromImage(image), window_hu, (-1.0, 1.0))
    x = _padded(array, COARSEST)
    depth = x.shape[2]
    slab = max(COARSEST[0] * 4, (max_voxels // (x.shape[3] * x.shape[4])) // COARSEST[0] * COARSEST[0])
    if depth <= slab:
        maps = _forward(model, x, device)
    else:  # overlapping slabs along z; keep each slab's centre
        overlap = int(np.ceil(overlap / COARSEST[0]) * COARSEST[0])
        step = slab - 2 * overlap
        if step <= 0:
            raise ValueError(f"max_voxels = {max_voxels}: slabs of {slab} slices cannot hold an overlap of {overlap}")
        maps = None
        for start in range(0, depth, step):
            lo = max(0, min(start - overlap, depth - slab))
            part = _forward(model, x[:, :, lo: lo + slab], device)
            if maps is None:
                maps = [np.zeros((m.shape[0], depth // s[0], *m.shape[2:]), np.float16)
                        for m, s in zip(part, CUMULATIVE_STRIDES, strict=True)]
            for full, piece, stride in zip(maps, part, CUMULATIVE_STRIDES, strict=True):
                keep_lo, keep_hi = start // stride[0], min(depth, start + step) // stride[0]
                full[:, keep_lo:keep_hi] = piece[:, keep_lo - lo // stride[0]: keep_hi - lo // stride[0]]
            if start + step >= depth:
                break
    grids = [scale_geometry(geometry, s, m.shape[1:]) for m, s in zip(maps, CUMULATIVE_STRIDES, strict=True)]
    info = {"window_hu": list(window_hu), "seconds": time.perf_counter() - began}
    return Embeddings(maps, grids, geometry, info)


def embed_files(checkpoint: str | Path, volumes: dict[str, str | Path], out_dir: str | Path,
                device: str = "cpu", max_voxels: int = 64_000_000, progress: bool = True) -> list[dict]:
    """Embed each ``image_id -> resampled NIfTI`` into ``out_dir/<image_id>/`` (named by
    :func:`lesiontrack.io.safe_name`); returns one row per volume."""
    from tqdm import tqdm


    model, config = load_model(checkpoint, device)
    digest = sha256(checkpoint)
    rows = []
    for image_id, path in tqdm(volumes.items(), desc="embed", disable=not progress):
        embeddings = embed_volume(model, read_image(path), tuple(config["window_hu"]), max_voxels, device=device,
                                  spacing_mm=config.get("spacing_mm"), source=str(path))
        embeddings.info.update({"checkpoint_sha256": digest, "volume": str(path)})
        folder = embeddings.save(named_path(out_dir, image_id))
        rows.append({"image_id": image_id, "embeddings": str(folder), "volume": str(path),
                     "seconds": embeddings.info["seconds"]})
    return rows


def embed_shard(checkpoint: str | Path, pairs_csv: str | Path, resampled_csv: str | Path, split: str,
                out_dir: str | Path, out_table: str | Path, device: str = "cpu") -> pd.DataFrame:
    """Embed the volumes of one shard that a pair of ``split`` uses (as source or target; every
    pair where pairs.csv has no ``split`` column); the shard's table lists them."""
    pairs = read_table(pairs_csv, required=["source_image", "target_image"])
    if "split" in pairs.columns:
        pairs = pairs[pairs["split"] == split]
    wanted = set(pairs["source_image"].astype(str)) | set(pairs["target_image"].astype(str))
    volumes = {i: p for i, p in volume_paths([resampled_csv]).items() if i in wanted}
    rows = embed_files(checkpoint, volumes, out_dir, device) if volumes else []
    table = pd.DataFrame(rows, columns=["image_id", "embeddings", "volume", "seconds"])
    write_table(table, out_table)
    return table
