"""Decoder-only transformer blocks (pre-LayerNorm, nanoGPT layout) that take an explicit attention mask.

Shapes: B batch, N tokens, d model width, nh heads, hs head size (``head_dim``; it may differ from
d / nh: RT-1 uses width 512 with 8 heads of 128).
The mask is bool [N, N] or [B, N, N], True where the query (row) may attend the key (column); build it
with ``layers.attention.generate_attention_mask``.

Incremental decoding (Gato): pass a ``KVCache`` to ``DecoderStack.forward``; each layer appends the keys
and values of the N new tokens to it and attends over all M cached tokens, so the mask is then
[N, M] / [B, N, M] (M = tokens cached before + N) and a step costs O(N M) instead of recomputing the prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache:
    """Keys and values of the tokens seen so far, one ``[k, v]`` pair per layer, each [B, nh, M, hs]."""

    def __init__(self, n_layer: int):
        self.layers: list[list[Tensor | None]] = [[None, None] for _ in range(n_layer)]

    def __len__(self) -> int:
        k = self.layers[0][0]
        return 0 if k is None else k.shape[2]


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.head_dim, self.dropout = n_head, head_dim, dropout
        self.qkv = nn.Linear(d_model, 3 * n_head * head_dim)
        self.proj = nn.Linear(n_head * head_dim, d_model)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None, cache: list[Tensor | None] | None = None) -> Tensor:
        """x [B, N, d]; mask bool [N, N] / [B, N, N] or None (every token attends to every token). With
        ``cache`` (one layer's [k, v] of a ``KVCache``): the new keys and values are appended to it and the
        mask is [N, M] / [B, N, M] over all M cached tokens."""
        B, N, _ = x.shape
        q, k, v = self.qkv(x).split(self.n_head * self.head_dim, dim=2)
        q, k, v = (t.view(B, N, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, nh, N, hs)
        if cache is not None:
            if cache[0] is not None:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[0], cache[1] = k, v
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

    def forward(self, x: Tensor, mask: Tensor, cache: list[Tensor | None] | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache)
        return x + self.mlp(self.ln_2(x))


class DecoderStack(nn.Module):
    """``n_layer`` blocks and a final LayerNorm: [B, N, d] -> [B, N, d]."""

    def __init__(self, n_layer: int, d_model: int, n_head: int, head_dim: int, mlp_hidden: int,
                 dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_head, head_dim, mlp_hidden, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, eps=1e-6)

    def forward(self, x: Tensor, mask: Tensor, cache: KVCache | None = None) -> Tensor:
        """x [B, N, d] -> [B, N, d]; with ``cache`` (see the module docstring) the mask is [.., N, M]."""
        keys = x.shape[1] + (len(cache) if cache is not None else 0)
        if mask.dtype != torch.bool or mask.shape[-2:] != (x.shape[1], keys):
            raise ValueError(f"DecoderStack: mask must be bool [N, M] or [B, N, M] with N={x.shape[1]} queries and "
                             f"M={keys} keys, got {mask.dtype} {tuple(mask.shape)}")
        if cache is not None and len(cache.layers) != len(self.blocks):
            raise ValueError(f"DecoderStack: the KVCache has {len(cache.layers)} layers, the stack {len(self.blocks)}")
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cache.layers[i] if cache is not None else None)
        return self.ln_f(x)

