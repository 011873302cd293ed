"""Image augmentation shared by the policy families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_at(img: Tensor, top: Tensor, left: Tensor, h: int, w: int) -> Tensor:
    """img [N, ch, H, W] -> [N, ch, h, w]: sample n's window starts at row top[n], column left[n]
    (int [N]; the window must lie inside the image)."""
    n = img.shape[0]
    rows = top[:, None] + torch.arange(h, device=img.device)[None]  # [N, h]
    cols = left[:, None] + torch.arange(w, device=img.device)[None]  # [N, w]
    idx = torch.arange(n, device=img.device)[:, None, None]
    return img.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_shift(img: Tensor, pad: int) -> Tensor:
    """DrQ augmentation (RT-1's pad-then-crop): img [N, ch, H, W] padded by ``pad`` pixels with edge
    replication and cropped back to H x W at one random offset per sample (all ch channels alike)."""
    n, _, h, w = img.shape
    padded = F.pad(img.float(), (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,), device=img.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), device=img.device)
    return crop_at(padded, dy, dx, h, w)


def crop(img: Tensor, h: int, w: int, random: bool) -> Tensor:
    """Diffusion Policy's / UWM's crop: img [N, ch, H, W] -> [N, ch, h, w], at a random position per
    sample (``random``: training) or at the centre (evaluation)."""
    n, _, big_h, big_w = img.shape
    if not (0 < h <= big_h and 0 < w <= big_w):
        raise ValueError(f"crop: a {h}x{w} window does not fit images of {big_h}x{big_w}")
    if random:
        top = torch.randint(0, big_h - h + 1, (n,), device=img.device)
        left = torch.randint(0, big_w - w + 1, (n,), device=img.device)
    else:
        top = torch.full((n,), (big_h - h) // 2, device=img.device)
        left = torch.full((n,), (big_w - w) // 2, device=img.device)
    return crop_at(img, top, left, h, w)
