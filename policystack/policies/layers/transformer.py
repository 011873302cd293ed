"""Decoder-only transformer blocks (pre-LayerNorm, nanoGPT layout) that take an explicit attention mask.

Shapes: B batch, N tokens, d model width, nh heads, hs head size (``head_dim``; it may differ from
d / nh: RT-1 uses width 512 with 8 heads of 128).
The mask is bool [N, N] or [B, N, N], True where the query (row) may attend the key (column); build it
with ``layers.attention.generate_attention_mask``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = n_head, head_dim, dropout
        self.qkv = nn.Linear(d_model, 3 * n_head * head_dim)
        self.proj = nn.Linear(n_head * head_dim, d_model)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x [B, N, d]; mask bool [N, N] / [B, N, N] or None (every token attends to every token)."""
        B, N, _ = x.shape
        q, k, v = self.qkv(x).split(self.n_head * self.head_dim, dim=2)
        q, k, v = (t.view(B, N, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, nh, N, hs)
        attn_mask = mask[:, None] if mask is not None and mask.dim() == 3 else mask  # broadcast over heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, N, hs)
        y = y.transpose(1, 2).reshape(B, N, self.n_head * self.head_dim)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(d_model, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_head: int, head_dim: int, mlp_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, eps=1e-6)
        self.attn = SelfAttention(d_model, n_head, head_dim, dropout)
        self.ln_2 = nn.LayerNorm(d_model, eps=1e-6)
        self.mlp = MLP(d_model, mlp_hidden, dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class DecoderStack(nn.Module):
    """``n_layer`` blocks and a final LayerNorm: [B, N, d] -> [B, N, d]."""

    def __init__(self, n_layer: int, d_model: int, n_head: int, head_dim: int, mlp_hidden: int,
                 dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_head, head_dim, mlp_hidden, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, eps=1e-6)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if mask.dtype != torch.bool or mask.shape[-2:] != (x.shape[1], x.shape[1]):
            raise ValueError(f"DecoderStack: mask must be bool [N, N] or [B, N, N] with N={x.shape[1]}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)

