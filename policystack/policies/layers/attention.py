"""Attention masks derived from named token groups and readable rules (Octo's block-wise attention idea).

A token sequence is a list of ``TokenGroup``s in sequence order: ``num_tokens`` consecutive tokens of
one kind (``name``) at one ``timestep`` (``PREFIX`` = -1 for tokens before every timestep, e.g. task
tokens). Each group says, per other group name (an ``fnmatch`` pattern, first match wins), which of
that group's tokens it may attend to; a group not matched is ``NEVER`` attended to.

    obs = TokenGroup("obs", t, 8, {"obs": AttentionRule.CAUSAL, "act": AttentionRule.STRICT_PAST})
    mask = generate_attention_mask(groups)      # bool [N, N], True = query row may attend key column
    mask = apply_key_padding(mask, key_is_pad)  # [B, N, N], padding tokens hidden (per batch, cheap)
    verify_causality(groups, mask)              # raises if any token sees a later timestep
    print(pretty_print_attention_mask(groups, mask))

RT-1, Gato, EMMA and UWM derive their masks here, so each family's attention pattern is declared in
one place and checked the same way.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from torch import Tensor

PREFIX = -1  # timestep of tokens that precede every timestep (task / prompt tokens)


class AttentionRule(StrEnum):
    """Which tokens of another group a token may attend to (``self`` is the querying token)."""

    NEVER = "never"
    ALL = "all"
    CAUSAL = "other.timestep <= self.timestep"
    STRICT_PAST = "other.timestep < self.timestep"
    CURRENT = "other.timestep == self.timestep"
    CAUSAL_TOKENS = "other.position <= self.position"  # GPT-style, token by token in sequence order
    SELF = "other is self"  # each token sees only itself (Octo's readouts)


@dataclass(frozen=True)
class TokenGroup:
    """``num_tokens`` consecutive tokens named ``name`` at ``timestep`` with their attention rules."""

    name: str
    timestep: int
    num_tokens: int
    rules: Mapping[str, AttentionRule] = field(default_factory=dict)

    def __post_init__(self):
        if self.num_tokens < 1:
            raise ValueError(f"TokenGroup {self.name!r}: num_tokens must be >= 1, got {self.num_tokens}")
        if self.timestep < PREFIX:
            raise ValueError(f"TokenGroup {self.name!r}: timestep must be >= {PREFIX} (PREFIX), got {self.timestep}")
        for pattern, rule in self.rules.items():
            if not isinstance(rule, AttentionRule):
                raise ValueError(f"TokenGroup {self.name!r}: rule for {pattern!r} is {rule!r}; expected an "
                                 f"AttentionRule, one of {[r.name for r in AttentionRule]}")

    def rule_for(self, other_name: str) -> AttentionRule:
        for pattern, rule in self.rules.items():
            if fnmatch.fnmatchcase(other_name, pattern):
                return rule
        return AttentionRule.NEVER


def _token_index(groups: Sequence[TokenGroup]) -> tuple[Tensor, Tensor, Tensor]:
    """Per token: group index, timestep, position; each int64 [N], on the CPU (also when a model is built
    under another default device, e.g. ``torch.device("meta")``: the layout is data, not a model weight)."""
    gid = torch.cat([torch.full((g.num_tokens,), i, device="cpu") for i, g in enumerate(groups)])
    ts = torch.cat([torch.full((g.num_tokens,), g.timestep, device="cpu") for g in groups])
    return gid, ts, torch.arange(len(gid), device="cpu")


def generate_attention_mask(groups: Sequence[TokenGroup], key_is_pad: Tensor | None = None) -> Tensor:
    """The mask the rules define.

    Args:
        groups: the sequence layout, in order.
        key_is_pad: optional bool [B, N], True for tokens that carry padding (e.g. frames repeated at an
            episode start): no token attends to them, except each token to itself so that no row is empty.
    Returns:
        bool [N, N] (or [B, N, N] with ``key_is_pad``); ``mask[q, k]`` True means token q attends to k.
    """
    if not groups:
        raise ValueError("generate_attention_mask needs at least one TokenGroup")
    gid, ts, pos = _token_index(groups)
    n = len(gid)
    mask = torch.zeros(n, n, dtype=torch.bool, device="cpu")
    for qi, qg in enumerate(groups):
        rows = gid == qi
        for ki, kg in enumerate(groups):
            cols = gid == ki
            rule = qg.rule_for(kg.name)
            if rule is AttentionRule.NEVER:
                continue
            q_ts, k_ts = ts[rows][:, None], ts[cols][None, :]
            q_pos, k_pos = pos[rows][:, None], pos[cols][None, :]
            if rule is AttentionRule.ALL:
                block = torch.ones(len(q_ts), k_ts.shape[1], dtype=torch.bool, device="cpu")
            elif rule is AttentionRule.CAUSAL:
                block = k_ts <= q_ts
            elif rule is AttentionRule.STRICT_PAST:
                block = k_ts < q_ts
            elif rule is AttentionRule.CURRENT:
                block = k_ts == q_ts
            elif rule is AttentionRule.CAUSAL_TOKENS:
                block = k_pos <= q_pos
            else:  # SELF
                block = k_pos == q_pos
            mask[rows.nonzero()[:, 0][:, None], cols.nonzero()[:, 0][None, :]] = block
    return mask if key_is_pad is None else apply_key_padding(mask, key_is_pad)


def apply_key_padding(mask: Tensor, key_is_pad: Tensor) -> Tensor:
    """bool [N, N] mask and bool [B, N] padding -> [B, N, N]: no token attends to a padding token, except
    each token to itself (so that no row is empty). Cheap: use it per batch on a precomputed mask."""
    n = mask.shape[-1]
    if key_is_pad.dim() != 2 or key_is_pad.shape[1] != n:
        raise ValueError(f"key_is_pad must be bool [B, {n}] for this layout, got shape {tuple(key_is_pad.shape)}")
    key_is_pad = key_is_pad.to(mask.device).bool()
    out = mask[None] & ~key_is_pad[:, None, :]  # [B, N, N]
    return out | torch.eye(n, dtype=torch.bool, device=mask.device)[None]


def verify_causality(groups: Sequence[TokenGroup], mask: Tensor, strict_order: bool = False) -> None:
    """Raise ValueError if a token attends to a token of a later timestep (prefix tokens count as the
    earliest), or, with ``strict_order``, to any later position in the sequence (a decoder-only mask)."""
    _, ts, pos = _token_index(groups)
    if mask.shape[-2:] != (len(ts), len(ts)):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not fit the layout of {len(ts)} tokens")
    m = mask.bool().reshape(-1, len(ts), len(ts)).any(0).cpu()  # union over a batch
    future = m & (ts[None, :] > ts[:, None])
    if strict_order:
        future |= m & (pos[None, :] > pos[:, None])
    if future.any():
        q, k = future.nonzero()[0].tolist()
        qg, kg = _group_of(groups, q), _group_of(groups, k)
        raise ValueError(f"attention mask is not causal: token {q} ({qg.name}, timestep {qg.timestep}) attends to "
                         f"token {k} ({kg.name}, timestep {kg.timestep})")


def _group_of(groups: Sequence[TokenGroup], position: int) -> TokenGroup:
    for g in groups:
        if position < g.num_tokens:
            return g
        position -= g.num_tokens
    raise IndexError(position)


def pretty_print_attention_mask(groups: Sequence[TokenGroup], mask: Tensor) -> str:
    """A table of group x group blocks: ``x`` all attend, ``.`` none, ``\\`` lower-triangular within
    the block, ``~`` some other partial pattern. Rows are queries, columns keys."""
    m = mask.bool().reshape(-1, mask.shape[-2], mask.shape[-1])[0].cpu()
    labels = [f"{g.name}@{'P' if g.timestep == PREFIX else g.timestep}" for g in groups]
    width = max(len(s) for s in labels)
    starts = [0]
    for g in groups:
        starts.append(starts[-1] + g.num_tokens)
    lines = [" " * width + " | " + " ".join(f"{i:>2}" for i in range(len(groups)))]
    for qi, label in enumerate(labels):
        cells = []
        for ki in range(len(groups)):
            block = m[starts[qi]:starts[qi + 1], starts[ki]:starts[ki + 1]]
            if block.all():
                cells.append(" x")
            elif not block.any():
                cells.append(" .")
            elif qi == ki and torch.equal(block, torch.ones_like(block).tril()):
                cells.append(" \\")
            else:
                cells.append(" ~")
        lines.append(f"{label:>{width}} | " + " ".join(cells) + f"   ({qi:>2}) {groups[qi].num_tokens} tokens")
    return "\n".join(lines)
