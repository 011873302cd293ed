"""Experiment tracking: a local ``metrics.jsonl`` in the run directory (always) and Weights & Biases.

wandb runs offline unless told otherwise: the mode is ``log.wandb.mode`` when set, else
``$WANDB_MODE``, else ``offline``. Its files go to ``<run>/wandb/`` and the run id is stored in
``<run>/wandb_id`` so that a resumed run appends to the same wandb run. ``wandb sync <run>/wandb``
uploads an offline run later. No network is needed for anything here.

``metrics.jsonl`` holds one JSON object per line with at least ``step``. On resume from step k,
records past k (logged after that checkpoint by the run that was interrupted) are dropped, so the
file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

from policystack.io import atomic_write_bytes

METRICS = "metrics.jsonl"


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records of ``path`` with ``step <= step`` (atomically); returns how many were dropped.
    A torn last line (the process was killed while writing it) is dropped as well."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if rec.get("step", 0) <= step:
            kept.append(line)
        else:
            dropped += 1
    atomic_write_bytes(path, "".join(s + "\n" for s in kept).encode())
    return dropped


class Tracker:
    """``log(step, metrics)`` to metrics.jsonl and wandb; ``close()`` at the end.

    Args:
        run_dir: the run directory.
        config: the resolved config (a dict), given to wandb.
        wandb_cfg: ``WandbConfig`` (enabled, project, mode, entity).
        name: the run's display name.
        resume_step: when resuming, the checkpoint's step (later records are dropped).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], wandb_cfg, name: str,
                 resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a")  # noqa: SIM115 -- held open for the run, closed in close()
        self.wandb_run = None
        if wandb_cfg.enabled:
            mode = wandb_cfg.mode or os.environ.get("WANDB_MODE") or "offline"
            if mode != "disabled":
                self.wandb_run = _init_wandb(Path(run_dir), config, wandb_cfg, name, mode)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        rec = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float))},
                               step=step)

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def _init_wandb(run_dir: Path, config: dict, wandb_cfg, name: str, mode: str):
    try:
        import wandb
    except ImportError:
        warnings.warn("wandb is not installed; logging to metrics.jsonl only", stacklevel=2)
        return None
    id_file = run_dir / "wandb_id"
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = f"{name[:40]}-{secrets.token_hex(4)}".replace("/", "-")
        atomic_write_bytes(id_file, run_id.encode())
    (run_dir / "wandb").mkdir(exist_ok=True)
    return wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity, name=name, id=run_id, resume="allow",
                      dir=str(run_dir), config=config, mode=mode,
                      settings=wandb.Settings(console="off", silent=True))
