"""``policystack collect``: roll a task's scripted expert out and write a LeRobot v3 dataset.

    policystack collect env=PickPlace episodes=50 out=data/pickplace [workers=2]
        [cameras=front,wrist] [image_size=96] [seed=0] [only_success=true]
        [action_mode=ee_delta] [max_attempts=N] [vcodec=libsvtav1]
    policystack collect env=metaworld/reach-v3 episodes=50 out=data/mw-reach [cameras=corner]

Episode attempt i runs with seed ``seed + i`` (env and expert), so a dataset is reproducible
whatever the number of workers. Rollouts run in ``workers`` processes that send finished
episodes to this process, which writes them in seed order (one writer, crash-safe: every saved
episode survives an interruption). With ``only_success=true`` (default) failed episodes are
dropped and more seeds are tried, up to ``max_attempts`` (default 2 * episodes + 10).

``env=metaworld/<task>`` collects MetaWorld demos with MetaWorld's own scripted policies
(``policystack.envs.metaworld.collect_metaworld``; one process, default camera ``corner`` ->
``observation.images.front``; ``workers``/``action_mode``/``vcodec`` do not apply there).
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policystack.keyvalue import parse_key_values
from policystack.types import ACTION, OBS_STATE, TASK

USAGE = __doc__.split("\n\n")[1]
METAWORLD_PREFIX = "metaworld/"


@dataclass
class CollectConfig:
    env: str
    episodes: int
    out: Path
    workers: int = 1
    cameras: tuple[str, ...] | None = None  # None: ("front", "wrist"); MetaWorld: ("corner",)
    image_size: int = 96
    seed: int = 0
    only_success: bool = True
    action_mode: str = "ee_delta"
    max_attempts: int = 0  # 0: 2 * episodes + 10
    vcodec: str = "libsvtav1"

    @property
    def is_metaworld(self) -> bool:
        return self.env.startswith(METAWORLD_PREFIX)

    def __post_init__(self):
        from policystack.envs import task_names

        if self.episodes < 1:
            raise ValueError(f"episodes={self.episodes}: expected >= 1")
        if self.is_metaworld:
            from policystack.envs.metaworld import metaworld_tasks

            task = self.env.removeprefix(METAWORLD_PREFIX)
            if task not in metaworld_tasks():
                raise KeyError(f"env={self.env!r}: unknown MetaWorld task; valid: {', '.join(metaworld_tasks())}")
            self.cameras = ("corner",) if self.cameras is None else self.cameras
            return
        self.cameras = ("front", "wrist") if self.cameras is None else self.cameras
        name = self.env.removeprefix("policystack/").removesuffix("-v0")
        if name not in task_names():
            raise KeyError(f"env={self.env!r} is not a task; valid tasks: {', '.join(task_names())}")
        self.env = name
        if self.workers < 1:
            raise ValueError(f"workers={self.workers}: expected >= 1")
        from policystack.envs.base import CAMERAS

        if self.action_mode not in ("ee_delta", "joint"):
            raise ValueError(f"action_mode={self.action_mode!r}: expected ee_delta or joint")
        bad = [c for c in self.cameras if c not in CAMERAS]
        if bad:
            raise ValueError(f"cameras={','.join(self.cameras)}: unknown {bad}; valid: {', '.join(CAMERAS)} or none")
        if self.image_size < 1:
            raise ValueError(f"image_size={self.image_size}: expected a positive int")
        if self.max_attempts == 0:
            self.max_attempts = 2 * self.episodes + 10 if self.only_success else self.episodes
        if self.max_attempts < self.episodes:
            raise ValueError(f"max_attempts={self.max_attempts} is below episodes={self.episodes}")


def parse_args(argv: list[str]) -> CollectConfig:
    """key=value arguments -> CollectConfig; errors name the offending argument."""
    return CollectConfig(**parse_key_values(argv, CollectConfig, required=("env", "episodes", "out")))


@dataclass
class Episode:
    """One finished rollout: per-frame arrays stacked over time (images uint8 [T, 3, H, W])."""

    seed: int
    success: bool
    task: str
    frames: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.frames[ACTION])


_worker_state: dict = {}


def _init_worker(cfg: CollectConfig) -> None:
    from policystack.envs import make
    from policystack.envs.experts import make_expert

    env = make(cfg.env, cameras=cfg.cameras, image_size=cfg.image_size, action_mode=cfg.action_mode)
    _worker_state["env"] = env
    _worker_state["expert"] = make_expert(env)


def rollout(seed: int) -> Episode:
    """Run one expert episode in this process's env (see _init_worker)."""
    from policystack.envs.experts import run_episode

    env, expert = _worker_state["env"], _worker_state["expert"]
    steps, success = run_episode(env, expert, seed)
    frames = {k: np.stack([obs[k] for obs, _ in steps]) for k in steps[0][0]}
    frames[ACTION] = np.stack([a for _, a in steps]).astype(np.float32)
    return Episode(seed=seed, success=success, task=env.unwrapped.task, frames=frames)


def rollouts(cfg: CollectConfig) -> Iterator[Episode]:
    """Episodes for seeds cfg.seed, cfg.seed + 1, ... in order, from cfg.workers processes."""
    seeds = range(cfg.seed, cfg.seed + cfg.max_attempts)
    if cfg.workers == 1:
        _init_worker(cfg)
        try:
            yield from map(rollout, seeds)
        finally:
            _worker_state["env"].close()
            _worker_state.clear()
        return
    ctx = mp.get_context("spawn")  # no inherited renderer / thread state
    with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        yield from pool.imap(rollout, seeds, chunksize=1)
        # leaving the with-block terminates workers still rolling out unneeded seeds


def collect(cfg: CollectConfig, progress: bool = True) -> dict:
    """Write cfg.episodes expert episodes to cfg.out; returns a summary dict."""
    from tqdm import tqdm

    from policystack.datasets.writer import DatasetWriter
    from policystack.envs import make

    probe = make(cfg.env, cameras=cfg.cameras, image_size=cfg.image_size, action_mode=cfg.action_mode)
    features, fps = probe.unwrapped.features, probe.unwrapped.fps
    probe.close()
    saved = attempts = frames = 0
    bar = tqdm(total=cfg.episodes, desc=f"collect {cfg.env}", unit="ep", disable=not progress)
    with DatasetWriter.create(cfg.out, fps=fps, features=features, robot_type="panda",
                              use_videos=True, vcodec=cfg.vcodec) as writer:
        for ep in rollouts(cfg):
            attempts += 1
            if ep.success or not cfg.only_success:
                for t in range(len(ep)):
                    frame = {k: v[t] for k, v in ep.frames.items()}
                    frame[TASK] = ep.task
                    writer.add_frame(frame)
                writer.save_episode()
                saved += 1
                frames += len(ep)
            bar.set_postfix(attempts=attempts, success=f"{saved / attempts:.0%}", refresh=False)
            bar.update(saved - bar.n)
            if saved == cfg.episodes:
                break
    bar.close()
    if saved < cfg.episodes:
        raise RuntimeError(f"only {saved} of {cfg.episodes} episodes succeeded in {attempts} attempts "
                           f"(max_attempts={cfg.max_attempts}); the dataset at {cfg.out} holds those {saved}")
    return {"episodes": saved, "frames": frames, "attempts": attempts, "out": str(cfg.out),
            "features": sorted(features), "fps": fps, OBS_STATE: features[OBS_STATE].shape}


def collect_metaworld_cfg(cfg: CollectConfig) -> dict:
    from policystack.envs.metaworld import collect_metaworld

    r = collect_metaworld(cfg.env.removeprefix(METAWORLD_PREFIX), cfg.episodes, cfg.out, seed=cfg.seed,
                          only_successful=cfg.only_success, max_attempts=cfg.max_attempts or None,
                          cameras=cfg.cameras, image_size=cfg.image_size)
    return {"episodes": r.episodes, "frames": r.frames, "attempts": r.attempts, "out": r.root}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0
    try:
        cfg = parse_args(argv)
    except (KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) else str(e)
        print(f"policystack collect: {msg}", file=sys.stderr)
        return 2
    try:
        summary = collect_metaworld_cfg(cfg) if cfg.is_metaworld else collect(cfg)
    except (FileExistsError, RuntimeError, ValueError, ImportError) as e:
        print(f"policystack collect: {e}", file=sys.stderr)
        return 1
    print(f"wrote {summary['episodes']} episodes ({summary['frames']} frames, {summary['attempts']} attempts) "
          f"to {summary['out']}")
    return 0
