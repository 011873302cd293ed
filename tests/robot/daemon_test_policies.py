"""Checkpoints for the daemon tests: a real BC policy (random weights, statistics around the
Panda's home posture, so its actions are small motions near home) and a BC policy that starts
returning NaN after a few chunks (imported by the worker process with ``--import``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from policystack.envs.base import JOINT_ACTION_NAMES, STATE_NAMES
from policystack.envs.robot import HOME_QPOS
from policystack.policies.bc import BCConfig, BCPolicy
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
                    nan_after: int | None = None, seed: int = 0, action_std: float = 0.05) -> Path:
    torch.manual_seed(seed)
    feats = {OBS_STATE: Feature("float32", (15,), names=list(STATE_NAMES)),
             ACTION: Feature("float32", (8,), names=list(JOINT_ACTION_NAMES))}
    for cam in cameras:
        feats[camera_key(cam)] = Feature("video", (image_size, image_size, 3))
    home = np.append(HOME_QPOS, -1.0)
    stats = {OBS_STATE: {"mean": np.zeros(15), "std": np.ones(15)},
             ACTION: {"mean": home, "std": np.full(8, action_std)}}
    kw = dict(horizon=8, n_action_steps=4, conv_channels=(8, 8), keypoints=4, hidden_dim=32, n_layers=2)
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
