"""A small convolutional image encoder trained from scratch: conv stages, then spatial-softmax keypoints
(robomimic / diffusion_policy's visual core, without the ResNet).

    images float [N, 3, H, W] (preprocessed: ``perception.preprocess.ImagePreprocessor``)
        -> ``len(channels)`` stride-2 conv stages (3x3, GroupNorm, ReLU) + one 3x3 conv
        -> SpatialSoftmax: K heat maps, each reduced to its expected (x, y) in [-1, 1]
        -> float [N, 2K]

Keypoints make the encoder's output say *where* things are, which a global pooling loses; they are
cheap enough to train on two CPU cores.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SpatialSoftmax(nn.Module):
    """[B, C, H, W] feature map -> [B, 2K] expected (x, y) of K learned keypoint heat maps."""

    def __init__(self, in_channels: int, keypoints: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, keypoints, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        heat = self.proj(x).flatten(2).softmax(-1)  # [B, K, H*W]
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device),
                                torch.linspace(-1, 1, w, device=x.device), indexing="ij")
        grid = torch.stack([xs.flatten(), ys.flatten()], -1)  # [H*W, 2]
        return (heat @ grid).flatten(1)  # [B, 2K]


class ConvEncoder(nn.Module):
    """float [N, 3, H, W] -> float [N, 2K] (see the module docstring)."""

    def __init__(self, channels: tuple[int, ...], keypoints: int):
        super().__init__()
        if not channels or keypoints < 1:
            raise ValueError(f"ConvEncoder needs at least one conv stage and one keypoint, got channels={channels}, "
                             f"keypoints={keypoints}")
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8 if c % 8 == 0 else 1, c), nn.ReLU()]
            c_in = c
        layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.keypoints = SpatialSoftmax(c_in, keypoints)

    def forward(self, images: Tensor) -> Tensor:
        return self.keypoints(self.net(images))
