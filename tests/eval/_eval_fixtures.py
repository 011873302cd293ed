"""Helpers for the eval tests: a real bc policy (random weights) built from an env's features."""

from __future__ import annotations

import numpy as np
import torch

from policystack.policies.bc import BCConfig, BCPolicy
from policystack.types import ACTION, OBS_ENV_STATE, OBS_STATE, FeatureSpec


def simple_stats(features: FeatureSpec) -> dict:
    """mean 0 / std 0.5 for the vectors: enough for the normaliser of a random policy."""
    out = {}
    for k in (k for k in (OBS_STATE, OBS_ENV_STATE, ACTION) if k in features):
        d = features[k].shape[0]
        out[k] = {"mean": np.zeros(d), "std": np.full(d, 0.5), "min": -np.ones(d), "max": np.ones(d)}
    return out


def make_bc(task: str = "Reach", seed: int = 0, **env_kwargs) -> BCPolicy:
    from policystack.envs import make

    env = make(task, **env_kwargs)
    features = env.unwrapped.features
    env.close()
    torch.manual_seed(seed)
    config = BCConfig(horizon=4, n_action_steps=2, n_obs_steps=2, conv_channels=(8,), keypoints=4, hidden_dim=32,
                      n_layers=2)
    return BCPolicy(config, features, simple_stats(features)).eval()
