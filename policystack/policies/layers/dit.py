"""Diffusion Transformer pieces (Peebles & Xie 2023, DiT) as Unified World Models use them
(WEIRDLabUW/unified-world-model ``models/common/adaln_attention.py``, ``models/uwm/uwm.py``).

AdaLN-Zero: every block normalises its input without learned affine parameters, then shifts and scales
it by vectors regressed from the conditioning, and gates its residual branch by a third regressed vector;
the regression layers start at zero, so every block starts as the identity and the final layer outputs
zeros. Register tokens (Darcet et al. 2024) are extra learned tokens that take part in attention and
are dropped at the output.

    x [B, N, d] --(+ registers [R, d], + learned positions [N + R, d])--> [B, N + R, d]
      -> depth x AdaLNBlock(cond [B, c]) -> AdaLNFinalLayer(cond) -> drop registers -> [B, N, d]

Shapes: B batch, N tokens, R registers, d width, c conditioning size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from policystack.policies.layers.transformer import MLP, SelfAttention


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x [B, N, d] scaled by (1 + scale) and shifted, per sample: shift, scale [B, d]."""
    return x * (1 + scale[:, None]) + shift[:, None]


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Diffusion timesteps t [B] (int or float) -> [B, dim] (sin of the first half, cos of the second, at
    geometric frequencies from 1 to 1/10000; the reference's ``SinusoidalPosEmb``)."""
    if dim % 2 or dim < 4:
        raise ValueError(f"a sinusoidal timestep embedding needs an even dim >= 4, got {dim}")
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
    angle = t.float()[:, None] * freq[None]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class DualTimestepEmbedding(nn.Module):
    """Two diffusion timesteps (UWM: the action's and the future observation's) -> one vector:
    each sinusoidally embedded, concatenated, then an MLP. (t1 [B], t2 [B]) -> [B, dim]."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim = dim
        hidden = int(dim * mlp_ratio)
        self.proj = nn.Sequential(nn.Linear(2 * dim, hidden), nn.Mish(), nn.Linear(hidden, dim))

    def forward(self, t1: Tensor, t2: Tensor) -> Tensor:
        return self.proj(torch.cat([sinusoidal_embedding(t1, self.dim), sinusoidal_embedding(t2, self.dim)], -1))


class AdaLNBlock(nn.Module):
    """Self-attention + MLP, each on an adaptively normalised input with a gated residual (AdaLN-Zero).
    (x [B, N, d], cond [B, c]) -> [B, N, d]."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: float, cond_dim: int):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"AdaLNBlock: d_model {d_model} is not divisible by n_head {n_head}")
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(d_model, n_head, d_model // n_head)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(d_model, int(d_model * mlp_ratio))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * d_model))
        nn.init.zeros_(self.modulation[-1].weight)  # the "Zero": the block starts as the identity
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).chunk(6, dim=-1)  # each [B, d]
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1), None)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class AdaLNFinalLayer(nn.Module):
    """Adaptive normalisation, then a linear layer; both start at zero (the network outputs zeros at
    initialisation). (x [B, N, d], cond [B, c]) -> [B, N, d]."""

    def __init__(self, d_model: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * d_model))
        self.linear = nn.Linear(d_model, d_model)
        for layer in (self.modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        shift, scale = self.modulation(cond).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """A stack of AdaLN-Zero blocks over ``n_tokens`` tokens plus ``n_registers`` register tokens, with
    learned positions (see the module docstring). (x [B, n_tokens, d], cond [B, c]) -> [B, n_tokens, d].

    Initialisation as the reference: linear layers N(0, 0.02) with zero biases, then the AdaLN-Zero
    zeros; registers and positions N(0, 0.02)."""

    def __init__(self, n_tokens: int, d_model: int, depth: int, n_head: int, mlp_ratio: float, cond_dim: int,
                 n_registers: int = 0):
        super().__init__()
        if min(n_tokens, d_model, depth, n_head, cond_dim) < 1 or n_registers < 0 or mlp_ratio <= 0:
            raise ValueError(f"DiT: n_tokens, d_model, depth, n_head and cond_dim must be >= 1, n_registers >= 0, "
                             f"mlp_ratio > 0; got {n_tokens}, {d_model}, {depth}, {n_head}, {cond_dim}, "
                             f"{n_registers}, {mlp_ratio}")
        self.n_tokens, self.n_registers = n_tokens, n_registers
        self.registers = nn.Parameter(torch.empty(1, n_registers, d_model).normal_(std=0.02))
        self.pos_embed = nn.Parameter(torch.empty(1, n_tokens + n_registers, d_model).normal_(std=0.02))
        self.blocks = nn.ModuleList(AdaLNBlock(d_model, n_head, mlp_ratio, cond_dim) for _ in range(depth))
        self.head = AdaLNFinalLayer(d_model, cond_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for layer in [b.modulation[-1] for b in self.blocks] + [self.head.modulation[-1], self.head.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        if x.shape[1] != self.n_tokens:
            raise ValueError(f"DiT: built for {self.n_tokens} tokens, got x of shape {tuple(x.shape)}")
        x = torch.cat([x, self.registers.expand(x.shape[0], -1, -1)], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x, cond)
        return self.head(x, cond)[:, : self.n_tokens]
