"""UWM: Unified World Models (Zhu et al., RSS 2025; WEIRDLabUW/unified-world-model ``models/uwm/uwm.py``).

One diffusion transformer denoises an action chunk and the latents of a future observation together,
each with its OWN diffusion timestep. Which timesteps are given at inference picks what the one set of
weights computes (``Mode``): a policy p(a|o), a video model p(o'|o), forward dynamics p(o'|o,a),
inverse dynamics p(a|o,o'), unconditional video p(o') and joint sampling p(a,o'|o). Action-free video
trains it too: the action timestep is held at full noise.

Data flow, one sample (B batch, T = n_obs_steps, V cameras, H horizon, A action dims, F future frames,
C x h x w the latent map of a frame, p the patch size, d the width, c the conditioning size):

    current observation (the condition; only through AdaLN):
      images uint8 [T, V, 3, H_img, W_img] -> crop (random in training, centred at evaluation)
          -> ResNet-18-style encoder (GroupNorm; perception/resnet.py) or the frozen ImageNet Lite0 + a head
          -> [V * T * E]
      state [T, D] (use_state) -> normalise -> [T * D];  task str -> text encoder -> Linear -> [E]
      -> obs = concat [obs_dim]; in training replaced by a learned null observation with probability
         obs_dropout (so that p(o') exists)
    future observation: frames at offsets H .. H+F-1 (right after the chunk), uint8 [V, F, 3, H_img, W_img]
      -> frozen latent codec (perception/latents.py) -> z [V, C, F, h, w]
    tokens:  action chunk [H, A] -> MLP -> [H, d]
             z -> Conv3d patches (F x p x p) -> [V * h/p * w/p, d]
      -> DiT (AdaLN-Zero blocks, register tokens; layers/dit.py) with
         cond = concat(obs, DualTimestepEmbedding(t_action, t_obs)) [c]
      -> action tokens -> MLP -> predicted action noise [H, A]
         latent tokens -> Linear -> unpatchify -> predicted latent noise [V, C, F, h, w]

Training (DDPM, epsilon prediction on both, as the reference): t_action and t_obs each uniform in
0..T-1, independently; a sample without actions (action-free video: ``action_is_pad`` all true, the
loop's ``dataset.mixture`` co-training, ``datasets.mixture.pad_mixture``) gets t_action = T-1 (full noise) and no action loss (the
reference computes it on the zero placeholder; here it is masked out).
loss = mse(action noise) + mse(latent noise).

Sampling (DDIM, ``num_inference_steps``, clip_sample): each of the two is either denoised over the
schedule, held at full noise (a fixed Gaussian sample at t = T-1; the reference uses the first DDIM
step, 90 of 100, for this), or given clean (t = 0).

Not from the reference: the null-observation token (the issue's unconditional mode), the instruction
and state inputs being optional, the "keypoints" pooling option, a latent codec trained in the project
(the reference uses the SDXL-VAE, available here from a local directory), the crop applied to the
current observation only (the future frame is encoded whole).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policystack.datasets.mixture import pad_mixture
from policystack.perception.image import round_like_cache
from policystack.perception.latents import LatentCodec, load_latent_codec
from policystack.perception.preprocess import ImagePreprocessor
from policystack.perception.resnet import POOLS, ResNetEncoder, pooling_head
from policystack.perception.text import TEXT_ENCODERS, encode_instructions, text_encoder_dim
from policystack.policies.base import Policy, PolicyConfig
from policystack.policies.layers.augment import crop
from policystack.policies.layers.dit import DiT, DualTimestepEmbedding
from policystack.policies.layers.film import FiLM
from policystack.types import (
    ACTION,
    OBS_ENV_STATE,
    OBS_STATE,
    PAD_SUFFIX,
    TASK,
    FeatureSpec,
    Stats,
    image_keys,
)

IMAGE_ENCODERS = ("resnet", "lite0")


# ----------------------------------------------------------------------------------------------
# Config: defaults are the `tiny` preset (configs/policy/uwm.yaml); configs/policy/uwm_paper.yaml holds
# the reference's sizes.
# ----------------------------------------------------------------------------------------------
@dataclass
class UWMConfig(PolicyConfig):
    # --- windows (PolicyConfig fields) ---
    n_obs_steps: int = 1  # frames of the current observation (reference: 2)
    horizon: int = 8  # actions denoised per chunk (reference: 16)
    n_action_steps: int = 4  # executed before predicting again
    future_steps: int = 1  # future frames predicted, at offsets horizon .. horizon + future_steps - 1 (reference: 2)
    # actions are diffused in [-1, 1] (clip_sample), so they are normalised onto it
    normalization: dict[str, str] = field(default_factory=lambda: {
        "observation.state": "mean_std", "observation.environment_state": "mean_std", "action": "min_max"})

    # --- current observation -> conditioning ---
    image_encoder: str = "resnet"  # "resnet" (ResNet-18-style, GroupNorm, from scratch) | "lite0" (frozen ImageNet)
    resnet_widths: tuple[int, ...] = (16, 32, 64, 128)  # ResNet-18: (64, 128, 256, 512)
    resnet_blocks: tuple[int, ...] = (2, 2, 2, 2)  # BasicBlocks per stage (ResNet-18)
    lite0_stages: int = 5  # lite0: MBConv stages kept (5: 112 channels at stride 16)
    image_pool: str = "keypoints"  # "avg" (reference) | "keypoints" (spatial softmax, as Diffusion Policy)
    keypoints: int = 32  # spatial-softmax keypoints (image_pool=keypoints)
    obs_embed_dim: int = 64  # E: features per camera and frame (reference: 768)
    crop_ratio: float = 0.9  # resnet: crop side / image side, random in training, centred at evaluation; 1 = off
    use_state: bool = True  # condition on observation.state (and environment_state) too (reference: False)
    text_encoder: str = "hashed"  # instruction encoder: "hashed", "minilm" or "none" (reference: none)
    # FiLM every camera's feature map by the instruction before pooling (RT-1's and bc's conditioning), so the
    # words choose which features the pooled vector keeps; False: the instruction only joins the condition
    # (Reach from cameras, 20 CPU-minutes: 74% with it, 22% without; docs/results.md section uwm)
    film: bool = True
    obs_dropout: float = 0.1  # probability of the null observation in training (unconditional video)

    # --- future observation latents ---
    latent_model: str | None = None  # autoencoder directory (ours or a diffusers AutoencoderKL); None: pixels
    latent_channels: int = 3  # C of that codec's latents (pixels: 3; ours: its channels; SDXL-VAE: 4)
    latent_downsample: int = 8  # its spatial downsample factor (SDXL-VAE: 8)
    patch_size: int = 2  # latent patch side (reference: 4, with temporal patch = future_steps)

    # --- diffusion transformer ---
    d_model: int = 128  # reference: 768
    depth: int = 4  # AdaLN-Zero blocks (reference: 12)
    n_head: int = 4  # reference: 12
    mlp_ratio: float = 4.0
    n_registers: int = 4  # register tokens (reference: 8)
    timestep_embed_dim: int = 64  # reference: 512

    # --- noise schedule (reference: DDIM, 100 train steps, squaredcos_cap_v2, clip_sample, 10 steps) ---
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    num_inference_steps: int = 10

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> UWMConfig:
        # a checkpoint saved before `film` existed was trained without it (the default is now True)
        return super().from_dict({"film": False, **d}, where)

    @property
    def observation_delta_indices(self) -> list[int]:
        """History -(T-1)..0, then the future frames right after the action chunk."""
        return list(range(1 - self.n_obs_steps, 1)) + list(range(self.horizon, self.horizon + self.future_steps))

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        self.resnet_widths, self.resnet_blocks = tuple(self.resnet_widths), tuple(self.resnet_blocks)
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"{name}.image_encoder is {self.image_encoder!r}; choose one of {IMAGE_ENCODERS}")
        if self.image_pool not in POOLS:
            raise ValueError(f"{name}.image_pool is {self.image_pool!r}; choose one of {POOLS}")
        if self.film and self.text_encoder == "none":
            raise ValueError(f"{name}.film=true modulates the image features by the instruction: it needs a "
                             f"text_encoder, got text_encoder='none' (set film=false too)")
        if self.text_encoder != "none" and self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"{name}.text_encoder is {self.text_encoder!r}; choose one of "
                             f"{sorted(TEXT_ENCODERS) + ['none']}")
        if self.normalization.get(ACTION) not in ("min_max", "quantile"):
            raise ValueError(f"{name}.normalization['action'] is {self.normalization.get(ACTION)!r}; actions are "
                             f"diffused and clipped in [-1, 1], so use 'min_max' (or 'quantile')")
        for f in ("future_steps", "obs_embed_dim", "keypoints", "latent_channels", "latent_downsample", "patch_size",
                  "d_model", "depth", "n_head", "timestep_embed_dim", "num_train_timesteps", "num_inference_steps"):
            if getattr(self, f) < 1:
                raise ValueError(f"{name}.{f} must be >= 1, got {getattr(self, f)}")
        if self.n_registers < 0 or self.mlp_ratio <= 0:
            raise ValueError(f"{name}.n_registers must be >= 0 and mlp_ratio > 0, got {self.n_registers}, {self.mlp_ratio}")
        if self.d_model % self.n_head:
            raise ValueError(f"{name}.d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        if self.timestep_embed_dim % 2 or self.timestep_embed_dim < 4:
            raise ValueError(f"{name}.timestep_embed_dim must be even and >= 4, got {self.timestep_embed_dim}")
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(f"{name}.num_inference_steps ({self.num_inference_steps}) cannot exceed "
                             f"num_train_timesteps ({self.num_train_timesteps})")
        if not 0.0 < self.crop_ratio <= 1.0:
            raise ValueError(f"{name}.crop_ratio must be in (0, 1], got {self.crop_ratio}")
        if not 0.0 <= self.obs_dropout < 1.0:
            raise ValueError(f"{name}.obs_dropout must be in [0, 1), got {self.obs_dropout}")
        if not 1 <= self.lite0_stages <= 7:
            raise ValueError(f"{name}.lite0_stages must be in 1..7, got {self.lite0_stages}")
        if self.beta_schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            raise ValueError(f"{name}.beta_schedule is {self.beta_schedule!r}; choose linear, scaled_linear or "
                             f"squaredcos_cap_v2")


# ----------------------------------------------------------------------------------------------
# Modes and samples
# ----------------------------------------------------------------------------------------------
class Mode(StrEnum):
    """What ``UWMPolicy.sample`` computes, by the choice of the two timesteps."""

    POLICY = "policy"  # p(a | o): future observation held at full noise
    VIDEO = "video"  # p(o' | o): actions held at full noise
    FORWARD_DYNAMICS = "forward_dynamics"  # p(o' | o, a): the clean action chunk given
    INVERSE_DYNAMICS = "inverse_dynamics"  # p(a | o, o'): the clean future frames given
    UNCONDITIONAL_VIDEO = "unconditional_video"  # p(o'): actions at full noise, the null observation
    JOINT = "joint"  # p(a, o' | o): both denoised on one schedule


class Role(StrEnum):
    """What one of the two inputs does during sampling."""

    DENOISE = "denoise"  # starts as noise, follows the DDIM schedule, is returned
    NOISE = "noise"  # a fixed Gaussian sample at t = T-1 (marginalised out)
    CLEAN = "clean"  # given, at t = 0


# mode -> (action role, future-latent role, conditioned on the observation)
MODES: dict[Mode, tuple[Role, Role, bool]] = {
    Mode.POLICY: (Role.DENOISE, Role.NOISE, True),
    Mode.VIDEO: (Role.NOISE, Role.DENOISE, True),
    Mode.FORWARD_DYNAMICS: (Role.CLEAN, Role.DENOISE, True),
    Mode.INVERSE_DYNAMICS: (Role.DENOISE, Role.CLEAN, True),
    Mode.UNCONDITIONAL_VIDEO: (Role.NOISE, Role.DENOISE, False),
    Mode.JOINT: (Role.DENOISE, Role.DENOISE, True),
}


@dataclass
class UWMSample:
    """What ``UWMPolicy.sample`` returns; fields a mode does not produce are None.

    actions: float [B, H, A], unnormalised.
    latents: float [B, V, C, F, h, w], the future frames' latents (cameras in ``UWMPolicy.cameras`` order).
    frames:  camera key -> uint8 [B, F, 3, H_img, W_img], the latents decoded by the codec.
    """

    actions: Tensor | None = None
    latents: Tensor | None = None
    frames: dict[str, Tensor] | None = None


# ----------------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------------
def _init_linear(module: nn.Module) -> None:
    """The reference's init: linear layers N(0, 0.02), zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Mish(), nn.Linear(hidden, d_out))


class UWMPolicy(Policy):
    name = "uwm"
    config_class = UWMConfig
    config: UWMConfig
    # co-trains on action-free video mixed into its batches (dataset.mixture; compute_loss pads the parts
    # into one batch: an action-free sample's action zeros with action_is_pad all true)
    trains_on_mixture = True

    def __init__(self, config: UWMConfig, features: FeatureSpec, stats: Stats | None):
        super().__init__(config, features, stats)
        self.cameras = sorted(image_keys(features))
        if not self.cameras:
            raise KeyError(f"uwm predicts future camera frames: it needs at least one camera "
                           f"('observation.images.<cam>') among the features; got {sorted(features)}")
        sizes = {features[k].chw for k in self.cameras}
        if len(sizes) > 1:
            raise ValueError(f"uwm: every camera must have one size (their latents share one patch grid); got "
                             f"{ {k: features[k].chw for k in self.cameras} }")
        _, self.image_h, self.image_w = next(iter(sizes))
        c = config
        f, p = c.latent_downsample, c.patch_size
        if self.image_h % (f * p) or self.image_w % (f * p):
            raise ValueError(f"uwm: camera frames of {self.image_h}x{self.image_w} must divide by latent_downsample x "
                             f"patch_size = {f} x {p}; change patch_size or record the cameras at a multiple of {f * p}")
        self.latent_shape = (c.latent_channels, self.image_h // f, self.image_w // f)  # (C, h, w)
        self.vectors = [k for k in (OBS_STATE, OBS_ENV_STATE) if k in features] if c.use_state else []
        self.action_dim = features[ACTION].shape[0]
        self.crop_hw = (max(1, round(self.image_h * c.crop_ratio)), max(1, round(self.image_w * c.crop_ratio)))

        # current observation -> conditioning vector
        if c.image_encoder == "resnet":
            self.preprocess = ImagePreprocessor(normalization="imagenet")
            self.image_net: nn.Module = ResNetEncoder(c.resnet_widths, c.resnet_blocks, c.obs_embed_dim, c.image_pool,
                                                      c.keypoints)
        else:  # a trained head on the frozen ImageNet trunk (its weights: load_external_weights, then the checkpoint)
            from policystack.perception.image import LITE0_CHANNELS, PretrainedImageEncoder

            self.lite0 = PretrainedImageEncoder("lite0", c.lite0_stages, image_size=self.image_h, pretrained=False)
            self.image_net = pooling_head(LITE0_CHANNELS[c.lite0_stages - 1], c.obs_embed_dim, c.image_pool, c.keypoints)
        map_channels = c.resnet_widths[-1] if c.image_encoder == "resnet" else LITE0_CHANNELS[c.lite0_stages - 1]
        self.film = FiLM(text_encoder_dim(c.text_encoder), map_channels) if c.film else None
        obs_dim = c.n_obs_steps * (len(self.cameras) * c.obs_embed_dim + sum(features[k].shape[0] for k in self.vectors))
        if c.text_encoder != "none":
            self.task_proj = nn.Linear(text_encoder_dim(c.text_encoder), c.obs_embed_dim)
            obs_dim += c.obs_embed_dim
        self.obs_dim = obs_dim
        self.null_obs = nn.Parameter(torch.empty(obs_dim).normal_(std=0.02))

        # tokens
        hidden = int(max(self.action_dim, c.d_model) * c.mlp_ratio)
        self.action_encoder = _mlp(self.action_dim, hidden, c.d_model)
        self.action_decoder = _mlp(c.d_model, hidden, self.action_dim)
        patch = (c.future_steps, p, p)
        self.patch_encoder = nn.Conv3d(c.latent_channels, c.d_model, kernel_size=patch, stride=patch)
        self.patch_decoder = nn.Linear(c.d_model, c.latent_channels * c.future_steps * p * p)
        self.grid = (self.latent_shape[1] // p, self.latent_shape[2] // p)
        n_latent_tokens = len(self.cameras) * self.grid[0] * self.grid[1]
        self.timestep_embedding = DualTimestepEmbedding(c.timestep_embed_dim, c.mlp_ratio)
        self.dit = DiT(c.horizon + n_latent_tokens, c.d_model, c.depth, c.n_head, c.mlp_ratio,
                       cond_dim=obs_dim + c.timestep_embed_dim, n_registers=c.n_registers)
        for m in (self.action_encoder, self.action_decoder, self.patch_decoder, self.timestep_embedding):
            _init_linear(m)
        nn.init.normal_(self.patch_encoder.weight.view(c.d_model, -1), std=0.02)  # as a linear layer (reference)
        nn.init.zeros_(self.patch_encoder.bias)

        from diffusers import DDIMScheduler

        self.scheduler = DDIMScheduler(num_train_timesteps=c.num_train_timesteps, beta_schedule=c.beta_schedule,
                                       clip_sample=c.clip_sample, prediction_type="epsilon")
        # the frozen latent codec, kept outside the module tree (config.latent_model names it; never in a checkpoint)
        self._frozen: dict[str, nn.Module] = {}

    # --- frozen parts ------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return self.null_obs.device

    @property
    def codec(self) -> LatentCodec:
        """The frozen latent codec ``config.latent_model`` names (loaded on first use; pixels when None)."""
        if "codec" not in self._frozen:
            c = self.config
            codec = load_latent_codec(c.latent_model, c.latent_downsample)
            if (codec.channels, codec.downsample) != (c.latent_channels, c.latent_downsample):
                raise ValueError(f"uwm: the latent codec {codec.source} gives {codec.channels} channels at downsample "
                                 f"{codec.downsample}, the config says latent_channels={c.latent_channels}, "
                                 f"latent_downsample={c.latent_downsample}; make them agree (or set latent_model)")
            self._frozen["codec"] = codec.requires_grad_(False).eval()
        return self._frozen["codec"].to(self._device())

    def load_external_weights(self) -> None:
        """Load the latent codec now, so that a missing or mismatched file fails before training starts, and
        in lite0 mode the package's ImageNet weights into the Lite0 trunk."""
        _ = self.codec
        if self.config.image_encoder == "lite0":
            self.lite0.load_pretrained()

    # --- encoders ----------------------------------------------------------------------------------
    def encode_observation(self, obs: dict[str, Any]) -> Tensor:
        """The condition: obs with a time axis (images uint8 [B, T, 3, H, W], or the loader's cached frame
        features [B, T, D] in lite0 mode; state [B, T, D]; task list[str]) -> float [B, obs_dim]. The resnet
        path crops at random in training mode, at the centre otherwise; lite0 sees the whole frame."""
        missing = [cam for cam in self.cameras if cam not in obs]
        if missing:
            raise KeyError(f"uwm: the observation has no camera {missing[0]!r} (got {sorted(obs)})")
        emb = None
        if self.config.text_encoder != "none":
            if TASK not in obs:
                raise KeyError(f"uwm with text_encoder={self.config.text_encoder!r} needs the instruction {TASK!r} "
                               "(list[str]) in the observation")
            emb = encode_instructions(self.config.text_encoder, obs[TASK], obs[self.cameras[0]].shape[0],
                                      self._device())
        parts = []
        for cam in self.cameras:
            x = obs[cam].to(self._device())  # [B, T, ...]
            b, t = x.shape[:2]
            if self.config.image_encoder == "resnet":
                self._check_pixels(cam, x)
                flat = crop(x.flatten(0, 1), *self.crop_hw, random=self.training)
                fmap = self.image_net.features(self.preprocess(flat, cam))
                head = self.image_net.head
            else:
                fmap, head = self._lite0_maps(cam, x.flatten(0, 1)), self.image_net
            if self.film is not None:
                fmap = self.film(fmap, emb.repeat_interleave(t, 0))
            parts.append(head(fmap).view(b, t, -1))
        for key in self.vectors:
            if key not in obs:
                raise KeyError(f"uwm with use_state: the observation has no {key!r} (got {sorted(obs)})")
            parts.append(self.normalizer.normalize(key, obs[key].float().to(self._device())))
        cond = torch.cat(parts, -1).flatten(1)
        return cond if emb is None else torch.cat([cond, self.task_proj(emb)], -1)

    @torch.no_grad()
    def encode_frames(self, frames: dict[str, Tensor]) -> Tensor:
        """Future frames, camera key -> uint8 [B, F, 3, H, W] (or the loader's cached frame features [B, F, D]
        in lite0 mode) -> latents float [B, V, C, F, h, w]."""
        missing = [k for k in self.cameras if k not in frames]
        if missing:
            raise KeyError(f"uwm: frames for cameras {missing} are missing (got {sorted(frames)})")
        out = []
        for cam in self.cameras:
            x = frames[cam].to(self._device())
            if x.shape[1] != self.config.future_steps:
                raise ValueError(f"uwm: expected {self.config.future_steps} future frame(s) of {cam!r}, got "
                                 f"{tuple(x.shape)}")
            if x.dtype == torch.uint8:
                self._check_pixels(cam, x)
                z = self.codec.encode(x.flatten(0, 1))  # [B*F, C, h, w]
                z = round_like_cache(z) if self.config.image_encoder == "lite0" else z
            else:
                z = self._cached(cam, x.flatten(0, 1))[1]
            out.append(z.view(x.shape[0], x.shape[1], *self.latent_shape))
        return torch.stack(out, 1).transpose(2, 3)  # [B, V, C, F, h, w]

    # --- the loader-side feature cache (lite0 mode) ------------------------------------------------
    def frame_transforms(self) -> dict[str, UWMFrameTransform]:
        """lite0 mode: every camera's frames are cached as [Lite0 map | codec latents] per frame (both frozen),
        so a training step runs neither network; resnet mode: none (the encoder trains on pixels)."""
        if self.config.image_encoder != "lite0":
            return {}
        return dict.fromkeys(self.cameras, UWMFrameTransform(self.lite0, self.codec))

    @property
    def _lite0_shape(self) -> tuple[int, int, int]:
        from policystack.perception.image import LITE0_CHANNELS, lite0_grid

        g = lite0_grid(self.image_h, self.config.lite0_stages)
        return LITE0_CHANNELS[self.config.lite0_stages - 1], g, g

    def _cached(self, cam: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """Cached frame features [N, D] -> (Lite0 maps [N, c, g, g], latents [N, C, h, w])."""
        n_lite = math.prod(self._lite0_shape)
        if self.config.image_encoder != "lite0" or x.dim() != 2 or x.shape[1] != n_lite + math.prod(self.latent_shape):
            raise ValueError(f"uwm: {cam!r} came as {x.dtype} {tuple(x.shape)}; expected uint8 frames, or in lite0 mode "
                             f"the cached features of frame_transforms() (float, {n_lite + math.prod(self.latent_shape)} "
                             f"per frame)")
        x = x.float()
        return x[:, :n_lite].view(-1, *self._lite0_shape), x[:, n_lite:].view(-1, *self.latent_shape)

    def _lite0_maps(self, cam: str, x: Tensor) -> Tensor:
        """uint8 frames [N, 3, H, W] (computed now, rounded as cached) or cached features [N, D] -> Lite0 maps."""
        if x.dtype == torch.uint8:
            self._check_pixels(cam, x)
            with torch.no_grad():
                return self.lite0.features(x)
        return self._cached(cam, x)[0]

    def _check_pixels(self, cam: str, x: Tensor) -> None:
        if x.dtype != torch.uint8 or tuple(x.shape[-3:]) != (3, self.image_h, self.image_w):
            raise ValueError(f"uwm: {cam!r} must be uint8 frames [..., 3, {self.image_h}, {self.image_w}], got "
                             f"{x.dtype} {tuple(x.shape)}")

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> dict[str, Tensor]:
        """latents [B, V, C, F, h, w] -> camera key -> uint8 [B, F, 3, H, W] (decoded by the codec)."""
        b, v, _, f = latents.shape[:4]
        frames = self.codec.decode(latents.transpose(2, 3).flatten(0, 2))  # [B*V*F, 3, H, W]
        frames = frames.view(b, v, f, *frames.shape[1:])
        return {k: frames[:, i] for i, k in enumerate(self.cameras)}

    # --- the denoiser --------------------------------------------------------------------------------
    def predict_noise(self, obs: Tensor, action: Tensor, t_action: Tensor, latents: Tensor,
                      t_obs: Tensor) -> tuple[Tensor, Tensor]:
        """One DiT pass. obs [B, obs_dim] (or null_obs rows), noisy action [B, H, A], noisy latents
        [B, V, C, F, h, w], timesteps int [B] each -> (action noise [B, H, A], latent noise like latents)."""
        b, v = latents.shape[:2]
        c = self.config
        a_tok = self.action_encoder(action)  # [B, H, d]
        z_tok = self.patch_encoder(latents.flatten(0, 1))  # [B*V, d, 1, gh, gw]
        z_tok = z_tok.flatten(2).transpose(1, 2).reshape(b, -1, c.d_model)  # [B, V*gh*gw, d]
        cond = torch.cat([obs, self.timestep_embedding(t_action, t_obs)], -1)
        out = self.dit(torch.cat([a_tok, z_tok], 1), cond)  # [B, H + V*gh*gw, d]
        eps_a = self.action_decoder(out[:, : c.horizon])
        gh, gw = self.grid
        p, f, ch = c.patch_size, c.future_steps, c.latent_channels
        eps_z = self.patch_decoder(out[:, c.horizon:]).view(b, v, gh, gw, ch, f, p, p)
        eps_z = eps_z.permute(0, 1, 4, 5, 2, 6, 3, 7).reshape(latents.shape)  # [B, V, C, F, gh*p, gw*p]
        return eps_a, eps_z

    # --- training --------------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """batch: images uint8 [B, T + F, 3, H, W] (T current frames, then the F future ones), state
        [B, T + F, D], action [B, H, A] with action_is_pad [B, H] (a row all padding = an action-free
        sample), task list[str] -> mse(action noise) + mse(latent noise). A mixed batch (``dataset.mixture``:
        action-free video beside the demos) is taken as one (``pad_mixture``)."""
        c = self.config
        batch = pad_mixture(batch)
        t_obs_frames = c.n_obs_steps
        for cam in self.cameras:
            if cam in batch and batch[cam].shape[1] != t_obs_frames + c.future_steps:
                raise ValueError(f"uwm.compute_loss: {cam!r} has {batch[cam].shape[1]} frames, expected "
                                 f"{t_obs_frames} current + {c.future_steps} future (observation_delta_indices "
                                 f"{c.observation_delta_indices})")
        if ACTION not in batch:
            raise KeyError(f"uwm.compute_loss: the batch has no {ACTION!r} (got {sorted(batch)}); action-free "
                           f"samples come with zero actions and {ACTION + PAD_SUFFIX} all true (dataset.mixture, pad_mixture)")
        current = {k: v[:, :t_obs_frames] for k, v in batch.items() if k in self.cameras or k in self.vectors}
        current[TASK] = batch.get(TASK)
        obs = self.encode_observation(current)  # [B, obs_dim]
        b, dev = obs.shape[0], obs.device
        if self.training and c.obs_dropout > 0:
            drop = torch.rand(b, device=dev) < c.obs_dropout
            obs = torch.where(drop[:, None], self.null_obs.expand_as(obs), obs)
        latents = self.encode_frames({k: batch[k][:, t_obs_frames:] for k in self.cameras})  # [B, V, C, F, h, w]
        action = self.normalizer.normalize(ACTION, batch[ACTION].float().to(dev))  # [B, H, A]
        pad = batch.get(ACTION + PAD_SUFFIX)
        has_action = ~pad.to(dev).all(1) if pad is not None else torch.ones(b, dtype=torch.bool, device=dev)

        T = c.num_train_timesteps
        t_action = torch.randint(0, T, (b,), device=dev)
        t_action = torch.where(has_action, t_action, torch.full_like(t_action, T - 1))
        t_latent = torch.randint(0, T, (b,), device=dev)
        noise_a, noise_z = torch.randn_like(action), torch.randn_like(latents)
        eps_a, eps_z = self.predict_noise(obs, self.scheduler.add_noise(action, noise_a, t_action), t_action,
                                          self.scheduler.add_noise(latents, noise_z, t_latent), t_latent)
        per_sample = F.mse_loss(eps_a, noise_a, reduction="none").mean((1, 2))  # [B]
        action_loss = (per_sample * has_action).sum() / has_action.sum().clamp(min=1)
        dynamics_loss = F.mse_loss(eps_z, noise_z)
        loss = action_loss + dynamics_loss
        return loss, {"action_mse": action_loss.item(), "dynamics_mse": dynamics_loss.item(),
                      "action_free": 1.0 - has_action.float().mean().item()}

    # --- sampling ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, mode: Mode | str, obs: dict[str, Any] | None = None, action: Tensor | None = None,
               frames: dict[str, Tensor] | None = None, num_inference_steps: int | None = None,
               batch_size: int | None = None, decode: bool = True, generator: torch.Generator | None = None
               ) -> UWMSample:
        """Sample in one of the six ``Mode``s.

        Args:
            mode: a ``Mode`` (or its value).
            obs: one step of observations (images uint8 [B, 3, H, W], state [B, D], task list[str]), with the
                history shown to ``observe`` before it; not used by UNCONDITIONAL_VIDEO.
            action: FORWARD_DYNAMICS: the clean chunk, unnormalised [B, H, A].
            frames: INVERSE_DYNAMICS: the future frames, camera key -> uint8 [B, F, 3, H, W] (offsets
                horizon .. horizon + F - 1 from the current step).
            num_inference_steps: DDIM steps (default ``config.num_inference_steps``).
            batch_size: UNCONDITIONAL_VIDEO: how many to sample.
            decode: also decode sampled latents to frames (needs the codec).
            generator: seeds the noise (default: torch's global RNG).
        Returns:
            ``UWMSample``: ``actions`` for POLICY / INVERSE_DYNAMICS / JOINT, ``latents`` (+ ``frames``) for
            VIDEO / FORWARD_DYNAMICS / UNCONDITIONAL_VIDEO / JOINT. Changes no state of the policy.
        """
        mode = Mode(mode)
        action_role, latent_role, conditioned = MODES[mode]
        c = self.config
        if conditioned:
            if obs is None:
                raise ValueError(f"uwm.sample({mode.value!r}) needs obs (one step of observations)")
            stacked, _ = self.history.window(self.history_step(obs))  # [B, T, ...]
            if TASK in obs:
                stacked[TASK] = obs[TASK]
            cond = self.encode_observation(stacked)
        else:
            if batch_size is None:
                raise ValueError(f"uwm.sample({mode.value!r}) needs batch_size")
            cond = self.null_obs.expand(batch_size, -1)
        b, dev = cond.shape[0], cond.device
        a_shape, z_shape = (b, c.horizon, self.action_dim), (b, len(self.cameras), c.latent_channels, c.future_steps,
                                                              *self.latent_shape[1:])
        if action_role is Role.CLEAN:
            if action is None or tuple(action.shape) != a_shape:
                raise ValueError(f"uwm.sample({mode.value!r}) needs action [B, H, A] = {list(a_shape)}, got "
                                 f"{None if action is None else list(action.shape)}")
            a = self.normalizer.normalize(ACTION, action.float().to(dev))
        else:
            a = torch.randn(a_shape, device=dev, generator=generator)
        if latent_role is Role.CLEAN:
            if frames is None:
                raise ValueError(f"uwm.sample({mode.value!r}) needs frames (camera -> uint8 [B, F, 3, H, W])")
            z = self.encode_frames(frames)
        else:
            z = torch.randn(z_shape, device=dev, generator=generator)

        T = c.num_train_timesteps
        fixed = {Role.CLEAN: 0, Role.NOISE: T - 1}
        self.scheduler.set_timesteps(num_inference_steps or c.num_inference_steps)
        for t in self.scheduler.timesteps.tolist():
            t_a = torch.full((b,), t if action_role is Role.DENOISE else fixed[action_role], device=dev)
            t_z = torch.full((b,), t if latent_role is Role.DENOISE else fixed[latent_role], device=dev)
            eps_a, eps_z = self.predict_noise(cond, a, t_a, z, t_z)
            if action_role is Role.DENOISE:
                a = self.scheduler.step(eps_a, t, a, generator=generator).prev_sample
            if latent_role is Role.DENOISE:
                z = self.scheduler.step(eps_z, t, z, generator=generator).prev_sample
        out = UWMSample()
        if action_role is Role.DENOISE:
            out.actions = self.normalizer.unnormalize(ACTION, a)
        if latent_role is Role.DENOISE:
            out.latents = z
            out.frames = self.decode_latents(z) if decode else None
        return out

    def history_step(self, obs: dict[str, Any]) -> dict[str, Tensor]:
        return {k: obs[k] for k in self.cameras + self.vectors if k in obs}

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        """The policy mode: one step of obs -> [B, H, A] unnormalised actions (DDIM, num_inference_steps)."""
        return self.sample(Mode.POLICY, obs, generator=generator).actions


class UWMFrameTransform:
    """The loader-side cache of lite0 mode: one episode's frames uint8 numpy [L, 3, H, W] -> float16 numpy
    [L, D] (``frame_features``: the frozen Lite0 map and the codec's latents of each frame), computed on CPU
    copies of the frozen networks; ``cache_id`` names both."""

    def __init__(self, lite0: nn.Module, codec: LatentCodec, batch_size: int = 64):
        import copy

        self.lite0, self.codec = copy.deepcopy(lite0).cpu(), copy.deepcopy(codec).cpu()
        self.batch_size = batch_size
        self.cache_id = f"uwm-{self.lite0.cache_id}-{self.codec.cache_id}"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        # np.array: a writable copy (the loader's frames may be read-only views; torch warns on those)
        chunks = [frame_features(self.lite0, self.codec, torch.from_numpy(np.array(frames[i:i + n])))
                  for i, n in ((i, self.batch_size) for i in range(0, len(frames), self.batch_size))]
        return torch.cat(chunks).to(torch.float16).numpy()


@torch.no_grad()
def frame_features(lite0: nn.Module, codec: LatentCodec, frames: Tensor) -> Tensor:
    """What lite0 mode caches per frame: uint8 [N, 3, H, W] -> float [N, D], the frozen Lite0 map and the
    codec's latents, flattened and concatenated, rounded to float16 as the cache stores them."""
    return round_like_cache(torch.cat([lite0(frames).flatten(1), codec.encode(frames).flatten(1)], 1))
