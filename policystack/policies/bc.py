"""bc: plain behaviour cloning, the reference implementation of the Policy interface.

Per camera a small conv net ending in a spatial softmax (keypoints, as in robomimic and
diffusion_policy) encodes each frame; the keypoints of every camera and frame of history, the
normalised state and a projection of the instruction's embedding (the suite's scenes hold
distractors, so the instruction says which object matters) go through an MLP that regresses a
whole chunk of normalised actions (L1 loss, padded steps masked). Random-shift augmentation (DrQ)
on the images during training.

    images uint8 [B, T, 3, H, W] --conv+spatial softmax--> [B, T, 2K] per camera --+
    state [B, T, D] (+ environment_state [B, T, E]) --normalise------------------+
    task list[str] --text encoder (frozen)--> [B, E] --linear--> [B, task_dim] ---+--> MLP --> [B, H, A]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from policystack.perception.conv import ConvEncoder
from policystack.perception.preprocess import ImagePreprocessor
from policystack.perception.text import encode_instructions, text_encoder_dim
from policystack.policies.base import Policy, PolicyConfig
from policystack.policies.layers.augment import random_shift
from policystack.types import ACTION, OBS_ENV_STATE, OBS_STATE, TASK, FeatureSpec, Stats


@dataclass
class BCConfig(PolicyConfig):
    n_obs_steps: int = 1
    horizon: int = 8  # actions regressed per chunk
    n_action_steps: int = 4  # executed before predicting again
    # vision
    conv_channels: tuple[int, ...] = (32, 64, 64)  # stride-2 conv stages before the keypoint layer
    keypoints: int = 32  # spatial-softmax keypoints per camera (2 numbers each)
    random_shift: int = 4  # pixels of random shift augmentation in training (0 = off)
    # language: "hashed" (cheap n-gram hashing), "minilm" (sentence encoder, offline) or "none"
    text_encoder: str = "hashed"
    task_dim: int = 64  # size of the instruction's projection fed to the head
    # head
    hidden_dim: int = 256
    n_layers: int = 3
    dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not self.conv_channels:
            raise ValueError("BCConfig.conv_channels needs at least one stage, e.g. (32, 64, 64)")
        if self.keypoints < 1 or self.hidden_dim < 1 or self.n_layers < 1:
            raise ValueError("BCConfig.keypoints, hidden_dim and n_layers must be >= 1")
        self.conv_channels = tuple(self.conv_channels)
        if self.text_encoder != "none":
            from policystack.perception.text import TEXT_ENCODERS

            if self.text_encoder not in TEXT_ENCODERS:
                raise ValueError(f"BCConfig.text_encoder is {self.text_encoder!r}; choose one of "
                                 f"{sorted(TEXT_ENCODERS) + ['none']}")


class BCPolicy(Policy):
    name = "bc"
    config_class = BCConfig

    def __init__(self, config: BCConfig, features: FeatureSpec, stats: Stats | None):
        super().__init__(config, features, stats)
        self.cameras = sorted(k for k, f in features.items() if f.is_visual)
        self.vectors = [k for k in (OBS_STATE, OBS_ENV_STATE) if k in features]  # non-image inputs
        if not self.cameras and not self.vectors:
            raise KeyError(f"bc needs {OBS_STATE!r}, {OBS_ENV_STATE!r} or at least one camera among the features "
                           f"{sorted(features)}")
        self.preprocess = ImagePreprocessor(normalization="half")  # pixels to [-1, 1]
        self.encoders = nn.ModuleDict({k.replace(".", "_"): ConvEncoder(config.conv_channels, config.keypoints)
                                       for k in self.cameras})
        self.action_dim = features[ACTION].shape[0]
        state_dim = sum(features[k].shape[0] for k in self.vectors)
        in_dim = config.n_obs_steps * (len(self.cameras) * 2 * config.keypoints + state_dim)
        if config.text_encoder != "none":
            self.task_proj = nn.Linear(text_encoder_dim(config.text_encoder), config.task_dim)
            in_dim += config.task_dim
        layers: list[nn.Module] = []
        for i in range(config.n_layers):
            layers += [nn.Linear(in_dim if i == 0 else config.hidden_dim, config.hidden_dim), nn.GELU(),
                       nn.Dropout(config.dropout)]
        layers.append(nn.Linear(config.hidden_dim, config.horizon * self.action_dim))
        self.head = nn.Sequential(*layers)

    def _features(self, obs: dict[str, Tensor]) -> Tensor:
        """obs with a time axis ([B, T, ...]) -> [B, T * F]."""
        parts = []
        for cam in self.cameras:
            img = obs[cam]  # [B, T, 3, H, W] uint8
            b, t = img.shape[:2]
            flat = self.preprocess(img.flatten(0, 1), cam)  # [B*T, 3, H, W] in [-1, 1]
            if self.training and self.config.random_shift > 0:
                flat = random_shift(flat, self.config.random_shift)
            parts.append(self.encoders[cam.replace(".", "_")](flat).view(b, t, -1))
        for key in self.vectors:
            parts.append(self.normalizer.normalize(key, obs[key].float()))
        feats = torch.cat(parts, -1).flatten(1)
        if self.config.text_encoder == "none":
            return feats
        if TASK not in obs:
            raise KeyError(f"bc with text_encoder={self.config.text_encoder!r} needs the instruction {TASK!r} "
                           "(list[str]) in the observation")
        emb = encode_instructions(self.config.text_encoder, obs[TASK], feats.shape[0], feats.device)  # [B, E]
        return torch.cat([feats, self.task_proj(emb)], -1)

    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        pred = self.head(self._features(batch)).view(-1, self.config.horizon, self.action_dim)
        target = self.normalizer.normalize(ACTION, batch[ACTION])
        err = (pred - target).abs().mean(-1)  # [B, H]
        valid = ~batch[f"{ACTION}_is_pad"] if f"{ACTION}_is_pad" in batch else torch.ones_like(err, dtype=torch.bool)
        loss = (err * valid).sum() / valid.sum().clamp(min=1)
        return loss, {"l1": loss.item()}

    def history_step(self, obs: dict) -> dict[str, Tensor]:
        return {k: obs[k] for k in self.cameras + self.vectors}

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict) -> Tensor:
        """One step of obs (state [B, D], images [B, 3, H, W]) -> [B, H, A] unnormalised actions.
        History: the steps seen by ``observe`` (select_action), the first one repeated at an
        episode start, as the loader pads."""
        stacked, _ = self.history.window(self.history_step(obs))  # [B, T, ...]
        if TASK in obs:
            stacked[TASK] = obs[TASK]
        pred = self.head(self._features(stacked)).view(-1, self.config.horizon, self.action_dim)
        return self.normalizer.unnormalize(ACTION, pred)
