"""A ResNet-18-style image encoder with GroupNorm, trained from scratch (Diffusion Policy's and UWM's
observation encoder: torchvision's resnet18 with every BatchNorm replaced by GroupNorm of 16 channels per
group, the classifier replaced by a projection to ``out_dim``).

    images float [N, 3, H, W] (preprocessed, e.g. ImageNet-normalised)
        -> stem: 7x7 conv stride 2, GroupNorm, ReLU, 3x3 max-pool stride 2
        -> 4 stages of ``blocks`` BasicBlocks (two 3x3 convs + GroupNorm, identity or 1x1-conv shortcut),
           widths ``widths``, stride 2 from the second stage on           (map of stride 32)
        -> pool: "avg" (global average, as UWM's reference) or "keypoints" (spatial-softmax keypoints,
           as Diffusion Policy: where things are survives the pooling)
        -> Linear -> float [N, out_dim]

``widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)`` is ResNet-18 exactly (11.2M parameters in the trunk);
the tiny presets use narrower stages. GroupNorm keeps no running statistics, so training and evaluation
compute the same function (and EMA copies need no BatchNorm care).
"""

from __future__ import annotations

from torch import Tensor, nn

from policystack.perception.conv import SpatialSoftmax

POOLS = ("avg", "keypoints")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 16 channels per group (the reference's ``num_features // 16``), at least one group."""
    return nn.GroupNorm(max(1, channels // 16), channels)


def pooling_head(in_channels: int, out_dim: int, pool: str = "avg", keypoints: int = 32) -> nn.Sequential:
    """Feature map [N, in_channels, h, w] -> [N, out_dim]: global average ("avg") or spatial-softmax
    keypoints ("keypoints", 2 numbers per keypoint), then a linear projection."""
    if pool not in POOLS:
        raise ValueError(f"pool {pool!r} is not one of {POOLS}")
    if pool == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, out_dim))
    return nn.Sequential(SpatialSoftmax(in_channels, keypoints), nn.Linear(2 * keypoints, out_dim))


class BasicBlock(nn.Module):
    """[N, c_in, H, W] -> [N, c_out, H/stride, W/stride]: relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = group_norm(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else
                         nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), group_norm(c_out)))

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        return self.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """float [N, 3, H, W] -> float [N, out_dim] (see the module docstring).

    Args:
        widths: channels of the 4 stages (ResNet-18: 64, 128, 256, 512); the stem has widths[0].
        blocks: BasicBlocks per stage (ResNet-18: 2 each).
        out_dim: size of the output vector.
        pool: "avg" or "keypoints".
        keypoints: spatial-softmax keypoints (pool="keypoints").
    """

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512), blocks: tuple[int, ...] = (2, 2, 2, 2),
                 out_dim: int = 512, pool: str = "avg", keypoints: int = 32):
        super().__init__()
        if len(widths) != len(blocks) or not widths or min(*widths, *blocks, out_dim) < 1:
            raise ValueError(f"ResNetEncoder: widths {tuple(widths)} and blocks {tuple(blocks)} must be positive "
                             f"and of one length (ResNet-18: (64, 128, 256, 512) and (2, 2, 2, 2)); out_dim {out_dim}")
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False), group_norm(widths[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        layers, c_in = [], widths[0]
        for i, (c, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(c_in, c, stride=2 if i > 0 and j == 0 else 1))
                c_in = c
        self.stages = nn.Sequential(*layers)
        self.head = pooling_head(c_in, out_dim, pool, keypoints)
        self.out_dim = out_dim

    def features(self, images: Tensor) -> Tensor:
        """float [N, 3, H, W] -> the last stage's map [N, widths[-1], H/32, W/32], before pooling."""
        return self.stages(self.stem(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))
