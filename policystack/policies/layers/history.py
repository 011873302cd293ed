"""Observation history at inference: the last steps a policy observed, stacked as the loader stacks them.

Training windows come from the loader: observation offsets ``-(T-1) .. 0``, frames before the
episode start repeated from its first frame and marked in ``<key>_is_pad``. At inference a policy
sees one step per call; ``ObservationHistory`` keeps the steps it was shown (``append``, called by
``Policy.observe`` at every policy tick) and builds the same window around the current step:

    history = ObservationHistory(n_steps=3)
    history.window(obs0)     # [obs0, obs0, obs0], is_pad [True, True, False]
    history.append(obs0)
    history.window(obs1)     # [obs0, obs0, obs1], is_pad [True, False, False]
    history.append(obs1); history.append(obs2)
    history.window(obs3)     # [obs1, obs2, obs3], is_pad all False

A step is a tensor ``[B, ...]`` or a dict of them (raw observations, or anything a family derives
per step, e.g. RT-1's image tokens); ``window`` stacks each along a new axis 1: ``[B, T, ...]``.
At most ``n_steps - 1`` past steps are kept (``n_steps == 1`` keeps none).
"""

from __future__ import annotations

from collections import deque
from typing import TypeVar

import torch
from torch import Tensor

Step = TypeVar("Step", Tensor, dict[str, Tensor])


class ObservationHistory:
    """Bounded store of past steps; see the module docstring."""

    def __init__(self, n_steps: int):
        if n_steps < 1:
            raise ValueError(f"ObservationHistory needs n_steps >= 1, got {n_steps}")
        self.n_steps = n_steps
        self._past: deque = deque(maxlen=n_steps - 1)

    def __len__(self) -> int:
        """Past steps held (at most ``n_steps - 1``)."""
        return len(self._past)

    @property
    def last(self) -> Tensor | dict[str, Tensor] | None:
        """The most recent past step, or None."""
        return self._past[-1] if self._past else None

    def append(self, step: Step) -> None:
        """Keep ``step`` (the oldest is dropped beyond ``n_steps - 1``)."""
        self._past.append(step)

    def clear(self) -> None:
        self._past.clear()

    def window(self, current: Step) -> tuple[Step, Tensor]:
        """The past steps and ``current``, left-padded by repeating the first one.

        Returns:
            (stacked, is_pad): ``stacked`` like ``current`` with a time axis after the batch axis
            ([B, n_steps, ...], or a dict of them, oldest first, ``current`` last); ``is_pad`` bool
            [B, n_steps], True for the repeated steps (on ``current``'s device).
        """
        frames = list(self._past) + [current]
        n_pad = self.n_steps - len(frames)
        frames = [frames[0]] * n_pad + frames
        if isinstance(current, dict):
            stacked = {k: torch.stack([f[k] for f in frames], 1) for k in current}
            first = next(iter(current.values()))
        else:
            stacked, first = torch.stack(frames, 1), current
        is_pad = (torch.arange(self.n_steps, device=first.device) < n_pad).expand(first.shape[0], -1)
        return stacked, is_pad
