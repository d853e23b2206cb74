"""The same code on a CUDA GPU: the network agrees with the CPU, mixed precision changes the loss
only by rounding, and pretraining on the GPU writes a checkpoint that embeds identically on
either device. Skipped where torch sees no CUDA device (as on the CI machine)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train import TINY, _tiny_volumes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() "
                                "is False")


@pytest.fixture
def exact_fp32():
    """Full fp32 on the GPU (no TF32 shortcuts), so CPU and GPU differ only by summation order."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_forward_on_cuda_equals_cpu(exact_fp32):
    from lesiontrack.model import MultiScaleEmbedding

    torch.manual_seed(0)
    net = MultiScaleEmbedding(width=16, embedding_dim=32).eval()
    x = torch.randn(1, 1, 32, 96, 96)
    with torch.no_grad():
        on_cpu = net(x)
        on_gpu = [m.cpu() for m in net.cuda()(x.cuda())]
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() < 1e-4  # unit vectors: components agree to 1e-4


def _pairs_and_volumes(tmp_path):
    from lesiontrack.train import loop
    from lesiontrack.train.patches import PatchConfig

    cfg = loop.TrainConfig(**TINY)
    volumes = loop._Volumes(_tiny_volumes(tmp_path))
    pairs = loop._sample_pairs(volumes, 2, cfg, PatchConfig(patch_size=cfg.patch_size), np.random.default_rng(0))
    return pairs, volumes.spacing_mm


def test_loss_on_cuda_equals_cpu_and_bfloat16_only_rounds_it(tmp_path, exact_fp32):
    """One training loss and its gradient on the same patch pairs and negatives: CPU, GPU fp32 and
    GPU bfloat16 autocast. (An untrained network's embeddings are nearly alike, so the loss itself
    barely moves; the gradient is the sensitive quantity.)"""
    from lesiontrack.model import MultiScaleEmbedding
    from lesiontrack.train import loop

    pairs, spacing = _pairs_and_volumes(tmp_path)
    torch.manual_seed(0)
    net = MultiScaleEmbedding(width=8, embedding_dim=16)
    conv_dtypes: list[torch.dtype] = []
    net.layer2[0].conv1.register_forward_hook(lambda module, args, output: conv_dtypes.append(output.dtype))
    losses, gradients = {}, {}
    for name, device, amp in (("cpu", "cpu", False), ("cuda", "cuda", False), ("cuda-bf16", "cuda", True)):
        model = net.to(device)
        model.zero_grad(set_to_none=True)
        cfg = loop.TrainConfig(**{**TINY, "amp": amp})
        loss, per_scale = loop._pair_loss(model, pairs, cfg, spacing, np.random.default_rng(5), torch.device(device))
        loss.backward()
        assert loss.device.type == device and len(per_scale) == 5
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        losses[name] = loss.item()
        gradients[name] = torch.cat([p.grad.flatten().cpu() for p in model.parameters()])
    assert conv_dtypes == [torch.float32, torch.float32, torch.bfloat16]  # autocast ran the convolutions in bf16
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-5)
    assert losses["cuda-bf16"] == pytest.approx(losses["cpu"], rel=1e-3)
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(gradients["cuda"], gradients["cpu"], dim=0) > 0.9999
    assert cosine(gradients["cuda-bf16"], gradients["cpu"], dim=0) > 0.99


def test_pretrain_on_cuda_and_embed_on_either_device(tmp_path):
    from lesiontrack.io import read_image
    from lesiontrack.track.embed import embed_volume, load_model
    from lesiontrack.train.loop import ModelConfig, TrainConfig, pretrain

    volumes = _tiny_volumes(tmp_path)
    log = pretrain(volumes[:2], volumes[2:], tmp_path / "run", TrainConfig(**{**TINY, "device": "cuda"}),
                   ModelConfig(width=8, embedding_dim=16), progress=False)
    assert len(log) == TINY["max_epochs"] and np.isfinite(log.filter(like="loss").to_numpy()).all()
    checkpoint = tmp_path / "run" / "checkpoint_latest.pt"
    state = torch.load(checkpoint, weights_only=True)  # no map_location: the devices they were saved from
    assert all(t.device.type == "cpu" for t in state["model"].values())  # loadable without a GPU
    image = read_image(volumes[0])
    maps = {}
    for device in ("cpu", "cuda"):
        model, config = load_model(checkpoint, device)
        maps[device] = embed_volume(model, image, tuple(config["window_hu"]), device=device).maps
    for a, b in zip(maps["cpu"], maps["cuda"], strict=True):
        cosine = (a.astype(np.float32) * b.astype(np.float32)).sum(0)
        assert np.median(cosine) > 0.999 and cosine.min() > 0.99
