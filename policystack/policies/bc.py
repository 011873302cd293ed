"""bc: plain behaviour cloning, the reference implementation of the Policy interface.

Per camera a feature map ending in a spatial softmax (keypoints, as in robomimic and diffusion_policy)
encodes each frame; the keypoints of every camera and frame of history, the normalised state and a
projection of the instruction's embedding go through an MLP that regresses a whole chunk of
normalised actions (L1 loss, padded steps masked).

``vision_backbone`` picks the feature map:
- ``"lite0"`` (default): the frozen ImageNet EfficientNet-Lite0 trunk (``perception/image.py``, shared by
  all cameras; its features are computed once per dataset frame and cached by the training loop),
  then per camera a ``FilmConvHead`` conditioned on the instruction (the suite's scenes hold
  distractors that differ only in colour: FiLM lets the words select which object the keypoints
  follow).
- ``"conv"``: a small conv net per camera trained from scratch (``perception/conv.py``), with DrQ
  random-shift augmentation; the instruction only enters the MLP.

    images uint8 [B, T, 3, H, W] --lite0 (frozen) + FiLM conv | conv--> map --spatial softmax--> [B, T, 2K] per camera --+
    state [B, T, D] (+ environment_state [B, T, E]) --normalise---------------------------------------------------------+
    task list[str] --text encoder (frozen)--> [B, E] --linear--> [B, task_dim] ------------------------------------------+--> MLP --> [B, H, A]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from policystack.perception.conv import ConvEncoder, SpatialSoftmax
from policystack.perception.image import PretrainedImageEncoder
from policystack.perception.preprocess import ImagePreprocessor
from policystack.perception.text import encode_instructions, text_encoder_dim
from policystack.policies.base import Policy, PolicyConfig
from policystack.policies.layers.augment import random_shift
from policystack.policies.layers.vision import FilmConvHead
from policystack.types import ACTION, OBS_ENV_STATE, OBS_STATE, TASK, FeatureSpec, Stats


@dataclass
class BCConfig(PolicyConfig):
    n_obs_steps: int = 1
    horizon: int = 4  # actions regressed per chunk
    n_action_steps: int = 2  # executed before predicting again (1 stalls at an expert's waypoint: docs/results.md)
    # vision: "lite0" (frozen ImageNet EfficientNet-Lite0 trunk + instruction-FiLM'd conv head) or "conv"
    # (a small conv net trained from scratch)
    vision_backbone: str = "lite0"
    backbone_stages: int = 3  # lite0: trunk stages kept (3: 40 channels at stride 8; 5: 112 at stride 16)
    backbone_image_size: int = 96  # lite0: frames resized to this before the trunk
    head_width: int = 64  # lite0: channels of the FiLM conv head
    head_layers: int = 2  # lite0: conv layers of the head (1x1, then 3x3s), each FiLM'd by the instruction
    conv_channels: tuple[int, ...] = (32, 64, 64)  # conv: stride-2 conv stages before the keypoint layer
    keypoints: int = 32  # spatial-softmax keypoints per camera (2 numbers each)
    random_shift: int = 4  # conv: pixels of random shift augmentation in training (0 = off)
    # language: "hashed" / "hashed_ordered" (cheap n-gram hashing), "minilm" (sentence encoder, offline) or "none"
    text_encoder: str = "hashed"
    task_dim: int = 64  # size of the instruction's projection fed to the head
    # head
    hidden_dim: int = 512
    n_layers: int = 2
    dropout: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not self.conv_channels:
            raise ValueError("BCConfig.conv_channels needs at least one stage, e.g. (32, 64, 64)")
        if self.keypoints < 1 or self.hidden_dim < 1 or self.n_layers < 1:
            raise ValueError("BCConfig.keypoints, hidden_dim and n_layers must be >= 1")
        if self.vision_backbone not in ("lite0", "conv"):
            raise ValueError(f"BCConfig.vision_backbone is {self.vision_backbone!r}; choose 'lite0' (frozen pretrained "
                             "EfficientNet-Lite0 + FiLM head) or 'conv' (small conv net from scratch)")

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
        c = config
        self.pretrained = None
        if not self.cameras:
            pass
        elif c.vision_backbone == "lite0":  # one frozen trunk for every camera, a FiLM head + keypoints per camera
            self.pretrained = PretrainedImageEncoder("lite0", c.backbone_stages, c.backbone_image_size, pretrained=False)
            cond = text_encoder_dim(c.text_encoder) if c.text_encoder != "none" else 0  # none: a plain conv head
            self.heads = nn.ModuleDict({k.replace(".", "_"): FilmConvHead(self.pretrained.out_channels, c.head_width,
                                                                         cond, c.head_layers) for k in self.cameras})
            self.keypoint_layers = nn.ModuleDict({k.replace(".", "_"): SpatialSoftmax(c.head_width, c.keypoints)
                                                  for k in self.cameras})
        else:
            self.preprocess = ImagePreprocessor(normalization="half")  # pixels to [-1, 1]
            self.encoders = nn.ModuleDict({k.replace(".", "_"): ConvEncoder(c.conv_channels, c.keypoints)
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

    def load_external_weights(self) -> None:
        if self.pretrained is not None:
            self.pretrained.load_pretrained()

    def frame_transforms(self) -> dict:
        return {k: self.pretrained.frame_transform() for k in self.cameras} if self.pretrained is not None else {}

    def _features(self, obs: dict[str, Tensor]) -> Tensor:
        """obs with a time axis ([B, T, ...]; cameras as uint8 frames or, for lite0, cached feature maps)
        -> [B, T * F (+ task_dim)]."""
        emb = None
        if self.config.text_encoder != "none":
            if TASK not in obs:
                raise KeyError(f"bc with text_encoder={self.config.text_encoder!r} needs the instruction {TASK!r} "
                               "(list[str]) in the observation")
            b = next(v for k, v in obs.items() if k != TASK).shape[0]
            emb = encode_instructions(self.config.text_encoder, obs[TASK], b, self.head[0].weight.device)  # [B, E]
        parts = []
        for cam in self.cameras:
            x = obs[cam]  # [B, T, 3, H, W] uint8, or [B, T, C, g, g] cached features
            b, t = x.shape[:2]
            key = cam.replace(".", "_")
            if self.pretrained is not None:
                cond = emb.repeat_interleave(t, 0) if emb is not None else None
                fmap = self.heads[key](self.pretrained.features(x.flatten(0, 1)), cond)
                parts.append(self.keypoint_layers[key](fmap).view(b, t, -1))
                continue
            flat = self.preprocess(x.flatten(0, 1), cam)  # [B*T, 3, H, W] in [-1, 1]
            if self.training and self.config.random_shift > 0:
                flat = random_shift(flat, self.config.random_shift)
            parts.append(self.encoders[key](flat).view(b, t, -1))
        for key in self.vectors:
            parts.append(self.normalizer.normalize(key, obs[key].float()))
        feats = torch.cat(parts, -1).flatten(1)
        return feats if emb is None else torch.cat([feats, self.task_proj(emb)], -1)

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
