"""Pixel-wise InfoNCE over positives, hard and diverse negatives, at every embedding scale.

For a positive pair (f, f') and negatives h_j (paper Eq. 1, summed over positives):
    L = - sum_i log( exp(f_i.f'_i / t) / (exp(f_i.f'_i / t) + sum_j exp(f_i.h_ij / t)) )
computed at each of the 5 scales and averaged over scales. A negative that falls in the same
coarse voxel as its positive at a scale is dropped at that scale.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    return _info_nce_logits((anchor * positive).sum(-1), torch.einsum("nc,nkc->nk", anchor, negatives),
                            temperature, keep)


def info_nce_bank(anchor: torch.Tensor, positive: torch.Tensor, bank: torch.Tensor, negatives: torch.Tensor,
                  temperature: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`info_nce` with the negatives given as indices (N, K) into a bank (M, C) of embeddings.

    Equal to ``info_nce(anchor, positive, bank[negatives], ...)``, but it gathers the (N, M)
    similarities instead of (N, K, C) embeddings: about 10x less work forwards and backwards."""
    similarities = anchor @ bank.T
    return _info_nce_logits((anchor * positive).sum(-1), torch.gather(similarities, 1, negatives), temperature, keep)


def _info_nce_logits(positive_similarity: torch.Tensor, negative_similarities: torch.Tensor, temperature: float,
                     keep: torch.Tensor | None) -> torch.Tensor:
    positive_logit = positive_similarity[:, None] / temperature
    negative_logits = negative_similarities / temperature
    if keep is not None:
        negative_logits = negative_logits.masked_fill(~keep, float("-inf"))
    logits = torch.cat([positive_logit, negative_logits], dim=1)
    return -(logits[:, 0] - torch.logsumexp(logits, dim=1)).sum()


@dataclass
class NegativeSource:
    """Candidate negatives of one view: its embeddings, candidate voxels and which candidates are
    too close to each positive. ``same_view``: the view holds the positives too (view 2 of the pair),
    so a candidate in the positive's coarse voxel is dropped at that scale."""

    embeddings: list[torch.Tensor]
    candidates: np.ndarray  # (K, 3) view voxels (z, y, x)
    excluded: np.ndarray  # (N, K) bool
    same_view: bool


def _draw(valid: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    candidates = np.stack(np.nonzero(valid), axis=1)
    return candidates[rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)]


def near_source(embeddings2: list[torch.Tensor], positives2: np.ndarray, valid2: np.ndarray, spacing_mm: float,
                exclusion_mm: float, n_candidates: int, rng: np.random.Generator) -> NegativeSource:
    """``n_candidates`` random voxels of the positives' own view, excluded within ``exclusion_mm``."""
    candidates = _draw(valid2, n_candidates, rng)
    distance_mm = np.linalg.norm(positives2[:, None, :] - candidates[None, :, :], axis=-1) * spacing_mm
    return NegativeSource(embeddings2, candidates, distance_mm < exclusion_mm, same_view=True)


def far_source(embeddings: list[torch.Tensor], valid: np.ndarray, to_volume: np.ndarray,
               positives_volume: np.ndarray, spacing_mm: float, exclusion_mm: float, n_candidates: int,
               rng: np.random.Generator) -> NegativeSource:
    """``n_candidates`` random voxels of another view of the same volume (elsewhere in the body),
    excluded within ``exclusion_mm`` of the positive in volume coordinates. They teach the
    embedding to tell a place from similar anatomy farther away than one patch (the next
    vertebra, the other kidney), which the paired patches alone never show."""
    candidates = _draw(valid, n_candidates, rng)
    in_volume = candidates @ to_volume[:3, :3].T + to_volume[:3, 3]
    distance_mm = np.linalg.norm(positives_volume[:, None, :] - in_volume[None, :, :], axis=-1) * spacing_mm
    return NegativeSource(embeddings, candidates, distance_mm < exclusion_mm, same_view=False)


Level = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (anchors, positives, candidate bank) at one scale


def sample_levels(embeddings1: list[torch.Tensor], embeddings2: list[torch.Tensor], project, positives1: np.ndarray,
                  positives2: np.ndarray, sources: list[NegativeSource], input_shape) -> list[Level]:
    """Per scale, the embeddings of the anchors (view 1), their positives (view 2) and the
    candidates of all ``sources`` concatenated, sampled once for both negative mining and the loss.

    ``embeddings1/2``: per level, dense embedding maps (``project`` None) or decoder features with
    ``project(level, features)`` the model's head (:meth:`MultiScaleEmbedding.project`)."""
    device = embeddings1[0].device  # the maps stay where the network put them (CPU or GPU)
    p1 = torch.from_numpy(positives1.astype(np.float32)).to(device)
    p2 = torch.from_numpy(positives2.astype(np.float32)).to(device)
    candidates = [torch.from_numpy(s.candidates.astype(np.float32)).to(device) for s in sources]
    levels = []
    for level, (e1, e2) in enumerate(zip(embeddings1, embeddings2, strict=True)):
        to_embedding = _projector(project, level)
        bank = torch.cat([sample_embeddings(s.embeddings[level], c, input_shape, to_embedding)
                          for s, c in zip(sources, candidates, strict=True)])
        levels.append((sample_embeddings(e1, p1, input_shape, to_embedding),
                       sample_embeddings(e2, p2, input_shape, to_embedding), bank))
    return levels


def choose_negatives(levels: list[Level], sources: list[NegativeSource], n_hard: int, n_diverse: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Per positive, the ``n_hard`` candidates most similar to the anchor (summed similarity over
    scales) and ``n_diverse`` random ones, none of them excluded. Returns indices (N, n_hard +
    n_diverse) into the candidates of all ``sources``, concatenated in order."""
    excluded = np.concatenate([s.excluded for s in sources], axis=1)
    with torch.no_grad():
        similarity = sum(anchor @ bank.T for anchor, _, bank in levels)
    similarity = similarity.masked_fill(torch.from_numpy(excluded).to(similarity.device), float("-inf"))
    hard = torch.topk(similarity, k=n_hard, dim=1).indices.cpu().numpy()
    chosen = np.empty((len(excluded), n_hard + n_diverse), dtype=int)
    for i in range(len(excluded)):
        allowed = np.flatnonzero(~excluded[i])
        chosen[i, :n_hard] = hard[i]
        chosen[i, n_hard:] = rng.choice(allowed, size=n_diverse, replace=len(allowed) < n_diverse)
    return chosen


def _projector(project, level: int):
    return None if project is None else (lambda features: project(level, features))


def multiscale_loss(levels: list[Level], positives2: np.ndarray, sources: list[NegativeSource],
                    negatives: np.ndarray, temperature: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """InfoNCE of one patch pair at every scale; returns (mean over scales, per-scale losses).

    ``levels``: :func:`sample_levels`; ``negatives``: indices into the concatenated candidates of
    ``sources`` (:func:`choose_negatives`)."""
    device = levels[0][0].device
    index = torch.from_numpy(negatives.astype(np.int64)).to(device)
    candidates = np.concatenate([s.candidates for s in sources])[negatives]
    same_view = np.concatenate([np.full(len(s.candidates), s.same_view) for s in sources])[negatives]
    per_scale = []
    for (anchor, positive, bank), stride in zip(levels, CUMULATIVE_STRIDES, strict=True):
        step = np.asarray(stride)
        same_cell = same_view & np.all(np.floor(candidates / step) == np.floor(positives2[:, None, :] / step), -1)
        per_scale.append(info_nce_bank(anchor, positive, bank, index, temperature,
                                       torch.from_numpy(~same_cell).to(device)))
    return torch.stack(per_scale).mean(), per_scale
