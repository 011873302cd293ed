"""A scene describer and success detector on the vision-language model (``perception/vlm.py``).

One model answers questions about camera frames in text; two questions are its public jobs:

    describer = Policy.from_pretrained(run_dir)     # a `describer` checkpoint (or its run directory)
    describer.describe(images)                       # ["a red ball, a blue ball and a green ball", ...]
    describer.success_probability(images, ["reach the red ball", ...])   # float [B]: P(the task is done)
    describer.answer(images, ["is the drawer open?", ...])              # any question of `policystack vqa`

``images``: camera key -> uint8 frames [B, 3, h, w] (every camera the checkpoint was trained on).

The success question is worded from the instruction alone (``envs.vqa.success_question``: "has the
robot done this: reach the red ball?"), so it needs nothing a real robot lacks (no target object, no
simulator state); its answer is "yes" or "no". ``success_probability`` reads the model's next-token
distribution after the prompt and compares the first token of "yes" with that of "no" (a softmax over
the two logits): one forward pass, no generation, and a probability to threshold (``verdict``).

Model (``DescriberConfig``, presets ``configs/policy/describer.yaml``): as RT-2's tiny preset without
actions -- each camera's frame through the frozen ImageNet EfficientNet-Lite0 (``perception/image.py``;
its maps cached per dataset frame by the training loop) and RT-2's MLP projector
(``policies.layers.vlm_policy.FeatureProjector``) into image tokens of the text model (a tiny random-init Llama, or
SmolLM2-135M-Instruct with ``vlm_weights: smollm2``); prompt "In: {question}\\nOut:", answer in text.

Training: the shared loop (``policystack train policy=describer dataset.path=DIR``) on vision-language
datasets (``datasets/vqa.py``: the question and its answer in the frame's ``task``): end-of-episode
frames labelled by the simulator's ``is_success`` (``policystack endframes``, ``envs/endframes.py``),
and, mixed in with ``dataset.mixture``, the suite's VQA / captions (``policystack vqa``). The loss is
cross-entropy on the answer tokens and the end token. The family has no actions: ``predict_action_chunk``
refuses (a describer is no policy to roll out; ``policystack eval ... detector=`` and the daemon's
``detector=`` use it beside one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from policystack.datasets.mixture import split_mixture
from policystack.datasets.vqa import VL_PROMPT, split_vl_task
from policystack.envs.vqa import CAPTION_QUESTION, success_question
from policystack.perception.image import LITE0_CHANNELS, PretrainedImageEncoder, lite0_grid
from policystack.perception.vlm import VisionLanguageModel, VLMConfig, build_vlm
from policystack.policies.base import Policy, PolicyConfig
from policystack.policies.layers.vlm_policy import FeatureProjector
from policystack.types import TASK, FeatureSpec, Stats, image_keys

YES, NO = "yes", "no"


@dataclass
class DescriberConfig(PolicyConfig):
    """The describer's model; defaults are the tiny preset (``configs/policy/describer.yaml``)."""

    actions_optional: ClassVar[bool] = True  # trains on vision-language datasets, which have no action

    vlm_family: str = "smolvlm"  # smolvlm or idefics3 (they take projected image features)
    vlm_weights: str = "tiny"  # "tiny" (random init at the sizes below), "smollm2" or a local VLM directory
    text_width: int = 128
    text_depth: int = 3
    text_heads: int = 4
    context_length: int = 512
    image_size: int = 96  # frames are resized to this square side before Lite0
    lite0_stages: int = 5  # 112 channels at stride 16: a 6 x 6 map per 96 px frame
    image_grid: int | None = 3  # pool the map to grid x grid tokens per camera (None: as it is)
    normalization: dict[str, str] = field(default_factory=dict)  # nothing to normalise (images, text)

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.n_obs_steps != 1 or self.horizon != 1:
            raise ValueError(f"{name}: a describer looks at one frame (n_obs_steps 1, horizon 1), got "
                             f"n_obs_steps={self.n_obs_steps}, horizon={self.horizon}")
        if not 1 <= self.lite0_stages <= len(LITE0_CHANNELS):
            raise ValueError(f"{name}.lite0_stages must be in 1..{len(LITE0_CHANNELS)}, got {self.lite0_stages}")
        if self.image_grid is not None and not 1 <= self.image_grid <= self.lite0_grid:
            raise ValueError(f"{name}.image_grid={self.image_grid} must be in 1..{self.lite0_grid} (the Lite0 map of "
                             f"{self.image_size} px after {self.lite0_stages} stages), or null")
        cfg = self.vlm_config()  # sizes and family are checked by VLMConfig
        from policystack.perception.vlm import FAMILIES

        if not FAMILIES[cfg.family].accepts_image_features:
            raise ValueError(f"{name}.vlm_family={self.vlm_family!r} cannot take projected Lite0 features; use "
                             "smolvlm or idefics3")

    @property
    def lite0_grid(self) -> int:
        return lite0_grid(self.image_size, self.lite0_stages)

    def vlm_config(self) -> VLMConfig:
        return VLMConfig(family=self.vlm_family, weights=self.vlm_weights, image_size=self.image_size,
                         text_width=self.text_width, text_depth=self.text_depth, text_heads=self.text_heads,
                         context_length=self.context_length)


class DescriberPolicy(Policy):
    """The describer / success detector (module docstring). Trained by the shared loop; does not act."""

    name = "describer"
    config_class = DescriberConfig
    trains_on_mixture = True  # end frames + the suite's VQA in one batch (dataset.mixture)

    def __init__(self, config: DescriberConfig, features: FeatureSpec, stats: Stats | None):
        super().__init__(config, features, stats)
        c = config
        self.camera_keys = sorted(image_keys(features))
        if not self.camera_keys:
            raise KeyError(f"DescriberPolicy needs at least one camera feature 'observation.images.<cam>'; got "
                           f"{sorted(features)}")
        self.vlm: VisionLanguageModel = build_vlm(c.vlm_config())
        self.vlm.drop_builtin_tower()  # the projected Lite0 features go in instead (image_features=)
        self.image_encoder = PretrainedImageEncoder("lite0", c.lite0_stages, c.image_size, pretrained=False)
        self.projector = FeatureProjector(LITE0_CHANNELS[c.lite0_stages - 1], c.image_grid or c.lite0_grid,
                                          self.vlm.hidden_size, len(self.camera_keys))
        yes, no = (self.vlm.tokenizer(w, add_special_tokens=False)["input_ids"] for w in (YES, NO))
        if not yes or not no or yes[0] == no[0]:
            raise ValueError(f"the tokenizer of {c.vlm_weights!r} starts {YES!r} and {NO!r} with the same token; "
                             "the success verdict compares their first tokens")
        self.yes_id, self.no_id = yes[0], no[0]

    def load_external_weights(self) -> None:
        """The package's ImageNet weights into the Lite0 trunk (saved in the checkpoint from then on)."""
        self.image_encoder.load_pretrained()

    def frame_transforms(self) -> dict[str, Any]:
        """Camera key -> the frozen Lite0's per-frame feature function (the loader caches its maps)."""
        return {k: self.image_encoder.frame_transform() for k in self.camera_keys}

    @property
    def device(self) -> torch.device:
        return self.vlm.model.get_input_embeddings().weight.device

    def image_tokens(self, images: dict[str, Tensor]) -> Tensor:
        """Camera key -> uint8 frames [B, 3, h, w] (or the loader's cached Lite0 maps [B, C, g, g]) ->
        image tokens float [B, n_cameras, K, D] in ``camera_keys`` order."""
        missing = [k for k in self.camera_keys if k not in images]
        if missing:
            raise KeyError(f"DescriberPolicy: no frames for {missing}; it was trained on {self.camera_keys}")
        tokens = []
        for i, key in enumerate(self.camera_keys):
            x = images[key]
            if x.dim() != 4:
                raise ValueError(f"{key!r}: expected uint8 frames [B, 3, H, W] or cached Lite0 maps [B, C, g, g], "
                                 f"got {x.dtype} {list(x.shape)}")
            tokens.append(self.projector(self.image_encoder.features(x.to(self.device)), i))
        return torch.stack(tokens, 1)

    # --- training ------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy on the answers of a batch of vision-language examples ("question\\nA: answer" in
        ``task``; cameras [B, 1, ...] as the loader gives one frame); logs the verdict accuracy of its
        success questions."""
        prompts, answers, tokens = [], [], []
        for part in split_mixture(batch):
            missing = [k for k in (*self.camera_keys, TASK) if k not in part]
            if missing:
                raise KeyError(f"DescriberPolicy.compute_loss: a batch part has no {missing}; got {sorted(part)}")
            tokens.append(self.image_tokens({k: part[k][:, -1] for k in self.camera_keys}))
            qa = [split_vl_task(t) for t in part[TASK]]
            prompts += [VL_PROMPT.format(question=q) for q, _ in qa]
            answers += [a for _, a in qa]
        inputs = self.vlm.encode(prompts, answers=answers, image_features=torch.cat(tokens))
        loss = self.vlm.loss(inputs)
        return loss, {"loss": loss.item()}

    # --- inference ------------------------------------------------------------------------------
    def _inputs(self, images: dict[str, Tensor], questions: list[str], answers: list[str] | None = None):
        tokens = self.image_tokens(images)
        if tokens.shape[0] != len(questions):
            raise ValueError(f"{tokens.shape[0]} frames but {len(questions)} questions; expected one each")
        return self.vlm.encode([VL_PROMPT.format(question=q) for q in questions], answers=answers,
                               image_features=tokens)

    @torch.no_grad()
    def answer(self, images: dict[str, Tensor], questions: list[str], max_new_tokens: int = 48) -> list[str]:
        """Camera key -> uint8 frames [B, 3, h, w], one question each -> the answers in text (greedy)."""
        tokens = self.image_tokens(images)
        gen = self.vlm.generate([VL_PROMPT.format(question=q) for q in questions], image_features=tokens,
                                max_new_tokens=max_new_tokens)
        return [t.strip() for t in gen.texts]

    def describe(self, images: dict[str, Tensor]) -> list[str]:
        """The scene's caption per frame (the visible objects, left to right, as ``policystack vqa`` words it)."""
        n = images[self.camera_keys[0]].shape[0]
        return self.answer(images, [CAPTION_QUESTION] * n)

    @torch.no_grad()
    def success_probability(self, images: dict[str, Tensor], instructions: list[str]) -> Tensor:
        """P(the task ``instructions[b]`` is done in frame b), float [B]: softmax over the logits of the
        first tokens of "yes" and "no" after the success question."""
        inputs = self._inputs(images, [success_question(t) for t in instructions], answers=[YES] * len(instructions))
        logits, _, where = self.vlm.answer_logits(inputs)  # [N, V] at the answer's tokens, row-major
        first = torch.cumsum(where.long(), 1)[where] == 1  # each sample's first answer position
        pair = logits[first][:, [self.yes_id, self.no_id]].float()
        return pair.softmax(-1)[:, 0].cpu()

    def verdict(self, images: dict[str, Tensor], instructions: list[str], threshold: float = 0.5) -> Tensor:
        """bool [B]: the detector says the task is done (``success_probability`` >= ``threshold``)."""
        return self.success_probability(images, instructions) >= threshold

    def predict_action_chunk(self, obs: dict[str, Any]) -> Tensor:
        raise NotImplementedError("a describer does not act: use it beside a policy (policystack eval ... detector=DIR, "
                                  "policystack daemon run ... detector=DIR)")
