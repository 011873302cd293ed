"""diffusion: LeRobot's own Diffusion Policy (Chi et al. 2023) behind our Policy interface.

The model is ``lerobot.policies.diffusion.modeling_diffusion.DiffusionPolicy`` from the installed
lerobot (0.4.4), unchanged: a ResNet (GroupNorm) + spatial-softmax encoder per image, the state and
image features of ``n_obs_steps`` frames as the global condition of a 1D conditional U-Net that
denoises a trajectory of ``horizon`` actions (diffusers DDPM / DDIM scheduler, epsilon or sample
prediction, MSE loss). The adapter (``policies/layers/lerobot_adapter.py``) normalises with OUR
Normalizer (LeRobot's defaults: state and action min_max to [-1, 1], images mean_std), so the
statistics live in our checkpoint.

Windows, exactly as LeRobot's DiffusionConfig (o = n_obs_steps, h = horizon, a = n_action_steps):

    observation offsets  1-o .. 0            state [B, o, D], images uint8 [B, o, 3, H, W]
    action offsets       1-o .. h-o          action [B, h, A]: the trajectory starts at the OLDEST
                                             observed frame, so its first o-1 actions are past ones

At inference the trajectory's actions from the current step on are the chunk:
``predict_action_chunk`` returns [B, h-o+1, A] (``chunk_size``), and ``select_action`` executes
its first ``a`` (LeRobot requires a <= h-o+1). Defaults are sized for 2 CPU cores (LeRobot's U-Net
is (512, 1024, 2048), 100 DDPM steps at inference; here (64, 128, 256) and 10 DDIM steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from policystack.policies.layers.lerobot_adapter import (
    LeRobotAdapter,
    LeRobotAdapterConfig,
    lerobot_features,
)
from policystack.types import ACTION, OBS_STATE, FeatureSpec, Stats

SCHEDULERS = ("DDPM", "DDIM")
PREDICTION_TYPES = ("epsilon", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


@dataclass
class DiffusionConfig(LeRobotAdapterConfig):
    # input / output structure (as LeRobot's DiffusionConfig)
    n_obs_steps: int = 2  # o: observation frames (offsets 1-o .. 0)
    horizon: int = 16  # h: trajectory length (offsets 1-o .. h-o); a multiple of 2**len(down_dims)
    n_action_steps: int = 8  # a: executed per prediction; <= h - o + 1
    normalization: dict[str, str] = field(  # LeRobot's diffusion defaults: min_max to [-1, 1]
        default_factory=lambda: {"observation.state": "min_max", "observation.environment_state": "min_max",
                                 "action": "min_max"})
    # vision (LeRobot's DiffusionRgbEncoder)
    vision_backbone: str = "resnet18"
    pretrained_backbone_weights: str | None = None  # torchvision weights name (downloads); None = random
    use_group_norm: bool = True  # BatchNorm -> GroupNorm (not with pretrained weights)
    resize_shape: tuple[int, int] | None = None  # (H, W) to resize images to first; None = keep
    # crop: an explicit (H, W), or None to derive it: crop_ratio * resize_shape when resizing (as
    # LeRobot), else crop_ratio * the image size (96x96 -> 84x84, diffusion_policy's crop); 1.0 = none
    crop_shape: tuple[int, int] | None = None
    crop_ratio: float = 0.875
    crop_is_random: bool = True  # random crop in training, centre crop in eval
    spatial_softmax_num_keypoints: int = 32
    use_separate_rgb_encoder_per_camera: bool = False
    # U-Net
    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 128
    use_film_scale_modulation: bool = True
    # noise scheduler
    noise_scheduler_type: str = "DDIM"
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    num_inference_steps: int | None = 10  # None = num_train_timesteps
    # loss
    do_mask_loss_for_padding: bool = False  # as LeRobot and the original: padded copies are targets too

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        self.down_dims = tuple(self.down_dims)
        self.resize_shape = tuple(self.resize_shape) if self.resize_shape is not None else None
        self.crop_shape = tuple(self.crop_shape) if self.crop_shape is not None else None
        if self.n_action_steps > self.chunk_size:
            raise ValueError(f"{name}: n_action_steps ({self.n_action_steps}) must be <= horizon - n_obs_steps + 1 "
                             f"({self.chunk_size}): the trajectory holds only that many actions from the "
                             f"current step on")
        if not self.down_dims or any(d < 1 for d in self.down_dims):
            raise ValueError(f"{name}.down_dims needs positive widths, e.g. (64, 128, 256); got {self.down_dims}")
        factor = 2 ** len(self.down_dims)
        if self.horizon % factor:
            raise ValueError(f"{name}.horizon ({self.horizon}) must be a multiple of 2**len(down_dims) = {factor} "
                             f"(the U-Net halves the trajectory {len(self.down_dims)} times)")
        if any(d % self.n_groups for d in self.down_dims):
            raise ValueError(f"{name}.down_dims {self.down_dims} must all be divisible by n_groups ({self.n_groups})")
        if not self.vision_backbone.startswith("resnet"):
            raise ValueError(f"{name}.vision_backbone must be a torchvision ResNet (e.g. 'resnet18'), "
                             f"got {self.vision_backbone!r}")
        if self.use_group_norm and self.pretrained_backbone_weights:
            raise ValueError(f"{name}: use_group_norm=True would discard the BatchNorm statistics of "
                             f"pretrained_backbone_weights; set use_group_norm=False to use them")
        if self.noise_scheduler_type not in SCHEDULERS:
            raise ValueError(f"{name}.noise_scheduler_type is {self.noise_scheduler_type!r}; expected one of {SCHEDULERS}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{name}.prediction_type is {self.prediction_type!r}; expected one of {PREDICTION_TYPES}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"{name}.beta_schedule is {self.beta_schedule!r}; expected one of {BETA_SCHEDULES}")
        if self.num_train_timesteps < 1:
            raise ValueError(f"{name}.num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.num_inference_steps is not None and not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"{name}.num_inference_steps must be in [1, num_train_timesteps="
                             f"{self.num_train_timesteps}] or None, got {self.num_inference_steps}")
        if not 0.0 < self.crop_ratio <= 1.0:
            raise ValueError(f"{name}.crop_ratio must be in (0, 1], got {self.crop_ratio}")
        for shape_name in ("resize_shape", "crop_shape"):
            shape = getattr(self, shape_name)
            if shape is not None and (len(shape) != 2 or any(int(s) < 1 for s in shape)):
                raise ValueError(f"{name}.{shape_name} must be (H, W) of positive ints or None, got {shape}")
        if self.resize_shape is not None and self.crop_shape is not None:
            raise ValueError(f"{name}: with resize_shape the crop is crop_ratio * resize_shape (as LeRobot); "
                             f"leave crop_shape None")
        if self.spatial_softmax_num_keypoints < 1 or self.diffusion_step_embed_dim < 1 or self.kernel_size < 1:
            raise ValueError(f"{name}.spatial_softmax_num_keypoints, diffusion_step_embed_dim and kernel_size "
                             f"must be >= 1")

    @property
    def chunk_size(self) -> int:
        """Actions from the current step on in one trajectory: h - o + 1."""
        return self.horizon - self.n_obs_steps + 1

    @property
    def action_delta_indices(self) -> list[int]:
        """LeRobot's diffusion window: the trajectory starts at the oldest observed frame."""
        return list(range(1 - self.n_obs_steps, 1 - self.n_obs_steps + self.horizon))

    def to_lerobot(self, features: FeatureSpec):
        """The ``lerobot.policies.diffusion.configuration_diffusion.DiffusionConfig`` for these features."""
        from lerobot.policies.diffusion.configuration_diffusion import (
            DiffusionConfig as LeRobotDiffusionConfig,
        )

        inputs, outputs = lerobot_features(features)
        crop_shape = self.crop_shape
        if self.resize_shape is None and crop_shape is None and self.crop_ratio < 1.0:
            sizes = {f.shape[1:] for f in inputs.values() if f.shape and len(f.shape) == 3}
            if sizes:
                h, w = min(s[0] for s in sizes), min(s[1] for s in sizes)
                crop_shape = (int(h * self.crop_ratio), int(w * self.crop_ratio))
        return LeRobotDiffusionConfig(
            n_obs_steps=self.n_obs_steps, horizon=self.horizon, n_action_steps=self.n_action_steps,
            drop_n_last_frames=max(self.horizon - self.n_action_steps - self.n_obs_steps + 1, 0),
            input_features=inputs, output_features=outputs, device="cpu", push_to_hub=False,
            vision_backbone=self.vision_backbone, pretrained_backbone_weights=self.pretrained_backbone_weights,
            use_group_norm=self.use_group_norm, resize_shape=self.resize_shape,
            crop_ratio=self.crop_ratio if self.resize_shape is not None else 1.0, crop_shape=crop_shape,
            crop_is_random=self.crop_is_random, spatial_softmax_num_keypoints=self.spatial_softmax_num_keypoints,
            use_separate_rgb_encoder_per_camera=self.use_separate_rgb_encoder_per_camera,
            down_dims=self.down_dims, kernel_size=self.kernel_size, n_groups=self.n_groups,
            diffusion_step_embed_dim=self.diffusion_step_embed_dim,
            use_film_scale_modulation=self.use_film_scale_modulation,
            noise_scheduler_type=self.noise_scheduler_type, num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule, beta_start=self.beta_start, beta_end=self.beta_end,
            prediction_type=self.prediction_type, clip_sample=self.clip_sample,
            clip_sample_range=self.clip_sample_range, num_inference_steps=self.num_inference_steps,
            do_mask_loss_for_padding=self.do_mask_loss_for_padding,
        )


class DiffusionPolicy(LeRobotAdapter):
    """LeRobot's DiffusionPolicy as ``self.lerobot``; our normaliser, windows, history and save/load."""

    name = "diffusion"
    config_class = DiffusionConfig
    config: DiffusionConfig
    lerobot_policy = "lerobot.policies.diffusion.modeling_diffusion:DiffusionPolicy"

    def lerobot_config(self):
        """LeRobot's DiffusionConfig, after checking that the cameras share one size the crop fits."""
        sizes = {self.features[k].chw for k in self.cameras}
        if len(sizes) > 1:
            shapes = {k: self.features[k].chw for k in self.cameras}
            raise ValueError(f"diffusion: LeRobot's Diffusion Policy needs all cameras at one shape; got {shapes} "
                             f"(record or resize the cameras to one size)")
        lr_config = super().lerobot_config()
        if lr_config.crop_shape is not None and self.config.resize_shape is None and sizes:
            _, h, w = next(iter(sizes))
            if lr_config.crop_shape[0] > h or lr_config.crop_shape[1] > w:
                raise ValueError(f"diffusion: crop_shape {lr_config.crop_shape} does not fit the {h}x{w} images "
                                 f"of {self.cameras}; lower crop_shape or use crop_ratio")
        return lr_config

    def __init__(self, config: DiffusionConfig, features: FeatureSpec, stats: Stats | None):
        super().__init__(config, features, stats)
        if self.cameras:
            encoder = self.lerobot.diffusion.rgb_encoder
            pool = (encoder[0] if isinstance(encoder, torch.nn.ModuleList) else encoder).pool
            if pool._in_h * pool._in_w == 1:
                lr_config = self.lerobot.config
                size = lr_config.crop_shape or lr_config.resize_shape or self.features[self.cameras[0]].chw[1:]
                raise ValueError(
                    f"diffusion: the {config.vision_backbone} feature map of the {size[0]}x{size[1]} encoder "
                    f"input (after resize / crop) is 1x1, so the spatial "
                    f"softmax gives constant keypoints and the images cannot influence the actions; use images "
                    f"of at least 64x64 (after cropping), or set resize_shape")

    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """batch: state [B, o, D], images uint8 [B, o, 3, H, W], action [B, h, A] (offsets 1-o .. h-o),
        action_is_pad [B, h] -> LeRobot's denoising MSE on normalised actions."""
        if ACTION not in batch:
            raise KeyError(f"diffusion.compute_loss: the batch has no {ACTION!r} (got {sorted(batch)})")
        o, h = self.config.n_obs_steps, self.config.horizon
        if batch[ACTION].shape[1] != h or batch[OBS_STATE].shape[1] != o:
            raise ValueError(f"diffusion.compute_loss: expected action [B, {h}, A] and state [B, {o}, D] "
                             f"(action_delta_indices {self.config.action_delta_indices}), got "
                             f"{tuple(batch[ACTION].shape)} and {tuple(batch[OBS_STATE].shape)}")
        loss, _ = self.lerobot(self.lerobot_inputs(batch))
        return loss, {"mse": loss.item()}

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        """One step of obs (state [B, D], images uint8 [B, 3, H, W]) -> [B, h-o+1, A] unnormalised
        actions from the current step on. The o-frame history is the steps seen by ``observe``
        (``select_action``), the first repeated at an episode start. ``generator`` seeds the
        sampler's noise (default: torch's global RNG)."""
        from lerobot.utils.constants import OBS_IMAGES

        inputs = self.lerobot_inputs(self.history.window(self.history_step(obs))[0])  # [B, o, ...]
        if self.cameras:  # LeRobot's layout: [B, o, n_cameras, 3, H, W]
            inputs[OBS_IMAGES] = torch.stack([inputs[k] for k in self.cameras], dim=-4)
        model = self.lerobot.diffusion
        global_cond = model._prepare_global_conditioning(inputs)  # [B, o * cond_dim]
        trajectory = model.conditional_sample(global_cond.shape[0], global_cond=global_cond,
                                              generator=generator)  # [B, h, A]
        return self.unnormalize_actions(trajectory[:, self.config.n_obs_steps - 1:])
