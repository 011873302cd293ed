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
from torch import Tensor

from policystack.datasets.mixture import split_mixture
from policystack.datasets.vqa import VL_PROMPT, split_vl_task
from policystack.policies.layers.vlm_policy import VLMPolicy, VLMPolicyConfig
from policystack.policies.tokenizers import TokenBlock, UniformActionTokenizer
from policystack.types import ACTION, PAD_SUFFIX, TASK, FeatureSpec, Stats

PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
ACTION_TOKEN = "<act_{}>"


# ----------------------------------------------------------------------------------------------
# Config: defaults are the `tiny` preset (configs/policy/rt2.yaml); rt2_smollm2.yaml has the real
# language model, rt2_paper.yaml OpenVLA's size.
# ----------------------------------------------------------------------------------------------
@dataclass
class RT2Config(VLMPolicyConfig):
    # --- history and chunking (PolicyConfig fields) ---
    n_obs_steps: int = 1  # frames per call, each as images in the prompt (RT-2 / OpenVLA: 1)
    horizon: int = 1  # action steps written per call (OpenVLA: 1); >1 = action chunks
    n_action_steps: int = 1  # of them executed before the next call
    normalization: dict[str, str] = field(default_factory=lambda: {"action": "quantile"})  # q01/q99 -> [-1, 1]

    # (the vision-language model, vision and fine-tuning fields: layers/vlm_policy.VLMPolicyConfig)

    # --- action tokens ---
    n_bins: int = 256  # bins per action dimension (OpenVLA: 256)
    terminate_token: bool = False  # RT-2's eighth dimension: one more token per step, "the episode ends here"

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.normalization.get(ACTION) not in ("quantile", "min_max"):
            raise ValueError(f"{name}.normalization['action'] is {self.normalization.get(ACTION)!r}; actions are "
                             "binned over [-1, 1], so set it to 'quantile' (OpenVLA's q01/q99) or 'min_max'")
        if self.n_bins < 2:
            raise ValueError(f"{name}.n_bins must be >= 2, got {self.n_bins}")

    @property
    def action_delta_indices(self) -> list[int]:
        """0 .. H-1, and H when the terminate token is on (its label: is offset t+1 past the episode's end)."""
        return list(range(self.horizon + int(self.terminate_token)))


# ----------------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------------
class RT2Policy(VLMPolicy):
    """RT-2 / OpenVLA-style VLA over any number of cameras; see the module docstring."""

    name = "rt2"
    config_class = RT2Config
    trains_on_mixture = True  # compute_loss reads the vision-language parts of a mixed batch

    def __init__(self, config: RT2Config, features: FeatureSpec, stats: Stats | None):
        super().__init__(config, features, stats)  # the VLM (layers/vlm_policy.py)
        c = config
        if len(features[ACTION].shape) != 1:
            raise ValueError(f"RT2Policy needs a 1-D action, got shape {features[ACTION].shape}")
        self.action_dim = features[ACTION].shape[0]
        self.step_tokens = self.action_dim + int(c.terminate_token)  # tokens per action step
        ids = self.vlm.add_tokens([ACTION_TOKEN.format(i) for i in range(c.n_bins)])
        self.action_block = TokenBlock(ids[0], c.n_bins)
        self.bins = UniformActionTokenizer(c.n_bins, -1.0, 1.0)
        self.finish_init(ids)  # Lite0 + projector, LoRA (training the action token rows)

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
            words = part[TASK] if ACTION in part else [split_vl_task(t)[0] for t in part[TASK]]  # not the answer
            tokens.append(self.image_tokens({k: part[k] for k in self.camera_keys}, words))
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
        return self.image_tokens(images, tasks), [PROMPT.format(instruction=t) for t in tasks]

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
        tokens = self.image_tokens({k: images[k][:, None] for k in self.camera_keys}, questions)
        gen = self.vlm.generate([VL_PROMPT.format(question=q) for q in questions], image_features=tokens,
                                max_new_tokens=max_new_tokens)
        return [t.strip() for t in gen.texts]
