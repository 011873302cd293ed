"""Building the envs an evaluation runs in (imported by spawned vector-env workers, so it does not
import torch): task-name resolution, env kwargs derived from a checkpoint's features, the feature
check done before any rollout, and the wrapper that runs a scripted expert inside the env.
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from policystack.types import ACTION, OBS_ENV_STATE, OBS_IMAGES, FeatureSpec, check_camera_records, image_keys

EXPERT_KEY = "expert.action"  # observation entry holding the scripted expert's action, float32 [A]





def resolve_task(task: str) -> tuple[str, str]:
    """("tabletop", "PickPlace") or ("metaworld", "reach-v3") for a task name as users write it
    ("PickPlace", "policystack/PickPlace-v0", "reach-v3", "MetaWorld-reach-v3", "metaworld/reach-v3"
    as ``policystack collect`` takes it); unknown names
    raise a KeyError listing the valid ones."""
    from policystack.envs import task_names

    name = task.removeprefix("policystack/").removesuffix("-v0")
    if name in task_names():
        return "tabletop", name
    mw = name.removeprefix("MetaWorld-").removeprefix("metaworld/")
    if re.fullmatch(r"[a-z][a-z0-9-]*-v3", mw):
        return "metaworld", mw
    from policystack.envs.metaworld import MT10_TASKS

    raise KeyError(f"unknown env {task!r}; valid: the tabletop tasks {', '.join(task_names())}, or a MetaWorld "
                   f"v3 task such as {', '.join(MT10_TASKS[:4])}, ...")


def make_eval_env(task: str, env_kwargs: dict[str, Any], expert: bool = False, render: bool = False) -> gym.Env:
    """One env of ``task`` (module-level so spawned vector-env workers can unpickle it)."""
    kind, name = resolve_task(task)
    kwargs = {**env_kwargs, **({"render_mode": "rgb_array"} if render else {})}
    if kind == "tabletop":
        from policystack.envs import make

        env = make(name, **kwargs)
    else:
        from policystack.envs.metaworld import make_metaworld_env

        env = make_metaworld_env(name, **kwargs)
    return ExpertActionObservation(env) if expert else env


def policy_features_for(task: str, features: FeatureSpec, camera_convention: str | None = None) -> FeatureSpec:
    """The features an env of ``task`` must produce for a checkpoint with ``features``: for a MetaWorld
    task, every camera with its ``camera.*`` record (how its images were made), filled in from
    ``camera_convention`` -- the user's word -- where the checkpoint records none and refused without
    it (``envs.metaworld.with_camera_records``); tabletop features as they are."""
    kind, _ = resolve_task(task)
    if kind == "metaworld":
        from policystack.envs.metaworld import with_camera_records

        return with_camera_records(features, camera_convention)
    if camera_convention is not None:
        raise ValueError(f"camera_convention={camera_convention}: only MetaWorld envs render their cameras in "
                         f"more than one convention; {task!r} is a tabletop task")
    return features


def env_kwargs_from_features(task: str, features: FeatureSpec) -> dict[str, Any]:
    """Env kwargs (cameras, image_size, action_mode; for MetaWorld also the camera convention, look and
    state layout) that make ``task`` produce the observations a checkpoint with ``features`` was
    trained on (MetaWorld: ``features`` from :func:`policy_features_for`)."""
    kind, _ = resolve_task(task)
    cams = image_keys(features)
    kwargs: dict[str, Any] = {}
    if cams:
        sizes = {features[k].chw[1:] for k in cams}
        if len(sizes) > 1:
            raise ValueError(f"the checkpoint's cameras have different image sizes {sorted(sizes)}; pass "
                             "env kwargs explicitly (image_size=...)")
        h, w = sizes.pop()
        kwargs["image_size"] = h if h == w else (h, w)
    if kind == "tabletop":
        from policystack.envs.base import JOINT_ACTION_NAMES

        kwargs["cameras"] = tuple(k.removeprefix(OBS_IMAGES + ".") for k in cams)
        if OBS_ENV_STATE in features:
            kwargs["env_state"] = True
        if ACTION in features and features[ACTION].names == JOINT_ACTION_NAMES:
            kwargs["action_mode"] = "joint"
    else:
        from policystack.envs.metaworld import env_kwargs_for_features

        kwargs.update(env_kwargs_for_features(features))
    return kwargs


def check_features(features: FeatureSpec, obs_space: spaces.Dict, action_space: spaces.Space, task: str,
                   env_features: FeatureSpec | None = None) -> None:
    """Raise a ValueError naming every observation key the env lacks or shapes differently from
    the checkpoint's ``features``, and an action-shape mismatch -- before any rollout. With the env's
    own ``env_features``, also every camera whose images the env makes otherwise than the training
    data's were made (``types.check_camera_records``)."""
    problems = []
    for key, f in features.items():
        if not key.startswith("observation."):
            continue
        want = f.chw if f.is_visual else tuple(f.shape)
        if key not in obs_space.spaces:
            problems.append(f"missing {key!r} (shape {list(want)})")
        elif tuple(obs_space[key].shape) != tuple(want):
            problems.append(f"{key!r}: the checkpoint expects shape {list(want)}, the env gives "
                            f"{list(obs_space[key].shape)}")
    if ACTION in features and tuple(action_space.shape) != tuple(features[ACTION].shape):
        problems.append(f"{ACTION!r}: the checkpoint outputs shape {list(features[ACTION].shape)}, the env takes "
                        f"{list(action_space.shape)}")
    if problems:
        env_keys = sorted(k for k in obs_space.spaces if k != EXPERT_KEY)
        raise ValueError(f"the checkpoint does not fit env {task!r}: " + "; ".join(problems)
                         + f". The env provides {env_keys} and action shape {list(action_space.shape)}; pass "
                         "env kwargs (cameras=, image_size=, action_mode=) that match the training data")
    if env_features is not None:
        check_camera_records(features, env_features, f"env {task!r}",
                             hint="Leave the camera settings to the checkpoint (docs/envs.md, 'Camera conventions')")


class ExpertActionObservation(gym.Wrapper):
    """Adds the scripted expert's next action to every observation (key ``EXPERT_KEY``)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if not isinstance(env.observation_space, spaces.Dict):
            raise TypeError(f"ExpertActionObservation needs a Dict observation space, got {env.observation_space}")
        if hasattr(env.unwrapped, "expert_action"):
            self._expert = None
        else:
            from policystack.envs.experts import make_expert

            self._expert = make_expert(env)
        space = env.action_space
        self.observation_space = spaces.Dict({**env.observation_space.spaces,
                                              EXPERT_KEY: spaces.Box(space.low, space.high, space.shape, np.float32)})

    def _with_action(self, obs: dict[str, Any]) -> dict[str, Any]:
        action = self._expert.act() if self._expert is not None else self.env.unwrapped.expert_action()
        return {**obs, EXPERT_KEY: np.asarray(action, dtype=np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        if self._expert is not None:
            self._expert.reset(seed=seed)
        return self._with_action(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._with_action(obs), reward, terminated, truncated, info
