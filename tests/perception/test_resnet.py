"""The ResNet-18-style encoder: ResNet-18's layout and size, GroupNorm, both pooling heads."""

import pytest
import torch
from torch import nn

from policystack.perception.resnet import ResNetEncoder


def test_full_width_is_resnet18_with_groupnorm():
    torchvision = pytest.importorskip("torchvision")
    ref = torchvision.models.resnet18(weights=None)
    ref_trunk = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("fc."))
    enc = ResNetEncoder((64, 128, 256, 512), (2, 2, 2, 2), out_dim=10, pool="avg")
    trunk = sum(p.numel() for n, p in enc.named_parameters() if not n.startswith("head."))
    assert trunk == ref_trunk == 11_176_512  # BatchNorm -> GroupNorm keeps the count (weight + bias)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in enc.modules())
    assert all(m.num_channels // m.num_groups == 16 for m in enc.modules() if isinstance(m, nn.GroupNorm))


@pytest.mark.parametrize("pool", ["avg", "keypoints"])
def test_encodes_images_to_vectors_and_learns_where(pool):
    torch.manual_seed(0)
    enc = ResNetEncoder((8, 8, 16, 16), (1, 1, 1, 1), out_dim=2, pool=pool, keypoints=4)
    x = torch.zeros(16, 3, 64, 64)
    pos = torch.randint(8, 56, (16, 2))
    for i, (r, c) in enumerate(pos.tolist()):
        x[i, :, r - 4:r + 4, c - 4:c + 4] = 1.0
    target = pos.float() / 32 - 1
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = ((enc(x) - target) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert enc(x).shape == (16, 2) and loss.item() < 0.3 * first
    with pytest.raises(ValueError, match="pool 'max'"):
        ResNetEncoder(pool="max")
