"""The normaliser: per-feature statistics as non-trainable buffers of the policy, so they are saved
in every checkpoint and a checkpoint alone can act (diffusion_policy's LinearNormalizer idea).

Modes per feature:
- ``"mean_std"``:  (x - mean) / std
- ``"min_max"``:   to [-1, 1] over [min, max]
- ``"quantile"``:  to [-1, 1] over [q01, q99] (RT-2 / OpenVLA style; robust to outliers)
- ``"identity"``:  unchanged (images are handled by the policy's image encoder)

A feature whose statistics were never set (NaN buffers) raises on use: actions are never silently
returned normalised or unnormalised with garbage statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from policystack.types import Stats

MODES = ("mean_std", "min_max", "quantile", "identity")
_STATS_FOR = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "quantile": ("q01", "q99"), "identity": ()}
EPS = 1e-8


def _buffer_name(key: str, stat: str) -> str:
    return f"{key.replace('.', '__')}__{stat}"


class Normalizer(nn.Module):
    """Normalise / unnormalise named features with statistics held as buffers.

    Args:
        shapes: feature key -> shape of one value (e.g. ``{"action": (7,)}``).
        modes: feature key -> one of MODES.
        stats: dataset statistics (feature -> stat -> array); None builds NaN buffers to be filled by
            ``load_state_dict`` (how ``Policy.from_pretrained`` restores them).
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], modes: dict[str, str], stats: Stats | None = None):
        super().__init__()
        self.modes = dict(modes)
        for key, mode in self.modes.items():
            if mode not in MODES:
                raise ValueError(f"normalisation mode for {key!r} is {mode!r}; expected one of {MODES}")
            if key not in shapes:
                raise KeyError(f"normalisation asked for {key!r}, which is not among the features {sorted(shapes)}")
            for stat in _STATS_FOR[mode]:
                value = torch.full(shapes[key], float("nan"))
                if stats is not None:
                    if key not in stats or stat not in stats[key]:
                        raise KeyError(f"dataset statistics have no {stat!r} for {key!r} (needed by mode {mode!r}); "
                                       f"recompute them with `policystack dataset stats --write`")
                    value = torch.as_tensor(stats[key][stat], dtype=torch.float32).reshape(shapes[key])
                self.register_buffer(_buffer_name(key, stat), value)

    def _stats(self, key: str) -> tuple[str, list[Tensor]]:
        if key not in self.modes:
            raise KeyError(f"{key!r} has no normalisation; configured: {sorted(self.modes)}")
        mode = self.modes[key]
        values = [getattr(self, _buffer_name(key, s)) for s in _STATS_FOR[mode]]
        if any(torch.isnan(v).any() for v in values):
            raise RuntimeError(f"normalisation statistics for {key!r} were never set (NaN); "
                               "build the policy with dataset stats or load a checkpoint")
        return mode, values

    def normalize(self, key: str, x: Tensor) -> Tensor:
        mode, v = self._stats(key)
        if mode == "mean_std":
            return (x - v[0]) / (v[1] + EPS)
        if mode in ("min_max", "quantile"):
            return 2 * (x - v[0]) / (v[1] - v[0] + EPS) - 1
        return x

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        mode, v = self._stats(key)
        if mode == "mean_std":
            return x * (v[1] + EPS) + v[0]
        if mode in ("min_max", "quantile"):
            return (x + 1) / 2 * (v[1] - v[0] + EPS) + v[0]
        return x
