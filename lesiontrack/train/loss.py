"""Pixel-wise InfoNCE over positives, hard and diverse negatives, at every embedding scale.

For a positive pair (f, f') and negatives h_j (paper Eq. 1, summed over positives):
    L = - sum_i log( exp(f_i.f'_i / t) / (exp(f_i.f'_i / t) + sum_j exp(f_i.h_ij / t)) )
computed at each of the 5 scales and averaged over scales. A negative that falls in the same
coarse voxel as its positive at a scale is dropped at that scale.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

from lesiontrack.model import CUMULATIVE_STRIDES


def sample_embeddings(embedding: torch.Tensor, points_zyx: torch.Tensor, input_shape, project=None) -> torch.Tensor:
    """Embeddings (N, C) of one map (C, d, h, w) at continuous input-voxel points (N, 3), trilinear,
    re-normalised. The map covers the same extent as the input (``align_corners=False``).
    ``project``: maps sampled decoder features to embeddings (the model's linear head)."""
    size = torch.tensor(input_shape, dtype=points_zyx.dtype, device=points_zyx.device)
    normalised = (points_zyx + 0.5) / size * 2.0 - 1.0
    grid = normalised.flip(-1).view(1, -1, 1, 1, 3).to(embedding.dtype)
    sampled = F.grid_sample(embedding[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    sampled = sampled.view(embedding.shape[0], -1).T
    return F.normalize(sampled, dim=1) if project is None else project(sampled)


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float,
             keep: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 1 summed over positives. anchor, positive: (N, C); negatives: (N, K, C); keep: (N, K) bool."""
    positive_logit = (anchor * positive).sum(-1, keepdim=True) / temperature
    negative_logits = torch.einsum("nc,nkc->nk", anchor, negatives) / temperature
    if keep is not None:
        negative_logits = negative_logits.masked_fill(~keep, float("-inf"))
    logits = torch.cat([positive_logit, negative_logits], dim=1)
    return -(logits[:, 0] - torch.logsumexp(logits, dim=1)).sum()


def choose_negatives(embeddings1: list[torch.Tensor], embeddings2: list[torch.Tensor], project, positives1: np.ndarray,
                     positives2: np.ndarray, valid2: np.ndarray, input_shape, spacing_mm: float,
                     exclusion_mm: float, n_hard: int, n_diverse: int, n_candidates: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per positive, ``n_hard`` candidates of view 2 most similar to the anchor (summed similarity
    over scales) and ``n_diverse`` random ones, all farther than ``exclusion_mm`` from the
    positive. Returns the candidate voxels (K, 3) and, per positive, indices into them (N, n_hard + n_diverse)."""
    candidates = np.stack(np.nonzero(valid2), axis=1)
    candidates = candidates[rng.choice(len(candidates), size=min(n_candidates, len(candidates)), replace=False)]
    cand = torch.from_numpy(candidates.astype(np.float32))
    anchors1 = torch.from_numpy(positives1.astype(np.float32))
    with torch.no_grad():
        similarity = torch.zeros(len(positives1), len(candidates))
        for level, (e1, e2) in enumerate(zip(embeddings1, embeddings2, strict=True)):
            to_embedding = _projector(project, level)
            similarity += (sample_embeddings(e1, anchors1, input_shape, to_embedding)
                           @ sample_embeddings(e2, cand, input_shape, to_embedding).T)
    distance_mm = np.linalg.norm(positives2[:, None, :] - candidates[None, :, :], axis=-1) * spacing_mm
    excluded = torch.from_numpy(distance_mm < exclusion_mm)
    similarity = similarity.masked_fill(excluded, float("-inf"))
    hard = torch.topk(similarity, k=n_hard, dim=1).indices.numpy()
    chosen = np.empty((len(positives1), n_hard + n_diverse), dtype=int)
    for i in range(len(positives1)):
        allowed = np.flatnonzero(~excluded[i].numpy())
        chosen[i, :n_hard] = hard[i]
        chosen[i, n_hard:] = rng.choice(allowed, size=n_diverse, replace=len(allowed) < n_diverse)
    return candidates, chosen


def _projector(project, level: int):
    return None if project is None else (lambda features: project(level, features))


def multiscale_loss(embeddings1: list[torch.Tensor], embeddings2: list[torch.Tensor], project, positives1: np.ndarray,
                    positives2: np.ndarray, candidates: np.ndarray, negatives: np.ndarray, input_shape,
                    temperature: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """InfoNCE of one patch pair at every scale; returns (mean over scales, per-scale losses).

    ``embeddings1/2``: per level, dense embedding maps (``project`` None) or decoder features with
    ``project(level, features)`` the model's head (:meth:`MultiScaleEmbedding.project`)."""
    p1 = torch.from_numpy(positives1.astype(np.float32))
    p2 = torch.from_numpy(positives2.astype(np.float32))
    cand = torch.from_numpy(candidates.astype(np.float32))
    per_scale = []
    for level, (e1, e2, stride) in enumerate(zip(embeddings1, embeddings2, CUMULATIVE_STRIDES, strict=True)):
        to_embedding = _projector(project, level)
        anchor = sample_embeddings(e1, p1, input_shape, to_embedding)
        positive = sample_embeddings(e2, p2, input_shape, to_embedding)
        bank = sample_embeddings(e2, cand, input_shape, to_embedding)
        negative = bank[torch.from_numpy(negatives)]  # (N, K, C)
        step = np.asarray(stride)
        same_cell = np.all(np.floor(candidates[negatives] / step) == np.floor(positives2[:, None, :] / step), -1)
        per_scale.append(info_nce(anchor, positive, negative, temperature, torch.from_numpy(~same_cell)))
    return torch.stack(per_scale).mean(), per_scale
