"""The embedding network: scales and strides, L2 normalisation, ResNet-18 inflation."""

from __future__ import annotations

import pytest
import torch

from lesiontrack.model import CUMULATIVE_STRIDES, MultiScaleEmbedding, inflate_resnet18


def test_output_shapes_match_contract_strides():
    net = MultiScaleEmbedding(width=4, embedding_dim=8)
    outputs = net(torch.randn(2, 1, 32, 96, 96))
    assert len(outputs) == 5
    for output, stride in zip(outputs, CUMULATIVE_STRIDES, strict=True):
        assert tuple(output.shape) == (2, 8, 32 // stride[0], 96 // stride[1], 96 // stride[2])
        assert torch.allclose(output.norm(dim=1), torch.ones(()), atol=1e-5)
    assert CUMULATIVE_STRIDES == ((2, 2, 2), (2, 4, 4), (2, 8, 8), (2, 16, 16), (4, 32, 32))


def _torchvision_resnet18_state_dict() -> dict[str, torch.Tensor]:
    """A state dict with torchvision's ResNet-18 key names and shapes (random values)."""
    generator = torch.Generator().manual_seed(0)
    state = {"conv1.weight": torch.randn(64, 3, 7, 7, generator=generator)}

    def bn(prefix: str, c: int) -> None:
        state.update({f"{prefix}.weight": torch.rand(c, generator=generator),
                      f"{prefix}.bias": torch.randn(c, generator=generator),
                      f"{prefix}.running_mean": torch.zeros(c), f"{prefix}.running_var": torch.ones(c),
                      f"{prefix}.num_batches_tracked": torch.tensor(0)})

    bn("bn1", 64)
    channels = [64, 64, 128, 256, 512]
    for layer in range(1, 5):
        cin, cout = channels[layer - 1], channels[layer]
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            first_in = cin if block == 0 else cout
            state[f"{prefix}.conv1.weight"] = torch.randn(cout, first_in, 3, 3, generator=generator)
            bn(f"{prefix}.bn1", cout)
            state[f"{prefix}.conv2.weight"] = torch.randn(cout, cout, 3, 3, generator=generator)
            bn(f"{prefix}.bn2", cout)
            if block == 0 and layer > 1:
                state[f"{prefix}.downsample.0.weight"] = torch.randn(cout, cin, 1, 1, generator=generator)
                bn(f"{prefix}.downsample.1", cout)
    state["fc.weight"] = torch.randn(1000, 512, generator=generator)
    state["fc.bias"] = torch.randn(1000, generator=generator)
    return state


def test_resnet18_inflation():
    state = _torchvision_resnet18_state_dict()
    net = MultiScaleEmbedding(width=64, embedding_dim=8)
    loaded = inflate_resnet18(net, state)
    expected = [k for k in state if not k.startswith("fc.") and not k.endswith(
        ("running_mean", "running_var", "num_batches_tracked"))]
    assert sorted(loaded) == sorted(expected)
    kernel = net.layer2[0].conv1.weight  # (128, 64, 3, 3, 3): 2D kernel repeated along z, / depth
    assert torch.allclose(kernel.sum(dim=2), state["layer2.0.conv1.weight"], atol=1e-5)
    stem = net.conv1.weight  # RGB summed to one channel
    assert torch.allclose(stem.sum(dim=2)[:, 0], state["conv1.weight"].sum(dim=1), atol=1e-4)
    assert torch.equal(net.bn1.weight, state["bn1.weight"])
    with pytest.raises(ValueError, match="width 8"):
        inflate_resnet18(MultiScaleEmbedding(width=8, embedding_dim=8), state)
