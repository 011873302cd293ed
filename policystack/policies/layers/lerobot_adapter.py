"""Shared plumbing for policies that wrap one of LeRobot's own policy classes (``act``, ``diffusion``).

LeRobot 0.4.4 policies expect normalised float inputs (its processor pipeline normalises outside the
model). The adapters keep OUR ``Normalizer`` instead, so the statistics are buffers of the policy and
a checkpoint alone can act, and feed the wrapped LeRobot model what its processor would have fed it:

    observation.state               float32 [B, (T,) D]          -> normalised   (STATE)
    observation.environment_state   float32 [B, (T,) E]          -> normalised   (ENV)
    observation.images.<cam>        uint8   [B, (T,) 3, H, W]    -> float in [0, 1], then normalised
                                                                    per channel (VISUAL; stats [3, 1, 1])
    action                          float32 [B, H, A]            -> normalised   (ACTION)

Other ``observation.*`` keys are not inputs of LeRobot's ACT / Diffusion and are ignored. Cameras are
taken in sorted key order (LeRobot stacks them in ``input_features`` order, which we build sorted).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from policystack.perception.preprocess import ImagePreprocessor
from policystack.policies.base import Policy, PolicyConfig
from policystack.policies.normalize import MODES
from policystack.types import ACTION, OBS_ENV_STATE, OBS_STATE, FeatureSpec, Stats, is_image_key


@dataclass
class LeRobotAdapterConfig(PolicyConfig):
    """Fields shared by the LeRobot adapters (a family's config subclasses this)."""

    # normalisation of every camera after scaling pixels to [0, 1] (LeRobot's VISUAL default is
    # mean_std with the dataset's per-channel image statistics); a camera key listed in
    # ``normalization`` overrides this.
    image_normalization: str = "mean_std"

    def __post_init__(self):
        super().__post_init__()
        if self.image_normalization not in MODES:
            raise ValueError(f"{type(self).__name__}.image_normalization is {self.image_normalization!r}; "
                             f"expected one of {MODES}")
        for key, mode in self.normalization.items():
            if mode not in MODES:
                raise ValueError(f"{type(self).__name__}.normalization[{key!r}] is {mode!r}; expected one of {MODES}")


def lerobot_features(features: FeatureSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """Our FeatureSpec -> LeRobot ``(input_features, output_features)`` of ``PolicyFeature``.

    Images become VISUAL (3, H, W), ``observation.state`` STATE, ``observation.environment_state``
    ENV, ``action`` ACTION; anything else is not an input of LeRobot's ACT / Diffusion."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs: dict[str, Any] = {}
    for key in sorted(features):
        f = features[key]
        if is_image_key(key) and f.is_visual:
            inputs[key] = PolicyFeature(type=FeatureType.VISUAL, shape=f.chw)
        elif key == OBS_STATE:
            inputs[key] = PolicyFeature(type=FeatureType.STATE, shape=tuple(f.shape))
        elif key == OBS_ENV_STATE:
            inputs[key] = PolicyFeature(type=FeatureType.ENV, shape=tuple(f.shape))
    outputs = {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=tuple(features[ACTION].shape))}
    return inputs, outputs


class LeRobotAdapter(Policy):
    """Base of the adapters: features, normalisation, input conversion and the wrapped model.

    A subclass names LeRobot's policy class in ``lerobot_policy`` ("module:Class", imported on build)
    and its config implements ``to_lerobot(features)``; ``self.lerobot`` is that class built from
    that config. The subclass implements ``compute_loss`` / ``predict_action_chunk`` with
    ``lerobot_inputs``."""

    config: LeRobotAdapterConfig
    lerobot_policy: ClassVar[str]  # "lerobot.policies.<x>.modeling_<x>:<X>Policy"

    def __init__(self, config: LeRobotAdapterConfig, features: FeatureSpec, stats: Stats | None):
        super().__init__(config, features, stats)
        self.cameras = sorted(k for k, f in features.items() if is_image_key(k) and f.is_visual)
        # What LeRobot's ACT and Diffusion policies both read: the state, and a camera or env state.
        if OBS_STATE not in features:
            raise KeyError(f"{self.name} needs {OBS_STATE!r} among the features (LeRobot's model conditions "
                           f"on it); got {sorted(features)}")
        if not self.cameras and OBS_ENV_STATE not in features:
            raise KeyError(f"{self.name} needs at least one camera ('observation.images.<cam>') or "
                           f"{OBS_ENV_STATE!r} among the features; got {sorted(features)}")
        self.vectors = [k for k in (OBS_STATE, OBS_ENV_STATE) if k in features]  # non-image inputs
        self.to_unit = ImagePreprocessor(normalization="unit")  # pixels to [0, 1], as LeRobot's processor
        self.action_dim = features[ACTION].shape[0]
        module, _, cls_name = self.lerobot_policy.partition(":")
        self.lerobot = getattr(importlib.import_module(module), cls_name)(self.lerobot_config())

    def normalization_modes(self) -> dict[str, str]:
        """State, environment state and action as ``config.normalization`` says; every camera (per
        channel, after scaling pixels to [0, 1]) as ``image_normalization`` unless listed there."""
        keys = [k for k in (OBS_STATE, OBS_ENV_STATE, ACTION) if k in self.features]
        cameras = [k for k, f in self.features.items() if is_image_key(k) and f.is_visual]
        modes = {k: m for k, m in self.config.normalization.items() if k in keys + cameras}
        modes.update({k: self.config.image_normalization for k in cameras if k not in modes})
        return modes

    def lerobot_config(self):
        """LeRobot's config for the wrapped policy (a subclass may check it against the features here)."""
        return self.config.to_lerobot(self.features)

    # --- inputs --------------------------------------------------------------------------------
    def _norm(self, key: str, x: Tensor) -> Tensor:
        return self.normalizer.normalize(key, x) if key in self.normalizer.modes else x

    def lerobot_inputs(self, obs: dict[str, Any]) -> dict[str, Tensor]:
        """Our observations (any leading dims) -> the normalised float tensors LeRobot's model takes.

        Images: uint8 [..., 3, H, W] -> float [..., 3, H, W] in [0, 1], then normalised. With a
        batch, ``action`` is normalised and ``action_is_pad`` passed on."""
        out: dict[str, Tensor] = {}
        for key in self.vectors:
            if key not in obs:
                raise KeyError(f"{self.name}: observation has no {key!r} (got {sorted(obs)})")
            out[key] = self._norm(key, obs[key].float())
        for key in self.cameras:
            if key not in obs:
                raise KeyError(f"{self.name}: observation has no camera {key!r} (got {sorted(obs)})")
            out[key] = self._norm(key, self.to_unit(obs[key], key))
        if ACTION in obs:
            out[ACTION] = self._norm(ACTION, obs[ACTION].float())
            pad = obs.get(f"{ACTION}_is_pad")
            out[f"{ACTION}_is_pad"] = (pad.bool() if pad is not None
                                       else torch.zeros(out[ACTION].shape[:2], dtype=torch.bool,
                                                        device=out[ACTION].device))
        return out

    def history_step(self, obs: dict[str, Any]) -> dict[str, Tensor]:
        return {k: obs[k] for k in self.cameras + self.vectors if k in obs}

    def unnormalize_actions(self, actions: Tensor) -> Tensor:
        return self.normalizer.unnormalize(ACTION, actions) if ACTION in self.normalizer.modes else actions
