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
