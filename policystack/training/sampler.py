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
