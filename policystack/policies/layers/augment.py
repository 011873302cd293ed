"""Image augmentation shared by the policy families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_shift(img: Tensor, pad: int) -> Tensor:
    """DrQ augmentation (RT-1's pad-then-crop): img [N, ch, H, W] padded by ``pad`` pixels with edge
    replication and cropped back to H x W at one random offset per sample (all ch channels alike)."""
    n, _, h, w = img.shape
    padded = F.pad(img.float(), (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,), device=img.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), device=img.device)
    rows = (dy[:, None] + torch.arange(h, device=img.device)[None])  # [N, H]
    cols = (dx[:, None] + torch.arange(w, device=img.device)[None])  # [N, W]
    idx = torch.arange(n, device=img.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
