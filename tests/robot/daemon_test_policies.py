"""Checkpoints for the daemon tests: a real BC policy (random weights, statistics around the
Panda's home posture, so its actions are small motions near home), a BC policy that starts
returning NaN after a few chunks, and a history policy: RT-1 with 2 frames, optionally one that logs
every ``reset`` / ``predict_action_chunk`` / ``observe`` call it gets (imported by the worker process
with ``--import``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from policystack.envs.base import EE_ACTION_NAMES, JOINT_ACTION_NAMES, STATE_NAMES
from policystack.envs.robot import HOME_QPOS
from policystack.policies.bc import BCConfig, BCPolicy
from policystack.policies.rt1 import RT1Config, RT1Policy
from policystack.types import ACTION, OBS_STATE, Feature, camera_key


@dataclass
class NanAfterConfig(BCConfig):
    nan_after: int = 2  # chunks predicted normally before every value turns NaN


class NanAfterPolicy(BCPolicy):
    name = "test_nan_after"
    config_class = NanAfterConfig

    def __init__(self, config, features, stats):
        super().__init__(config, features, stats)
        self.calls = 0

    def predict_action_chunk(self, obs):
        self.calls += 1
        chunk = super().predict_action_chunk(obs)
        return chunk if self.calls <= self.config.nan_after else torch.full_like(chunk, float("nan"))


def make_checkpoint(directory: str | Path, cameras: tuple[str, ...] = ("front",), image_size: int = 32,
                    nan_after: int | None = None, seed: int = 0, action_std: float = 0.05, n_obs_steps: int = 1,
                    n_action_steps: int = 4, ee_delta: bool = False) -> Path:
    """``ee_delta``: actions in the suite's ee_delta layout [7] (mean 0) instead of joint targets around home."""
    torch.manual_seed(seed)
    names = EE_ACTION_NAMES if ee_delta else JOINT_ACTION_NAMES
    feats = {OBS_STATE: Feature("float32", (15,), names=list(STATE_NAMES)),
             ACTION: Feature("float32", (len(names),), names=list(names))}
    for cam in cameras:
        feats[camera_key(cam)] = Feature("video", (image_size, image_size, 3))
    mean = np.zeros(7) if ee_delta else np.append(HOME_QPOS, -1.0)
    stats = {OBS_STATE: {"mean": np.zeros(15), "std": np.ones(15)},
             ACTION: {"mean": mean, "std": np.full(len(names), action_std)}}
    kw = dict(horizon=8, n_action_steps=n_action_steps, n_obs_steps=n_obs_steps, conv_channels=(8, 8), keypoints=4,
              hidden_dim=32, n_layers=2)
    if nan_after is None:
        policy = BCPolicy(BCConfig(**kw), feats, stats)
    else:
        policy = NanAfterPolicy(NanAfterConfig(nan_after=nan_after, **kw), feats, stats)
    return policy.save_pretrained(directory)


@dataclass
class DoneAfterConfig(BCConfig):
    done_after: int = 3  # the chunk (counted from each reset) whose step 1 ends the episode


class DoneAfterPolicy(BCPolicy):
    """BC that says the episode is over after step 1 of its ``done_after``-th chunk (Policy.done)."""

    name = "test_done_after"
    config_class = DoneAfterConfig

    def __init__(self, config, features, stats):
        super().__init__(config, features, stats)
        self.calls = 0

    def reset(self):
        super().reset()
        self.calls = 0

    def predict_action_chunk_with_done(self, obs):
        self.calls += 1
        chunk = self.predict_action_chunk(obs)
        done = torch.zeros(chunk.shape[:2], dtype=torch.bool)
        done[:, 1] = self.calls == self.config.done_after
        return chunk, done


def make_done_checkpoint(directory: str | Path, done_after: int) -> Path:
    """A ``DoneAfterPolicy`` like ``make_checkpoint``'s BC (front camera 32 px, 4 actions per chunk)."""
    make_checkpoint(directory)
    from policystack.policies.base import Policy

    bc = Policy.from_pretrained(directory)
    policy = DoneAfterPolicy(DoneAfterConfig(**{**bc.config.to_dict(), "done_after": done_after}), bc.features, None)
    policy.load_state_dict(bc.state_dict())
    return policy.save_pretrained(directory)


OBS_LOG_ENV = "POLICYSTACK_TEST_OBS_LOG"


@dataclass
class ObsLogConfig(BCConfig):
    pass


class ObsLogPolicy(BCPolicy):
    """BC that appends what it was given per call (key -> shape, dtype, mean) as a JSON line to
    ``$POLICYSTACK_TEST_OBS_LOG`` (when set): what the worker really saw."""

    name = "test_obs_log"
    config_class = ObsLogConfig

    def predict_action_chunk(self, obs):
        import json
        import os

        seen = {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                    "mean": [float(x) for x in v.float().mean(dim=tuple(i for i in range(v.dim()) if i != 1))]
                    if v.dim() == 4 else None}
                for k, v in obs.items() if isinstance(v, torch.Tensor)}
        if os.environ.get(OBS_LOG_ENV):
            with open(os.environ[OBS_LOG_ENV], "a") as fh:
                fh.write(json.dumps(seen) + "\n")
        return super().predict_action_chunk(obs)


SO101_NAMES = [f"{m}.pos" for m in ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll",
                                     "gripper")]


def make_so101_checkpoint(directory: str | Path, home: list[float], cameras: dict[str, tuple[int, int]],
                          action_std: float = 2.0, seed: int = 0) -> Path:
    """An ``ObsLogPolicy`` for an SO-101 (state and action: the 6 joint positions, degrees): random
    weights, statistics around ``home`` so its actions are small motions near it; ``cameras``: name ->
    (H, W) of the images it takes."""
    torch.manual_seed(seed)
    feats = {OBS_STATE: Feature("float32", (6,), names=list(SO101_NAMES)),
             ACTION: Feature("float32", (6,), names=list(SO101_NAMES))}
    for cam, (h, w) in cameras.items():
        feats[camera_key(cam)] = Feature("video", (h, w, 3))
    home_a = np.asarray(home, dtype=np.float64)
    stats = {OBS_STATE: {"mean": home_a, "std": np.full(6, 10.0)},
             ACTION: {"mean": home_a, "std": np.full(6, action_std)}}
    cfg = ObsLogConfig(horizon=8, n_action_steps=4, conv_channels=(8, 8), keypoints=4, hidden_dim=32, n_layers=2)
    return ObsLogPolicy(cfg, feats, stats).save_pretrained(directory)


CALL_LOG_ENV = "POLICYSTACK_TEST_CALL_LOG"


@dataclass
class CallLogRT1Config(RT1Config):
    pass


class CallLogRT1Policy(RT1Policy):
    """RT-1 that appends each call it gets as a JSON line to ``$POLICYSTACK_TEST_CALL_LOG`` (when set):
    ``reset``, ``predict`` (the chunk [H, A]) and ``observe`` (the state and a digest of each image)."""

    name = "test_rt1_call_log"
    config_class = CallLogRT1Config

    def _log(self, **entry) -> None:
        import json
        import os

        if os.environ.get(CALL_LOG_ENV):
            with open(os.environ[CALL_LOG_ENV], "a") as fh:
                fh.write(json.dumps(entry) + "\n")

    def reset(self):
        super().reset()
        self._log(call="reset")

    def predict_action_chunk(self, obs):
        chunk = super().predict_action_chunk(obs)
        self._log(call="predict", chunk=chunk[0].tolist())
        return chunk

    def observe(self, obs):
        import hashlib

        super().observe(obs)
        self._log(call="observe", state=obs[OBS_STATE][0].tolist(),
                  images={k: hashlib.sha1(v.numpy().tobytes()).hexdigest() for k, v in sorted(obs.items())
                          if k.startswith("observation.images.")})


def make_rt1_checkpoint(directory: str | Path, call_log: bool = False, n_obs_steps: int = 2, horizon: int = 4,
                        n_action_steps: int = 4, image_size: int = 32, seed: int = 0,
                        action_range: float = 0.3) -> Path:
    """A small RT-1 for the Panda in joint mode (state [15], one ``front`` camera of ``image_size``,
    actions [8]): random weights (deterministic in eval mode), ``n_obs_steps`` frames of history, action
    bins spanning home +- ``action_range`` rad (gripper -1..1), so its actions are motions near home."""
    torch.manual_seed(seed)
    feats = {OBS_STATE: Feature("float32", (15,), names=list(STATE_NAMES)),
             camera_key("front"): Feature("video", (image_size, image_size, 3)),
             ACTION: Feature("float32", (8,), names=list(JOINT_ACTION_NAMES))}
    home = np.append(HOME_QPOS, 0.0)
    span = np.append(np.full(7, action_range), 1.0)
    stats = {OBS_STATE: {"mean": np.zeros(15), "std": np.ones(15)},
             ACTION: {"min": home - span, "max": home + span}}
    kw = dict(n_obs_steps=n_obs_steps, horizon=horizon, n_action_steps=n_action_steps, image_size=image_size,
              backbone_stages=2, d_model=32, n_layer=1, n_head=2, head_dim=16, mlp_hidden=64, tokens_per_image=4,
              token_learner_bottleneck=16, dropout=0.0)
    cls, cfg_cls = (CallLogRT1Policy, CallLogRT1Config) if call_log else (RT1Policy, RT1Config)
    return cls(cfg_cls(**kw), feats, stats).save_pretrained(directory)
