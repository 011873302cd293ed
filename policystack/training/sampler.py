"""The seeded batch sampler whose position is a step number, so a resumed run sees exactly the
batches the interrupted run had not consumed yet.

Epoch ``e`` is the permutation ``randperm(n, seed + e)`` of the dataset's frames, the same on
every process; with ``world_size`` processes, process ``rank`` takes the frames at positions
``rank, rank + world_size, ...`` of it (as torch's DistributedSampler), cut to a whole number of
batches of ``batch_size`` (the incomplete last batch is dropped, so every step has a full batch).
Step ``s`` of the run reads batch ``s % batches_per_epoch`` of epoch ``s // batches_per_epoch``:
the data order is a pure function of (seed, n, batch_size, rank, world_size, step), and the
"sampler state" a checkpoint needs is just the step.

Used as a DataLoader ``batch_sampler``: workers prefetch ahead of the loop, but the position that
counts is the loop's step, not how far the iterator ran.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields the index batches of steps ``start_step .. end_step - 1`` (see module docstring)."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 rank: int = 0, world_size: int = 1):
        if n < batch_size * world_size:
            raise ValueError(f"dataset has {n} frames, fewer than one batch of batch_size={batch_size} "
                             f"x {world_size} processes; lower batch_size")
        if not 0 <= start_step <= end_step:
            raise ValueError(f"start_step={start_step} must be in [0, end_step={end_step}]")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.end_step = start_step, end_step
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = (n // world_size) // batch_size

    def __len__(self) -> int:
        return self.end_step - self.start_step

    def epoch_batches(self, epoch: int) -> torch.Tensor:
        """int64 [batches_per_epoch, batch_size]: this process's batches of ``epoch``."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=g)
        mine = perm[self.rank::self.world_size][: self.batches_per_epoch * self.batch_size]
        return mine.view(self.batches_per_epoch, self.batch_size)

    def batch_at(self, step: int) -> list[int]:
        epoch, i = divmod(step, self.batches_per_epoch)
        return self.epoch_batches(epoch)[i].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while step < self.end_step:
            epoch, i = divmod(step, self.batches_per_epoch)
            batches = self.epoch_batches(epoch)
            for b in batches[i:]:
                if step >= self.end_step:
                    return
                yield b.tolist()
                step += 1

    def state_dict(self) -> dict:
        """What must match for a resumed run to continue the same data order."""
        return {"n": self.n, "batch_size": self.batch_size, "seed": self.seed, "world_size": self.world_size,
                "batches_per_epoch": self.batches_per_epoch}


def mixture_counts(batch_size: int, weights: list[float]) -> list[int]:
    """Samples per batch of each dataset: ``batch_size`` split by ``weights`` (largest remainder; each
    dataset gets at least one, and a ValueError says so when the batch is too small for that)."""
    if any(w <= 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"mixture weights {weights} must be positive and sum to 1")
    exact = [batch_size * w for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: counts[i] - exact[i])[: batch_size - sum(counts)]:
        counts[i] += 1
    if min(counts) < 1:
        raise ValueError(f"batch_size={batch_size} split by the mixture weights {weights} gives {counts} samples; "
                         "every dataset needs at least one per batch: raise batch_size")
    return counts


class MixtureBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of a ``datasets.mixture.MixtureDataset``: at every step ``counts[k]`` samples of dataset
    k, drawn by its own ``StepBatchSampler`` (seed ``seed + 1000 * k``, its own epochs) and shifted by
    ``offsets[k]``. Like StepBatchSampler, the data order is a function of the step alone."""

    def __init__(self, sizes: list[int], offsets: list[int], counts: list[int], seed: int, start_step: int,
                 end_step: int, rank: int = 0, world_size: int = 1):
        if not len(sizes) == len(offsets) == len(counts):
            raise ValueError(f"sizes, offsets and counts must have one entry per dataset, got {sizes}, {offsets}, "
                             f"{counts}")
        self.parts = [StepBatchSampler(n, b, seed + 1000 * k, start_step, end_step, rank, world_size)
                      for k, (n, b) in enumerate(zip(sizes, counts))]
        self.offsets = [int(o) for o in offsets]
        self.start_step, self.end_step = start_step, end_step
        self.batches_per_epoch = self.parts[0].batches_per_epoch  # epochs count the primary dataset

    def __len__(self) -> int:
        return self.end_step - self.start_step

    def batch_at(self, step: int) -> list[int]:
        return [o + i for o, p in zip(self.offsets, self.parts) for i in p.batch_at(step)]

    def __iter__(self) -> Iterator[list[int]]:
        for batches in zip(*self.parts):
            yield [o + i for o, b in zip(self.offsets, batches) for i in b]

    def state_dict(self) -> dict:
        return {"parts": [p.state_dict() for p in self.parts], "offsets": self.offsets}
