"""Gato's image tokens (Reed et al. 2022, sections 2.1-2.2): one embedding per 16x16 patch.

    uint8 [N, 3, h, w] --ImagePreprocessor("half", S)--> [-1, 1] [N, 3, S, S] --/ sqrt(patch) (= 4)-->
    non-overlapping patches, raster order [N * P, 3, p, p]  (P = (S / p)^2)
    --conv3x3 stride 2 (3 -> C)--> [N * P, C, p/2, p/2] --ResNet-v2 block (GroupNorm, GELU, conv3x3,
    GroupNorm, GELU, conv3x3, + x)--> --GroupNorm, GELU, flatten, Linear--> [N, P, d]
    + row code + column code

Position codes: a patch's normalised row (and column) interval [r / R, (r + 1) / R) is quantised to
``pos_vocab`` levels, giving the integers [lo, hi); in training one level is drawn uniformly from it
per patch and per image, at evaluation the interval's mean ``(lo + hi) // 2`` is used, and the learned
row (column) embedding of that level is added to the patch embedding. Each patch is encoded on its
own (the convolutions see no neighbouring patch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policystack.perception.preprocess import ImagePreprocessor


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (Gato's), or fewer when the channels do not divide into 32."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResNetV2Block(nn.Module):
    """Pre-activation residual block: x + conv(gelu(gn(conv(gelu(gn(x)))))), [N, C, p, p] -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = group_norm(channels), nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.gelu(self.norm1(x)))
        return x + self.conv2(F.gelu(self.norm2(h)))


def patch_intervals(n: int, pos_vocab: int) -> tuple[Tensor, Tensor]:
    """Rows (or columns) ``0 .. n-1`` of a patch grid -> their quantised intervals (lo, hi), int64 [n]
    each: the levels ``lo .. hi-1`` of ``pos_vocab`` that the normalised interval [r/n, (r+1)/n) covers."""
    r = torch.arange(n + 1)
    edges = torch.div(r * pos_vocab, n, rounding_mode="floor")
    return edges[:-1], torch.maximum(edges[1:], edges[:-1] + 1)


def patch_positions(n: int, pos_vocab: int, batch: int, sample: bool, generator: torch.Generator | None = None
                    ) -> Tensor:
    """int64 [batch, n]: each patch row's (column's) position level: drawn uniformly within its interval
    (``sample``, training) or the interval's mean (evaluation)."""
    lo, hi = patch_intervals(n, pos_vocab)
    if not sample:
        return ((lo + hi) // 2).expand(batch, n)
    u = torch.rand(batch, n, generator=generator)
    return (lo + (u * (hi - lo)).long()).clamp(max=hi - 1)


class PatchEmbedding(nn.Module):
    """uint8 images [N, 3, h, w] -> patch tokens [N, P, d] (see the module docstring).

    Args:
        width: d, the transformer's width.
        image_size: S, frames are resized to S x S (a multiple of ``patch_size``).
        patch_size: p (Gato: 16).
        channels: C, the ResNet block's channels.
        pos_vocab: quantisation levels of the row and column positions (Gato: 128).
    """

    def __init__(self, width: int, image_size: int = 64, patch_size: int = 16, channels: int = 32,
                 pos_vocab: int = 128):
        super().__init__()
        if image_size % patch_size or patch_size % 2:
            raise ValueError(f"PatchEmbedding: image_size {image_size} must be a multiple of patch_size {patch_size}, "
                             "which must be even")
        self.image_size, self.patch_size, self.pos_vocab = image_size, patch_size, pos_vocab
        self.grid = image_size // patch_size
        self.preprocess = ImagePreprocessor(image_size, "half")
        self.stem = nn.Conv2d(3, channels, 3, stride=2, padding=1)  # the block runs at p/2: 4x cheaper
        self.block = ResNetV2Block(channels)
        self.norm = group_norm(channels)
        self.proj = nn.Linear(channels * (patch_size // 2) ** 2, width)
        self.row = nn.Embedding(pos_vocab, width)
        self.col = nn.Embedding(pos_vocab, width)

    @property
    def n_patches(self) -> int:
        return self.grid * self.grid

    def forward(self, images: Tensor, key: str = "images") -> Tensor:
        x = self.preprocess(images, key) / math.sqrt(self.patch_size)  # [N, 3, S, S] in [-1/4, 1/4]
        N, g, p = x.shape[0], self.grid, self.patch_size
        x = x.view(N, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(N * g * g, 3, p, p)  # raster order
        x = F.gelu(self.norm(self.block(self.stem(x))))
        tokens = self.proj(x.flatten(1)).view(N, g * g, -1)
        rows = patch_positions(g, self.pos_vocab, N, self.training)  # [N, g]
        cols = patch_positions(g, self.pos_vocab, N, self.training)
        pos = self.row(rows.to(tokens.device))[:, :, None] + self.col(cols.to(tokens.device))[:, None, :]  # [N, g, g, d]
        return tokens + pos.flatten(1, 2)
