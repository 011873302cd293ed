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
