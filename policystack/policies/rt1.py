"""RT-1 (Brohan et al. 2022; google-research/robotics_transformer): a language-conditioned Robotics
Transformer that outputs every action dimension as one of 256 bins.

Data flow, one sample (B batch, T = n_obs_steps frames, C cameras, K tokens per image, d width,
A action dims, H horizon, E instruction-embedding size):

    task str ------------------> sentence encoder (frozen, outside the checkpoint) -> cond [E]
    images uint8 [T, C, 3, h, w] -> resize, ImageNet-normalise
        -> EfficientNet with FiLM(cond) after every MBConv block -> 1x1 conv to d -> FiLM(cond)
        -> feature map [d, g, g] (g*g = 81 at the paper size) -> TokenLearner -> [K = 8, d]
        + a learned camera embedding; each camera gives its own K tokens per frame
    state [T, D] (optional, not in RT-1) -> Linear -> one more token per frame
    per frame t: [obs tokens (C*K [+1]) | action tokens (H*A)], action tokens' inputs are zeros
    -> token embedding + learned positions -> decoder-only Transformer with RT-1's mask
    -> the last frame's H*A action tokens -> Linear -> logits [H, A, 256]

Training: cross-entropy of those logits against the actions normalised to [-1, 1] and binned
(``tokenizers.UniformActionTokenizer``), padded actions masked out. Inference: argmax -> bin centre
-> unnormalise. No action token sees a ground-truth action or another action token, so all A
dimensions come out of one forward pass.

The attention pattern is RT-1's (transformer_network.py ``_generate_masks``): causal token by token,
except that action tokens attend to no action token (neither earlier steps' nor their own step's).
Written as rules (layers/attention.py):
    obs -> obs: CAUSAL_TOKENS, obs -> act: STRICT_PAST, act -> obs: CAUSAL, act -> act: NEVER.
RT-1's code reads the logits of action dimension k at the position before action token k (a left
shift inherited from next-token training); since action tokens see no action token, reading each
dimension at its own token carries the same information and keeps one output per action token.

``backbone`` (not in RT-1's code, which fine-tunes an ImageNet EfficientNet-B3 with FiLM inside every
block): ``"efficientnet"`` is that FiLM-EfficientNet (trained from scratch at the tiny size unless
``backbone_weights`` names a local timm state dict); ``"lite0"`` (the tiny preset) is a frozen ImageNet
EfficientNet-Lite0 trunk cut after ``backbone_stages`` stages (``perception/image.py``; its features are
computed once per dataset frame and cached by the training loop) with the FiLM layers moved on top of it,
into a trainable conv head (``layers/vision.py`` ``FilmConvHead``, 1x1 to d, then 3x3s, each FiLM'd):

    images uint8 [T, C, 3, h, w] -> Lite0 trunk (frozen) -> [ch, g, g] -> FilmConvHead(cond) -> [d, g, g]
        -> TokenLearner -> [K, d] (+ camera embedding)

On two CPU cores this is what lets RT-1 see small objects and read the colour words (docs/results.md);
RT-1's own recipe (every block FiLM'd and fine-tuned) stays available as ``backbone: efficientnet``.

Multi-camera (not in RT-1, which has one camera): every camera goes through the same FiLM-EfficientNet
and TokenLearner and contributes its own K tokens per frame, told apart by a learned camera embedding.

At inference the policy's history (``Policy.history``, layers/history.py) keeps the image tokens of the
last frames (RT-1's network state): each policy tick encodes only the new frame (``predict_action_chunk``
reads the history, ``observe`` appends to it); earlier slots are padded (masked out of attention) until T
frames have been seen. ``reset()`` clears this history; so does a change of instruction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policystack.perception.image import LITE0_CHANNELS, LITE0_STRIDES, PretrainedImageEncoder
from policystack.perception.preprocess import ImagePreprocessor
from policystack.perception.text import TEXT_ENCODERS, encode_instructions, text_encoder_dim
from policystack.policies.base import Policy, PolicyConfig
from policystack.policies.layers.attention import (
    AttentionRule,
    TokenGroup,
    apply_key_padding,
    generate_attention_mask,
)
from policystack.policies.layers.augment import random_shift
from policystack.policies.layers.efficientnet_film import FilmEfficientNet, efficientnet_stride
from policystack.policies.layers.history import ObservationHistory
from policystack.policies.layers.position import sincos_2d
from policystack.policies.layers.token_learner import TokenLearner
from policystack.policies.layers.transformer import DecoderStack
from policystack.policies.layers.vision import FilmConvHead
from policystack.policies.tokenizers import UniformActionTokenizer
from policystack.types import ACTION, OBS_STATE, PAD_SUFFIX, TASK, FeatureSpec, Stats, image_keys

BINNED_ACTION_MODES = ("min_max", "quantile")


# ----------------------------------------------------------------------------------------------
# Config: defaults are the `tiny` preset (configs/policy/rt1.yaml); configs/policy/rt1_paper.yaml
# holds the published sizes.
# ----------------------------------------------------------------------------------------------
@dataclass
class RT1Config(PolicyConfig):
    # --- history and chunking (PolicyConfig fields) ---
    # frames of history (RT-1: 6). 1: a step costs 0.41 s against 0.94 s for 2 on one CPU thread, so the
    # hour holds 6500 steps instead of 3000 (Push 36% -> 88%, docs/results.md)
    n_obs_steps: int = 1
    # actions predicted per step (RT-1: 1, the current action; rt1_paper keeps 1). 4, of which 2 are
    # executed: a policy that re-predicts every step can sit at an expert's waypoint (PressButton)
    horizon: int = 4
    n_action_steps: int = 2  # actions executed per prediction
    # Actions are binned over [-1, 1], so they must be normalised onto it: "min_max" maps the dataset's
    # observed range onto the 256 bins (no training action is clipped; RT-1 bins over the action-space
    # bounds, which is what min/max estimate), "quantile" maps q01..q99 (finer bins, 2% tails clipped).
    normalization: dict[str, str] = field(
        default_factory=lambda: {"observation.state": "mean_std", "action": "min_max"})

    # --- language ---
    # "hashed_ordered" (hashed n-grams that keep word order: Stack's "the red cube on the green cube"),
    # "hashed" (cheaper, order-blind) or "minilm" (all-MiniLM-L6-v2, offline); perception/text.py
    text_encoder: str = "hashed_ordered"

    # --- image tokenizer ---
    # "lite0": frozen ImageNet EfficientNet-Lite0 trunk + FiLM'd conv head (features cached per dataset
    # frame); "efficientnet": RT-1's FiLM-EfficientNet (every block FiLM'd, trained)
    backbone: str = "lite0"
    image_size: int = 96  # frames are resized to image_size x image_size (paper: 288 -> 9x9 = 81 tokens)
    # training augmentation, RT-1's `pad_then_crop`: pad each side by this fraction of image_size (edge
    # pixels repeated), then crop an image_size window at a random offset, one offset per sample and
    # camera shared by its frames; evaluation sees the frame as is. 0 = off (paper: 40/512 rows, 100/640 cols)
    random_shift: float = 0.0
    backbone_width: float = 0.25  # efficientnet: channel multiplier (B3: 1.2)
    backbone_depth: float = 0.25  # efficientnet: depth multiplier (B3: 1.4)
    # stages of the backbone kept, 1..7. efficientnet: 7 = stride 32, 4..6 stride 16; lite0: 3 = 40
    # channels at stride 8 (12x12 at 96 px), 5 = 112 channels at stride 16
    backbone_stages: int = 3
    backbone_weights: str | None = None  # efficientnet: local timm state dict (load_external_weights)
    head_layers: int = 2  # lite0: conv layers of the FiLM head on the frozen trunk
    head_width: int = 64  # lite0: channels of the head's convolutions (then a 1x1 projection to d_model)
    tokens_per_image: int = 8  # TokenLearner output tokens per camera per frame (RT-1: 8)
    token_learner_bottleneck: int = 64  # TokenLearner MLP width (RT-1: 64)
    # add a fixed 2-D sin-cos code of each feature-map cell before TokenLearner, so that a pooled token
    # carries where it pooled from (not in RT-1, whose 300 px B3 features encode position themselves; a
    # small backbone trained from scratch does not, see docs/policies/rt1.md)
    position_embedding: bool = False
    use_state: bool = True  # add one proprioceptive-state token per frame (RT-1: False)

    # --- transformer ---
    d_model: int = 128  # token width (RT-1: 512)
    n_layer: int = 2  # decoder blocks (RT-1: 8)
    n_head: int = 4  # attention heads (RT-1: 8)
    head_dim: int = 32  # size of each head (RT-1: 128, so attention is 1024 wide inside a 512 model)
    mlp_hidden: int = 256  # feed-forward width (RT-1: 512)
    dropout: float = 0.1  # (RT-1: 0.1)

    # --- action tokens ---
    n_bins: int = 256  # bins per action dimension (RT-1: 256)

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"{name}.text_encoder is {self.text_encoder!r}; choose one of {sorted(TEXT_ENCODERS)}")
        mode = self.normalization.get(ACTION)
        if mode not in BINNED_ACTION_MODES:
            raise ValueError(f"{name}.normalization['action'] is {mode!r}; RT-1 bins actions over [-1, 1], so set it "
                             f"to one of {BINNED_ACTION_MODES}")
        for f in ("image_size", "tokens_per_image", "token_learner_bottleneck", "d_model", "n_layer", "n_head",
                  "head_dim", "mlp_hidden"):
            if getattr(self, f) < 1:
                raise ValueError(f"{name}.{f} must be >= 1, got {getattr(self, f)}")
        if self.backbone not in ("lite0", "efficientnet"):
            raise ValueError(f"{name}.backbone is {self.backbone!r}; choose 'lite0' (frozen ImageNet Lite0 + FiLM head) "
                             "or 'efficientnet' (RT-1's FiLM-EfficientNet)")
        if self.backbone == "lite0" and self.random_shift:
            raise ValueError(f"{name}.random_shift applies to backbone 'efficientnet' (lite0 trains on frozen features "
                             "cached per frame, which cannot be shifted); set random_shift: 0")
        if self.head_layers < 1 or self.head_width < 1:
            raise ValueError(f"{name}.head_layers and head_width must be >= 1, got {self.head_layers}, {self.head_width}")
        if not 1 <= self.backbone_stages <= 7:
            raise ValueError(f"{name}.backbone_stages must be in 1..7 (EfficientNet has 7 stages), "
                             f"got {self.backbone_stages}")
        if self.backbone_width <= 0 or self.backbone_depth <= 0:
            raise ValueError(f"{name}.backbone_width/backbone_depth must be > 0 (B3: 1.2/1.4), got "
                             f"{self.backbone_width}/{self.backbone_depth}")
        if self.n_bins < 2:
            raise ValueError(f"{name}.n_bins must be >= 2, got {self.n_bins}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.random_shift < 0.5:
            raise ValueError(f"{name}.random_shift must be in [0, 0.5) (a fraction of image_size), got {self.random_shift}")
        grid = self.feature_grid
        if self.tokens_per_image > grid * grid:
            raise ValueError(f"{name}.tokens_per_image={self.tokens_per_image} exceeds the {grid}x{grid} feature map "
                             f"of image_size={self.image_size} with {self.backbone_stages} stages; raise image_size, "
                             "lower backbone_stages or lower tokens_per_image")

    @property
    def feature_grid(self) -> int:
        """Side of the backbone's feature map (each stride-2 conv maps n -> ceil(n / 2))."""
        n = self.image_size
        stride = (LITE0_STRIDES[self.backbone_stages - 1] if self.backbone == "lite0"
                  else efficientnet_stride(self.backbone_stages))
        for _ in range(int(math.log2(stride))):
            n = math.ceil(n / 2)
        return n


# ----------------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------------
class RT1Policy(Policy):
    """RT-1 over any number of cameras; see the module docstring for the data flow."""

    name = "rt1"
    config_class = RT1Config

    def __init__(self, config: RT1Config, features: FeatureSpec, stats: Stats | None):
        super().__init__(config, features, stats)
        c = config
        self.camera_keys = sorted(image_keys(features))
        if not self.camera_keys:
            raise KeyError(f"RT1Policy needs at least one camera feature 'observation.images.<cam>'; got {sorted(features)}")
        if len(features[ACTION].shape) != 1:
            raise ValueError(f"RT1Policy needs a 1-D action, got shape {features[ACTION].shape}")
        if c.use_state and OBS_STATE not in features:
            raise KeyError(f"RT1Config.use_state is True but the features have no {OBS_STATE!r}; "
                           "set use_state: false for image-only data")
        self.action_dim = features[ACTION].shape[0]
        self.action_tokenizer = UniformActionTokenizer(c.n_bins, -1.0, 1.0)
        cond_dim = text_encoder_dim(c.text_encoder)  # the sentence encoder is frozen, outside the checkpoint

        # image tokenizer: (frozen Lite0 + FiLM head | FiLM-EfficientNet) -> TokenLearner (+ camera embedding)
        self.pretrained = None
        if c.backbone == "lite0":
            self.pretrained = PretrainedImageEncoder("lite0", c.backbone_stages, c.image_size, pretrained=False)
            self.image_head = FilmConvHead(LITE0_CHANNELS[c.backbone_stages - 1], c.head_width, cond_dim, c.head_layers,
                                           out_channels=c.d_model)
        else:
            self.preprocess = ImagePreprocessor(c.image_size, "imagenet")
            self.image_encoder = FilmEfficientNet(cond_dim, c.d_model, c.backbone_width, c.backbone_depth,
                                                  c.backbone_stages)
        self.token_learner = TokenLearner(c.d_model, c.tokens_per_image, c.token_learner_bottleneck)
        grid = c.feature_grid
        self.register_buffer("feature_pos", sincos_2d(c.d_model, grid, grid) if c.position_embedding else None,
                             persistent=False)  # [d, g, g] or None
        self.camera_embed = nn.Parameter(0.02 * torch.randn(len(self.camera_keys), 1, c.d_model))  # [C, 1, d]
        self.state_proj = nn.Linear(features[OBS_STATE].shape[0], c.d_model) if c.use_state else None

        # token sequence: per frame [obs tokens | action tokens], RT-1's attention rules
        self.n_obs_tokens = len(self.camera_keys) * c.tokens_per_image + int(c.use_state)
        self.n_act_tokens = c.horizon * self.action_dim
        self.token_groups = rt1_token_groups(c.n_obs_steps, self.n_obs_tokens, self.n_act_tokens)
        self.register_buffer("attn_mask", generate_attention_mask(self.token_groups), persistent=False)  # [N, N]
        seq_len = c.n_obs_steps * (self.n_obs_tokens + self.n_act_tokens)

        # decoder-only transformer (RT-1's Transformer: token Dense + learned positions, blocks, output Dense)
        self.token_emb = nn.Linear(c.d_model, c.d_model)
        self.pos_emb = nn.Embedding(seq_len, c.d_model)
        self.transformer = DecoderStack(c.n_layer, c.d_model, c.n_head, c.head_dim, c.mlp_hidden, c.dropout)
        self.head = nn.Linear(c.d_model, c.n_bins)

        # inference state besides self.history (image tokens): the instructions it was encoded with
        self._history_tasks: list[str] | None = None
        self._pending: tuple[dict, Tensor] | None = None  # (obs, its tokens) from the last predict_action_chunk

    def normalization_modes(self) -> dict[str, str]:
        """The action, and the state when ``use_state`` (RT-1 reads nothing else unnormalised)."""
        used = (ACTION, OBS_STATE) if self.config.use_state else (ACTION,)
        return {k: m for k, m in self.config.normalization.items() if k in used and k in self.features}

    def load_external_weights(self) -> None:
        """lite0: the package's ImageNet weights; efficientnet: the local timm state dict named by
        ``backbone_weights``, if any."""
        if self.pretrained is not None:
            self.pretrained.load_pretrained()
        elif self.config.backbone_weights:
            self.image_encoder.load_backbone_weights(self.config.backbone_weights)

    def frame_transforms(self) -> dict:
        """lite0: the frozen trunk, for the loader to cache its features per dataset frame."""
        return {k: self.pretrained.frame_transform() for k in self.camera_keys} if self.pretrained is not None else {}

    # --- language ----------------------------------------------------------------------------
    def embed_tasks(self, tasks: list[str] | str, batch_size: int) -> Tensor:
        """Instruction embeddings [B, E] on the policy's device."""
        return encode_instructions(self.config.text_encoder, tasks, batch_size, self.head.weight.device)

    # --- observation tokens --------------------------------------------------------------------
    def encode_frames(self, images: dict[str, Tensor], state: Tensor | None, cond: Tensor) -> Tensor:
        """Observation tokens of T frames.

        Args:
            images: camera key -> uint8 [B, T, 3, h, w] (lite0 also takes its cached feature maps
                [B, T, ch, g, g]); state: float [B, T, D] or None; cond: [B, E].
        Returns:
            [B, T, n_obs_tokens, d]: per frame C*K image tokens (camera order ``camera_keys``), then the
            state token.
        """
        first = images[self.camera_keys[0]]
        B, T = first.shape[:2]
        K, d, C = self.config.tokens_per_image, self.config.d_model, len(self.camera_keys)
        cond_rep = cond[:, None, None].expand(B, T, C, cond.shape[-1]).reshape(B * T * C, -1)
        if self.pretrained is not None:
            x = torch.stack([self.pretrained.features(images[k].flatten(0, 1)) for k in self.camera_keys], dim=1)
            feat = self.image_head(x.flatten(0, 1), cond_rep)  # [(B T C), d, g, g]; order b, t, c
        else:
            x = torch.stack([self.preprocess(images[k].flatten(0, 1), k) for k in self.camera_keys], dim=1)
            if self.training and self.config.random_shift > 0:
                x = shift_frames(x.view(B, T, C, *x.shape[2:]), self.config.random_shift)
            x = x.reshape(B * T * C, *x.shape[-3:])  # [(B T C), 3, S, S]; order b, t, c
            feat = self.image_encoder(x, cond_rep)  # [(B T C), d, g, g]
        if self.feature_pos is not None:
            feat = feat + self.feature_pos
        tokens = self.token_learner(feat).view(B, T, C, K, d) + self.camera_embed  # [B, T, C, K, d]
        tokens = tokens.flatten(2, 3)  # [B, T, C*K, d]
        if self.state_proj is not None:
            s = self.normalizer.normalize(OBS_STATE, state.to(tokens.device).float())  # [B, T, D]
            tokens = torch.cat([tokens, self.state_proj(s)[:, :, None]], dim=2)  # [B, T, C*K+1, d]
        return tokens

    # --- transformer ----------------------------------------------------------------------------
    def action_logits(self, obs_tokens: Tensor, frame_is_pad: Tensor | None = None) -> Tensor:
        """obs_tokens [B, T, n_obs_tokens, d], frame_is_pad bool [B, T] -> logits [B, H, A, n_bins]."""
        B, T = obs_tokens.shape[:2]
        if T != self.config.n_obs_steps:
            raise ValueError(f"RT1Policy was built for n_obs_steps={self.config.n_obs_steps} frames, got {T}")
        act = obs_tokens.new_zeros(B, T, self.n_act_tokens, obs_tokens.shape[-1])  # no ground truth goes in
        seq = torch.cat([obs_tokens, act], dim=2).flatten(1, 2)  # [B, N = T*(n_obs+n_act), d]
        x = self.token_emb(seq) + self.pos_emb.weight  # [B, N, d]
        mask = self.attn_mask
        if frame_is_pad is not None and bool(frame_is_pad.any()):
            per_frame = torch.cat([frame_is_pad[:, :, None].expand(B, T, self.n_obs_tokens),
                                   frame_is_pad.new_zeros(B, T, self.n_act_tokens)], dim=2)
            mask = apply_key_padding(mask, per_frame.flatten(1))  # [B, N, N]
        x = self.transformer(x, mask).view(B, T, -1, x.shape[-1])  # [B, T, n_obs+n_act, d]
        out = self.head(x[:, -1, self.n_obs_tokens:])  # [B, H*A, n_bins]: the last frame's action tokens
        return out.view(B, self.config.horizon, self.action_dim, self.config.n_bins)

    # --- training -------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy over the 256 bins of every action dimension, padded actions masked."""
        for key in (*self.camera_keys, ACTION, TASK) + ((OBS_STATE,) if self.config.use_state else ()):
            if key not in batch:
                raise KeyError(f"RT1Policy.compute_loss: the batch has no {key!r}; got {sorted(batch)}")
        B, T = batch[self.camera_keys[0]].shape[:2]
        cond = self.embed_tasks(batch[TASK], B)
        tokens = self.encode_frames({k: batch[k] for k in self.camera_keys}, batch.get(OBS_STATE), cond)
        logits = self.action_logits(tokens, self._frame_is_pad(batch, B, T))  # [B, H, A, n_bins]

        action = batch[ACTION].to(logits.device).float()  # [B, H, A]
        if action.shape[1:] != (self.config.horizon, self.action_dim):
            raise ValueError(f"batch['action'] has shape {tuple(action.shape)}; expected [B, {self.config.horizon}, "
                             f"{self.action_dim}] (horizon from RT1Config)")
        target = self.action_tokenizer.encode(self.normalizer.normalize(ACTION, action).clamp(-1.0, 1.0))
        ce = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view_as(target)  # [B, H, A]
        pad = batch.get(ACTION + PAD_SUFFIX)
        valid = (~pad.to(logits.device)).float()[:, :, None] if pad is not None else torch.ones_like(ce[..., :1])
        n_valid = (valid.sum() * self.action_dim).clamp(min=1.0)
        loss = (ce * valid).sum() / n_valid
        with torch.no_grad():
            acc = ((logits.argmax(-1) == target).float() * valid).sum() / n_valid
        return loss, {"loss": loss.item(), "token_accuracy": acc.item()}

    @staticmethod
    def _frame_is_pad(batch: dict[str, Any], B: int, T: int) -> Tensor | None:
        """bool [B, T]: frames that are repeats at an episode edge (any observation.*_is_pad), or None."""
        pads = [v for k, v in batch.items() if k.startswith("observation.") and k.endswith(PAD_SUFFIX)]
        if not pads:
            return None
        out = torch.zeros(B, T, dtype=torch.bool)
        for p in pads:
            out |= p.bool().cpu().view(B, T)
        return out

    # --- inference ------------------------------------------------------------------------------
    def _frame_tokens(self, obs: dict[str, Any]) -> tuple[Tensor, list[str]]:
        """Tokens [B, n_obs_tokens, d] of one step of observations (images uint8 [B, 3, h, w], state
        [B, D], task list[str] or str) and its instructions."""
        for key in (*self.camera_keys, TASK) + ((OBS_STATE,) if self.config.use_state else ()):
            if key not in obs:
                raise KeyError(f"RT1Policy: the observation has no {key!r}; got {sorted(obs)}")
        B = obs[self.camera_keys[0]].shape[0]
        last = self.history.last
        if last is not None and last.shape[0] != B:
            raise ValueError(f"batch size changed from {last.shape[0]} to {B} within an episode; "
                             "call reset() between episodes")
        tasks = [obs[TASK]] * B if isinstance(obs[TASK], str) else list(obs[TASK])
        if self._pending is not None and self._pending[0] is obs:  # encoded by predict_action_chunk just now
            return self._pending[1], tasks
        state = obs[OBS_STATE][:, None] if self.config.use_state else None
        tokens = self.encode_frames({k: obs[k][:, None] for k in self.camera_keys}, state,
                                    self.embed_tasks(tasks, B))  # [B, 1, n_obs_tokens, d]
        return tokens[:, 0], tasks

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, Any]) -> Tensor:
        """[B, H, A] unnormalised actions from the history (earlier frames, see ``observe``) and this
        step's observations; the history itself is not changed."""
        current, tasks = self._frame_tokens(obs)
        self._pending = (obs, current)  # observe(obs) right after this reuses the tokens
        # tokens depend on the instruction: a new one starts from an empty history
        history = self.history if tasks == self._history_tasks else ObservationHistory(self.config.n_obs_steps)
        tokens, is_pad = history.window(current)  # [B, T, n_obs, d] left-padded, [B, T]
        ids = self.action_logits(tokens, is_pad).argmax(-1)  # [B, H, A]
        return self.normalizer.unnormalize(ACTION, self.action_tokenizer.decode(ids))

    @torch.no_grad()
    def observe(self, obs: dict[str, Any]) -> None:
        """Append this step's image tokens to the history (every policy tick); a new instruction starts
        the history afresh."""
        if self.config.n_obs_steps == 1:  # nothing to keep
            self._pending = None
            return
        tokens, tasks = self._frame_tokens(obs)
        self._pending = None
        if tasks != self._history_tasks:
            self.history.clear()
            self._history_tasks = tasks
        self.history.append(tokens)

    def reset(self) -> None:
        super().reset()
        self._history_tasks = None
        self._pending = None


def shift_frames(x: Tensor, fraction: float) -> Tensor:
    """RT-1's pad-then-crop on x [B, T, C, 3, S, S]: each (sample, camera) moved by one random offset of
    up to fraction*S pixels per axis, all T frames alike (``layers.augment.random_shift``)."""
    B, T, C, ch, H, W = x.shape
    p = round(fraction * H)
    if p == 0:
        return x
    shifted = random_shift(x.transpose(1, 2).reshape(B * C, T * ch, H, W), p)
    return shifted.view(B, C, T, ch, H, W).transpose(1, 2)


def rt1_token_groups(n_frames: int, n_obs_tokens: int, n_act_tokens: int) -> list[TokenGroup]:
    """RT-1's layout and rules: per frame ``obs`` then ``act`` tokens; see the module docstring."""
    groups = []
    for t in range(n_frames):
        groups.append(TokenGroup("obs", t, n_obs_tokens,
                                 {"obs": AttentionRule.CAUSAL_TOKENS, "act": AttentionRule.STRICT_PAST}))
        groups.append(TokenGroup("act", t, n_act_tokens, {"obs": AttentionRule.CAUSAL}))
    return groups
