"""EvalRunner: roll a policy out in vectorised envs for a fixed set of seeded episodes.

    result = EvalRunner(task="PickPlace", episodes=20, n_envs=2, seed=1000).run(policy)
    result.success_rate, result.ci_low, result.ci_high, result.episodes[0].seed

How episodes map to envs and to policy state
--------------------------------------------
Episode ``i`` always runs with seed ``seed + i`` (env reset seed, expert seed and the seed of the
policy's torch RNG stream), whatever ``n_envs`` is, so a result depends only on
(policy, task, env kwargs, seed, episodes).

``n_envs`` envs run in a gymnasium vector env (``AsyncVectorEnv`` in spawned subprocesses when
n_envs > 1 -- each worker builds its own MuJoCo renderer; ``SyncVectorEnv`` for 1) with
autoreset disabled: when an env's episode ends, the runner resets that env alone (``reset_mask``)
with the next episode's seed, so no env waits for the slowest one. Because envs then start
episodes at different steps, one batched policy cannot serve them (a policy's history and action
queue are per batch, see ``Policy.select_action``). Each env slot therefore drives its own copy of
the policy: ``copy.deepcopy`` with the parameters and buffers shared (no extra weight memory), so
history, action queues and any other per-episode state are per slot, and ``reset()`` is called on
a slot's copy when its env starts an episode. Each slot's policy is called with batch size 1, and
its torch RNG stream is seeded per episode and swapped in around its calls, so even stochastic
policies (diffusion sampling) give the same episode for any ``n_envs``. The caller's RNG state and
the policy's train/eval mode are restored afterwards (training calls this for periodic eval).

A policy that says an episode is over (``Policy.done`` after ``select_action``, RT-2's terminate token)
ends it once that action is executed, as the daemon does on a robot; the episode's record says so
(``policy_done``), and its success is what the env judged up to then.

A success detector (``detector=``: a ``describer`` checkpoint, ``perception/describe.py``) looks at each
episode's last observation and the instruction; its probability and verdict go into the episode's record
(``detector_p``, ``detector_done``) beside the env's ``success``, and the result's ``detector`` holds
their agreement, precision and recall with Wilson intervals (``eval.metrics.detector_summary``). The env
then also renders the detector's cameras, at the size the detector was trained on.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from policystack.envs.metaworld import DEFAULT_CONVENTION
from policystack.eval.envs import (
    check_features,
    env_kwargs_from_features,
    make_eval_env,
    policy_features_for,
    resolve_task,
)
from policystack.eval.expert import ScriptedExpert
from policystack.eval.metrics import detector_summary, summarize
from policystack.io import write_video
from policystack.types import TASK, FeatureSpec, is_image_key

# --- results ---------------------------------------------------------------------------------


@dataclass
class EpisodeRecord:
    """One evaluated episode."""

    index: int  # episode number within the evaluation (seed = base seed + index)
    seed: int
    success: bool  # the success predicate held at some step
    length: int  # steps taken
    reward: float  # summed reward
    max_reward: float
    task: str  # the language instruction
    video: str | None = None  # path of its MP4, if recorded
    variation: int | None = None  # MetaWorld's pinned MT1 variation, if the env pins them
    policy_done: bool = False  # the policy ended the episode (Policy.done, RT-2's terminate token)
    # what the policy counted over the episode (Policy.episode_stats; EMMA: plans, parse_failures, holds)
    policy_stats: dict[str, int] = field(default_factory=dict)
    detector_p: float | None = None  # a success detector's P(done) on the last observation (EvalRunner.detector)
    detector_done: bool | None = None  # its verdict (detector_p >= detector_threshold)


@dataclass
class EvalResult:
    """Summary of one task's evaluation plus its per-episode records."""

    task: str
    policy: str
    seed: int
    success_rate: float
    ci_low: float  # Wilson 95% interval of the success rate
    ci_high: float
    mean_length: float
    mean_reward: float
    episodes: list[EpisodeRecord]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_s: float = 0.0  # wall-clock time of the rollouts
    # the episodes ran with swapped instructions (EvalRunner.swap_instruction): success = the policy went for
    # the other object the instruction named, i.e. the "follows the instruction" rate
    swap_instruction: bool = False
    # a success detector's verdicts against `success` (eval.metrics.detector_summary); None without one
    detector: dict[str, Any] | None = None

    @property
    def n_episodes(self) -> int:
        return len(self.episodes)

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def videos(self) -> list[str]:
        return [e.video for e in self.episodes if e.video]

    @property
    def policy_stats(self) -> dict[str, int]:
        """Each of the policy's episode counts summed over the episodes (empty for most families)."""
        total: dict[str, int] = {}
        for e in self.episodes:
            for k, v in e.policy_stats.items():
                total[k] = total.get(k, 0) + int(v)
        return total

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["env_kwargs"] = _jsonable(self.env_kwargs)
        d["n_episodes"], d["successes"], d["videos"] = self.n_episodes, self.successes, self.videos
        d["policy_stats"] = self.policy_stats
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "eval result") -> EvalResult:
        try:
            episodes = [EpisodeRecord(**e) for e in d["episodes"]]
            keys = ("task", "policy", "seed", "success_rate", "ci_low", "ci_high", "mean_length", "mean_reward")
            return cls(**{k: d[k] for k in keys}, episodes=episodes, env_kwargs=d.get("env_kwargs", {}),
                       eval_s=d.get("eval_s", 0.0), swap_instruction=d.get("swap_instruction", False),
                       detector=d.get("detector"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: not an eval result ({e}); expected the keys written by EvalResult.to_dict") from None


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# --- the runner --------------------------------------------------------------------------------


def _clone_sharing_weights(policy: Any) -> Any:
    """A deep copy of ``policy`` whose parameters and buffers are the original tensors."""
    if not isinstance(policy, torch.nn.Module):
        return copy.deepcopy(policy)
    memo = {id(t): t for t in itertools.chain(policy.parameters(), policy.buffers())}
    return copy.deepcopy(policy, memo)


def _policy_device(policy: Any) -> torch.device:
    if isinstance(policy, torch.nn.Module):
        for t in itertools.chain(policy.parameters(), policy.buffers()):
            return t.device
    return torch.device("cpu")


@dataclass
class _Slot:
    """One env of the vector env and the episode it is running."""

    policy: Any
    rng: torch.Tensor | None = None  # this slot's torch CPU RNG state
    cuda_rng: torch.Tensor | None = None
    episode: int = -1  # -1: idle
    seed: int = 0
    task: str = ""
    variation: int | None = None
    length: int = 0
    reward: float = 0.0
    max_reward: float = -math.inf
    success: bool = False
    last_action: np.ndarray | None = None
    policy_done: bool = False  # the policy said its last action ends the episode
    detector_p: float | None = None  # the detector on the episode's last observation
    detector_done: bool | None = None
    frames: list[np.ndarray] | None = None  # HWC frames when this episode is recorded


@dataclass
class EvalRunner:
    """Evaluate a policy on ``episodes`` seeded episodes of ``task`` (see the module docstring).

    ``env_kwargs`` (cameras, image_size, action_mode, ...) default to what the policy's features
    need; ``max_steps`` (None: the task's own limit) truncates episodes; the first ``n_videos``
    episodes are saved as MP4 under ``video_dir`` (None: no videos).

    ``swap_instruction``: every episode's scene is built from its seed as usual, then the instruction
    names another object of it (``TabletopEnv.swap_instruction``) and success is judged on that object.
    Compared with a normal run on the same seeds, it shows whether the policy follows the words or the
    scene (an instruction-blind policy keeps going for the object of the unswapped episode).
    """

    task: str
    episodes: int = 20
    n_envs: int = 1
    seed: int = 1000
    max_steps: int | None = None
    env_kwargs: dict[str, Any] | None = None
    video_dir: str | Path | None = None
    n_videos: int = 2
    progress: bool = True
    swap_instruction: bool = False
    camera_convention: str | None = None  # MetaWorld: how the checkpoint's images were made, if it does not say
    detector: Any = None  # a success detector (DescriberPolicy) judging each episode's last observation
    detector_threshold: float = 0.5

    def __post_init__(self):
        resolve_task(self.task)  # unknown names fail here, listing the valid ones
        if self.episodes < 1:
            raise ValueError(f"episodes={self.episodes}: expected >= 1")
        if self.n_envs < 1:
            raise ValueError(f"n_envs={self.n_envs}: expected >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps}: expected >= 1 or None")
        if self.n_videos < 0:
            raise ValueError(f"n_videos={self.n_videos}: expected >= 0")
        if not 0.0 <= self.detector_threshold <= 1.0:
            raise ValueError(f"detector_threshold={self.detector_threshold}: expected a probability in [0, 1]")

    # -- setup --
    def policy_features(self, policy: Any) -> FeatureSpec:
        """What the env must produce for ``policy``: its features, MetaWorld cameras with how their
        images were made (recorded, or ``camera_convention``; see eval.envs.policy_features_for)."""
        if not policy.features:
            return {}
        return policy_features_for(self.task, policy.features, self.camera_convention)

    def resolved_env_kwargs(self, policy: Any) -> dict[str, Any]:
        """Env kwargs used for ``policy``: ``env_kwargs`` over those derived from its features."""
        features = self.policy_features(policy)
        derived = env_kwargs_from_features(self.task, features) if features else {}
        if isinstance(policy, ScriptedExpert) and "cameras" not in (self.env_kwargs or {}):
            derived = {"cameras": ()}  # the expert needs no images: fastest
        kwargs = {**derived, **(self.env_kwargs or {})}
        if self.detector is not None:
            kwargs = self._with_detector_cameras(kwargs)
        if self.max_steps is not None:
            kwargs["max_episode_steps"] = self.max_steps
        return kwargs

    def _with_detector_cameras(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` with the detector's cameras added, at the image size it was trained on (a policy that
        needs another size cannot share the renders: an error saying so)."""
        need = env_kwargs_from_features(self.task, self.detector.features)
        cameras = tuple(kwargs.get("cameras") or ())
        if cameras and kwargs.get("image_size", need["image_size"]) != need["image_size"]:
            raise ValueError(f"detector: trained on {need['image_size']} px frames, but the env renders "
                             f"{kwargs['image_size']} px for the policy; evaluate with a detector trained at that size")
        return {**kwargs, "image_size": need["image_size"],
                "cameras": cameras + tuple(c for c in need.get("cameras", ()) if c not in cameras)}

    def make_envs(self, policy: Any, env_kwargs: dict[str, Any]) -> gym.vector.VectorEnv:
        n = min(self.n_envs, self.episodes)
        cameras = env_kwargs.get("cameras", None)
        render = self.video_dir is not None and self.n_videos > 0 and cameras is not None and len(cameras) == 0
        fn = functools.partial(make_eval_env, self.task, env_kwargs, isinstance(policy, ScriptedExpert), render)
        if n == 1:
            return gym.vector.SyncVectorEnv([fn], autoreset_mode=gym.vector.AutoresetMode.DISABLED)
        # spawn: workers start clean (no forked OpenMP / EGL state from this process)
        return gym.vector.AsyncVectorEnv([fn] * n, context="spawn",
                                         autoreset_mode=gym.vector.AutoresetMode.DISABLED)

    # -- run --
    def run(self, policy: Any) -> EvalResult:
        """Roll ``policy`` (a ``Policy`` or ``ScriptedExpert``) out; returns the EvalResult."""
        env_kwargs = self.resolved_env_kwargs(policy)
        features = self.policy_features(policy)
        convention = env_kwargs.get("camera_convention")
        if self.progress and convention not in (None, DEFAULT_CONVENTION) and env_kwargs.get("cameras"):
            print(f"eval {self.task}: rendering the cameras in the {convention!r} convention the checkpoint's "
                  f"images were made in (not the adapter's default {DEFAULT_CONVENTION!r}; docs/envs.md)",
                  file=sys.stderr)
        device = _policy_device(policy)
        was_training = getattr(policy, "training", False)
        if isinstance(policy, torch.nn.Module):
            policy.eval()
        devices = [device] if device.type == "cuda" else []
        start = time.perf_counter()
        envs = self.make_envs(policy, env_kwargs)
        try:
            if features:
                # every eval env (tabletop, MetaWorld) says what it produces, camera records included
                check_features(features, envs.single_observation_space, envs.single_action_space, self.task,
                               envs.get_attr("features")[0])
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                records = self._rollouts(envs, policy, device)
        finally:
            envs.close()
            if was_training:
                policy.train()
        s = summarize([r.success for r in records], [r.length for r in records], [r.reward for r in records])
        judged = None if self.detector is None else \
            detector_summary([r.detector_done for r in records], [r.success for r in records])
        return EvalResult(task=self.task, policy=getattr(policy, "name", type(policy).__name__), seed=self.seed,
                          success_rate=s["success_rate"], ci_low=s["ci_low"], ci_high=s["ci_high"],
                          mean_length=s["mean_length"], mean_reward=s["mean_reward"], episodes=records,
                          env_kwargs=env_kwargs, eval_s=time.perf_counter() - start,
                          swap_instruction=self.swap_instruction, detector=judged)

    def _rollouts(self, envs: gym.vector.VectorEnv, policy: Any, device: torch.device) -> list[EpisodeRecord]:
        from tqdm import tqdm

        n = envs.num_envs
        # every slot gets its own copy (weights shared), so the caller's policy state is untouched
        slots = [_Slot(policy=_clone_sharing_weights(policy)) for _ in range(n)]
        fps = int(envs.metadata.get("render_fps") or 10)
        records: list[EpisodeRecord] = []
        next_episode = 0
        bar = tqdm(total=self.episodes, desc=f"eval {self.task}", unit="ep", disable=not self.progress)

        def start(mask: np.ndarray, park: np.ndarray | None = None) -> dict[str, np.ndarray]:
            """Reset the envs in ``mask`` with the next episodes' seeds, and those in ``park`` (slots with no
            episode left, whose env ended: an idle env is still stepped, and MetaWorld refuses a step after
            its episode's end) unseeded; returns the batched obs."""
            nonlocal next_episode
            seeds: list[int | None] = [None] * n
            for i in np.flatnonzero(mask):
                slot = slots[i]
                slot.episode, slot.seed = next_episode, self.seed + next_episode
                next_episode += 1
                seeds[i] = slot.seed
            reset = mask if park is None else mask | park
            options = {"reset_mask": reset, **({"swap_instruction": True} if self.swap_instruction else {})}
            obs, info = envs.reset(seed=seeds, options=options)
            for i in np.flatnonzero(mask):
                slot = slots[i]
                slot.task = str(info[TASK][i]) if TASK in info else ""
                slot.variation = int(info["variation"][i]) if "variation" in info else None
                slot.length, slot.reward, slot.max_reward, slot.success = 0, 0.0, -math.inf, False
                slot.policy_done = False
                slot.detector_p = slot.detector_done = None
                slot.policy.reset()
                slot.rng = torch.Generator().manual_seed(slot.seed).get_state()
                if device.type == "cuda":
                    slot.cuda_rng = torch.Generator(device).manual_seed(slot.seed).get_state()
                slot.frames = [] if self._records_video(slot.episode) else None
            return obs

        obs = start(np.arange(n) < min(n, self.episodes))
        while any(s.episode >= 0 for s in slots):
            self._capture_frames(envs, obs, slots)
            actions = np.stack([self._act(slot, obs, i, device) for i, slot in enumerate(slots)])
            obs, reward, terminated, truncated, info = envs.step(actions)
            restart, park = np.zeros(n, bool), np.zeros(n, bool)
            for i, slot in enumerate(slots):
                if slot.episode < 0:
                    continue
                slot.length += 1
                slot.reward += float(reward[i])
                slot.max_reward = max(slot.max_reward, float(reward[i]))
                slot.success |= bool(info["is_success"][i]) if "is_success" in info else False
                done = terminated[i] or truncated[i] or (self.max_steps is not None and slot.length >= self.max_steps) \
                    or slot.policy_done
                if done:
                    if self.detector is not None:
                        self._judge(slot, obs, i, device)
                    if slot.frames is not None:
                        self._capture_frames(envs, obs, [slot if j == i else None for j in range(n)])
                    records.append(self._finish(slot, fps))
                    bar.set_postfix(success=f"{sum(r.success for r in records)}/{len(records)}", refresh=False)
                    bar.update(1)
                    if next_episode + restart.sum() < self.episodes:  # episodes left to start
                        restart[i] = True
                    else:
                        park[i] = True
            if restart.any() or park.any():
                obs = start(restart, park)
        bar.close()
        return sorted(records, key=lambda r: r.index)

    def _act(self, slot: _Slot, obs: dict[str, np.ndarray], i: int, device: torch.device) -> np.ndarray:
        """The action of slot i's policy for its env's observation ([A]); idle slots repeat their
        last action (their env is stepped but ignored)."""
        if slot.episode < 0:
            return slot.last_action
        batch: dict[str, Any] = {k: torch.from_numpy(np.asarray(v[i:i + 1])).to(device) for k, v in obs.items()}
        batch[TASK] = [slot.task]
        torch.set_rng_state(slot.rng)
        if slot.cuda_rng is not None:
            torch.cuda.set_rng_state(slot.cuda_rng, device)
        action = slot.policy.select_action(batch)
        done = getattr(slot.policy, "done", None)  # bool [1], or None for a policy that never says
        slot.policy_done = done is not None and bool(done[0])
        slot.rng = torch.get_rng_state()
        if slot.cuda_rng is not None:
            slot.cuda_rng = torch.cuda.get_rng_state(device)
        a = action.detach().float().cpu().numpy().reshape(-1)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"episode {slot.episode} (seed {slot.seed}), step {slot.length}: the policy returned a "
                             f"non-finite action {a.tolist()}")
        slot.last_action = a
        return a

    def _judge(self, slot: _Slot, obs: dict[str, np.ndarray], i: int, device: torch.device) -> None:
        """The detector's probability and verdict on env i's last observation (its episode just ended)."""
        images = {k: torch.from_numpy(np.asarray(obs[k][i:i + 1])).to(device) for k in self.detector.camera_keys}
        p = float(self.detector.success_probability(images, [slot.task])[0])
        slot.detector_p, slot.detector_done = p, p >= self.detector_threshold

    def _records_video(self, episode: int) -> bool:
        return self.video_dir is not None and episode < self.n_videos

    def _capture_frames(self, envs: gym.vector.VectorEnv, obs: dict[str, np.ndarray], slots: list) -> None:
        """Append one HWC frame to every recording slot: its camera images side by side, or the
        env's render() for envs without cameras."""
        recording = [i for i, s in enumerate(slots) if s is not None and s.frames is not None and s.episode >= 0]
        if not recording:
            return
        cams = sorted(k for k in obs if is_image_key(k))
        rendered = envs.call("render") if not cams else None
        for i in recording:
            if cams:
                frame = np.concatenate([obs[k][i].transpose(1, 2, 0) for k in cams], axis=1)
            else:
                frame = rendered[i]
                if frame is None:
                    continue
            slots[i].frames.append(np.ascontiguousarray(frame, dtype=np.uint8))

    def _finish(self, slot: _Slot, fps: int) -> EpisodeRecord:
        video = None
        if slot.frames:
            path = Path(self.video_dir) / f"episode_{slot.episode:03d}_seed{slot.seed}.mp4"
            video = str(write_video(path, slot.frames, fps=fps))
        record = EpisodeRecord(index=slot.episode, seed=slot.seed, success=slot.success, length=slot.length,
                               reward=slot.reward, max_reward=slot.max_reward, task=slot.task, video=video,
                               variation=slot.variation, policy_done=slot.policy_done,
                               policy_stats=dict(getattr(slot.policy, "episode_stats", dict)()),
                               detector_p=slot.detector_p, detector_done=slot.detector_done)
        slot.episode, slot.frames = -1, None
        return record
