"""``policystack collect``: roll scripted experts out and write a LeRobot v3 dataset.

    policystack collect env=PickPlace episodes=50 out=data/pickplace [workers=2]
        [cameras=front,wrist] [image_size=96] [seed=0] [only_success=true]
        [action_mode=ee_delta] [env_state=false] [max_attempts=N] [vcodec=libsvtav1]
        [noise=0] [start_pose=random|home] [exclude=purple,...] [actions=true] [privileged=false]
    policystack collect env=Reach,PressButton,OpenDrawer episodes=100 out=data/multi [...]
    policystack collect env=metaworld/reach-v3 episodes=50 out=data/mw-reach [cameras=corner2]
        [variations=0-29] [max_steps=150] [camera_convention=lerobot]

Episode attempt i of a task runs with seed ``seed + i`` (env and expert), so a dataset is
reproducible whatever the number of workers. Rollouts run in ``workers`` processes that send
finished episodes to this process, which writes them in order (one writer, crash-safe: every
saved episode survives an interruption). With ``only_success=true`` (default) failed episodes are
dropped and more seeds are tried, up to ``max_attempts`` per task (default 2 * episodes + 10).

``noise=S`` (> 0) collects DART demonstrations (``experts.run_episode``): the env executes the expert's
action plus Gaussian noise of std S on its motion part while the dataset records the expert's own
action, so policies also see states off the expert's path labelled with the correction. The default 0
records the plain expert: on the contact-rich tasks DART labels hurt (bc from state, PickPlace 7% with
0.1 vs 100% without, docs/results.md); 0.2 is what the Reach / PressButton camera results used (0.1 keeps
every task's expert at >= 95% success, 0.2 drops Stack's to 73%, docs/envs.md). ``start_pose`` is the env's (random start poses by default, docs/envs.md).

``exclude=w1,w2`` keeps no episode whose instruction contains one of these words (whole words, any
case): a held-out study's demos (e.g. ``exclude=purple``: no Reach demo names the purple ball; purple
balls still appear as distractors). Excluded seeds count as attempts, like failures.

``actions=false`` writes the same episodes without the ``action`` feature: action-free video, which
a world model (uwm) co-trains on through ``policystack train ... dataset.mixture=[DIR] dataset.mixture_weights=[W]``.

``privileged=true`` also records the simulator's privileged state beside each frame, for a policy that
learns to reason about the scene (EMMA's automatically built labels, docs/policies/emma.md):
``privileged.objects`` (every coloured object's colour, kind and true position) and
``privileged.decision`` (the expert's phase, in words via the feature's info). The training loop gives
these columns only to a family that declares it reads them; no policy gets them at inference.

``env=A,B,C`` writes ``episodes`` demos of EACH task into one dataset, task by task in the order
given (all of A's episodes, then B's, ...); every task's seeds start at ``seed``, so the A part
equals ``env=A`` alone, and each frame carries its own task's instruction. The tasks must record
the same features (``env_state=true`` records task-specific object poses, so it is refused for
tasks whose layouts differ).

``env=metaworld/<task>`` collects MetaWorld demos with MetaWorld's own scripted policies
(``policystack.envs.metaworld.collect_metaworld``; one task, one process, default camera
``corner2`` -> ``observation.images.corner2``, in LeRobot's camera convention, recorded in each
camera's info; ``variations`` pins MT1 task variations (seed s uses ``variations[s % n]``),
``max_steps`` caps episodes (MetaWorld's own limit: 500); ``workers``/``action_mode``/``vcodec``
do not apply there).
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from policystack.keyvalue import parse_key_values
from policystack.types import ACTION, OBS_STATE, TASK, Feature, FeatureSpec

if TYPE_CHECKING:
    import gymnasium as gym

USAGE = __doc__.split("\n\n")[1]
METAWORLD_PREFIX = "metaworld/"


@dataclass
class CollectConfig:
    env: str  # a task ("Reach", "policystack/Reach-v0", "metaworld/reach-v3") or tabletop tasks "A,B,C"
    episodes: int  # per task
    out: Path
    workers: int = 1
    cameras: tuple[str, ...] | None = None  # None: ("front", "wrist"); MetaWorld: ("corner2",)
    image_size: int = 96
    seed: int = 0  # every task's first seed
    only_success: bool = True
    action_mode: str = "ee_delta"
    env_state: bool = False  # also record observation.environment_state (object poses)
    max_attempts: int = 0  # per task; 0: 2 * episodes + 10 (episodes with only_success=false and no exclude)
    vcodec: str = "libsvtav1"
    noise: float = 0.0  # DART: std of the noise on executed (not recorded) actions; 0 = plain expert
    start_pose: str = "random"  # the env's start_pose: "random" or "home"
    variations: str = ""  # MetaWorld: pinned MT1 variations, e.g. 0-29; "": a new placement per seed
    max_steps: int = 0  # MetaWorld: episode limit; 0: MetaWorld's 500
    camera_convention: str = "lerobot"  # MetaWorld: lerobot | upright | vflip (docs/envs.md)
    exclude: tuple[str, ...] = ()  # words: an episode whose instruction has one is not kept (held-out studies)
    actions: bool = True  # record the action; false writes action-free video (world-model co-training)
    privileged: bool = False  # also record privileged.objects / privileged.decision (EMMA's labels)

    @property
    def tasks(self) -> list[str]:
        """The tasks of ``env``, in order (normalised names after __post_init__)."""
        return [t.strip() for t in self.env.split(",") if t.strip()]

    @property
    def is_metaworld(self) -> bool:
        return any(t.startswith(METAWORLD_PREFIX) for t in self.tasks)

    def keeps(self, ep: Episode) -> bool:
        """Whether episode ``ep`` goes into the dataset."""
        words = set(ep.task.lower().split())
        return (ep.success or not self.only_success) and not any(w.lower() in words for w in self.exclude)

    def metaworld_config(self) -> dict:
        """MetaWorldConfig fields of a MetaWorld collection."""
        from policystack.keyvalue import parse_int_ranges

        cfg = {"cameras": self.cameras, "image_size": self.image_size, "camera_convention": self.camera_convention}
        if self.variations:
            cfg["variations"] = tuple(parse_int_ranges(self.variations, "variations"))
        if self.max_steps:
            cfg["max_episode_steps"] = self.max_steps
        return cfg

    def __post_init__(self):
        from policystack.envs import task_names

        if self.episodes < 1:
            raise ValueError(f"episodes={self.episodes}: expected >= 1")
        tasks = self.tasks
        if not tasks:
            raise ValueError(f"env={self.env!r}: expected a task name or a comma-separated list of tasks")
        if self.is_metaworld:
            if len(tasks) > 1:
                raise ValueError(f"env={self.env!r}: MetaWorld tasks are collected one per dataset "
                                 f"(env=metaworld/<task>); multi-task datasets take tabletop tasks only")
            from policystack.envs.metaworld import metaworld_tasks

            task = tasks[0].removeprefix(METAWORLD_PREFIX)
            if task not in metaworld_tasks():
                raise KeyError(f"env={self.env!r}: unknown MetaWorld task; valid: {', '.join(metaworld_tasks())}")
            from policystack.envs.metaworld import DEFAULT_CAMERA, MetaWorldConfig

            self.cameras = (DEFAULT_CAMERA,) if self.cameras is None else self.cameras
            MetaWorldConfig(**self.metaworld_config())  # bad cameras / variations / convention fail here
            if not self.actions:
                raise ValueError("actions=false applies to tabletop tasks; MetaWorld demos are collected with actions")
            if self.privileged:
                raise ValueError("privileged=true applies to tabletop tasks (their experts' phases and scene objects)")
            return
        if self.variations or self.max_steps or self.camera_convention != "lerobot":
            raise ValueError("variations=, max_steps= and camera_convention= apply to env=metaworld/<task> only")
        self.cameras = ("front", "wrist") if self.cameras is None else self.cameras
        names = [t.removeprefix("policystack/").removesuffix("-v0") for t in tasks]
        unknown = [t for t in names if t not in task_names()]
        if unknown:
            what = "is not a task" if len(tasks) == 1 else f"unknown task(s) {', '.join(map(repr, unknown))}"
            raise KeyError(f"env={self.env!r}: {what}; valid tasks: {', '.join(task_names())}")
        repeated = sorted({t for t in names if names.count(t) > 1})
        if repeated:
            raise ValueError(f"env={self.env!r}: {', '.join(repeated)} given more than once; "
                             "name each task once (episodes= is per task)")
        self.env = ",".join(names)
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
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise={self.noise}: expected a std in [0, 1] (action units; 0 = plain expert)")
        from policystack.envs.base import START_POSES

        if self.start_pose not in START_POSES:
            raise ValueError(f"start_pose={self.start_pose!r}: expected one of {', '.join(START_POSES)}")
        if self.max_attempts == 0:
            self.max_attempts = 2 * self.episodes + 10 if self.only_success or self.exclude else self.episodes
        if self.max_attempts < self.episodes:
            raise ValueError(f"max_attempts={self.max_attempts} is below episodes={self.episodes}")

    def make_env(self, task: str) -> gym.Env:
        """The tabletop env of ``task`` with this config's observation and action settings."""
        from policystack.envs import make

        return make(task, cameras=self.cameras, image_size=self.image_size, action_mode=self.action_mode,
                    env_state=self.env_state, start_pose=self.start_pose)


def parse_args(argv: list[str]) -> CollectConfig:
    """key=value arguments -> CollectConfig; errors name the offending argument."""
    return CollectConfig(**parse_key_values(argv, CollectConfig, required=("env", "episodes", "out")))


@dataclass
class Episode:
    """One finished rollout: per-frame arrays stacked over time (images uint8 [T, 3, H, W])."""

    env: str  # the tabletop task ("Reach")
    seed: int
    success: bool
    task: str  # its language instruction (the dataset's task)
    frames: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.frames[ACTION])


# --- rollouts -----------------------------------------------------------------------------------
_worker_state: dict = {}  # "cfg", and per task name an (env, expert) pair made on first use


def _init_worker(cfg: CollectConfig) -> None:
    _worker_state["cfg"] = cfg
    _worker_state["envs"] = {}


def _close_worker() -> None:
    for env, _ in _worker_state.get("envs", {}).values():
        env.close()
    _worker_state.clear()


def rollout(task: str, seed: int) -> Episode:
    """Run one expert episode of ``task`` in this process (see _init_worker)."""
    from policystack.envs.experts import make_expert, run_episode

    envs = _worker_state["envs"]
    if task not in envs:
        env = _worker_state["cfg"].make_env(task)
        envs[task] = (env, make_expert(env))
    env, expert = envs[task]
    cfg = _worker_state["cfg"]
    steps, success = run_episode(env, expert, seed, cfg.noise, privileged=cfg.privileged)
    frames = {k: np.stack([obs[k] for obs, _ in steps]) for k in steps[0][0]}
    frames[ACTION] = np.stack([a for _, a in steps]).astype(np.float32)
    return Episode(env=task, seed=seed, success=success, task=env.unwrapped.task, frames=frames)


def rollouts(cfg: CollectConfig) -> Iterator[Episode]:
    """Every attempt, task by task in ``cfg.tasks`` order; a task's seeds cfg.seed, cfg.seed + 1, ...
    in order, until it has ``cfg.episodes`` kept episodes (``cfg.keeps``) or ``cfg.max_attempts``
    attempts. Which episodes come out depends only on each seed's outcome, never on ``cfg.workers``."""
    if cfg.workers == 1:
        _init_worker(cfg)
        try:
            yield from _in_order(cfg, lambda task, seed: partial(rollout, task, seed), window=1)
        finally:
            _close_worker()
        return
    ctx = mp.get_context("spawn")  # no inherited renderer / thread state
    with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        yield from _in_order(cfg, lambda task, seed: pool.apply_async(rollout, (task, seed)).get,
                             window=2 * cfg.workers)
        # leaving the with-block terminates workers still rolling out unneeded seeds


def _in_order(cfg: CollectConfig, submit: Callable[[str, int], Callable[[], Episode]],
              window: int) -> Iterator[Episode]:
    """Schedule attempts and yield them in rollouts' order. ``submit(task, seed)`` starts one and
    returns a call that waits for its Episode. At most ``window`` attempts are in flight, earlier
    tasks first, and a task gets no more in flight than it could still keep (so with experts that
    succeed no attempt is wasted); the next task's attempts start while the current one finishes.
    A later task only gets a slot once the current one has enough in flight, so when the current
    task needs another attempt, waiting for its last one has freed a slot."""
    queues: dict[str, deque[Callable[[], Episode]]] = {t: deque() for t in cfg.tasks}
    next_seed = dict.fromkeys(cfg.tasks, cfg.seed)
    kept = dict.fromkeys(cfg.tasks, 0)

    def wants(t: str) -> bool:
        return kept[t] + len(queues[t]) < cfg.episodes and next_seed[t] < cfg.seed + cfg.max_attempts

    def start(t: str) -> None:
        queues[t].append(submit(t, next_seed[t]))
        next_seed[t] += 1

    for i, task in enumerate(cfg.tasks):
        while True:
            for t in cfg.tasks[i:]:
                while sum(map(len, queues.values())) < window and wants(t):
                    start(t)
            if not queues[task]:
                break
            ep = queues[task].popleft()()
            kept[task] += cfg.keeps(ep)
            yield ep


# --- writing ------------------------------------------------------------------------------------
def _describe(f: Feature | None) -> str:
    if f is None:
        return "absent"
    return f"{f.dtype} {list(f.shape)}" + (f" {list(f.names)}" if isinstance(f.names, list) else "")


def common_features(cfg: CollectConfig) -> tuple[FeatureSpec, int]:
    """(features, fps) that every task of ``cfg`` records, from one probe env per task.
    Raises ValueError naming the tasks and the features that differ between them."""
    probes = {}
    for task in cfg.tasks:
        env = cfg.make_env(task)
        probes[task] = (env.unwrapped.features, env.unwrapped.fps)
        env.close()
    features, fps = probes[cfg.tasks[0]]
    keys = sorted({k for feats, _ in probes.values() for k in feats})
    diffs = [f"{k}: " + ", ".join(f"{t} {_describe(feats.get(k))}" for t, (feats, _) in probes.items())
             for k in keys if len({_describe(feats.get(k)) for feats, _ in probes.values()}) > 1]
    if len({r for _, r in probes.values()}) > 1:
        diffs.append("fps: " + ", ".join(f"{t} {r}" for t, (_, r) in probes.items()))
    if diffs:
        hint = " (env_state=true records each task's own object poses: collect without it)" if cfg.env_state else ""
        raise ValueError(f"env={cfg.env}: the tasks record different features, so they cannot share one "
                         f"dataset{hint}: " + "; ".join(diffs))
    return features, fps


def collect(cfg: CollectConfig, progress: bool = True) -> dict:
    """Write cfg.episodes expert episodes of each task in cfg.tasks to cfg.out; returns a summary
    dict with totals and per-task counts (``summary["tasks"][name]``: episodes, frames, attempts)."""
    from tqdm import tqdm

    from policystack.datasets.writer import DatasetWriter

    features, fps = common_features(cfg)  # before anything is written
    if not cfg.actions:
        features = {k: f for k, f in features.items() if k != ACTION}
    if cfg.privileged:
        from policystack.envs.experts import privileged_features

        features = {**features, **privileged_features()}
    counts = {t: {"episodes": 0, "frames": 0, "attempts": 0} for t in cfg.tasks}
    bar = tqdm(total=cfg.episodes * len(cfg.tasks), desc=f"collect {cfg.tasks[0]}", unit="ep",
               disable=not progress)
    with DatasetWriter.create(cfg.out, fps=fps, features=features, robot_type="panda",
                              use_videos=True, vcodec=cfg.vcodec) as writer:
        for ep in rollouts(cfg):
            c = counts[ep.env]
            c["attempts"] += 1
            keep = cfg.keeps(ep)
            if keep:
                for t in range(len(ep)):
                    frame = {k: v[t] for k, v in ep.frames.items() if k in features}
                    frame[TASK] = ep.task
                    writer.add_frame(frame)
                # the simulator seeds training scenes come from, per task ([first, last] attempted so far):
                # committed with info.json by save_episode; eval warns when its seeds fall in this range
                writer.info.setdefault("sim_seeds", {})[ep.env] = [cfg.seed, ep.seed]
                writer.save_episode()
                c["episodes"] += 1
                c["frames"] += len(ep)
            bar.set_postfix(attempts=c["attempts"], success=f"{c['episodes'] / c['attempts']:.0%}", refresh=False)
            i = cfg.tasks.index(ep.env)
            done = c["episodes"] == cfg.episodes or c["attempts"] == cfg.max_attempts  # rollouts moves on
            if done and i + 1 < len(cfg.tasks):
                bar.set_description(f"collect {cfg.tasks[i + 1]}", refresh=False)
            bar.update(int(keep))
    bar.close()
    total = {k: sum(c[k] for c in counts.values()) for k in ("episodes", "frames", "attempts")}
    short = [f"{t}: {c['episodes']} of {cfg.episodes} in {c['attempts']} attempts"
             for t, c in counts.items() if c["episodes"] < cfg.episodes]
    if short:
        raise RuntimeError(f"too few successful episodes ({'; '.join(short)}; max_attempts={cfg.max_attempts} "
                           f"per task); the dataset at {cfg.out} holds the {total['episodes']} that succeeded")
    return {**total, "tasks": counts, "out": str(cfg.out), "features": sorted(features), "fps": fps,
            OBS_STATE: features[OBS_STATE].shape}


def collect_metaworld_cfg(cfg: CollectConfig) -> dict:
    from policystack.envs.metaworld import collect_metaworld

    task = cfg.tasks[0].removeprefix(METAWORLD_PREFIX)
    r = collect_metaworld(task, cfg.episodes, cfg.out, seed=cfg.seed,
                          only_successful=cfg.only_success, max_attempts=cfg.max_attempts or None,
                          **cfg.metaworld_config())
    counts = {"episodes": r.episodes, "frames": r.frames, "attempts": r.attempts}
    return {**counts, "tasks": {cfg.tasks[0]: counts}, "out": r.root}


def summary_line(summary: dict) -> str:
    """The line ``policystack collect`` ends with: totals, then per-task counts."""
    per_task = ", ".join(f"{t} {c['episodes']} ({c['attempts']} attempts)" for t, c in summary["tasks"].items())
    return (f"wrote {summary['episodes']} episodes ({summary['frames']} frames, {summary['attempts']} attempts) "
            f"to {summary['out']}: {per_task}")


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
    print(summary_line(summary))
    return 0
