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

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from policystack.policies.base import Policy, PolicyConfig
from policystack.policies.normalize import MODES, Normalizer
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
    """Base of the adapters: features, normaliser, input conversion and observation history.

    Subclasses build ``self.lerobot`` (the wrapped ``PreTrainedPolicy``) and implement
    ``compute_loss`` / ``predict_action_chunk`` with ``lerobot_inputs``."""

    config: LeRobotAdapterConfig

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
        shapes: dict[str, tuple[int, ...]] = {k: tuple(features[k].shape) for k in self.vectors + [ACTION]}
        shapes.update({k: (3, 1, 1) for k in self.cameras})  # per-channel image statistics
        modes = {k: m for k, m in config.normalization.items() if k in shapes}
        modes.update({k: config.image_normalization for k in self.cameras if k not in modes})
        self.normalizer = Normalizer(shapes, modes, stats)
        self.action_dim = features[ACTION].shape[0]
        self._history: list[dict[str, Tensor]] = []

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
            img = obs[key]
            if img.dtype != torch.uint8:
                raise ValueError(f"{self.name}: {key!r} must be uint8 pixels [..., 3, H, W], got {img.dtype}")
            out[key] = self._norm(key, img.float() / 255.0)
        if ACTION in obs:
            out[ACTION] = self._norm(ACTION, obs[ACTION].float())
            pad = obs.get(f"{ACTION}_is_pad")
            out[f"{ACTION}_is_pad"] = (pad.bool() if pad is not None
                                       else torch.zeros(out[ACTION].shape[:2], dtype=torch.bool,
                                                        device=out[ACTION].device))
        return out

    # --- observation history (for n_obs_steps > 1) ---------------------------------------------
    def _obs_keys(self) -> list[str]:
        return self.cameras + self.vectors

    def stacked_history(self, obs: dict[str, Any]) -> dict[str, Tensor]:
        """One step of obs ([B, ...]) -> [B, T_obs, ...] of the steps seen by ``observe`` plus this
        one; at an episode start the first step is repeated, as the loader pads."""
        n = self.config.n_obs_steps
        step = {k: obs[k] for k in self._obs_keys() if k in obs}
        past = self._history[-(n - 1):] if n > 1 else []
        frames = [past[0] if past else step] * (n - 1 - len(past)) + past + [step]
        return {k: torch.stack([f[k] for f in frames], 1) for k in step}

    def observe(self, obs: dict[str, Any]) -> None:
        n = self.config.n_obs_steps
        if n > 1:
            self._history = (self._history + [{k: obs[k] for k in self._obs_keys() if k in obs}])[-(n - 1):]

    def reset(self) -> None:
        super().reset()
        self._history = []

    def unnormalize_actions(self, actions: Tensor) -> Tensor:
        return self.normalizer.unnormalize(ACTION, actions) if ACTION in self.normalizer.modes else actions
