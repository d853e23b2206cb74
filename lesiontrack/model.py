"""The multi-scale anatomical embedding network: a 3D U-Net on a ResNet-18 encoder inflated to 3D.

Five encoder levels with strides (z, y, x): level 1 (the stem) (2, 2, 2); levels 2-4 (1, 2, 2);
level 5 (2, 2, 2); cumulative (2,2,2), (2,4,4), (2,8,8), (2,16,16), (4,32,32). The decoder
up-samples level by level, concatenates the encoder's features, applies a 3x3x3 convolution, and
emits one L2-normalised embedding map per level (finest first).

>>> import torch
>>> net = MultiScaleEmbedding(width=8, embedding_dim=16)
>>> [tuple(e.shape[2:]) for e in net(torch.zeros(1, 1, 32, 96, 96))]
[(16, 48, 48), (16, 24, 24), (16, 12, 12), (16, 6, 6), (8, 3, 3)]
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

STRIDES = ((2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2))  # per level, (z, y, x)
CUMULATIVE_STRIDES = ((2, 2, 2), (2, 4, 4), (2, 8, 8), (2, 16, 16), (4, 32, 32))


NORMS = ("none", "group", "channel")


class ChannelNorm(nn.Module):
    """Per-channel scale and shift, optionally after layer normalisation over the channels of
    each voxel (``normalise=True``); torchvision's BatchNorm ``weight``/``bias`` names.

    Neither BatchNorm (batch statistics) nor GroupNorm (statistics over the whole input) fits a
    network trained on 32x96x96 crops and applied to whole volumes: both make a voxel's embedding
    depend on how much of the volume is fed in (measured with GroupNorm: a voxel's fine-scale
    embedding from a crop and from the whole volume had a median cosine of 0.78). ``none`` (this
    class with ``normalise=False``) and ``channel`` are the same for any extent, so whole-volume
    inference matches training and slab-wise embedding matches one pass; ``channel`` squeezes a
    narrow network's few channels per voxel onto a sphere, which trained worse at width 4-8.
    """

    def __init__(self, channels: int, normalise: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.normalise, self.eps = normalise, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.normalise:
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * torch.rsqrt((x - mean).pow(2).mean(dim=1, keepdim=True) + self.eps)
        return x * self.weight.view(shape) + self.bias.view(shape)


def _norm(channels: int, kind: str) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return ChannelNorm(channels, normalise=kind == "channel")


class BasicBlock3d(nn.Module):
    """ResNet basic block with 3x3x3 convolutions (torchvision's names: conv1, bn1, conv2, bn2)."""

    def __init__(self, in_channels: int, channels: int, stride=(1, 1, 1), norm: str = "none") -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(channels, norm)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = _norm(channels, norm)
        self.downsample = None
        if tuple(stride) != (1, 1, 1) or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv3d(in_channels, channels, 1, stride=stride, bias=False),
                                            _norm(channels, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


def _layer(in_channels: int, channels: int, stride, norm: str) -> nn.Sequential:
    return nn.Sequential(BasicBlock3d(in_channels, channels, stride, norm), BasicBlock3d(channels, channels, norm=norm))


class MultiScaleEmbedding(nn.Module):
    """3D U-Net, inflated ResNet-18 encoder (width = stem channels; the paper's is 64), one
    ``embedding_dim``-d L2-normalised embedding per level, finest first."""

    def __init__(self, width: int = 64, embedding_dim: int = 128, n_scales: int = 5, in_channels: int = 1,
                 norm: str = "none") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm = {norm!r}: not one of {NORMS}")
        self.norm = norm
        if n_scales != 5:
            raise ValueError(f"n_scales = {n_scales}: the inflated ResNet-18 has 5 levels")
        self.width, self.embedding_dim = width, embedding_dim
        w = width
        # torchvision's names (conv1, bn1, layer1..4) so a ResNet-18 state dict can be inflated in.
    # Normalisation is per voxel over channels (ChannelNorm), so embeddings do not depend on the
    # extent of the input.
        self.conv1 = nn.Conv3d(in_channels, w, (3, 7, 7), stride=STRIDES[0], padding=(1, 3, 3), bias=False)
        self.bn1 = _norm(w, norm)
        self.layer1 = _layer(w, w, (1, 1, 1), norm)
        self.layer2 = _layer(w, 2 * w, STRIDES[2], norm)
        self.layer3 = _layer(2 * w, 4 * w, STRIDES[3], norm)
        self.layer4 = _layer(4 * w, 8 * w, STRIDES[4], norm)
        self.encoder_channels = (w, w, 2 * w, 4 * w, 8 * w)
        self.decoders = nn.ModuleList()
        for level in range(4):  # decoder for levels 1..4 (index 0 = finest)
            skip, deeper = self.encoder_channels[level], self.encoder_channels[level + 1]
            self.decoders.append(nn.Sequential(nn.Conv3d(skip + deeper, skip, 3, padding=1, bias=False),
                                               _norm(skip, norm), nn.ReLU(inplace=True)))
        self.bottleneck = nn.Sequential(nn.Conv3d(8 * w, 8 * w, 3, padding=1, bias=False), _norm(8 * w, norm),
                                        nn.ReLU(inplace=True))
        self.heads = nn.ModuleList(nn.Conv3d(c, embedding_dim, 1) for c in self.encoder_channels)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        level1 = F.relu(self.bn1(self.conv1(x)))
        level2 = self.layer1(F.max_pool3d(level1, kernel_size=(1, 3, 3), stride=STRIDES[1], padding=(0, 1, 1)))
        level3 = self.layer2(level2)
        level4 = self.layer3(level3)
        level5 = self.layer4(level4)
        return [level1, level2, level3, level4, level5]

    def forward(self, x: torch.Tensor, dense: bool = True) -> list[torch.Tensor]:
        """Dense embedding maps, one per level (finest first), L2-normalised along channels; with
        ``dense=False`` the decoder features instead (see :meth:`project`), so that training goes
        through ``forward`` (as DistributedDataParallel requires) without projecting whole maps."""
        decoded = self.decode(x)
        if not dense:
            return decoded
        return [F.normalize(head(d), dim=1) for head, d in zip(self.heads, decoded, strict=True)]

    def project(self, level: int, features: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, embedding_dim) of decoder features (N, C) sampled at points of ``level``.

        The head is a 1x1x1 convolution (linear), so training samples the few decoder features it
        needs and projects them, instead of projecting whole maps (2.5x faster steps on a CPU). At
        a level's voxel centres this equals sampling :meth:`forward`'s maps; between centres the
        features are interpolated before the normalisation rather than after.
        """
        head = self.heads[level]
        weight = head.weight.view(head.out_channels, head.in_channels)
        return F.normalize(features @ weight.T + head.bias, dim=1)

    def decode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder features per level (finest first), before the embedding heads."""
        features = self.encode(x)
        decoded = [None] * 5
        decoded[4] = self.bottleneck(features[4])
        for level in range(3, -1, -1):
            up = F.interpolate(decoded[level + 1], size=features[level].shape[2:], mode="trilinear",
                               align_corners=False)
            decoded[level] = self.decoders[level](torch.cat([features[level], up], dim=1))
        return decoded


def inflate_resnet18(model: MultiScaleEmbedding, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load a 2D ResNet-18 state dict with torchvision's key names into ``model``.

    2D kernels (k, k) become 3D by repeating along z and dividing by the depth (so a constant
    input gives the same response); RGB stem weights are summed to one channel; BatchNorm
    weight and bias initialise the ChannelNorm affine parameters. Returns the keys loaded.
    """
    own = model.state_dict()
    loaded = []
    for key, value in state_dict.items():
        if key not in own or key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        target = own[key]
        if value.dim() == 4 and target.dim() == 5:
            if key == "conv1.weight":
                value = value.sum(dim=1, keepdim=True) if target.shape[1] == 1 else value
                value = value[:, :, None].repeat(1, 1, target.shape[2], 1, 1) / target.shape[2]
            else:
                value = value[:, :, None].repeat(1, 1, target.shape[2], 1, 1) / target.shape[2]
        if value.shape != target.shape:
            raise ValueError(f"ResNet-18 key {key}: shape {tuple(value.shape)} does not fit {tuple(target.shape)} "
                             f"(model width {model.width}; torchvision's ResNet-18 is width 64)")
        own[key] = value.to(target.dtype)
        loaded.append(key)
    model.load_state_dict(own)
    return loaded


def build_model(width: int, embedding_dim: int, n_scales: int = 5, init_resnet18: str | Path | None = None,
                norm: str = "none") -> MultiScaleEmbedding:
    model = MultiScaleEmbedding(width=width, embedding_dim=embedding_dim, n_scales=n_scales, norm=norm)
    if init_resnet18:
        inflate_resnet18(model, torch.load(init_resnet18, map_location="cpu", weights_only=True))
    return model
