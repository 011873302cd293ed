"""The one training loop for every policy: ``train(cfg) -> run_dir``.

Reads top to bottom as nanoGPT's train.py: processes and device, run directory, data and policy
(everything checked before training starts: dataset, stats, cameras, env, one forward/backward),
optimiser and schedule, resume, then the loop (forward under bf16 autocast on CUDA, backward,
gradient clipping, AdamW step, LR schedule, EMA, logging, periodic evaluation, checkpoints).

Policies meet the loop only through the Policy interface: ``compute_loss(batch) -> (loss, logs)``
and ``save_pretrained``. Under ``torchrun`` (DDP, gloo on CPU, nccl on GPU) ``compute_loss`` is
called through ``LossModule`` wrapped in DistributedDataParallel, or, with ``strategy=fsdp``, sharded
by FSDP (``training/fsdp.py``); each process reads its own slice of the seeded data order
(``StepBatchSampler``); rank 0 alone logs, evaluates and checkpoints.

Stopping: SIGTERM or Ctrl-C (SIGINT) ends the run after the step in progress, with a checkpoint of it (the
same path as ``time_limit_min``), so ``resume=true`` continues it; a second signal stops at once.

Exactness: the data order is a function of the step, the sanity step and the evaluations run on
forked RNG streams, and checkpoints hold every RNG state, so a run killed and resumed reproduces
the weights of an uninterrupted run on CPU bit for bit (tests/training/test_resume.py).
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import Tensor, nn

from policystack.datasets.loader import WindowedDataset, collate_windows
from policystack.datasets.meta import DatasetMeta
from policystack.datasets.mixture import MixtureDataset
from policystack.io import atomic_write_json
from policystack.policies.base import WEIGHTS_NAME, Policy, PolicyConfig, resolve_checkpoint
from policystack.training import checkpoint
from policystack.training.config import (
    EnvConfig,
    TrainConfig,
    config_to_dict,
    policy_config,
    recipe_note,
    save_config_yaml,
)
from policystack.training.ema import EMA
from policystack.training.sampler import MixtureBatchSampler, StepBatchSampler, mixture_counts
from policystack.training.tracking import Tracker, truncate_metrics
from policystack.types import (
    ACTION,
    DEFAULT_FEATURE_KEYS,
    OBS_IMAGES,
    PRIVILEGED_PREFIX,
    DataError,
    FeatureSpec,
    camera_key,
    is_image_key,
)


# --- pieces the loop uses ----------------------------------------------------------------------
class LossModule(nn.Module):
    """``forward(batch) = policy.compute_loss(batch)``: what DDP and torch.compile wrap, so that
    gradient synchronisation sees the call (the policy itself stays unwrapped for saving)."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        return self.policy.compute_loss(batch)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(policy: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and kernels (dim >= 2), none on biases, norms and scalars (nanoGPT)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def dataset_features(cfg: TrainConfig, pcfg: PolicyConfig) -> tuple[DatasetMeta, FeatureSpec]:
    """The dataset's metadata and the features a policy trains on: every feature but LeRobot's
    default columns and strings (and the privileged simulator columns, ``privileged.*``, unless the
    family's config sets ``reads_privileged``: EMMA builds its labels from them), cameras limited to ``dataset.cameras`` when given. A dataset without
    ``action`` (action-free video) suits only a family whose config has ``actions_optional``."""
    if not cfg.dataset.path:
        raise ValueError("dataset.path is required: policystack train dataset.path=<LeRobot v3 dataset dir>")
    meta = DatasetMeta.load(cfg.dataset.path)
    features = {k: f for k, f in meta.features.items() if k not in DEFAULT_FEATURE_KEYS and f.dtype != "string"
                and (pcfg.reads_privileged or not k.startswith(PRIVILEGED_PREFIX))}
    if ACTION not in features and not pcfg.actions_optional:
        raise DataError(f"{meta.root}/meta/info.json: no {ACTION!r} feature to train on; features: {sorted(features)} "
                        f"(policy {cfg.policy['name']!r} needs actions; only a family whose config sets "
                        f"actions_optional trains on action-free data; a world model such as uwm takes action-free "
                        f"video beside a dataset with actions: dataset.mixture=[DIR] dataset.mixture_weights=[W])")
    if cfg.dataset.cameras is not None:
        have = [k.removeprefix(OBS_IMAGES + ".") for k in features if is_image_key(k)]
        missing = [c for c in cfg.dataset.cameras if c not in have]
        if missing:
            raise DataError(f"{meta.root}/meta/info.json: dataset.cameras names {missing}, which the dataset does "
                            f"not have; its cameras: {have}")
        features = {k: f for k, f in features.items() if not is_image_key(k) or
                    k.removeprefix(OBS_IMAGES + ".") in cfg.dataset.cameras}
    if cfg.dataset.camera_convention is not None:  # the user's word for data that records none (MetaWorld)
        from policystack.envs.metaworld import with_camera_records

        try:
            features = with_camera_records(features, cfg.dataset.camera_convention)
        except ValueError as e:
            raise DataError(f"{meta.root}/meta/info.json: dataset.camera_convention: {e}") from None
    if meta.stats is None:
        raise DataError(f"{meta.root}/meta/stats.json: missing; a policy needs normalisation statistics "
                        f"(run `policystack dataset stats --write {meta.root}`)")
    return meta, features


def selected_episodes(meta: DatasetMeta, episodes: list[int] | None, tasks: list[str] | None) -> list[int] | None:
    """The episodes ``dataset.episodes`` and ``dataset.tasks`` select (both given: those in both), in
    dataset order; None when neither is given (all). A task is its instruction text or its task index;
    an episode is selected when any of its tasks is."""
    if episodes is None and tasks is None:
        return None
    have = meta.episodes["episode_index"].tolist()
    chosen = have
    if episodes is not None:
        missing = sorted(set(episodes) - set(have))
        if missing:
            raise DataError(f"{meta.root}/meta/episodes: dataset.episodes names episodes {missing[:10]}, which the "
                            f"dataset does not have (it has {len(have)}: {min(have)}..{max(have)})")
        chosen = [e for e in chosen if e in set(episodes)]
    if tasks is not None:
        wanted = set()
        for t in tasks:
            if str(t) not in meta.tasks and not (str(t).isdigit() and int(t) < len(meta.tasks)):
                raise DataError(f"{meta.root}/meta/tasks.parquet: dataset.tasks names {t!r}, which is neither a task "
                                f"of the dataset nor a task index; its tasks: {list(enumerate(meta.tasks))}")
            wanted.add(str(t) if str(t) in meta.tasks else meta.tasks[int(t)])
        tasks_of = dict(zip(have, meta.episodes["tasks"]))
        chosen = [e for e in chosen if wanted & set(tasks_of[e])]
    if not chosen:
        raise DataError(f"{meta.root}: dataset.episodes={episodes} and dataset.tasks={tasks} select no episode together")
    return chosen


def build_policy(klass: type[Policy], pcfg: PolicyConfig, features: FeatureSpec, meta: DatasetMeta) -> Policy:
    """The policy for this dataset; a mismatch (a camera or key the config needs that the dataset
    lacks, missing statistics) is raised naming the dataset."""
    cameras = getattr(pcfg, "cameras", None)
    if cameras:
        missing = [c for c in cameras if camera_key(c) not in features]
        if missing:
            raise DataError(f"{meta.root}: the {klass.name} config names cameras {missing}, which the dataset "
                            f"does not provide; its cameras: {[k for k in features if is_image_key(k)]}")
    try:
        return klass(pcfg, features, meta.stats)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if e.args else str(e)
        raise DataError(f"{meta.root}: dataset does not fit policy {klass.name!r}: {msg}") from None


def load_datasets(cfg: TrainConfig, pcfg: PolicyConfig, policy: Policy, meta: DatasetMeta, features: FeatureSpec,
                  transforms: dict[str, Any], cache_dir: Any) -> WindowedDataset | MixtureDataset:
    """The dataset the loop draws from: ``dataset.path`` (its ``dataset.episodes`` / ``dataset.tasks``) as
    windows at the policy's frame offsets, each camera through ``transforms`` (the policy's
    ``frame_transforms``: e.g. a frozen encoder's features, computed once per frame), and, with
    ``dataset.mixture``, the mixed-in datasets after it (each giving the features the policy reads that
    it has: a vision-language dataset gives cameras and task, no action)."""
    common = dict(cache_dir=cache_dir, frame_cache_bytes=cfg.dataset.frame_cache_bytes)
    primary = WindowedDataset(meta.root, delta_indices=pcfg.delta_indices(features), keys=list(features),
                              end_indices=pcfg.episode_end_indices(features),
                              episodes=selected_episodes(meta, cfg.dataset.episodes, cfg.dataset.tasks),
                              frame_transforms={k: f for k, f in transforms.items() if k in features}, **common)
    if not cfg.dataset.mixture:
        return primary
    if not type(policy).trains_on_mixture:
        raise DataError(f"dataset.mixture: policy {policy.name!r} does not train on mixed datasets (its compute_loss "
                        "reads one kind of batch); drop dataset.mixture")
    parts = [primary]
    for path in cfg.dataset.mixture:
        mix = DatasetMeta.load(path)
        keys = policy.mixture_keys(mix.features, f"{mix.root}/meta/info.json")
        parts.append(WindowedDataset(mix.root, delta_indices=pcfg.delta_indices(keys), keys=keys,
                                     end_indices=pcfg.episode_end_indices(keys),
                                     frame_transforms={k: f for k, f in transforms.items() if k in keys}, **common))
    return MixtureDataset(parts)


def batch_shares(cfg: TrainConfig) -> list[float]:
    """Each dataset's share of a batch: ``dataset.path`` the rest after ``dataset.mixture_weights``."""
    return [1.0 - sum(cfg.dataset.mixture_weights), *cfg.dataset.mixture_weights]


def mixture_note(dataset: WindowedDataset | MixtureDataset, cfg: TrainConfig) -> str:
    """What a mixture adds to the start line: each mixed-in dataset's samples and share of a batch."""
    if not isinstance(dataset, MixtureDataset):
        return ""
    counts = mixture_counts(cfg.batch_size, batch_shares(cfg))
    return f" with {', '.join(f'{n} of {p} ({c}/batch)' for n, p, c in zip(dataset.sizes[1:], cfg.dataset.mixture, counts[1:]))} mixed in"


def make_sampler(dataset: WindowedDataset | MixtureDataset, cfg: TrainConfig, start: int, end: int, rank: int,
                 world: int) -> StepBatchSampler | MixtureBatchSampler:
    """The seeded step sampler; for a mixture, each dataset's share of every batch from ``dataset.mixture_weights``."""
    if not isinstance(dataset, MixtureDataset):
        return StepBatchSampler(n=len(dataset), batch_size=cfg.batch_size, seed=cfg.seed, start_step=start,
                                end_step=end, rank=rank, world_size=world)
    return MixtureBatchSampler(dataset.sizes, dataset.offsets.tolist(), mixture_counts(cfg.batch_size, batch_shares(cfg)),
                               seed=cfg.seed, start_step=start, end_step=end, rank=rank, world_size=world)


def check_env(env: EnvConfig, features: FeatureSpec) -> dict[str, Any]:
    """Build the evaluation env once and check that it produces every observation the policy reads,
    with the same shapes, and takes its actions (before training, not at the first evaluation).
    Returns the env kwargs: those ``env`` sets over those derived from the policy's features."""
    from policystack.eval.envs import (
        check_features,
        env_kwargs_from_features,
        make_eval_env,
        policy_features_for,
    )

    if ACTION not in features:
        raise ValueError(f"env={env.task}: evaluation rolls out the policy's actions, and this dataset has no "
                         f"{ACTION!r}; train without an env (env=none)")
    hint = ("set env.cameras / env.image_size / env.action_mode, or another env; MetaWorld data that records no "
            "camera convention: dataset.camera_convention=")
    try:
        features = policy_features_for(env.task, features)
    except ValueError as err:
        raise ValueError(f"env={env.task} cannot evaluate a policy trained on this dataset ({hint}): {err}") from None
    kwargs = env_kwargs_from_features(env.task, features)
    kwargs.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in
                   (("cameras", env.cameras), ("image_size", env.image_size), ("action_mode", env.action_mode),
                    ("variations", env.variations)) if v is not None})
    e = make_eval_env(env.task, kwargs)
    try:
        check_features(features, e.observation_space, e.action_space, env.task, e.unwrapped.features)
    except ValueError as err:  # its wording speaks of a checkpoint: here it is the dataset's features
        raise ValueError(f"env={env.task} cannot evaluate a policy trained on this dataset ({hint}): {err}") from None
    finally:
        e.close()
    return kwargs


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def _check_one_step(model: nn.Module, policy: Policy, batch: dict, device: torch.device, amp: bool) -> float:
    """One forward/backward before the loop, so a bad shape, a missing key or out-of-memory shows
    now and not after an hour. Runs on a forked RNG; gradients and buffers are put back."""
    buffers = {k: b.clone() for k, b in policy.named_buffers()}
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, _ = model(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the first batch gives a non-finite loss ({loss.item()})")
            loss.backward()
    except Exception as e:
        e.add_note(f"(policystack train: the check step on one batch, before training, failed for policy "
                   f"{policy.name!r}; batch keys {sorted(batch)})")
        raise
    for p in policy.parameters():
        p.grad = None
    with torch.no_grad():
        for k, b in policy.named_buffers():
            b.copy_(buffers[k])
    return float(loss.detach())


def _distributed(cfg: TrainConfig) -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=cfg.ddp.timeout_s))
    return rank, world, local


def _device(cfg: TrainConfig, local_rank: int, world: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={cfg.device!r} but CUDA is not available; use device=cpu")
        return torch.device(f"cuda:{local_rank}" if world > 1 else cfg.device)
    return torch.device("cpu")


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _run_dir(cfg: TrainConfig, rank: int, world: int) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from or None); refuses to write into another run."""
    if cfg.resume:
        if not cfg.out:
            raise ValueError("resume=true needs out=<run dir> (or pass resume=<run dir>)")
        run_dir = Path(cfg.out)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"resume: run directory {run_dir} does not exist")
        return run_dir, checkpoint.latest_checkpoint(run_dir)
    name = f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.policy['name']}"
    run_dir = Path(cfg.out) if cfg.out else Path("runs") / _broadcast(name, world)
    if (run_dir / "config.yaml").exists() or checkpoint.step_dirs(run_dir):
        raise FileExistsError(f"{run_dir} already holds a training run; continue it with resume=true "
                              f"(or `policystack train resume={run_dir}`), or choose another out=")
    return run_dir, None


# --- the loop --------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> Path:
    """Train ``cfg.policy`` on ``cfg.dataset`` for ``cfg.steps`` steps; returns the run directory
    (config.yaml, metrics.jsonl, checkpoints/<step>/ + latest, eval/)."""
    # -- processes, device, threads
    rank, world, local_rank = _distributed(cfg)
    master = rank == 0
    device = _device(cfg, local_rank, world)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(cfg.threads or max(1, cores // local_world - cfg.dataset.num_workers))
    run_dir, resume_from = _run_dir(cfg, rank, world)
    torch.manual_seed(cfg.seed + rank)
    np.random.seed((cfg.seed + rank) % 2**32)
    random.seed(cfg.seed + rank)

    # -- data and policy, checked before anything long starts
    klass, pcfg = policy_config(cfg)
    meta, features = dataset_features(cfg, pcfg)
    policy = build_policy(klass, pcfg, features, meta)
    policy.data_provenance = {"dataset": str(meta.root), **({"sim_seeds": meta.info["sim_seeds"]}
                                                            if "sim_seeds" in meta.info else {})}
    if resume_from is not None or cfg.init_from:
        # resume: its weights now (the optimiser state follows below), frozen parts the cache uses;
        # init_from: a policy dir, a training checkpoint or a run dir
        src = resolve_checkpoint(resume_from if resume_from is not None else cfg.init_from)
        policy.adopt_saved_config(checkpoint.saved_config(src))  # what it grew from its data (Gato's embodiments)
        checkpoint.check_compatible(src, policy)
        policy.load_weights(load_file(src / WEIGHTS_NAME), src / WEIGHTS_NAME)
    else:  # a policy from scratch: the pretrained parts its config names, if any
        policy.load_external_weights()
    policy.to(device).train()  # before the frame transforms copy a frozen encoder: it encodes on this device
    transforms = policy.frame_transforms() if cfg.dataset.cache_features else {}
    cache_dir = run_dir / "cache" if cfg.dataset.cache_dir == "run" else cfg.dataset.cache_dir
    dataset = load_datasets(cfg, pcfg, policy, meta, features, transforms, cache_dir)
    segments, frames, nbytes = dataset.uncached_frames()  # the first epoch's extra work, said below
    eval_kwargs = check_env(cfg.env, features) if cfg.env.task is not None else None
    if cfg.eval.every and master:
        from policystack.eval.runner import EvalRunner  # noqa: F401 -- fail now if evaluation is unavailable
    if transforms and master:  # every frame's features once, before the clock of the first step starts
        print(f"policystack train: {klass.name}'s frozen image features of {sorted(transforms)} are computed once now: "
              f"decodes {frames} camera frames ({segments} camera segments, {nbytes / 1e6:.0f} MB) into the frame cache "
              f"{dataset.cache_dir / 'frames' if dataset.cache_dir else '(in memory)'} and runs the encoder on them "
              "(dataset.cache_features=false runs it at every step instead)", file=sys.stderr, flush=True)
        segments = 0  # done here, not in the first epoch
        # the loader's workers are not running yet: the encoder takes their cores, one process of one thread
        # per core (threads=N caps it at N)
        warm_procs = cfg.threads or max(1, cores // local_world)
        train_threads = torch.get_num_threads()
        torch.set_num_threads(warm_procs)
        try:
            dataset.warm_cache(progress=cfg.log.progress, workers=warm_procs)
        finally:
            torch.set_num_threads(train_threads)

    # -- the module the loop calls (sharded first under FSDP: the optimiser takes the sharded parameters);
    # optimiser, schedule, EMA
    model: nn.Module = LossModule(policy)
    sharded = world > 1 and cfg.strategy == "fsdp"
    if sharded:
        from policystack.training import fsdp

        model = fsdp.shard(model, policy)
    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(policy, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, o.warmup_steps, cfg.steps, o.min_lr_ratio))
    ema = EMA(policy, cfg.ema.decay) if cfg.ema.enabled else None
    if world > 1 and not sharded:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.ddp.find_unused_parameters)
    if cfg.compile:
        model = torch.compile(model)
    first = make_sampler(dataset, cfg, 0, 1, 0, 1).batch_at(0) if isinstance(dataset, MixtureDataset) \
        else np.arange(min(cfg.batch_size, len(dataset)))
    check_loss = _check_one_step(model, policy, to_device(dataset.get_batch(first), device), device, amp)

    # -- resume: weights, optimiser, schedule, EMA, RNG; the data order follows from the step
    start = 0
    if resume_from is not None:
        state = checkpoint.load_checkpoint(resume_from, policy, optimizer, scheduler, ema, rank=rank,
                                           sharded=model if sharded else None)
        start = state["step"]
        expected = make_sampler(dataset, cfg, 0, 0, rank, world).state_dict()
        if state["data_order"] != expected:
            raise ValueError(f"{resume_from}: saved data order {state['data_order']} differs from this run's "
                             f"{expected}: resume with the same dataset, seed, batch_size and process count")
        if start >= cfg.steps:
            raise ValueError(f"{resume_from} is at step {start} and steps={cfg.steps}: nothing to do "
                             f"(pass a larger steps= to train further)")
    sampler = make_sampler(dataset, cfg, start, cfg.steps, rank, world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.dataset.num_workers, collate_fn=collate_windows,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed),
        worker_init_fn=_ignore_stop_signals)

    # -- run directory and tracking (rank 0)
    tracker = None
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.clean_partial(run_dir)
        if resume_from is None and cfg.resume:  # resume asked, but the run died before its first checkpoint
            truncate_metrics(run_dir / "metrics.jsonl", 0)
        save_config_yaml(cfg, run_dir / "config.yaml")
        tracker = Tracker(run_dir, config_to_dict(cfg), cfg.log.wandb, name=run_dir.name,
                          resume_step=start if (resume_from is not None or cfg.resume) else None)
        print(f"policystack train: {klass.name} ({sum(p.numel() for p in policy.parameters()):,} parameters) on "
              f"{meta.root} ({len(dataset)} frames{mixture_note(dataset, cfg)}), {world} process(es) on {device}, "
              f"steps {start}->{cfg.steps}, "
              f"run {run_dir}; check step loss {check_loss:.4f}" + recipe_note(cfg), file=sys.stderr, flush=True)
        if segments:
            print(f"policystack train: the first epoch also decodes {frames} camera frames ({segments} camera "
                  f"segments, {nbytes / 1e6:.0f} MB) into the frame cache "
                  f"{dataset.cache_dir / 'frames' if dataset.cache_dir else '(in memory)'}, so it runs slower than "
                  "the next; dataset.cache_dir=run keeps the cache in the run directory, =<dir> elsewhere, "
                  "=false in memory", file=sys.stderr, flush=True)
    evaluator = None
    if cfg.eval.every and master:
        from policystack.eval.runner import EvalRunner

        evaluator = EvalRunner(task=cfg.env.task, episodes=cfg.eval.episodes, n_envs=cfg.eval.n_envs,
                               seed=cfg.eval.seed, max_steps=cfg.env.max_episode_steps, env_kwargs=eval_kwargs,
                               video_dir=None, n_videos=cfg.eval.n_videos, progress=False)

    # -- the loop
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True, desc="train",
               disable=not (master and cfg.log.progress))
    sums: dict[str, float] = {}
    n_logged, t_last, t0 = 0, time.perf_counter(), time.perf_counter()
    clock0 = _budget_clock(cfg)
    stop = _StopOnSignal()
    try:
        for step, batch in enumerate(loader, start=start):
            batch = to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, logs = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), o.grad_clip or float("inf"))
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(policy, step)
            done = step + 1
            loss_value = loss.detach()
            if not torch.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value.item()} at step {step}; lower optim.lr or check the data")
            for k, v in {"loss": loss_value, **logs}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_logged += 1
            bar.update(1)
            last = done == cfg.steps or _should_stop(cfg, clock0, stop, world, device)

            if done % cfg.log.every == 0 or last:
                record = {k: v / n_logged for k, v in sums.items()}
                if world > 1:  # means over the processes
                    t = torch.tensor(list(record.values()), dtype=torch.float64, device=device)
                    dist.all_reduce(t)
                    record = dict(zip(record, (t / world).tolist()))
                now = time.perf_counter()
                record.update(lr=lr, grad_norm=float(grad_norm),
                              steps_per_s=n_logged / (now - t_last),
                              samples_per_s=n_logged * cfg.batch_size * world / (now - t_last),
                              epoch=done / sampler.batches_per_epoch, time_s=now - t0)
                if master:
                    tracker.log(done, record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                sums, n_logged, t_last = {}, 0, now

            if evaluator is not None and (done % cfg.eval.every == 0 or last):
                tracker.log(done, _evaluate(evaluator, policy, ema, run_dir, done, cfg))
            if world > 1 and cfg.eval.every and (done % cfg.eval.every == 0 or last):
                dist.barrier()

            if done % cfg.checkpoint.every == 0 or last:
                rngs = [checkpoint.capture_rng()]
                if world > 1:
                    rngs = [None] * world
                    dist.all_gather_object(rngs, checkpoint.capture_rng())
                gathered = fsdp.full_state(model, optimizer) if sharded else None  # every rank takes part
                if master:
                    checkpoint.save_checkpoint(
                        run_dir, done, policy, optimizer, scheduler, ema, rngs,
                        extra={"data_order": sampler.state_dict(), "world_size": world,
                               "config": config_to_dict(cfg), "strategy": cfg.strategy if world > 1 else "single"},
                        keep_last=cfg.checkpoint.keep_last, gathered=gathered)
                if world > 1:
                    dist.barrier()
            if last:
                if done < cfg.steps and master and stop.signal is not None:
                    print(f"policystack train: {stop.signal} received: stopped at step {done} of {cfg.steps}; "
                          f"checkpoint {done} written (resume=true continues the run)", file=sys.stderr, flush=True)
                elif done < cfg.steps and master:
                    print(f"policystack train: time_limit_min={cfg.time_limit_min} ({cfg.time_limit_clock}) reached at step {done} of "
                          f"{cfg.steps}; checkpoint {done} written", file=sys.stderr, flush=True)
                break
    finally:
        stop.restore()
        bar.close()
        if tracker is not None:
            tracker.close()
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return run_dir


def _budget_clock(cfg: TrainConfig) -> float:
    """Seconds on the clock ``time_limit_min`` is measured by: wall time, or this process's CPU time."""
    return time.process_time() if cfg.time_limit_clock == "cpu" else time.perf_counter()


class _StopOnSignal:
    """SIGTERM / SIGINT set ``signal`` (its name) instead of killing the run, so the loop stops after the step in
    progress and checkpoints it; a second one acts as it would have (the handlers before are put back). Only
    in the main thread (``signal`` allows no handler elsewhere); ``restore`` puts the old handlers back."""

    def __init__(self):
        self.signal: str | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signal.Signals(signum).name
        print(f"\npolicystack train: {self.signal}: stopping after this step with a checkpoint (again: stop now)",
              file=sys.stderr, flush=True)
        self.restore()

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _ignore_stop_signals(worker_id: int) -> None:
    """A loader worker leaves SIGTERM / SIGINT to the main process: Ctrl-C or a kill of the process group reaches
    the workers too, and a worker killed by one makes torch raise in the main process before it can checkpoint
    (the loader stops its workers itself; they also exit when the main process is gone)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _should_stop(cfg: TrainConfig, clock0: float, stop: _StopOnSignal, world: int, device: torch.device) -> bool:
    """Whether ``cfg.time_limit_min`` has passed since ``clock0`` or a stop signal came (rank 0 decides for every
    process)."""
    over = stop.signal is not None or (cfg.time_limit_min is not None and
                                       _budget_clock(cfg) - clock0 > 60.0 * cfg.time_limit_min)
    if world > 1:
        flag = torch.tensor([float(over)], device=device)
        dist.broadcast(flag, src=0)
        over = bool(flag.item())
    return over


def _evaluate(evaluator, policy: Policy, ema: EMA | None, run_dir: Path, step: int,
              cfg: TrainConfig) -> dict[str, float]:
    """Roll the policy (its EMA weights when EMA is on) out in the env; the result goes to
    ``eval/<step>.json``; returns the scalars to log. EvalRunner forks the RNG, so training's random
    stream is unaffected (resumed runs stay exact with evaluation on)."""
    if cfg.eval.n_videos:
        evaluator.video_dir = run_dir / "eval" / f"{step:06d}"
    with ema.applied(policy) if ema is not None else nullcontext():
        result = evaluator.run(policy)  # restores the caller's RNG state and the train mode itself
    atomic_write_json(run_dir / "eval" / f"{step:06d}.json", {"step": step, **result.to_dict()})
    return {"eval/success_rate": result.success_rate, "eval/ci_low": result.ci_low, "eval/ci_high": result.ci_high,
            "eval/mean_length": result.mean_length, "eval/mean_reward": result.mean_reward}
