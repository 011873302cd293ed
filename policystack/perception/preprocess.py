"""Camera frames as the policies' image encoders take them: uint8 pixels -> float, resized, normalised.

Every camera reaches a policy as uint8 ``[..., 3, H, W]`` (the data contract, DESIGN.md); each
encoder wants floats in its own range. ``ImagePreprocessor`` does that conversion on the policy's
device, in one of three ways:

    "imagenet"  x / 255, then (x - ImageNet mean) / ImageNet std per channel (torchvision / timm
                backbones, RT-1's EfficientNet)
    "half"      x / 127.5 - 1, i.e. mean = std = 0.5: [-1, 1] (encoders trained from scratch, bc;
                EfficientNet-Lite's own convention)
    "unit"      x / 255: [0, 1] (what LeRobot's processor hands its models, before the dataset's
                per-channel normalisation)

optionally resizing to ``size`` x ``size`` first (bilinear, antialiased). Its constants are
non-persistent buffers: it adds nothing to a checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "half", "unit")


def check_images(images: Tensor, key: str) -> None:
    """Raise ValueError naming ``key`` unless ``images`` is uint8 ``[..., 3, H, W]``."""
    if images.dtype != torch.uint8 or images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"{key!r}: expected uint8 images [..., 3, H, W], got {images.dtype} {tuple(images.shape)}")


class ImagePreprocessor(nn.Module):
    """uint8 [..., 3, h, w] -> float [..., 3, S, S] (S = ``size``; None keeps h x w), normalised as
    ``normalization`` says (see the module docstring), on this module's device."""

    def __init__(self, size: int | None = None, normalization: str = "imagenet"):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"image normalization {normalization!r} is not one of {NORMALIZATIONS}")
        if size is not None and size < 1:
            raise ValueError(f"image size must be >= 1 or None, got {size}")
        self.size, self.normalization = size, normalization
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def forward(self, images: Tensor, key: str = "images") -> Tensor:
        check_images(images, key)
        x = images.to(self.mean.device, non_blocking=True).float()
        x = x / 127.5 - 1.0 if self.normalization == "half" else x.div_(255.0)
        if self.size is not None and x.shape[-2:] != (self.size, self.size):
            lead = x.shape[:-3]
            x = F.interpolate(x.reshape(-1, *x.shape[-3:]), size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True).view(*lead, 3, self.size, self.size)
        return (x - self.mean) / self.std if self.normalization == "imagenet" else x
