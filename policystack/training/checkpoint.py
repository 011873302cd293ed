"""Training checkpoints: everything a run needs to continue exactly, written atomically.

Layout of a run directory::

    <run>/checkpoints/<step:06d>/
        pretrained/                    Policy.save_pretrained: config.json + model.safetensors
                                       (normalisation stats inside); the EMA weights when EMA is on
        training_state.safetensors     tensors: optimizer.state.<param>.<name>, rng.<rank>.*, and
                                       model.* (the raw weights) when EMA is on
        training_state.json            step, optimiser param groups, scheduler, RNG (numpy, python),
                                       data-order state, world size, the resolved config
    <run>/checkpoints/latest           symlink -> <step:06d>

A checkpoint is written into ``checkpoints/.tmp-<step>-<pid>/`` (every file fsynced), renamed to
its step directory in one ``os.replace``, and only then is ``latest`` moved (a new symlink renamed
over the old one). A process killed at any moment leaves ``latest`` naming a complete checkpoint;
leftover ``.tmp-*`` directories are removed by ``clean_partial``. Older step directories beyond
``keep_last`` are deleted after ``latest`` moved (the one ``latest`` names never is).

RNG state is kept per process (rank) so a DDP run resumes each rank's augmentation stream.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from policystack.io import atomic_write_bytes, atomic_write_json, fsync_dir
from policystack.policies.base import CONFIG_NAME, WEIGHTS_NAME, Policy, untied, with_tied
from policystack.training.ema import EMA
from policystack.types import Feature

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
LATEST = "latest"
FORMAT_VERSION = 1


# --- RNG -------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """This process's RNG states: torch (CPU and every CUDA device), numpy, python."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(), "python": random.getstate()}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _rng_to_files(states: list[dict]) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors, meta = {}, []
    for r, s in enumerate(states):
        tensors[f"rng.{r}.torch"] = s["torch"]
        for i, c in enumerate(s["cuda"]):
            tensors[f"rng.{r}.cuda.{i}"] = c
        name, keys, pos, has_gauss, cached = s["numpy"]
        tensors[f"rng.{r}.numpy"] = torch.from_numpy(keys.astype(np.int64))
        version, pystate, gauss_next = s["python"]
        meta.append({"n_cuda": len(s["cuda"]), "numpy": [name, int(pos), int(has_gauss), float(cached)],
                     "python": [version, list(pystate), gauss_next]})
    return tensors, meta


def _rng_from_files(tensors: dict[str, torch.Tensor], meta: list[dict], rank: int) -> dict[str, Any]:
    m = meta[rank]
    name, pos, has_gauss, cached = m["numpy"]
    version, pystate, gauss_next = m["python"]
    return {"torch": tensors[f"rng.{rank}.torch"],
            "cuda": [tensors[f"rng.{rank}.cuda.{i}"] for i in range(m["n_cuda"])],
            "numpy": (name, tensors[f"rng.{rank}.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached),
            "python": (version, tuple(pystate), gauss_next)}


# --- optimiser state as tensors + JSON ---------------------------------------------------------
def _optimizer_to_files(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, state_meta = {}, {}
    for pid, st in sd["state"].items():
        state_meta[str(pid)] = {}
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.state.{pid}.{name}"] = v
            else:
                state_meta[str(pid)][name] = v
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"state": state_meta, "param_groups": groups}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(pid): dict(rest) for pid, rest in meta["state"].items()}
    for key, v in tensors.items():
        if key.startswith("optimizer.state."):
            pid, name = key.removeprefix("optimizer.state.").split(".", 1)
            state[int(pid)][name] = v
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# --- directories -----------------------------------------------------------------------------
def step_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    ckpts = Path(run_dir) / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted((p for p in ckpts.iterdir() if p.name.isdigit() and p.is_dir() and not p.is_symlink()),
                  key=lambda p: int(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The step directory ``checkpoints/latest`` names, or None when the run has none."""
    latest = Path(run_dir) / "checkpoints" / LATEST
    if latest.is_symlink():
        target = latest.resolve()
    elif latest.is_file():
        target = latest.parent / latest.read_text().strip()
    else:
        return None
    if not (target / STATE_JSON).is_file():
        raise FileNotFoundError(f"{latest} names {target}, which is not a complete checkpoint (no {STATE_JSON})")
    return target


def clean_partial(run_dir: str | Path) -> list[Path]:
    """Delete the temporary directories of checkpoint writes that were interrupted."""
    ckpts = Path(run_dir) / "checkpoints"
    gone = [*ckpts.glob(".tmp-*"), *ckpts.glob(".old-*"), *ckpts.glob(f".{LATEST}.tmp-*")]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def _point_latest(ckpts: Path, name: str) -> None:
    tmp = ckpts / f".{LATEST}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(name, tmp)
    os.replace(tmp, ckpts / LATEST)
    fsync_dir(ckpts)


def prune(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step directories (never the one ``latest`` names)."""
    dirs = step_dirs(run_dir)
    latest = latest_checkpoint(run_dir)
    removed = []
    for p in dirs[: max(0, len(dirs) - keep_last)]:
        if latest is not None and p.resolve() == latest.resolve():
            continue
        trash = p.parent / f".old-{p.name}-{os.getpid()}"
        os.replace(p, trash)  # a half-deleted directory never looks like a checkpoint
        shutil.rmtree(trash)
        removed.append(p)
    return removed


# --- save / load -----------------------------------------------------------------------------
def save_checkpoint(run_dir: str | Path, step: int, policy: Policy, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, ema: EMA | None,
                    rng_states: list[dict], extra: dict[str, Any], keep_last: int,
                    gathered: tuple[dict, dict] | None = None) -> Path:
    """Write checkpoint ``step`` (see the module docstring) and return its directory.

    ``rng_states``: ``capture_rng()`` of every rank, in rank order. ``extra``: JSON-able facts
    stored in training_state.json (data-order state, world size, config, ...). ``gathered``: a sharded
    run's full weights and optimiser state (``training.fsdp.full_state``) in place of the policy's and
    the optimiser's own (which hold one shard).
    """
    ckpts = Path(run_dir) / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    name = f"{step:06d}"
    tmp = ckpts / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with ema.applied(policy) if ema is not None else nullcontext():
        policy.save_pretrained(tmp / "pretrained", state_dict=gathered[0] if gathered else None)
    tensors, opt_meta = _optimizer_to_files(gathered[1] if gathered else optimizer.state_dict())
    rng_tensors, rng_meta = _rng_to_files(rng_states)
    tensors.update(rng_tensors)
    if ema is not None:  # pretrained/ holds the average; the optimiser's raw weights go here
        tensors.update({f"model.{k}": v for k, v in untied(policy.state_dict()).items()})  # tied weights once
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(tmp / STATE_TENSORS, save(tensors))
    atomic_write_json(tmp / STATE_JSON, {
        "format_version": FORMAT_VERSION, "step": step, "policy": policy.name, "ema": ema is not None,
        "optimizer": opt_meta, "scheduler": scheduler.state_dict(), "rng": rng_meta, **extra})
    fsync_dir(tmp)
    final = ckpts / name
    if final.exists():  # re-saving a step (a resumed run reaching it again): swap, then delete the old
        old = ckpts / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    fsync_dir(ckpts)
    _point_latest(ckpts, name)
    prune(run_dir, keep_last)
    return final


def load_checkpoint(ckpt_dir: str | Path, policy: Policy, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, ema: EMA | None,
                    rank: int = 0, sharded: torch.nn.Module | None = None) -> dict[str, Any]:
    """Restore weights, optimiser, scheduler, EMA and this rank's RNG from ``ckpt_dir`` into the
    given objects (built from the same config). Returns training_state.json's content. ``sharded``:
    the FSDP-sharded module around ``policy`` (weights and optimiser state go in through it).

    Raises ValueError naming the file when the checkpoint is of another policy family, config or
    features, or was written with(out) EMA when this run is not.
    """
    ckpt_dir = Path(ckpt_dir)
    meta = json.loads((ckpt_dir / STATE_JSON).read_text())
    pre = ckpt_dir / "pretrained"
    check_compatible(pre, policy)
    if meta["ema"] != (ema is not None):
        raise ValueError(f"{ckpt_dir / STATE_JSON}: written with ema.enabled={meta['ema']}, this run has "
                         f"ema.enabled={ema is not None}; resume with the same setting")
    tensors = load_file(ckpt_dir / STATE_TENSORS)
    saved = load_file(pre / WEIGHTS_NAME)
    raw = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")} if ema else saved
    if sharded is not None:
        from policystack.training.fsdp import load_full_state

        load_full_state(sharded, optimizer, raw, _optimizer_from_files(tensors, meta["optimizer"]))
    else:
        policy.load_weights(raw, ckpt_dir / (STATE_TENSORS if ema else f"pretrained/{WEIGHTS_NAME}"))
        optimizer.load_state_dict(_optimizer_from_files(tensors, meta["optimizer"]))
    if ema is not None:
        ema.load_state_dict(with_tied(saved, policy.state_dict()))
    scheduler.load_state_dict(meta["scheduler"])
    if rank >= len(meta["rng"]):
        raise ValueError(f"{ckpt_dir / STATE_JSON}: holds RNG state of {len(meta['rng'])} processes, "
                         f"this is rank {rank}; resume with the same number of processes")
    restore_rng(_rng_from_files(tensors, meta["rng"], rank))
    return meta


def saved_config(pretrained_dir: str | Path) -> dict:
    """The policy config (a dict) saved in ``pretrained_dir``'s config.json."""
    return json.loads((Path(pretrained_dir) / CONFIG_NAME).read_text())["config"]


def check_compatible(pretrained_dir: str | Path, policy: Policy) -> None:
    """A saved policy (``pretrained_dir``: config.json + weights) can load into ``policy``: same
    family, same config, same features; else a ValueError saying which differs."""
    path = Path(pretrained_dir) / CONFIG_NAME
    saved = json.loads(path.read_text())
    if saved.get("policy") != policy.name:
        raise ValueError(f"{path}: checkpoint of policy {saved.get('policy')!r}, but this run trains "
                         f"{policy.name!r}; use policy={saved.get('policy')} or another checkpoint")
    mine = json.loads(json.dumps(policy.config.to_dict()))
    # through from_dict: a key added since the checkpoint was saved takes the value its checkpoints mean
    theirs_cfg = json.loads(json.dumps(type(policy.config).from_dict(saved["config"], str(path)).to_dict()))
    diff = sorted(k for k in set(mine) | set(theirs_cfg) if mine.get(k) != theirs_cfg.get(k))
    if diff:
        raise ValueError(f"{path}: policy config differs from this run's in {diff}: "
                         f"saved {[theirs_cfg.get(k) for k in diff]}, run {[mine.get(k) for k in diff]}")
    theirs = {k: Feature.from_json(v, f"{path}: features[{k!r}]") for k, v in saved["features"].items()}
    if _shapes(theirs) != _shapes(policy.features):  # a camera stored as video or PNG is the same input
        raise ValueError(f"{path}: checkpoint features {_shapes(theirs)} differ from this run's dataset "
                         f"features {_shapes(policy.features)}")


def _shapes(features: dict[str, Feature]) -> dict[str, str]:
    return {k: f"image{list(f.chw)}" if f.is_visual else f"{f.dtype}{list(f.shape)}" for k, f in features.items()}
