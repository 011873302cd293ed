"""act: LeRobot's own ACT (Action Chunking Transformer, Zhao et al. 2023) behind our Policy interface.

The model is ``lerobot.policies.act.modeling_act.ACTPolicy`` from the installed lerobot (0.4.4),
unchanged: a ResNet backbone per camera, a transformer encoder over [latent, state, image-feature
tokens], a DETR-style decoder that regresses a chunk of ``horizon`` (LeRobot: ``chunk_size``)
actions, and a CVAE encoder over the target actions during training (L1 + kl_weight * KL). The
adapter (``policies/layers/lerobot_adapter.py``) normalises with OUR Normalizer, so the statistics
live in our checkpoint, and feeds LeRobot's model what its processor pipeline would:

    state [B, 1, D] --normalise--------------------------------+
    images uint8 [B, 1, 3, H, W] --/255, normalise------------+--> LeRobot ACTPolicy --> [B, H, A]
    action [B, H, A] --normalise (training: loss target, CVAE input)

LeRobot's ACT reads one observation step (``n_obs_steps`` must be 1) and needs
``observation.state`` plus at least one camera or ``observation.environment_state``.
Defaults are sized for 2 CPU cores (LeRobot's: dim_model 512, dim_feedforward 3200, 4 encoder
layers, chunk 100); ``pretrained_backbone_weights`` is None so nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from policystack.policies.layers.lerobot_adapter import (
    LeRobotAdapter,
    LeRobotAdapterConfig,
    lerobot_features,
)
from policystack.types import ACTION, FeatureSpec, Stats

ACTIVATIONS = ("relu", "gelu", "glu")


@dataclass
class ACTConfig(LeRobotAdapterConfig):
    # input / output structure (LeRobot: n_obs_steps, chunk_size, n_action_steps)
    n_obs_steps: int = 1  # LeRobot's ACT handles exactly one observation step
    horizon: int = 20  # = LeRobot's chunk_size: actions regressed per chunk (offsets 0 .. H-1)
    n_action_steps: int = 10  # executed from each chunk before predicting again
    # vision backbone (torchvision ResNet, FrozenBatchNorm2d)
    vision_backbone: str = "resnet18"
    pretrained_backbone_weights: str | None = None  # e.g. "ResNet18_Weights.IMAGENET1K_V1" (downloads)
    replace_final_stride_with_dilation: bool = False
    # transformer
    pre_norm: bool = False
    dim_model: int = 256
    n_heads: int = 8
    dim_feedforward: int = 1024
    feedforward_activation: str = "relu"
    n_encoder_layers: int = 2
    n_decoder_layers: int = 1  # as LeRobot / the original ACT (only the first of 7 layers was used)
    # CVAE
    use_vae: bool = True
    latent_dim: int = 32
    n_vae_encoder_layers: int = 2
    # inference: exponential temporal ensembling of overlapping chunks (ACT uses 0.01); needs
    # n_action_steps == 1 since a chunk is predicted every step
    temporal_ensemble_coeff: float | None = None
    # training
    dropout: float = 0.1
    kl_weight: float = 10.0

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.n_obs_steps != 1:
            raise ValueError(f"{name}.n_obs_steps must be 1: LeRobot's ACT reads a single observation step "
                             f"(got {self.n_obs_steps})")
        if not self.vision_backbone.startswith("resnet"):
            raise ValueError(f"{name}.vision_backbone must be a torchvision ResNet (e.g. 'resnet18'), "
                             f"got {self.vision_backbone!r}")
        for field_name in ("dim_model", "n_heads", "dim_feedforward", "n_encoder_layers", "n_decoder_layers",
                           "latent_dim"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{name}.{field_name} must be >= 1, got {getattr(self, field_name)}")
        if self.use_vae and self.n_vae_encoder_layers < 1:
            raise ValueError(f"{name}.n_vae_encoder_layers must be >= 1 with use_vae=True")
        if self.dim_model % self.n_heads:
            raise ValueError(f"{name}.dim_model ({self.dim_model}) must be divisible by n_heads ({self.n_heads})")
        if self.feedforward_activation not in ACTIVATIONS:
            raise ValueError(f"{name}.feedforward_activation is {self.feedforward_activation!r}; "
                             f"expected one of {ACTIVATIONS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout}")
        if self.temporal_ensemble_coeff is not None and self.n_action_steps != 1:
            raise ValueError(f"{name}: temporal_ensemble_coeff needs n_action_steps=1 (a chunk is predicted "
                             f"every step to ensemble), got n_action_steps={self.n_action_steps}")

    def to_lerobot(self, features: FeatureSpec):
        """The ``lerobot.policies.act.configuration_act.ACTConfig`` for these features."""
        from lerobot.policies.act.configuration_act import ACTConfig as LeRobotACTConfig

        inputs, outputs = lerobot_features(features)
        return LeRobotACTConfig(
            n_obs_steps=1, chunk_size=self.horizon, n_action_steps=self.n_action_steps,
            input_features=inputs, output_features=outputs, device="cpu", push_to_hub=False,
            vision_backbone=self.vision_backbone, pretrained_backbone_weights=self.pretrained_backbone_weights,
            replace_final_stride_with_dilation=self.replace_final_stride_with_dilation,
            pre_norm=self.pre_norm, dim_model=self.dim_model, n_heads=self.n_heads,
            dim_feedforward=self.dim_feedforward, feedforward_activation=self.feedforward_activation,
            n_encoder_layers=self.n_encoder_layers, n_decoder_layers=self.n_decoder_layers,
            use_vae=self.use_vae, latent_dim=self.latent_dim, n_vae_encoder_layers=self.n_vae_encoder_layers,
            temporal_ensemble_coeff=self.temporal_ensemble_coeff, dropout=self.dropout, kl_weight=self.kl_weight,
        )


class ACTPolicy(LeRobotAdapter):
    """LeRobot's ACTPolicy as ``self.lerobot``; our normaliser, batch layout and save/load."""

    name = "act"
    config_class = ACTConfig
    config: ACTConfig
    lerobot_policy = "lerobot.policies.act.modeling_act:ACTPolicy"

    def __init__(self, config: ACTConfig, features: FeatureSpec, stats: Stats | None):
        super().__init__(config, features, stats)
        from lerobot.policies.act.modeling_act import ACTTemporalEnsembler

        self._ensembler = (ACTTemporalEnsembler(config.temporal_ensemble_coeff, config.horizon)
                           if config.temporal_ensemble_coeff is not None else None)

    def _single_step(self, obs: dict[str, Any]) -> dict[str, Tensor]:
        """Our [B, 1, ...] training windows -> LeRobot's single-step [B, ...] inputs."""
        return {k: v[:, -1] if k in self.cameras or k in self.vectors else v for k, v in obs.items()}

    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """batch: state [B, 1, D], images uint8 [B, 1, 3, H, W], action [B, H, A], action_is_pad [B, H]
        -> LeRobot's loss (L1 on normalised actions, + kl_weight * KL with use_vae) and its logs."""
        if ACTION not in batch:
            raise KeyError(f"act.compute_loss: the batch has no {ACTION!r} (got {sorted(batch)})")
        inputs = self._single_step(self.lerobot_inputs(batch))
        loss, logs = self.lerobot(inputs)
        return loss, {k: float(v) for k, v in logs.items()}

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, Any]) -> Tensor:
        """One step of obs (state [B, D], images uint8 [B, 3, H, W]) -> [B, H, A] unnormalised actions,
        from LeRobot's ``ACTPolicy.predict_action_chunk`` (zero latent, as at LeRobot's inference)."""
        was_training = self.lerobot.training
        try:
            chunk = self.lerobot.predict_action_chunk(self.lerobot_inputs(self.history_step(obs)))
        finally:
            self.lerobot.train(was_training)  # LeRobot's call switches its module to eval
        return self.unnormalize_actions(chunk)

    @torch.no_grad()
    def select_action(self, obs: dict[str, Any]) -> Tensor:
        """[B, A]. With ``temporal_ensemble_coeff`` a chunk is predicted every step and overlapping
        chunks are averaged by LeRobot's ``ACTTemporalEnsembler``; otherwise the base chunk queue."""
        if self._ensembler is None:
            return super().select_action(obs)
        action = self._ensembler.update(self.predict_action_chunk(obs))
        self.observe(obs)
        return action

    def reset(self) -> None:
        super().reset()
        if self._ensembler is not None:
            self._ensembler.reset()
