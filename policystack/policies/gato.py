"""Gato (Reed et al. 2022, "A Generalist Agent"): one decoder-only transformer over one flat token
sequence of text, images, proprioception and actions, from robots of different shapes.

Tokens (one vocabulary of V = text_vocab + n_bins + 1 ids, embeddings tied with the output layer):

    text        SmolLM2's byte-level BPE cut to ``text_vocab`` ids (``tokenizers.subword_tokenizer``),
                ids 0 .. text_vocab-1; an instruction or answer ends with <|endoftext|> (id 0)
    continuous  raw values (states, actions: Gato normalises nothing) mu-law encoded (mu = 100, M = 256),
                clipped to [-1, 1], 1024 uniform bins (``tokenizers.MuLawTokenizer``), placed right after
                the text ids (``TokenBlock(text_vocab, n_bins)``); a discrete value goes on the same block
    separator   ``|``, id text_vocab + n_bins, between a timestep's observation and its action
    image       16x16 patches, each embedded by one ResNet-v2 block with GroupNorm plus row / column codes
                sampled within the patch's interval in training, its mean at evaluation
                (``layers/patches.py``); patches have no id and are never predicted

A timestep of embodiment e (its cameras and continuous observation keys in sorted order):

    [patches of each camera] [values of each observation key] [|] [A action tokens]
      + local observation position codes 0 .. n_obs-1 on the observation tokens, and a second table of
        codes 0 .. A on the separator and the action tokens (which action dimension comes next)

One sample (B = 1; lengths for tiny, tabletop Reach: 16 patches + 15 state + 1 + 7 = 39 tokens):

    [prompt: the last ``prompt_steps`` timesteps of another demonstration of the same task, no loss]
    [instruction text + <|endoftext|>]  [the current timestep]
    a vision-language example instead: [patches] [question] [answer] [<|endoftext|>]

Samples are left-padded into one batch [B, L, d]; causal attention; no global position code (Gato's
only position codes are the local and the patch ones). Loss: next-token cross-entropy on the text and
the action tokens only (``GatoPolicy.targets``): the patches, values of observations, the separator and
the prompt are context. Actions past an episode's end (``action_is_pad``) are out of the loss.

Inference: the prefix up to the separator goes through the transformer once, filling a ``KVCache``;
then the A action tokens are decoded greedily one by one, each step feeding only the new token
(``kv_cache: false`` recomputes the whole sequence every step instead: the same actions, slower). Every
logit outside the 1024 value ids is -inf, so a text token or the separator cannot come out.

Embodiments: "main" is the features the policy was built with; ``embodiments`` adds others by name
(their features as in info.json). Gato shares every weight between them; which one a batch part or an
observation is, is read from its keys and sizes (``embodiment_of``). The training loop adds the
embodiment of each mixed-in robot dataset (``mixture_keys``), so one run trains on tabletop Panda
(15-d state, 7-d action) and MetaWorld Sawyer (39-d state, 4-d action) with a text corpus.

Prompts (Gato section 3.3): in training, with probability ``prompt_fraction`` a sample is prefixed with
the last ``prompt_steps`` timesteps of another demonstration of the same task in its batch part: the
loader gives every robot sample its own episode's last frames (``GatoConfig.episode_end_indices``, as
``<key>_episode_end``), and a sample borrows those of another episode of its task. At evaluation
``set_prompt(task, demo)`` gives a held-out demonstration per task.

Differences from the paper, all for a CPU: one timestep of context (the Policy contract shows a policy
observations, never the actions that were executed, so past actions cannot be fed back: the prompt is
the sequence context); square images (``image_size``) instead of 80x64; the text vocabulary is
SmolLM2's BPE cut to 32000 ids in the paper presets (Gato: a 32000-piece SentencePiece).
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policystack.datasets.mixture import split_mixture
from policystack.datasets.vqa import split_vl_task
from policystack.policies.base import Policy, PolicyConfig
from policystack.policies.layers.patches import PatchEmbedding
from policystack.policies.layers.transformer import DecoderStack, KVCache
from policystack.policies.tokenizers import MuLawTokenizer, TokenBlock, subword_tokenizer
from policystack.types import (
    ACTION,
    END_SUFFIX,
    EPISODE_INDEX,
    PAD_SUFFIX,
    TASK,
    DataError,
    Feature,
    FeatureSpec,
    Stats,
    is_image_key,
)

END_OF_TEXT = 0  # SmolLM2's <|endoftext|>
MAIN = "main"  # the embodiment of the features the policy is built with
IGNORE = -100


@functools.lru_cache(maxsize=4)
def _text_tokenizer(vocab_size: int):
    return subword_tokenizer(vocab_size)


@dataclass
class GatoConfig(PolicyConfig):
    # --- one timestep per call (see the module docstring) ---
    n_obs_steps: int = 1
    horizon: int = 1
    n_action_steps: int = 1
    normalization: dict[str, str] = field(default_factory=dict)  # Gato tokenises raw values (mu-law)

    # --- tokens ---
    text_vocab: int = 8192  # SmolLM2's BPE cut to this many ids (49152: all of it; the paper presets: 32000)
    n_bins: int = 1024  # value bins after the text ids
    mu: float = 100.0  # mu-law
    mu_m: float = 256.0  # mu-law M
    image_size: int = 64  # frames resized to image_size x image_size, cut into patch_size patches
    patch_size: int = 16
    patch_channels: int = 16  # the per-patch ResNet block's channels
    pos_vocab: int = 128  # quantisation levels of patch row / column positions
    max_obs_tokens: int = 128  # local observation position codes (observation tokens per timestep)
    max_action_tokens: int = 16  # separator + action tokens per timestep

    # --- the transformer ---
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_hidden: int = 512
    dropout: float = 0.0
    context_length: int = 512  # the longest sequence accepted (prompt + text + timestep)
    kv_cache: bool = True  # decode actions with a KV cache (false: recompute the sequence per token)

    # --- prompts and embodiments ---
    prompt_steps: int = 2  # timesteps of a demonstration in a prompt
    prompt_fraction: float = 0.25  # training samples given a prompt (Gato: 25%)
    embodiments: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {key: info.json feature}

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if (self.n_obs_steps, self.horizon, self.n_action_steps) != (1, 1, 1):
            raise ValueError(f"{name}: n_obs_steps, horizon and n_action_steps must be 1 (one timestep per call; "
                             f"the prompt is the sequence context), got {self.n_obs_steps}, {self.horizon}, "
                             f"{self.n_action_steps}")
        if self.normalization:
            raise ValueError(f"{name}.normalization must be {{}}: Gato mu-law encodes raw values; got "
                             f"{self.normalization}")
        if self.image_size % self.patch_size or self.patch_size % 2:
            raise ValueError(f"{name}: image_size ({self.image_size}) must be a multiple of patch_size "
                             f"({self.patch_size}), which must be even")
        if self.width % self.heads:
            raise ValueError(f"{name}: width ({self.width}) must be divisible by heads ({self.heads})")
        for f in ("n_bins", "width", "depth", "heads", "mlp_hidden", "patch_channels", "pos_vocab",
                  "max_obs_tokens", "max_action_tokens", "context_length", "prompt_steps"):
            if getattr(self, f) < 1:
                raise ValueError(f"{name}.{f} must be >= 1, got {getattr(self, f)}")
        if not 0.0 <= self.prompt_fraction <= 1.0:
            raise ValueError(f"{name}.prompt_fraction must be in [0, 1], got {self.prompt_fraction}")
        MuLawTokenizer(self.n_bins, self.mu, self.mu_m)  # checks mu, M
        for emb, feats in self.embodiments.items():
            if emb == MAIN:
                raise ValueError(f"{name}.embodiments: {MAIN!r} is the policy's own features; name the others "
                                 "something else")
            parse_embodiment(feats, f"{name}.embodiments.{emb}")


    def episode_end_indices(self, keys) -> dict[str, list[int]]:
        """The last ``prompt_steps`` frames of each robot sample's episode (observations and action):
        the training prompts (``GatoPolicy._training_prompts``); none without prompts or an action."""
        if self.prompt_fraction == 0.0 or ACTION not in keys:
            return {}
        return {k: list(range(1 - self.prompt_steps, 1)) for k in self.delta_indices(keys)}


def parse_embodiment(feats: dict[str, Any], where: str) -> FeatureSpec:
    """info.json-style features of one embodiment -> FeatureSpec; needs an action and an observation."""
    if not isinstance(feats, dict):
        raise ValueError(f"{where}: expected {{feature key: {{dtype, shape, ...}}}}, got {feats!r}")
    spec = {k: v if isinstance(v, Feature) else Feature.from_json(v, f"{where}.{k}") for k, v in feats.items()}
    if ACTION not in spec or len(spec[ACTION].shape) != 1 or not any(k.startswith("observation.") for k in spec):
        raise ValueError(f"{where}: an embodiment needs a 1-D {ACTION!r} and at least one observation feature, "
                         f"got {sorted(spec)}")
    return spec


def robot_keys(features: FeatureSpec) -> FeatureSpec:
    """The features Gato tokenises: cameras, numeric observations and the action."""
    return {k: f for k, f in features.items() if k == ACTION or (k.startswith("observation.") and f.dtype != "string")}


class GatoPolicy(Policy):
    """Gato; see the module docstring."""

    name = "gato"
    config_class = GatoConfig
    trains_on_mixture = True  # other embodiments' demonstrations and vision-language examples

    def __init__(self, config: GatoConfig, features: FeatureSpec, stats: Stats | None):
        super().__init__(config, features, stats)
        c = config
        self.embodiments: dict[str, FeatureSpec] = {MAIN: parse_embodiment(robot_keys(features), "features")}
        for emb, feats in c.embodiments.items():
            self.embodiments[emb] = parse_embodiment(feats, f"GatoConfig.embodiments.{emb}")
        for emb in self.embodiments:
            self._check_sizes(emb)
        self.text = _text_tokenizer(c.text_vocab)
        self.values = MuLawTokenizer(c.n_bins, c.mu, c.mu_m)
        self.value_block = TokenBlock(c.text_vocab, c.n_bins)
        self.separator = c.text_vocab + c.n_bins
        self.vocab_size = self.separator + 1
        self.embed = nn.Embedding(self.vocab_size, c.width)  # tied with the output layer
        nn.init.normal_(self.embed.weight, std=0.02)
        self.patches = PatchEmbedding(c.width, c.image_size, c.patch_size, c.patch_channels, c.pos_vocab)
        self.obs_pos = nn.Embedding(c.max_obs_tokens, c.width)
        self.act_pos = nn.Embedding(c.max_action_tokens, c.width)
        self.transformer = DecoderStack(c.depth, c.width, c.heads, c.width // c.heads, c.mlp_hidden, c.dropout)
        self._prompts: dict[str, dict[str, Tensor]] = {}

    # --- embodiments ---------------------------------------------------------------------------
    def _layout(self, emb: str) -> tuple[list[str], list[str], int]:
        """(camera keys, continuous observation keys, action dims) of embodiment ``emb``, in token order."""
        feats = self.embodiments[emb]
        cams = sorted(k for k in feats if is_image_key(k))
        values = sorted(k for k in feats if k.startswith("observation.") and not is_image_key(k))
        return cams, values, feats[ACTION].shape[0]

    def obs_tokens(self, emb: str) -> int:
        """Observation tokens per timestep of embodiment ``emb`` (patches + values)."""
        cams, values, _ = self._layout(emb)
        feats = self.embodiments[emb]
        return len(cams) * self.patches_per_image + sum(math.prod(feats[k].shape) for k in values)

    @property
    def patches_per_image(self) -> int:
        return (self.config.image_size // self.config.patch_size) ** 2

    def _check_sizes(self, emb: str) -> None:
        c, (_, _, A) = self.config, self._layout(emb)
        if self.obs_tokens(emb) > c.max_obs_tokens or A + 1 > c.max_action_tokens:
            raise ValueError(f"GatoPolicy: embodiment {emb!r} has {self.obs_tokens(emb)} observation tokens and "
                             f"{A} action dims per timestep; the config allows {c.max_obs_tokens} "
                             f"(max_obs_tokens) and {c.max_action_tokens - 1} (max_action_tokens - 1)")

    def embodiment_of(self, x: dict[str, Any], where: str = "the observation") -> str:
        """The embodiment whose observation keys ``x`` has with their sizes (the most keys wins); a
        ValueError names the keys and sizes when none fits, or the action when its size differs."""
        fits, near = [], []
        for emb, feats in self.embodiments.items():
            obs = [k for k in feats if k.startswith("observation.")]
            if not all(k in x for k in obs):
                continue
            wrong = [k for k in obs if not is_image_key(k) and tuple(x[k].shape[-1:]) != tuple(feats[k].shape[-1:])]
            (near if wrong else fits).append((len(obs), emb, wrong))
        if not fits:
            known = {e: {k: list(f.shape) for k, f in fs.items() if k.startswith("observation.")}
                     for e, fs in self.embodiments.items()}
            if near:
                _, emb, wrong = near[0]
                raise ValueError(f"GatoPolicy: {where} has {', '.join(f'{k} of {x[k].shape[-1]} values' for k in wrong)}; "
                                 f"embodiment {emb!r} takes {[list(self.embodiments[emb][k].shape) for k in wrong]} "
                                 f"(state dim mismatch). Embodiments: {known}")
            have = sorted(k for k in x if k.startswith("observation."))
            raise ValueError(f"GatoPolicy: unknown embodiment: {where} has {have}, which fits none of this policy's "
                             f"embodiments {known}")
        fits.sort(key=lambda t: -t[0])
        if len(fits) > 1 and fits[0][0] == fits[1][0]:
            raise ValueError(f"GatoPolicy: {where} fits embodiments {fits[0][1]!r} and {fits[1][1]!r} alike")
        emb = fits[0][1]
        if ACTION in x and x[ACTION].shape[-1] != self._layout(emb)[2]:
            raise ValueError(f"GatoPolicy: {where} is embodiment {emb!r} by its observations, whose action has "
                             f"{self._layout(emb)[2]} dims; its {ACTION!r} has {x[ACTION].shape[-1]}")
        return emb

    def mixture_keys(self, features: FeatureSpec, where: str) -> list[str]:
        """A mixed-in robot dataset (with an action) is read whole and, if no embodiment of this policy
        has its observations and sizes, added as a new one named after its directory (saved with the
        config); a vision-language dataset gives its cameras and task."""
        feats = robot_keys(features)
        if ACTION not in feats:
            cams = [k for k in feats if is_image_key(k)]
            if not cams:
                raise DataError(f"{where}: a dataset without {ACTION!r} is read as vision-language examples, which "
                                f"need a camera; it has {sorted(features)}")
            return cams
        try:
            self.embodiment_of({k: torch.zeros(f.shape) for k, f in feats.items()}, where)
        except ValueError:
            emb = where.split("/")[-3] if where.count("/") >= 2 else f"embodiment{len(self.embodiments)}"
            self._add_embodiment(emb, feats, where)
        return list(feats)

    def _add_embodiment(self, emb: str, feats: dict[str, Any], where: str) -> None:
        """A new embodiment, in the policy and in its config (saved with the checkpoint)."""
        spec = parse_embodiment(feats, where)
        self.embodiments[emb] = spec
        self._check_sizes(emb)
        self.config.embodiments[emb] = {k: f.to_json() for k, f in spec.items()}

    def adopt_saved_config(self, saved: dict[str, Any]) -> None:
        """The checkpoint's embodiments (its mixed-in robots) become this policy's, so a run that resumes
        or starts from it with the same ``dataset.mixture`` finds them (and adds nothing)."""
        for emb, feats in (saved.get("embodiments") or {}).items():
            if emb not in self.embodiments:
                self._add_embodiment(emb, feats, f"the checkpoint's embodiments.{emb}")

    def for_embodiment(self, emb: str) -> GatoPolicy:
        """This policy with the same weights (shared tensors) presenting embodiment ``emb``'s features as
        its ``features``: what ``policystack eval`` and the daemon check an env against, so one checkpoint
        acts on each of its robots. Prompts are copied; history and queue are its own."""
        if emb not in self.embodiments:
            raise KeyError(f"GatoPolicy: no embodiment {emb!r}; this policy has {sorted(self.embodiments)}")
        memo = {id(t): t for t in itertools.chain(self.parameters(), self.buffers())}
        memo[id(self.text)] = self.text
        view = copy.deepcopy(self, memo)
        view.features = dict(self.embodiments[emb])
        view.reset()
        return view

    # --- tokens ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def text_ids(self, text: str) -> list[int]:
        """Subword ids of ``text`` followed by <|endoftext|>."""
        return self.text.encode(text, add_special_tokens=False).ids + [END_OF_TEXT]

    def value_ids(self, x: Tensor) -> Tensor:
        """float [N, ...] raw values -> vocabulary ids int64 [N, prod(...)] (row-major)."""
        return self.value_block.to_vocab(self.values.encode(x.flatten(1).float()))

    def timestep(self, emb: str, x: dict[str, Any], with_action: bool) -> tuple[Tensor, Tensor, Tensor]:
        """One timestep of N samples of embodiment ``emb`` (``x``: [N, ...] tensors; images uint8).

        Returns embeddings [N, L, d], ids int64 [N, L] (-1 on patches) and in_loss bool [N, L] (the
        action tokens, unless ``action_is_pad``); L = observation tokens + 1 (+ A with the action)."""
        cams, values, A = self._layout(emb)
        dev = self.device
        parts = [self.patches(x[k].to(dev), k) for k in cams]  # [N, P, d] each
        N = (parts[0] if parts else x[values[0]]).shape[0]
        ids = [torch.full((N, p.shape[1]), -1, dtype=torch.long, device=dev) for p in parts]
        for k in values:
            ids.append(self.value_ids(x[k].to(dev)))
        ids.append(torch.full((N, 1), self.separator, dtype=torch.long, device=dev))
        n_obs = sum(p.shape[1] for p in parts) + sum(i.shape[1] for i in ids[len(parts):-1])
        loss = torch.zeros(N, n_obs + 1, dtype=torch.bool, device=dev)
        if with_action:
            a = x[ACTION].to(dev)
            ids.append(self.value_ids(a))
            pad = x.get(ACTION + PAD_SUFFIX)
            valid = ~pad.to(dev).bool().reshape(N) if pad is not None else torch.ones(N, dtype=torch.bool, device=dev)
            loss = torch.cat([loss, valid[:, None].expand(N, A)], 1)
        ids_t = torch.cat(ids, 1)
        emb_tokens = self.embed(ids_t[:, sum(p.shape[1] for p in parts):].clamp(min=0))
        tokens = torch.cat([*parts, emb_tokens], 1)
        n_act = tokens.shape[1] - n_obs
        pos = torch.cat([self.obs_pos.weight[:n_obs], self.act_pos.weight[:n_act]], 0)
        return tokens + pos, ids_t, loss

    def _embed_text(self, ids: list[int]) -> Tensor:
        return self.embed(torch.tensor(ids, dtype=torch.long, device=self.device))

    # --- sequences --------------------------------------------------------------------------------
    def pack(self, samples: list[list[tuple[Tensor, Tensor, Tensor]]]) -> tuple[Tensor, Tensor, Tensor]:
        """Samples, each a list of (embeddings [l, d], ids [l], in_loss [l]) pieces -> left-padded
        embeddings [B, L, d], targets int64 [B, L] (the next token's id where it is in the loss, else -100)
        and the attention mask bool [B, L, L] (causal, no padding keys)."""
        seqs = [tuple(torch.cat(p, 0) for p in zip(*pieces)) for pieces in samples]
        L = max(s[0].shape[0] for s in seqs)
        if L > self.config.context_length:
            raise ValueError(f"GatoPolicy: a sequence of {L} tokens exceeds context_length "
                             f"{self.config.context_length} (shorten the prompt or raise context_length)")
        dev, d = self.device, self.config.width
        x = torch.zeros(len(seqs), L, d, device=dev)
        targets = torch.full((len(seqs), L), IGNORE, dtype=torch.long, device=dev)
        valid = torch.zeros(len(seqs), L, dtype=torch.bool, device=dev)
        for b, (e, ids, loss) in enumerate(seqs):
            n = e.shape[0]
            x[b, L - n:] = e
            valid[b, L - n:] = True
            targets[b, L - n:-1] = torch.where(loss[1:], ids[1:], IGNORE)
        mask = torch.ones(L, L, dtype=torch.bool, device=dev).tril()[None] & valid[:, None, :]
        mask |= torch.eye(L, dtype=torch.bool, device=dev)[None]  # a padding query attends to itself (no NaN)
        return x, targets, mask

    def logits(self, h: Tensor) -> Tensor:
        """Hidden states [..., d] -> logits [..., V] (the output layer is the input embedding)."""
        return h @ self.embed.weight.T

    def _text_piece(self, ids: list[int], in_loss: bool) -> tuple[Tensor, Tensor, Tensor]:
        t = torch.tensor(ids, dtype=torch.long, device=self.device)
        return self._embed_text(ids), t, torch.full_like(t, int(in_loss)).bool()

    def _prompt_pieces(self, emb: str, demo: dict[str, Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
        """A demonstration's timesteps ([T, ...] tensors, actions included) as prompt pieces, no loss."""
        e, ids, _ = self.timestep(emb, demo, with_action=True)
        return [(e.flatten(0, 1), ids.flatten(), torch.zeros(ids.numel(), dtype=torch.bool, device=self.device))]

    def _training_prompts(self, emb: str, part: dict[str, Any], tasks: list[str]) -> list[list]:
        """Per sample: [] or the prompt pieces of the last frames of another episode of the same task,
        drawn among the part's samples (their ``<key>_episode_end``, which the loader gives when the
        config's ``episode_end_indices`` asks; a batch without them gets no prompts)."""
        c, N = self.config, len(tasks)
        out: list[list] = [[] for _ in range(N)]
        keys = list(self.embodiments[emb])
        if c.prompt_fraction == 0.0 or any(k + END_SUFFIX not in part for k in keys):
            return out
        episodes = part.get(EPISODE_INDEX)
        draw = torch.rand(N) < c.prompt_fraction
        for i in torch.nonzero(draw).flatten().tolist():
            others = [j for j in range(N) if tasks[j] == tasks[i]
                      and (episodes is None or int(episodes[j]) != int(episodes[i]))]
            if not others:
                continue
            j = others[int(torch.randint(len(others), ()))]
            out[i] = self._prompt_pieces(emb, {k: part[k + END_SUFFIX][j] for k in keys})
        return out

    # --- training ---------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Next-token cross-entropy on the text and action tokens of every sample of every batch part
        (robot windows of any embodiment; vision-language examples), one packed batch."""
        x, targets, mask = self.pack(self.samples(batch))
        where = targets != IGNORE
        logits = self.logits(self.transformer(x, mask)[where])  # [n, V]: only where a target is
        targets = targets[where]
        ce = F.cross_entropy(logits.float(), targets, reduction="none")
        loss = ce.mean()
        with torch.no_grad():
            is_action = (targets >= self.value_block.start) & (targets < self.separator)
            logs = {"loss": loss.item()}
            if is_action.any():
                logs["action_loss"] = ce[is_action].mean().item()
                block = logits[is_action][:, self.value_block.start:self.separator]
                logs["action_accuracy"] = (block.argmax(-1) + self.value_block.start
                                           == targets[is_action]).float().mean().item()
            if (~is_action).any():
                logs["text_loss"] = ce[~is_action].mean().item()
        return loss, logs

    def samples(self, batch: dict[str, Any]) -> list[list[tuple[Tensor, Tensor, Tensor]]]:
        """Every sample of every batch part as (embeddings [l, d], ids [l], in_loss [l]) pieces (``pack``):
        robot windows [prompt] [instruction] [timestep]; vision-language examples [patches] [question answer]."""
        samples = []
        for p, part in enumerate(split_mixture(batch)):
            tasks = list(part[TASK])
            if ACTION in part:
                x = {k: v[:, 0] if isinstance(v, Tensor) and v.dim() >= 2 and not k.endswith(END_SUFFIX) and
                     (k.startswith("observation.") or k in (ACTION, ACTION + PAD_SUFFIX)) else v
                     for k, v in part.items()}
                emb = self.embodiment_of(x, f"batch part {p}")
                e, ids, loss = self.timestep(emb, x, with_action=True)
                prompts = self._training_prompts(emb, x, tasks)
                for i, task in enumerate(tasks):
                    samples.append(prompts[i] + [self._text_piece(self.text_ids(task), True), (e[i], ids[i], loss[i])])
            else:
                cams = sorted(k for k in part if is_image_key(k) and not k.endswith(PAD_SUFFIX))
                if not cams:
                    raise KeyError(f"GatoPolicy.compute_loss: batch part {p} has neither {ACTION!r} nor a camera; "
                                   f"got {sorted(part)}")
                patches = torch.cat([self.patches(part[k][:, -1].to(self.device), k) for k in cams], 1)
                for i, task in enumerate(tasks):
                    q, a = split_vl_task(task)
                    q_ids = self.text.encode(q, add_special_tokens=False).ids
                    no_id = torch.full((patches.shape[1],), -1, dtype=torch.long, device=self.device)
                    samples.append([(patches[i] + self.obs_pos.weight[:patches.shape[1]], no_id, no_id >= 0),
                                    self._text_piece(q_ids + self.text_ids(" " + a), True)])
        return samples

    # --- inference --------------------------------------------------------------------------------
    def set_prompt(self, task: str, demo: dict[str, Tensor] | None) -> None:
        """Prompt every episode of instruction ``task`` with ``demo``: the last timesteps of a held-out
        demonstration ([T, ...] observation tensors and ``action`` [T, A], T <= prompt_steps kept from the
        end). None removes it. Not saved in checkpoints: an evaluation sets its prompts."""
        if demo is None:
            self._prompts.pop(task, None)
            return
        self.embodiment_of({k: v for k, v in demo.items()}, f"the prompt of {task!r}")
        self._prompts[task] = {k: v[-self.config.prompt_steps:] for k, v in demo.items() if isinstance(v, Tensor)}

    def prefix(self, obs: dict[str, Any]) -> tuple[str, Tensor, Tensor]:
        """(embodiment, left-padded prefix embeddings [B, L, d] up to the separator, mask [B, L, L])."""
        if TASK not in obs:
            raise KeyError(f"GatoPolicy: the observation has no {TASK!r}; got {sorted(obs)}")
        emb = self.embodiment_of(obs)
        e, ids, loss = self.timestep(emb, obs, with_action=False)
        tasks = [obs[TASK]] * e.shape[0] if isinstance(obs[TASK], str) else list(obs[TASK])
        samples = []
        for i, task in enumerate(tasks):
            demo = self._prompts.get(task)
            prompt = self._prompt_pieces(self.embodiment_of(demo, f"the prompt of {task!r}"), demo) if demo else []
            samples.append(prompt + [self._text_piece(self.text_ids(task), False), (e[i], ids[i], loss[i])])
        x, _, mask = self.pack(samples)
        return emb, x, mask

    def decode_actions(self, x: Tensor, mask: Tensor, A: int, use_cache: bool) -> Tensor:
        """Greedy decoding of A value tokens after the prefix x [B, L, d] (mask [B, L, L]) -> vocabulary ids
        int64 [B, A], each constrained to the value block. ``use_cache``: one prefix pass, then one token per
        step through the KVCache; otherwise the whole sequence is recomputed for every token."""
        B = x.shape[0]
        keep = torch.full((self.vocab_size,), float("-inf"), device=x.device)
        keep[self.value_block.start:self.separator] = 0.0
        cache = KVCache(self.config.depth) if use_cache else None
        keys = mask[:, -1]  # [B, L]: the keys the last query may see (no padding)
        out = []
        h = self.transformer(x, mask, cache)[:, -1]
        for j in range(A):
            tok = (self.logits(h) + keep).argmax(-1)  # [B]
            out.append(tok)
            if j == A - 1:
                break
            new = self.embed(tok) + self.act_pos.weight[j + 1]  # [B, d]
            keys = torch.cat([keys, torch.ones(B, 1, dtype=torch.bool, device=x.device)], 1)
            if use_cache:
                h = self.transformer(new[:, None], keys[:, None, :], cache)[:, -1]
            else:  # the whole sequence again, its mask grown by one row (the new query) and one column
                x = torch.cat([x, new[:, None]], 1)
                mask = torch.cat([F.pad(mask, (0, 1)), keys[:, None, :]], 1)
                h = self.transformer(x, mask)[:, -1]
        return torch.stack(out, 1)

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, Any]) -> Tensor:
        """[B, 1, A] actions of the observation's embodiment, decoded greedily (see the module docstring)."""
        emb, x, mask = self.prefix(obs)
        A = self._layout(emb)[2]
        ids = self.decode_actions(x, mask, A, self.config.kv_cache)
        return self.values.decode(self.value_block.to_bins(ids))[:, None]
