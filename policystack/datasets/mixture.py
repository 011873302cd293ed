"""Several datasets as one: batches that hold samples of each (RT-2's co-training mixes robot windows
with vision-language examples; the loop's ``dataset.mixture``).

``MixtureDataset([primary, other1, ...])`` puts the datasets one after another in one index space
(dataset k's sample j is index ``offsets[k] + j``). Its ``get_batch(indices)`` gathers each dataset's
share with that dataset's own ``get_batch`` and returns ONE flat dict: the primary's keys as they are,
dataset k's (k >= 1) under ``"mix<k>/<key>"``. The dict stays flat so that the loop moves it to a
device and the loader's workers ship it like any batch; ``split_mixture(batch)`` gives the parts back:

    primary, vqa = split_mixture(batch)   # two dicts of [b_k, ...] tensors (and 'task' lists)

A batch without mixture keys is one part. A family that reads one kind of batch whose samples may lack
some keys (uwm: action-free video, its ``action`` absent) takes the parts back as ONE batch instead:

    flat = pad_mixture(batch)   # the primary's keys; a key a part lacks: zeros, <key>_is_pad all true

How many samples of each dataset a batch holds is the sampler's choice
(``training.sampler.MixtureBatchSampler``: fixed counts per step from the weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from policystack.types import PAD_SUFFIX

MIX_PREFIX = "mix"


def mixture_key(part: int, key: str) -> str:
    """Where part ``part`` (>= 1) of a mixed batch keeps ``key``."""
    return f"{MIX_PREFIX}{part}/{key}"


def split_mixture(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of a mixed batch, in dataset order (the primary first); a plain batch is one part.
    Parts with no samples are left out."""
    parts: dict[int, dict[str, Any]] = {0: {}}
    for key, value in batch.items():
        head, sep, rest = key.partition("/")
        if sep and head.startswith(MIX_PREFIX) and head[len(MIX_PREFIX):].isdigit():
            parts.setdefault(int(head[len(MIX_PREFIX):]), {})[rest] = value
        else:
            parts[0][key] = value
    return [parts[k] for k in sorted(parts) if parts[k] and _size(parts[k]) > 0]


def pad_mixture(batch: dict[str, Any]) -> dict[str, Any]:
    """A mixed batch as one batch in the primary's keys: the parts concatenated in dataset order (the
    primary's samples first, [B, ...] with B the whole batch). A key a part lacks comes as zeros of the
    primary's shape with ``<key>_is_pad`` all true (action-free video: ``action`` zeros, ``action_is_pad``
    all true), so a policy tells those samples by their padding; keys the primary lacks are dropped. A
    plain batch comes back as it is. Raises ValueError naming the part and key when a part lacks a key
    that has no ``<key>_is_pad`` to mark it (a key given without frame offsets) or that is not a tensor."""
    parts = split_mixture(batch)
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for k, part in enumerate(parts[1:], start=1):
        n, had = _size(part), set(part)
        for key in [key for key in first if key not in had]:
            value = first[key]
            if key.endswith(PAD_SUFFIX) and isinstance(value, torch.Tensor):
                # the padding of a key the part lacks (all true); a key it has without frame offsets: none
                fill = key.removesuffix(PAD_SUFFIX) not in had
                part[key] = torch.full((n, *value.shape[1:]), fill, dtype=value.dtype, device=value.device)
            elif isinstance(value, torch.Tensor) and key + PAD_SUFFIX in first:
                part[key] = value.new_zeros((n, *value.shape[1:]))
            else:
                why = f"without a {key + PAD_SUFFIX} to mark it" if isinstance(value, torch.Tensor) else "as a list"
                raise ValueError(f"mixed batch: part {k} (dataset.mixture[{k - 1}]) lacks {key!r}, which the first "
                                 f"dataset gives {why}; its keys: {sorted(had)}")
    return {key: torch.cat([p[key] for p in parts]) if isinstance(value, torch.Tensor)
            else [x for p in parts for x in p[key]] for key, value in first.items()}


def _size(part: dict[str, Any]) -> int:
    for v in part.values():
        return len(v)
    return 0


class MixtureDataset(torch.utils.data.Dataset):
    """Datasets (each with ``__len__`` and ``get_batch(indices) -> dict``) in one index space; see the
    module docstring. ``datasets[0]`` is the primary (its keys stay unprefixed)."""

    def __init__(self, datasets: Sequence[Any]):
        if not datasets:
            raise ValueError("MixtureDataset needs at least one dataset")
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        empty = [i for i, n in enumerate(self.sizes) if n == 0]
        if empty:
            raise ValueError(f"MixtureDataset: dataset(s) {empty} have no samples")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return int(sum(self.sizes))

    @property
    def cache_dir(self):
        """The primary's loader cache directory (the parts share the loop's ``dataset.cache_dir``)."""
        return self.datasets[0].cache_dir

    def uncached_frames(self) -> tuple[int, int, int]:
        """(segments, frames, bytes) still to decode into the frame cache, summed over the datasets."""
        per = [d.uncached_frames() for d in self.datasets]
        return tuple(int(sum(x)) for x in zip(*per))  # type: ignore[return-value]

    def warm_cache(self, progress: bool = False, workers: int = 1) -> int:
        """Every dataset's ``warm_cache``; the number of segments built."""
        return sum(d.warm_cache(progress, workers) for d in self.datasets)

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for a mixture of {len(self)} samples: "
                             f"{idx[(idx < 0) | (idx >= len(self))][:5].tolist()}")
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        out: dict[str, Any] = {}
        for k, dataset in enumerate(self.datasets):
            mine = idx[which == k] - self.offsets[k]
            if k > 0 and len(mine) == 0:
                continue
            part = dataset.get_batch(mine)
            out.update(part if k == 0 else {mixture_key(k, key): v for key, v in part.items()})
        return out

    def __getitems__(self, indices: list[int]):
        from policystack.datasets.loader import WindowBatch

        return WindowBatch(self.get_batch(indices), len(indices))

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.get_batch([int(idx)])
