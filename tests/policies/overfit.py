"""The overfit loop the policy tests share: a few hundred AdamW steps on one fixed batch."""

from __future__ import annotations

import torch


def overfit(policy, batch: dict, steps: int = 150, lr: float = 3e-3) -> tuple[float, float, dict[str, float]]:
    """Train ``policy`` on ``batch`` for ``steps``; returns (first loss, last loss, last logs)."""
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    first = None
    for _ in range(steps):
        loss, logs = policy.compute_loss(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, loss.item(), logs
