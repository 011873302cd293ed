"""RT-2-style vision-language-action policy (Brohan et al. 2023; OpenVLA, Kim et al. 2024): a
vision-language model whose vocabulary carries the actions.

Data flow, one sample (B batch, C cameras, T = n_obs_steps frames, K image tokens per frame and
camera, D the text model's width, A action dims, H = horizon action steps per call):

    images uint8 [T, C, 3, h, w]
      vision_tower="lite0": ImageNet EfficientNet-Lite0 cut after ``lite0_stages`` stages
          (perception/image.py; frozen unless ``freeze_vision: false``) -> feature map [112, g, g] per image
          (g = 6 at 96 px), or those maps cached per dataset frame by the loader (``frame_transforms``)
          -> average-pooled to ``image_grid`` x ``image_grid`` -> LayerNorm -> Linear-GELU-Linear
          (OpenVLA's MLP projector) + learned cell and camera embeddings -> K = grid^2 tokens [K, D]
      vision_tower="builtin": the VLM's own SigLIP-style tower + pixel-shuffle projector
    prompt "In: What action should the robot take to {instruction}?\\nOut:"
    sequence [pad ...] [per image: <fake_token_around_image><global-img> K x <image> ...] [prompt]
             [H x (A action tokens [+ 1 terminate token])] [end token]
    -> the VLM's text model (tiny random-init Llama, SmolLM2-135M-Instruct, or a local VLM directory)

Action tokens (OpenVLA's ``ActionTokenizer``): each action dimension normalised to [-1, 1] by the
dataset's q01 / q99 (``normalization: {action: quantile}``; values beyond are clipped), cut into 256
uniform bins (``tokenizers.UniformActionTokenizer``) and mapped onto 256 DEDICATED token ids appended
to the vocabulary (``VisionLanguageModel.add_tokens`` + ``tokenizers.TokenBlock``): ``<act_0>`` ..
``<act_255>``. OpenVLA overwrites Llama-2's 256 least-used ids instead (``id = vocab - digitize(a)``);
here that would give real words a second meaning: SmolLM2's last ids are ordinary BPE merges, the byte
tokenizer of the tiny model has no spare ids, and co-training keeps answering in text. 256 new rows
cost 256 x D parameters (0.1% of SmolLM2-135M).

Training: cross-entropy on the action tokens and the end token only (the images and prompt carry no
loss; the steps of a chunk past an episode's end are out of the loss). Co-training (RT-2): a batch may
also hold vision-language examples (``datasets/vqa.py``: captions, VQA, pointing rendered from the
suite's own scenes, mixed in by the training loop, ``dataset.mixture``): each is laid out the same way,
"In: {question}\\nOut:" then the answer in text, and its answer tokens join the one loss.

Inference: greedy decoding of exactly H x (A [+1]) tokens, constrained to the 256 action ids by a
``LogitsProcessor`` (``perception.vlm.AllowedTokens``: every other logit is -inf, so a non-action
token cannot come out; OpenVLA only clips invalid ids afterwards) -> bins -> bin centres -> the
inverse of the q01/q99 normalisation.

Terminate (RT-2's eighth action dimension, ``terminate_token``): one more token per step, the bin of
+1 when the episode ends after that step, of -1 otherwise. Its label comes from the data: step t is the
last of its episode when offset t+1 is past the episode's end (so the loader gives H+1 action offsets);
demonstrations recorded by ``policystack collect`` end at success. Decoded as "done" when the value is
above 0, returned by ``predict_action_chunk_with_done``; eval and the daemon end the episode on it.

Action chunks (``horizon`` > 1): H steps of tokens per call, which amortises one forward pass over the
image and prompt over H actions (one call per step is slow on a CPU; docs/policies/rt2.md measures it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policystack.datasets.mixture import split_mixture
from policystack.datasets.vqa import split_vl_task
from policystack.perception.image import LITE0_CHANNELS, PretrainedImageEncoder, lite0_grid
from policystack.perception.vlm import FAMILIES as VLM_FAMILIES
from policystack.perception.vlm import VisionLanguageModel, VLMConfig, build_vlm
from policystack.policies.base import Policy, PolicyConfig
from policystack.policies.tokenizers import TokenBlock, UniformActionTokenizer
from policystack.types import ACTION, PAD_SUFFIX, TASK, FeatureSpec, Stats, image_keys

PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
VL_PROMPT = "In: {question}\nOut:"  # co-training examples: same layout, the answer in text
ACTION_TOKEN = "<act_{}>"
VISION_TOWERS = ("lite0", "builtin")
FINETUNES = ("full", "lora")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ----------------------------------------------------------------------------------------------
# Config: defaults are the `tiny` preset (configs/policy/rt2.yaml); rt2_smollm2.yaml has the real
# language model, rt2_paper.yaml OpenVLA's size.
# ----------------------------------------------------------------------------------------------
@dataclass
class RT2Config(PolicyConfig):
    # --- history and chunking (PolicyConfig fields) ---
    n_obs_steps: int = 1  # frames per call, each as images in the prompt (RT-2 / OpenVLA: 1)
    horizon: int = 1  # action steps written per call (OpenVLA: 1); >1 = action chunks
    n_action_steps: int = 1  # of them executed before the next call
    normalization: dict[str, str] = field(default_factory=lambda: {"action": "quantile"})  # q01/q99 -> [-1, 1]

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

    # --- vision ---
    # "lite0": frozen (or fine-tuned) ImageNet EfficientNet-Lite0 + an MLP projector; "builtin": the VLM's tower
    vision_tower: str = "lite0"
    image_size: int = 96  # frames are resized to image_size x image_size
    lite0_stages: int = 5  # Lite0 stages kept (5: 112 channels at stride 16 -> 6x6 at 96 px)
    image_grid: int | None = None  # lite0: pool the map to grid x grid tokens per image (None: as it is)
    freeze_vision: bool = True  # no gradient into the vision encoder (its projector always trains)
    patch_size: int = 16  # builtin tower sizes (random init unless vlm_weights is a directory)
    vision_width: int = 256
    vision_depth: int = 4
    vision_heads: int = 4
    vision_intermediate: int | None = None  # None: 4 x vision_width
    scale_factor: int = 2  # builtin smolvlm/idefics3 pixel shuffle

    # --- action tokens ---
    n_bins: int = 256  # bins per action dimension (OpenVLA: 256)
    terminate_token: bool = False  # RT-2's eighth dimension: one more token per step, "the episode ends here"

    # --- fine-tuning ---
    finetune: str = "full"  # "full" or "lora" (adapters in the text model + the action token rows)
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.normalization.get(ACTION) not in ("quantile", "min_max"):
            raise ValueError(f"{name}.normalization['action'] is {self.normalization.get(ACTION)!r}; actions are "
                             "binned over [-1, 1], so set it to 'quantile' (OpenVLA's q01/q99) or 'min_max'")
        if self.vlm_family not in VLM_FAMILIES:
            raise ValueError(f"{name}.vlm_family: unknown VLM class {self.vlm_family!r}; available: "
                             f"{sorted(VLM_FAMILIES)}")
        if self.vision_tower not in VISION_TOWERS:
            raise ValueError(f"{name}.vision_tower is {self.vision_tower!r}; choose one of {VISION_TOWERS}")
        if self.vision_tower == "lite0" and not VLM_FAMILIES[self.vlm_family].accepts_image_features:
            ok = sorted(n for n, f in VLM_FAMILIES.items() if f.accepts_image_features)
            raise ValueError(f"{name}: vision_tower 'lite0' feeds projected features, which vlm_family "
                             f"{self.vlm_family!r} does not take; use one of {ok} or vision_tower 'builtin'")
        if self.finetune not in FINETUNES:
            raise ValueError(f"{name}.finetune is {self.finetune!r}; choose one of {FINETUNES}")
        if not 1 <= self.lite0_stages <= len(LITE0_CHANNELS):
            raise ValueError(f"{name}.lite0_stages must be in 1..{len(LITE0_CHANNELS)}, got {self.lite0_stages}")
        if self.vision_tower == "lite0" and self.image_grid is not None and not 1 <= self.image_grid <= self.lite0_grid:
            raise ValueError(f"{name}.image_grid={self.image_grid} must be in 1..{self.lite0_grid} (the Lite0 map "
                             f"of {self.image_size} px after {self.lite0_stages} stages), or null")
        if self.n_bins < 2:
            raise ValueError(f"{name}.n_bins must be >= 2, got {self.n_bins}")
        if self.lora_rank < 1 or self.lora_alpha < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"{name}: lora_rank and lora_alpha must be >= 1 and lora_dropout in [0, 1), got "
                             f"{self.lora_rank}, {self.lora_alpha}, {self.lora_dropout}")
        self.vlm_config()  # the VLM sizes are checked by VLMConfig

    @property
    def action_delta_indices(self) -> list[int]:
        """0 .. H-1, and H when the terminate token is on (its label: is offset t+1 past the episode's end)."""
        return list(range(self.horizon + int(self.terminate_token)))

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
                         scale_factor=self.scale_factor)


# ----------------------------------------------------------------------------------------------
# The vision side: feature maps -> tokens of the text model's width
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------------
class RT2Policy(Policy):
    """RT-2 / OpenVLA-style VLA over any number of cameras; see the module docstring."""

    name = "rt2"
    config_class = RT2Config
    trains_on_mixture = True  # compute_loss reads the vision-language parts of a mixed batch

    def __init__(self, config: RT2Config, features: FeatureSpec, stats: Stats | None):
        super().__init__(config, features, stats)
        c = config
        self.camera_keys = sorted(image_keys(features))
        if not self.camera_keys:
            raise KeyError(f"RT2Policy needs at least one camera feature 'observation.images.<cam>'; got {sorted(features)}")
        if len(features[ACTION].shape) != 1:
            raise ValueError(f"RT2Policy needs a 1-D action, got shape {features[ACTION].shape}")
        self.action_dim = features[ACTION].shape[0]
        self.step_tokens = self.action_dim + int(c.terminate_token)  # tokens per action step

        self.vlm: VisionLanguageModel = build_vlm(c.vlm_config())
        if c.vision_tower == "lite0":
            self.vlm.drop_builtin_tower()  # the projected Lite0 features go in instead (image_features=)
        ids = self.vlm.add_tokens([ACTION_TOKEN.format(i) for i in range(c.n_bins)])
        self.action_block = TokenBlock(ids[0], c.n_bins)
        self.bins = UniformActionTokenizer(c.n_bins, -1.0, 1.0)
        width = self.vlm.hidden_size

        # Lite0 (ImageNet weights from load_external_weights), frozen or fine-tuned; in the checkpoint either way
        self.image_encoder: PretrainedImageEncoder | None = None
        self.projector: FeatureProjector | None = None
        if c.vision_tower == "lite0":
            self.image_encoder = PretrainedImageEncoder("lite0", c.lite0_stages, c.image_size, pretrained=False,
                                                        frozen=c.freeze_vision)
            self.projector = FeatureProjector(LITE0_CHANNELS[c.lite0_stages - 1], c.image_grid or c.lite0_grid,
                                              width, len(self.camera_keys))
        elif c.freeze_vision:
            for p in self.vlm.vision_parameters():
                p.requires_grad_(False)
        if c.finetune == "lora":
            self._inject_lora()

    def _inject_lora(self) -> None:
        """LoRA adapters in the text model (peft, in place); of the text model only the adapters and the
        action tokens' embedding rows train (a gradient mask keeps the other rows as they are)."""
        from peft import LoraConfig, inject_adapter_in_model

        c = self.config
        text_model = self.vlm.model.model.text_model
        for p in text_model.parameters():
            p.requires_grad_(False)
        inject_adapter_in_model(LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                                           target_modules=list(c.lora_targets)), text_model)
        embedding = self.vlm.model.get_input_embeddings().weight
        embedding.requires_grad_(True)
        rows = torch.zeros(embedding.shape[0], 1, dtype=torch.bool)
        rows[list(self.action_block.ids)] = True
        self.register_buffer("_trainable_rows", rows, persistent=False)
        embedding.register_hook(lambda g: g * self._trainable_rows.to(g.device))
        if not self.vlm.model.config.tie_word_embeddings:  # a separate output layer: its action rows train too
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

    # --- images -> tokens --------------------------------------------------------------------
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

    def image_tokens(self, images: dict[str, Tensor]) -> Tensor:
        """Camera key -> uint8 frames [B, T, 3, h, w] (or cached Lite0 maps [B, T, C, g, g]) ->
        projected image tokens [B, T*C, K, D], frames in time order, cameras in ``camera_keys`` order."""
        per_camera = []
        for i, key in enumerate(self.camera_keys):
            x = images[key]
            B, T = x.shape[:2]
            flat = x.flatten(0, 1)
            if self.projector is not None:
                tokens = self.projector(self._lite0_maps(flat, key), i)  # [B*T, K, D]
            else:
                tokens = self.vlm.image_features(flat.to(self.device))[:, 0]
            per_camera.append(tokens.view(B, T, *tokens.shape[1:]))
        return torch.stack(per_camera, 2).flatten(1, 2)

    # --- training ------------------------------------------------------------------------------
    def action_answers(self, action: Tensor, action_is_pad: Tensor | None) -> list[list[tuple[list[int], bool]]]:
        """Action windows [B, H(+1), A] -> per sample the answer as (token ids, in_loss) segments: the
        valid steps' tokens in the loss, the steps past the episode's end not."""
        c, H = self.config, self.config.horizon
        if action.shape[1:] != (len(c.action_delta_indices), self.action_dim):
            raise ValueError(f"batch['action'] has shape {tuple(action.shape)}; expected [B, {len(c.action_delta_indices)}, "
                             f"{self.action_dim}] (horizon{' + 1 for the terminate label' if c.terminate_token else ''})")
        B = action.shape[0]
        pad = action_is_pad.bool().cpu() if action_is_pad is not None else torch.zeros(B, action.shape[1], dtype=torch.bool)
        values = self.normalizer.normalize(ACTION, action[:, :H].float()).clamp(-1.0, 1.0)  # [B, H, A]
        if c.terminate_token:
            ends = pad[:, 1:H + 1].to(values)  # step t is its episode's last when offset t+1 is past the end
            values = torch.cat([values, (2 * ends - 1)[..., None]], dim=-1)
        ids = self.action_block.to_vocab(self.bins.encode(values)).cpu()  # [B, H, A']
        answers = []
        for b in range(B):
            n = H - int(pad[b, :H].sum())  # padding is at the end of a window
            answers.append([(ids[b, :n].flatten().tolist(), True), (ids[b, n:].flatten().tolist(), False)])
        return answers

    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy on the answer tokens (actions, and text answers of vision-language examples
        mixed into the batch) and each answer's end token; logs the action and text parts apart."""
        prompts, answers, tokens, is_action = [], [], [], []
        for part in split_mixture(batch):
            missing = [k for k in (*self.camera_keys, TASK) if k not in part]
            if missing:
                raise KeyError(f"RT2Policy.compute_loss: a batch part has no {missing}; got {sorted(part)}")
            tokens.append(self.image_tokens({k: part[k] for k in self.camera_keys}))
            if ACTION in part:
                prompts += [PROMPT.format(instruction=t) for t in part[TASK]]
                answers += self.action_answers(part[ACTION], part.get(ACTION + PAD_SUFFIX))
                is_action += [True] * len(part[TASK])
            else:  # a vision-language example: "question\nA: answer" in the task column
                qa = [split_vl_task(t) for t in part[TASK]]
                prompts += [VL_PROMPT.format(question=q) for q, _ in qa]
                answers += [" " + a for _, a in qa]
                is_action += [False] * len(qa)
        inputs = self.vlm.encode(prompts, answers=answers, image_features=torch.cat(tokens))
        logits, targets, where = self.vlm.answer_logits(inputs)  # [N, V], [N], [B, L]
        ce = F.cross_entropy(logits.float(), targets, reduction="none")  # [N]
        loss = ce.mean()
        with torch.no_grad():
            row = where.nonzero()[:, 0]
            on_action = torch.tensor(is_action, device=row.device)[row] & (targets >= self.action_block.start) \
                & (targets < self.action_block.start + self.action_block.size)
            logs = {"loss": loss.item()}
            if on_action.any():
                block = logits[on_action][:, self.action_block.start:self.action_block.start + self.action_block.size]
                logs["action_loss"] = ce[on_action].mean().item()
                logs["action_accuracy"] = (block.argmax(-1) + self.action_block.start == targets[on_action]).float().mean().item()
            on_text = ~torch.tensor(is_action, device=row.device)[row]
            if on_text.any():
                logs["vl_loss"] = ce[on_text].mean().item()
        return loss, logs

    # --- inference ------------------------------------------------------------------------------
    def _tokens_and_prompts(self, obs: dict[str, Any]) -> tuple[Tensor, list[str]]:
        missing = [k for k in (*self.camera_keys, TASK) if k not in obs]
        if missing:
            raise KeyError(f"RT2Policy: the observation has no {missing}; got {sorted(obs)}")
        B = obs[self.camera_keys[0]].shape[0]
        tasks = [obs[TASK]] * B if isinstance(obs[TASK], str) else list(obs[TASK])
        images, _ = self.history.window({k: obs[k] for k in self.camera_keys})  # [B, T, 3, h, w] each
        return self.image_tokens(images), [PROMPT.format(instruction=t) for t in tasks]

    @torch.no_grad()
    def predict_action_chunk_with_done(self, obs: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """[B, H, A] unnormalised actions and, with the terminate token, bool [B, H] (True: the episode
        ends after that step); greedy, constrained to the action tokens."""
        c = self.config
        tokens, prompts = self._tokens_and_prompts(obs)
        try:
            gen = self.vlm.generate(prompts, image_features=tokens, max_new_tokens=c.horizon * self.step_tokens,
                                    allowed_token_ids=self.action_block.ids, stop_at_eos=False)
        except ValueError as e:  # an instruction longer than the context
            raise ValueError(f"RT2Policy: {e} (instruction {obs[TASK]!r:.200})") from None
        bins = self.action_block.to_bins(gen.ids).view(len(prompts), c.horizon, self.step_tokens)
        values = self.bins.decode(bins).to(self.device)  # [B, H, A'] in [-1, 1]
        actions = self.normalizer.unnormalize(ACTION, values[..., :self.action_dim])
        return actions, (values[..., self.action_dim] > 0) if c.terminate_token else None

    def predict_action_chunk(self, obs: dict[str, Any]) -> Tensor:
        return self.predict_action_chunk_with_done(obs)[0]

    @torch.no_grad()
    def answer(self, images: dict[str, Tensor], questions: list[str], max_new_tokens: int = 24) -> list[str]:
        """Vision-language use of the same model (what co-training teaches): camera key -> uint8 frames
        [B, 3, h, w], one question each -> the answers in text (greedy, until the end token)."""
        tokens = self.image_tokens({k: images[k][:, None] for k in self.camera_keys})
        gen = self.vlm.generate([VL_PROMPT.format(question=q) for q in questions], image_features=tokens,
                                max_new_tokens=max_new_tokens)
        return [t.strip() for t in gen.texts]
