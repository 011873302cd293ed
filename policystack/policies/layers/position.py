"""Fixed position codes shared by the families (no weights, nothing saved in a checkpoint)."""

from __future__ import annotations

import torch
from torch import Tensor


def sincos_2d(dim: int, height: int, width: int) -> Tensor:
    """Fixed 2-D position code [dim, height, width]: a quarter of the channels each sin(y), cos(y), sin(x),
    cos(x) at geometric frequencies (as MAE/ViT), positions in cells."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos code needs dim divisible by 4, got {dim}")
    freq = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))  # [dim/4]
    y = torch.arange(height, dtype=torch.float32)[:, None] * freq  # [H, dim/4]
    x = torch.arange(width, dtype=torch.float32)[:, None] * freq  # [W, dim/4]
    code = torch.cat([y.sin()[:, None].expand(-1, width, -1), y.cos()[:, None].expand(-1, width, -1),
                      x.sin()[None].expand(height, -1, -1), x.cos()[None].expand(height, -1, -1)], dim=-1)
    return code.permute(2, 0, 1).contiguous()  # [dim, H, W]
