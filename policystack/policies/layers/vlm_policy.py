"""What the policies built on a vision-language model (RT-2, EMMA) share: the VLM and vision config
fields, the Lite0 feature projector, and a policy base that builds the VLM (perception/vlm.py), plugs
the frozen (or fine-tuned) EfficientNet-Lite0 in front of it, turns camera frames (or the loader's
cached Lite0 maps) into image tokens, and injects LoRA adapters.

Shapes (B batch, T frames, C cameras, K tokens per image, D the text model's width):
    images uint8 [B, T, 3, h, w] per camera (or cached Lite0 maps float [B, T, 112, g, g])
    -> [FiLM by the instruction, ``film``] -> ``VLMPolicy.image_tokens`` -> float [B, T*C, K, D]
    (the VLM's ``image_features=``)

``film: hashed`` (or ``minilm``, ``hashed_ordered``: a sentence encoder of perception/text.py) modulates
every camera's Lite0 map by the instruction before the projector, as RT-1, bc and UWM condition theirs
(layers/film.py, the identity at initialisation): the image tokens the language model reads already
depend on which object the words name. The text model still reads the instruction in its prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policystack.perception.image import LITE0_CHANNELS, PretrainedImageEncoder, lite0_grid
from policystack.perception.text import TEXT_ENCODERS, encode_instructions, text_encoder_dim
from policystack.perception.vlm import FAMILIES as VLM_FAMILIES
from policystack.perception.vlm import VisionLanguageModel, VLMConfig, build_vlm
from policystack.policies.base import Policy, PolicyConfig
from policystack.policies.layers.film import FiLM
from policystack.types import FeatureSpec, Stats, image_keys

VISION_TOWERS = ("lite0", "builtin")
FINETUNES = ("full", "lora")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class VLMPolicyConfig(PolicyConfig):
    """The vision-language model, vision and fine-tuning fields of a VLM-based family (defaults: the
    tiny size, a random-init 4-layer text model reading frozen Lite0 features)."""

    # --- the vision-language model (perception/vlm.py) ---
    vlm_family: str = "smolvlm"  # one of perception.vlm.FAMILIES
    vlm_weights: str = "tiny"  # "tiny" (random init at the sizes below), "smollm2" or a local model directory
    text_width: int = 256  # random-init text model (weights "tiny"): width, layers, heads, positions
    text_depth: int = 4
    text_heads: int = 4
    text_kv_heads: int | None = None  # None: text_heads
    text_intermediate: int | None = None  # None: 4 x text_width
    context_length: int = 512
    vocab_size: int | None = None  # None: the tokenizer's; larger pads it (to describe a real model's size)
    text_layers: int | None = None  # vlm_weights "smollm2": keep its first N pretrained layers (None: all 30)

    # --- vision ---
    # "lite0": frozen (or fine-tuned) ImageNet EfficientNet-Lite0 + an MLP projector; "builtin": the VLM's tower
    vision_tower: str = "lite0"
    image_size: int = 96  # frames are resized to image_size x image_size
    lite0_stages: int = 5  # Lite0 stages kept (5: 112 channels at stride 16 -> 6x6 at 96 px)
    image_grid: int | None = None  # lite0: pool the map to grid x grid tokens per image (None: as it is)
    freeze_vision: bool = True  # no gradient into the vision encoder (its projector always trains)
    film: str = "none"  # lite0: FiLM each Lite0 map by the instruction through this sentence encoder ("none": off)
    patch_size: int = 16  # builtin tower sizes (random init unless vlm_weights is a directory)
    vision_width: int = 256
    vision_depth: int = 4
    vision_heads: int = 4
    vision_intermediate: int | None = None  # None: 4 x vision_width
    scale_factor: int = 2  # builtin smolvlm/idefics3 pixel shuffle

    # --- fine-tuning ---
    finetune: str = "full"  # "full" or "lora" (adapters in the text model + the family's new token rows)
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.vlm_family not in VLM_FAMILIES:
            raise ValueError(f"{name}.vlm_family: unknown VLM class {self.vlm_family!r}; available: "
                             f"{sorted(VLM_FAMILIES)}")
        if self.vision_tower not in VISION_TOWERS:
            raise ValueError(f"{name}.vision_tower is {self.vision_tower!r}; choose one of {VISION_TOWERS}")
        if self.vision_tower == "lite0" and not VLM_FAMILIES[self.vlm_family].accepts_image_features:
            ok = sorted(n for n, f in VLM_FAMILIES.items() if f.accepts_image_features)
            raise ValueError(f"{name}: vision_tower 'lite0' feeds projected features, which vlm_family "
                             f"{self.vlm_family!r} does not take; use one of {ok} or vision_tower 'builtin'")
        if self.film != "none" and (self.film not in TEXT_ENCODERS or self.vision_tower != "lite0"):
            raise ValueError(f"{name}.film is {self.film!r}: FiLM of the Lite0 maps by the instruction takes one of "
                             f"{sorted(TEXT_ENCODERS)} (or 'none') and vision_tower 'lite0' (got "
                             f"{self.vision_tower!r})")
        if self.finetune not in FINETUNES:
            raise ValueError(f"{name}.finetune is {self.finetune!r}; choose one of {FINETUNES}")
        if not 1 <= self.lite0_stages <= len(LITE0_CHANNELS):
            raise ValueError(f"{name}.lite0_stages must be in 1..{len(LITE0_CHANNELS)}, got {self.lite0_stages}")
        if self.vision_tower == "lite0" and self.image_grid is not None and not 1 <= self.image_grid <= self.lite0_grid:
            raise ValueError(f"{name}.image_grid={self.image_grid} must be in 1..{self.lite0_grid} (the Lite0 map "
                             f"of {self.image_size} px after {self.lite0_stages} stages), or null")
        if self.lora_rank < 1 or self.lora_alpha < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"{name}: lora_rank and lora_alpha must be >= 1 and lora_dropout in [0, 1), got "
                             f"{self.lora_rank}, {self.lora_alpha}, {self.lora_dropout}")
        self.vlm_config()  # the VLM sizes are checked by VLMConfig

    @property
    def lite0_grid(self) -> int:
        return lite0_grid(self.image_size, self.lite0_stages)

    def vlm_config(self) -> VLMConfig:
        return VLMConfig(family=self.vlm_family, weights=self.vlm_weights, image_size=self.image_size,
                         patch_size=self.patch_size, vision_width=self.vision_width, vision_depth=self.vision_depth,
                         vision_heads=self.vision_heads, vision_intermediate=self.vision_intermediate,
                         text_width=self.text_width, text_depth=self.text_depth, text_heads=self.text_heads,
                         text_kv_heads=self.text_kv_heads, text_intermediate=self.text_intermediate,
                         context_length=self.context_length, vocab_size=self.vocab_size,
                         scale_factor=self.scale_factor, text_layers=self.text_layers)


class FeatureProjector(nn.Module):
    """Feature maps float [N, C, g, g] of camera ``cam`` -> tokens [N, k*k, D]: average-pooled to k x k,
    LayerNorm over channels, Linear-GELU-Linear (OpenVLA's MLP projector), plus a learned embedding per
    cell and per camera."""

    def __init__(self, channels: int, grid: int, width: int, n_cameras: int):
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, width), nn.GELU(approximate="tanh"), nn.Linear(width, width))
        self.cell_embed = nn.Parameter(0.02 * torch.randn(grid * grid, width))
        self.camera_embed = nn.Parameter(0.02 * torch.randn(n_cameras, 1, width))

    def forward(self, maps: Tensor, cam: int) -> Tensor:
        if maps.shape[-1] != self.grid:
            maps = F.adaptive_avg_pool2d(maps, self.grid)
        x = self.norm(maps.flatten(2).transpose(1, 2))  # [N, k*k, C]
        return self.mlp(x) + self.cell_embed + self.camera_embed[cam]


class VLMPolicy(Policy):
    """Base of the VLM families: ``self.vlm``, and with ``vision_tower: lite0`` ``self.image_encoder``
    (Lite0, in the checkpoint) and ``self.projector``. A subclass calls ``super().__init__``, adds its own
    tokens (``self.vlm.add_tokens``) and then ``finish_init(new_token_ids)`` (LoRA, when configured, trains
    those rows of the embedding beside the adapters)."""

    def __init__(self, config: VLMPolicyConfig, features: FeatureSpec, stats: Stats | None):
        super().__init__(config, features, stats)
        c = config
        self.camera_keys = sorted(image_keys(features))
        if not self.camera_keys:
            raise KeyError(f"{type(self).__name__} needs at least one camera feature 'observation.images.<cam>'; "
                           f"got {sorted(features)}")
        self.vlm: VisionLanguageModel = build_vlm(c.vlm_config())
        if c.vision_tower == "lite0":
            self.vlm.drop_builtin_tower()  # the projected Lite0 features go in instead (image_features=)
        # Lite0 (ImageNet weights from load_external_weights), frozen or fine-tuned; in the checkpoint either way
        self.image_encoder: PretrainedImageEncoder | None = None
        self.projector: FeatureProjector | None = None
        self.film: FiLM | None = None

    def finish_init(self, new_token_ids: list[int]) -> None:
        """Build the vision side (after the subclass's tokens, so parameter order stays as it was) and LoRA."""
        c = self.config
        if c.vision_tower == "lite0":
            self.image_encoder = PretrainedImageEncoder("lite0", c.lite0_stages, c.image_size, pretrained=False,
                                                        frozen=c.freeze_vision)
            self.projector = FeatureProjector(LITE0_CHANNELS[c.lite0_stages - 1], c.image_grid or c.lite0_grid,
                                              self.vlm.hidden_size, len(self.camera_keys))
            if c.film != "none":
                self.film = FiLM(text_encoder_dim(c.film), LITE0_CHANNELS[c.lite0_stages - 1])
        elif c.freeze_vision:
            for p in self.vlm.vision_parameters():
                p.requires_grad_(False)
        if c.finetune == "lora":
            self._inject_lora(new_token_ids)

    def _inject_lora(self, new_token_ids: list[int]) -> None:
        """LoRA adapters in the text model (peft, in place); of the text model only the adapters and the
        new tokens' embedding rows train (a gradient mask keeps the other rows as they are)."""
        from peft import LoraConfig, inject_adapter_in_model

        c = self.config
        text_model = self.vlm.model.model.text_model
        for p in text_model.parameters():
            p.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                                           target_modules=list(c.lora_targets)), text_model)
        if not new_token_ids:
            return
        embedding = self.vlm.model.get_input_embeddings().weight
        embedding.requires_grad_(True)
        rows = torch.zeros(embedding.shape[0], 1, dtype=torch.bool)
        rows[list(new_token_ids)] = True
        self.register_buffer("_trainable_rows", rows, persistent=False)
        embedding.register_hook(lambda g: g * self._trainable_rows.to(g.device))
        if not self.vlm.model.config.tie_word_embeddings:  # a separate output layer: its new rows train too
            head = self.vlm.model.lm_head.weight
            head.requires_grad_(True)
            head.register_hook(lambda g: g * self._trainable_rows.to(g.device))

    def load_external_weights(self) -> None:
        """lite0: the package's ImageNet weights into the Lite0 trunk (the VLM's weights come with its config)."""
        if self.image_encoder is not None:
            self.image_encoder.load_pretrained()

    def frame_transforms(self) -> dict[str, Any]:
        """Camera key -> the frozen Lite0's per-frame feature function, so the loader computes the maps
        once per dataset frame and ``compute_loss`` gets them as float tensors (none otherwise)."""
        if self.image_encoder is None or not self.config.freeze_vision:
            return {}
        return {k: self.image_encoder.frame_transform() for k in self.camera_keys}

    def fsdp_modules(self) -> list[nn.Module]:
        """strategy=fsdp units: the text model's decoder layers and the built-in vision encoder's layers."""
        text = list(self.vlm.model.model.text_model.layers)
        vision = self.vlm.model.model.vision_model
        return text + (list(vision.encoder.layers) if vision is not None else [])

    @property
    def device(self) -> torch.device:
        return self.vlm.model.get_input_embeddings().weight.device

    def _lite0_maps(self, x: Tensor, key: str) -> Tensor:
        """uint8 frames [N, 3, h, w] (encoded here) or the loader's cached maps float [N, C, g, g] -> maps."""
        c, encoder = self.config, self.image_encoder
        if x.dtype == torch.uint8:  # frozen: rounded as the cache stores them (float16)
            return encoder.features(x.to(self.device))
        expected = (LITE0_CHANNELS[c.lite0_stages - 1], c.lite0_grid, c.lite0_grid)
        if not encoder.frozen or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{key!r}: float input {list(x.shape)} is not this policy's cached Lite0 maps [N, "
                             f"{', '.join(map(str, expected))}] (cached features need freeze_vision: true); "
                             "expected uint8 images [N, 3, H, W]")
        return x.to(self.device).float()

    def image_tokens(self, images: dict[str, Tensor], tasks: Sequence[str] | None = None) -> Tensor:
        """Camera key -> uint8 frames [B, T, 3, h, w] (or cached Lite0 maps [B, T, C, g, g]) ->
        projected image tokens [B, T*C, K, D], frames in time order, cameras in ``camera_keys`` order.
        ``tasks``: each sample's instruction (B strings), which FiLM modulates the maps by (``film``)."""
        cond = None
        if self.film is not None:
            B = next(iter(images.values())).shape[0]
            if tasks is None:
                raise ValueError(f"{type(self).__name__}(film={self.config.film!r}) modulates the image features by "
                                 "the instruction: image_tokens needs each sample's instruction (tasks=)")
            cond = encode_instructions(self.config.film, list(tasks), B, self.device)  # [B, E]
        per_camera = []
        for i, key in enumerate(self.camera_keys):
            x = images[key]
            B, T = x.shape[:2]
            flat = x.flatten(0, 1)
            if self.projector is not None:
                maps = self._lite0_maps(flat, key)
                if cond is not None:
                    maps = self.film(maps, cond.repeat_interleave(T, 0))
                tokens = self.projector(maps, i)  # [B*T, K, D]
            else:
                tokens = self.vlm.image_features(flat.to(self.device))[:, 0]
            per_camera.append(tokens.view(B, T, *tokens.shape[1:]))
        return torch.stack(per_camera, 2).flatten(1, 2)
