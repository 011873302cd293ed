"""Shared-memory blocks between the control loop and the supervisor, each with one writer.

A block is a file under ``/dev/shm`` (a plain temp dir elsewhere) mapped by both processes: an
int64 sequence counter followed by named float64 fields. Writers bump the counter to odd, write,
bump it to even (a seqlock); readers copy and retry if the counter moved or was odd. Nothing is
allocated on the loop's side after ``attach``. (multiprocessing.shared_memory is not used: its
resource tracker unlinks a block when any attached process exits.)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from policystack.robot.safety import N_EVENTS


def shm_dir() -> Path:
    return Path("/dev/shm") if os.path.isdir("/dev/shm") else Path(tempfile.gettempdir())


class Block:
    """Fields: name -> shape. ``Block.create(path, fields)`` in the owner, ``Block(path, fields)`` elsewhere."""

    def __init__(self, path: str | Path, fields: dict[str, tuple[int, ...]]):
        self.path = Path(path)
        self.layout: dict[str, tuple[int, tuple[int, ...]]] = {}
        off = 1
        for name, shape in fields.items():
            self.layout[name] = (off, shape)
            off += int(np.prod(shape))
        self.size = off
        self._mm = np.memmap(self.path, dtype=np.float64, mode="r+", shape=(self.size,))
        self._seq = self._mm[:1].view(np.int64)
        self.f = {name: self._mm[o:o + int(np.prod(s))].reshape(s) for name, (o, s) in self.layout.items()}

    @classmethod
    def create(cls, path: str | Path, fields: dict[str, tuple[int, ...]]) -> Block:
        size = 1 + sum(int(np.prod(s)) for s in fields.values())
        with open(path, "wb") as fh:
            fh.write(b"\0" * (8 * size))
        return cls(path, fields)

    @property
    def seq(self) -> int:
        return int(self._seq[0])

    def begin(self) -> None:
        self._seq[0] += 1

    def end(self) -> None:
        self._seq[0] += 1

    def read(self, out: dict[str, np.ndarray], timeout_s: float = 1.0) -> int:
        """Copy fields named in ``out`` into its arrays consistently; returns the sequence read.
        (A writer preempted mid-write keeps the block odd: retry, yielding the CPU.)"""
        end = None
        while True:
            seq = self.try_read(out, tries=100)
            if seq >= 0:
                return seq
            now = time.monotonic()
            end = end or now + timeout_s
            if now > end:
                raise TimeoutError(f"{self.path}: writer kept the block busy for {timeout_s} s")
            time.sleep(0.0002)

    def try_read(self, out: dict[str, np.ndarray], tries: int = 4) -> int:
        """Like ``read`` but never waits (for the loop): the sequence read, or -1 if the writer was
        busy every time (the caller retries next tick)."""
        for _ in range(tries):
            s1 = int(self._seq[0])
            if s1 & 1:
                continue
            for name, dst in out.items():
                dst[...] = self.f[name]
            if int(self._seq[0]) == s1:
                return s1
        return -1

    def buffers(self, *names: str) -> dict[str, np.ndarray]:
        """Zeroed arrays shaped like the fields ``names`` (all fields when none given), for ``read``."""
        return {name: np.zeros(s) for name, (_, s) in self.layout.items() if not names or name in names}

    def snapshot(self) -> dict[str, np.ndarray]:
        out = self.buffers()
        self.read(out)
        return out

    def close(self) -> None:
        self._mm._mmap.close()  # type: ignore[attr-defined]


def state_fields(dim: int, extra: int) -> dict[str, tuple[int, ...]]:
    """Written by the loop every tick."""
    return {"t": (1,), "tick": (1,), "ready": (1,), "q_meas": (dim,), "q_cmd": (dim,), "target": (dim,),
            "faults": (1,), "active": (1,), "counts": (N_EVENTS,), "misses": (1,), "late_max": (1,), "max_dq": (1,),
            "reset_ack": (1,), "chunk_ack": (1,), "extra": (max(extra, 1),)}


def command_fields(dim: int, max_len: int) -> dict[str, tuple[int, ...]]:
    """Written by the supervisor per valid chunk."""
    return {"gen": (1,), "t_obs": (1,), "dt": (1,), "n": (1,), "actions": (max_len, dim)}


def control_fields(extra: int) -> dict[str, tuple[int, ...]]:
    """Written by the supervisor on state changes. ``reset_seed``: the episode's seed (the sim lays its
    objects out as the supervisor's scene does before teleporting to ``reset_extra``); < 0: none.
    ``run_to``: in lockstep (simulated time), the number of ticks the loop may have run."""
    return {"estop": (1,), "stop": (1,), "hold_gen": (1,), "reset_gen": (1,), "reset_seed": (1,), "run_to": (1,),
            "reset_extra": (max(extra, 1),)}
