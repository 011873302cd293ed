"""EfficientNet with a FiLM layer after every MBConv block: RT-1's language-conditioned image tokenizer.

The blocks are timm's (``timm.models.EfficientNet`` built from timm's EfficientNet-B0 stage table with
``decode_arch_def`` / ``round_channels`` from ``timm.models._efficientnet_builder``, the functions timm's
own ``efficientnet_b*`` use; timm is pinned in requirements.txt); this module only interleaves them with
``FiLM`` layers and adds RT-1's
1x1 projection (+ FiLM) to the token width. With ``width_mult=1.2, depth_mult=1.4`` and all 7 stages
the backbone is exactly timm's ``efficientnet_b3`` (26 blocks, 1536 output features), so its
ImageNet weights load with ``load_backbone_weights``.

Shapes: images float [B, 3, H, W] (ImageNet-normalised), cond [B, E] -> [B, out_dim, H/s, W/s] with
stride s = 32 for 7 stages (16 for 5 or 6, 8 for 4, 4 for 3, 2 for 1 or 2).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from timm.models import EfficientNet
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from torch import Tensor, nn

from policystack.policies.layers.film import FiLM

# timm's EfficientNet-B0 stage table (Tan & Le 2019): block type, repeats, kernel, stride, expansion,
# channels, squeeze-excitation ratio. B1..B7 scale channels and repeats of this table.
EFFICIENTNET_STAGES = (
    "ds_r1_k3_s1_e1_c16_se0.25",
    "ir_r2_k3_s2_e6_c24_se0.25",
    "ir_r2_k5_s2_e6_c40_se0.25",
    "ir_r3_k3_s2_e6_c80_se0.25",
    "ir_r3_k5_s1_e6_c112_se0.25",
    "ir_r4_k5_s2_e6_c192_se0.25",
    "ir_r1_k3_s1_e6_c320_se0.25",
)
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)  # after the stride-2 stem
# (width_mult, depth_mult) of the published variants
VARIANTS = {"b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2), "b3": (1.2, 1.4), "b4": (1.4, 1.8)}


def efficientnet_stride(num_stages: int) -> int:
    """Total downsampling of the first ``num_stages`` stages (stem included)."""
    stride = 2
    for s in STAGE_STRIDES[:num_stages]:
        stride *= s
    return stride


def build_efficientnet(width_mult: float, depth_mult: float, num_stages: int = 7) -> EfficientNet:
    """A timm EfficientNet trunk (no classifier, no pooling) of the first ``num_stages`` stages."""
    if not 1 <= num_stages <= len(EFFICIENTNET_STAGES):
        raise ValueError(f"num_stages must be in 1..{len(EFFICIENTNET_STAGES)}, got {num_stages}")
    if width_mult <= 0 or depth_mult <= 0:
        raise ValueError(f"width_mult and depth_mult must be > 0, got {width_mult}, {depth_mult}")
    round_chs = partial(round_channels, multiplier=width_mult, divisor=8)
    return EfficientNet(
        block_args=decode_arch_def([[s] for s in EFFICIENTNET_STAGES[:num_stages]], depth_mult),
        num_features=round_chs(1280), stem_size=32, round_chs_fn=round_chs, act_layer=nn.SiLU,
        num_classes=0, global_pool="",
    )


class FilmEfficientNet(nn.Module):
    """EfficientNet trunk, FiLM after each block, then a 1x1 conv to ``out_dim`` and a last FiLM.

    Args:
        cond_dim: E, conditioning (instruction embedding) size.
        out_dim: channels of the output feature map (the token width).
        width_mult, depth_mult: EfficientNet scaling (``VARIANTS["b3"]`` = RT-1).
        num_stages: keep the first stages only (smaller stride, fewer parameters; tiny configs).
    """

    def __init__(self, cond_dim: int, out_dim: int, width_mult: float = 1.2, depth_mult: float = 1.4,
                 num_stages: int = 7):
        super().__init__()
        self.net = build_efficientnet(width_mult, depth_mult, num_stages)
        self.films = nn.ModuleList(
            FiLM(cond_dim, block.conv_pwl.out_channels if hasattr(block, "conv_pwl") else block.conv_pw.out_channels)
            for stage in self.net.blocks for block in stage
        )
        self.stride = efficientnet_stride(num_stages)
        self.project = nn.Conv2d(self.net.num_features, out_dim, kernel_size=1)
        self.film_out = FiLM(cond_dim, out_dim)

    def forward(self, images: Tensor, cond: Tensor) -> Tensor:
        """images [B, 3, H, W], cond [B, E] -> features [B, out_dim, H/stride, W/stride]."""
        x = self.net.bn1(self.net.conv_stem(images))
        films = iter(self.films)
        for stage in self.net.blocks:
            for block in stage:
                x = next(films)(block(x), cond)
        x = self.net.bn2(self.net.conv_head(x))  # [B, num_features, h, w]
        return self.film_out(self.project(x), cond)

    def load_backbone_weights(self, path: str | Path) -> None:
        """Load a timm EfficientNet state dict (``.safetensors``, or ``.pth``/``.bin`` tensors only) into the
        trunk; the classifier is ignored, every other key must match."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights {path} do not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        try:
            missing, unexpected = self.net.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"{path}: does not fit this EfficientNet trunk (check backbone_width/backbone_depth/"
                             f"backbone_stages): {str(e)[:500]}") from None
        if missing or unexpected:
            raise ValueError(f"{path}: not a state dict of this EfficientNet trunk: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]} (check backbone_width/backbone_depth/backbone_stages)")
