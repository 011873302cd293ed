"""Streaming normalisation statistics: mean, std, min, max, count and quantiles per dimension.

``FeatureSketch`` summarises any number of values of one feature in memory that does not grow
with the number of values: per dimension, running moments (count, mean, M2, merged with Chan's
formula, so mean and std are exact up to float64 rounding), exact min / max, and a quantile
histogram of ``NUM_BINS`` bins on a power-of-two grid.

The quantile grid. Bin ``k`` at level ``e`` holds the values in ``[k * 2**e, (k + 1) * 2**e)``.
The level of a sketch is a function of its min and max only: the smallest ``e >= E_MIN`` at which
``[min, max]`` spans at most ``NUM_BINS`` bins (and at which bin indices stay small integers). A
coarser level merges bins pairwise, exactly, so adding values, merging per-episode sketches in any
order and coarsening never split a count: the merged sketch equals the sketch of all the values at
once. Memory: ``NUM_BINS`` float64 counts per dimension (16 KiB), whatever the number of samples.

Quantile error bound. For quantile ``q`` of ``n`` values the target rank is ``r = q * (n - 1)``
(numpy's default "linear" definition interpolates between the order statistics ``x[floor(r)]``
and ``x[ceil(r)]``). The estimate lies in the bin that holds ``x[floor(r)]`` (interpolated
linearly inside it, then clipped to [min, max]), hence::

    x[floor(r)] - w  <=  estimate  <=  x[ceil(r)] + w,   w = bin width <= 2 * (max - min) / (NUM_BINS - 1)

(or ``w = 2**E_MIN`` for a near-constant feature). For NUM_BINS = 2048 that is within 0.1 % of the
feature's range. Images are summarised per channel over all pixels, in [0, 1] (pixel / 255), and
their stats are shaped [3, 1, 1] as LeRobot writes them.

``compute_dataset_stats(root)`` streams a dataset's parquet row groups and decoded video frames
through the sketches (``policystack.datasets.video.decode_segment``), so memory stays bounded by
one row group / one window of frames.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from policystack.types import DataError, FeatureSpec, Stats

NUM_BINS = 2048
E_MIN = -30  # finest bin width 2**-30 ~ 1e-9
MAX_INDEX_BITS = 52  # bin indices |k| < 2**52 stay exact in float64
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # written as q01, q10, q50, q90, q99 (as LeRobot)
FRAMES_PER_WINDOW = 64  # video frames decoded at a time by compute_dataset_stats


def quantile_name(q: float) -> str:
    return f"q{round(q * 100):02d}"


def _level(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Smallest grid level e >= E_MIN per dimension at which [lo, hi] spans <= NUM_BINS bins."""
    span = np.maximum(hi - lo, 0.0)
    mag = np.maximum(np.abs(lo), np.abs(hi))
    with np.errstate(divide="ignore"):
        e_span = np.where(span > 0, np.ceil(np.log2(np.where(span > 0, span, 1.0) / (NUM_BINS - 1))), E_MIN)
        e_mag = np.where(mag > 0, np.ceil(np.log2(np.where(mag > 0, mag, 1.0))) - MAX_INDEX_BITS, E_MIN)
    e = np.maximum(np.maximum(e_span, e_mag), E_MIN).astype(np.int64)
    # the ceil(log2) guess can be one level short because floor() alignment adds a bin: fix up
    while True:
        w = np.ldexp(1.0, e)
        short = np.floor(hi / w) - np.floor(lo / w) >= NUM_BINS
        if not short.any():
            return e
        e = e + short


@dataclass
class FeatureSketch:
    """Mergeable summary of the values of one feature, per dimension.

    ``dim`` is the number of dimensions summarised (a vector's length, an image's 3 channels).
    Values are added as [N, dim] arrays with optional per-row weights (a weight is a count:
    an image adds each channel's 256-level histogram with the level counts as weights).
    """

    dim: int
    count: float = 0.0
    mean: np.ndarray = field(default=None)  # [dim]
    m2: np.ndarray = field(default=None)  # [dim] sum of squared deviations
    min: np.ndarray = field(default=None)
    max: np.ndarray = field(default=None)
    level: np.ndarray = field(default=None)  # [dim] int64 grid level e
    offset: np.ndarray = field(default=None)  # [dim] int64 index of the first bin
    counts: np.ndarray = field(default=None)  # [dim, NUM_BINS] float64

    def __post_init__(self):
        d = self.dim
        if self.mean is None:
            self.mean, self.m2 = np.zeros(d), np.zeros(d)
            self.min, self.max = np.full(d, np.inf), np.full(d, -np.inf)
            self.level, self.offset = np.full(d, E_MIN, np.int64), np.zeros(d, np.int64)
            self.counts = np.zeros((d, NUM_BINS))

    # -- building ------------------------------------------------------------------------------
    def add(self, values: np.ndarray, weights: np.ndarray | None = None, where: str = "values") -> None:
        """Add ``values`` [N, dim] (float), each row counted ``weights[n]`` times (default 1)."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise DataError(f"{where}: expected values shaped [N, {self.dim}], got {list(x.shape)}")
        if len(x) == 0:
            return
        if not np.isfinite(x).all():
            bad = np.argwhere(~np.isfinite(x))[0]
            raise DataError(f"{where}: non-finite value {x[tuple(bad)]} at row {bad[0]}, dimension {bad[1]}")
        wts = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        keep = wts > 0
        x, wts = x[keep], wts[keep]
        if len(x) == 0:
            return
        n = wts.sum()
        mean = (wts[:, None] * x).sum(0) / n
        m2 = (wts[:, None] * (x - mean) ** 2).sum(0)
        other = FeatureSketch(self.dim, count=n, mean=mean, m2=m2, min=x.min(0), max=x.max(0),
                              level=_level(x.min(0), x.max(0)), offset=np.zeros(self.dim, np.int64),
                              counts=np.zeros((self.dim, NUM_BINS)))
        w = np.ldexp(1.0, other.level)
        k = np.floor(x / w).astype(np.int64)  # [N, dim] bin index on the grid
        other.offset = k.min(0)
        flat = (k - other.offset) + np.arange(self.dim) * NUM_BINS
        other.counts = np.bincount(flat.ravel(), weights=np.broadcast_to(wts[:, None], x.shape).ravel(),
                                   minlength=self.dim * NUM_BINS).reshape(self.dim, NUM_BINS)
        self.merge(other)

    def merge(self, other: FeatureSketch) -> FeatureSketch:
        """Fold ``other`` into this sketch (in place; returns self). Exact for counts and min/max."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge a sketch of {other.dim} dimensions into one of {self.dim}")
        if other.count == 0:
            return self
        if self.count == 0:
            for name in ("count", "mean", "m2", "min", "max", "level", "offset", "counts"):
                v = getattr(other, name)
                setattr(self, name, v.copy() if isinstance(v, np.ndarray) else v)
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / n
        self.mean = self.mean + delta * other.count / n
        self.count = n
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        level = np.maximum(_level(self.min, self.max), np.maximum(self.level, other.level))
        a, a_off = _rebin(self.counts, self.level, self.offset, level)
        b, b_off = _rebin(other.counts, other.level, other.offset, level)
        offset = np.minimum(a_off, b_off)
        counts = np.zeros_like(self.counts)
        rows = np.arange(self.dim)[:, None]
        cols = np.arange(NUM_BINS)[None, :]
        for c, off in ((a, a_off), (b, b_off)):
            shifted = cols + (off - offset)[:, None]
            ok = (shifted < NUM_BINS) & (c > 0)
            if np.any((c > 0) & (shifted >= NUM_BINS)):  # cannot happen: level fits [min, max]
                raise AssertionError("quantile histogram overflow while merging sketches")
            np.add.at(counts, (np.broadcast_to(rows, c.shape)[ok], shifted[ok]), c[ok])
        self.level, self.offset, self.counts = level, offset, counts
        return self

    # -- reading -------------------------------------------------------------------------------
    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.m2 / max(self.count, 1.0), 0.0))

    def bin_width(self) -> np.ndarray:
        return np.ldexp(1.0, self.level)

    def quantile(self, q: float) -> np.ndarray:
        """Estimate of quantile ``q`` per dimension; see the module docstring for the error bound."""
        if self.count == 0:
            raise ValueError("quantile of an empty sketch")
        r = q * (self.count - 1)
        cum = np.cumsum(self.counts, axis=1)  # cum[b] = values in bins <= b
        b = np.minimum((cum <= r).sum(axis=1), NUM_BINS - 1)  # first bin with cum > r
        rows = np.arange(self.dim)
        before = cum[rows, b] - self.counts[rows, b]
        frac = np.clip((r - before + 0.5) / np.maximum(self.counts[rows, b], 1e-300), 0.0, 1.0)
        w = self.bin_width()
        est = (self.offset + b + frac) * w
        return np.clip(est, self.min, self.max)

    def to_stats(self, shape: tuple[int, ...] | None = None) -> dict[str, np.ndarray]:
        """LeRobot's per-feature stats dict: mean, std, min, max, q01..q99 shaped ``shape``
        (default [dim]) and count [1]."""
        shape = (self.dim,) if shape is None else shape
        out = {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max}
        out.update({quantile_name(q): self.quantile(q) for q in QUANTILES})
        out = {k: np.asarray(v, dtype=np.float64).reshape(shape) for k, v in out.items()}
        out["count"] = np.array([int(round(self.count))], dtype=np.int64)
        return out


def _rebin(counts: np.ndarray, level: np.ndarray, offset: np.ndarray,
           new_level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of a histogram moved to the coarser ``new_level`` (bins merge in groups of 2**d)."""
    d = new_level - level
    if not d.any():
        return counts, offset
    new_offset = offset >> d
    idx = ((offset[:, None] + np.arange(NUM_BINS)[None, :]) >> d[:, None]) - new_offset[:, None]
    out = np.zeros_like(counts)
    rows = np.broadcast_to(np.arange(len(counts))[:, None], counts.shape)
    np.add.at(out, (rows, idx), counts)
    return out, new_offset


# --- per-feature adapters -------------------------------------------------------------------------
def image_channel_histogram(images: np.ndarray, channels_last: bool) -> np.ndarray:
    """uint8 images [N, H, W, 3] or [N, 3, H, W] -> per-channel level counts [3, 256]."""
    imgs = np.asarray(images)
    if imgs.dtype != np.uint8:
        raise DataError(f"image statistics need uint8 pixels, got {imgs.dtype}")
    axis = -1 if channels_last else 1
    return np.stack([np.bincount(np.take(imgs, c, axis=axis).ravel(), minlength=256) for c in range(3)])


def image_sketch_from_histogram(hist: np.ndarray) -> FeatureSketch:
    """A 3-dim sketch of images from their per-channel level counts [3, 256] (same count each)."""
    hist = np.asarray(hist, dtype=np.float64)
    n = hist[0].sum()
    if n == 0:
        return FeatureSketch(3)
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean = (hist * levels).sum(1) / n
    m2 = (hist * (levels[None, :] - mean[:, None]) ** 2).sum(1)
    present = hist > 0
    lo = np.array([levels[p].min() for p in present])
    hi = np.array([levels[p].max() for p in present])
    level = _level(lo, hi)
    w = np.ldexp(1.0, level)
    k = np.floor(levels[None, :] / w[:, None]).astype(np.int64)  # [3, 256]
    offset = np.where(present, k, np.iinfo(np.int64).max).min(1)
    counts = np.zeros((3, NUM_BINS))
    rows = np.broadcast_to(np.arange(3)[:, None], k.shape)
    np.add.at(counts, (rows[present], (k - offset[:, None])[present]), hist[present])
    return FeatureSketch(3, count=float(n), mean=mean, m2=m2, min=lo, max=hi, level=level,
                         offset=offset, counts=counts)


# --- a dataset's statistics -------------------------------------------------------------------------
def stats_features(features: FeatureSpec) -> list[str]:
    """The features that get statistics: every numeric and visual feature (not strings)."""
    return [k for k, f in features.items() if f.dtype != "string"]


class DatasetStats:
    """The statistics of every feature of a dataset, fed frame by frame or batch by batch.

    Numeric features of shape S: one ``FeatureSketch`` over prod(S) dimensions, reported shaped S.
    Visual features: the exact per-channel histogram of pixel levels ([3, 256] counts, uint8
    pixels have no more values), turned into a sketch of pixel / 255 only when reported, shaped
    [3, 1, 1]. ``count`` is the number of frames, as LeRobot writes it.
    """

    def __init__(self, features: FeatureSpec):
        self.features = {k: features[k] for k in stats_features(features)}
        self.sketches = {k: FeatureSketch(int(np.prod(f.shape, dtype=np.int64)))
                         for k, f in self.features.items() if not f.is_visual}
        self.histograms = {k: np.zeros((3, 256), np.int64) for k, f in self.features.items() if f.is_visual}
        self.frames = dict.fromkeys(self.features, 0)

    def add(self, key: str, values: np.ndarray, where: str | None = None) -> None:
        """Add N frames of numeric feature ``key``: values shaped [N, *shape]."""
        x = np.asarray(values)
        if x.dtype == np.bool_:
            x = x.astype(np.float64)
        self.sketches[key].add(x.reshape(len(x), -1), where=where or key)
        self.frames[key] += len(x)

    def add_images(self, key: str, images: np.ndarray, channels_last: bool) -> None:
        """Add N uint8 images [N, H, W, 3] (channels_last) or [N, 3, H, W] of visual feature ``key``."""
        self.histograms[key] += image_channel_histogram(images, channels_last)
        self.frames[key] += len(images)

    def merge(self, other: DatasetStats) -> DatasetStats:
        if set(other.features) != set(self.features):
            raise KeyError(f"cannot merge statistics of features {sorted(other.features)} "
                           f"into those of {sorted(self.features)}")
        for k, s in other.sketches.items():
            self.sketches[k].merge(s)
        for k, h in other.histograms.items():
            self.histograms[k] += h
        for k, n in other.frames.items():
            self.frames[k] += n
        return self

    # -- persistence (so a resumed writer need not re-read the dataset) --------------------------
    _SKETCH_FIELDS = ("mean", "m2", "min", "max", "level", "offset", "counts")

    def to_bytes(self, **extra: int) -> bytes:
        """The full state (sketches, histograms, frame counts) as compressed .npz bytes;
        ``extra`` ints (e.g. the number of episodes covered) are stored beside it."""
        arrays: dict[str, np.ndarray] = {f"extra/{k}": np.array(v) for k, v in extra.items()}
        for k, sk in self.sketches.items():
            arrays[f"sketch/{k}/count"] = np.array(sk.count)
            arrays.update({f"sketch/{k}/{a}": getattr(sk, a) for a in self._SKETCH_FIELDS})
        arrays.update({f"hist/{k}": h for k, h in self.histograms.items()})
        arrays.update({f"frames/{k}": np.array(n) for k, n in self.frames.items()})
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, features: FeatureSpec, data: bytes, where: str) -> tuple[DatasetStats, dict[str, int]]:
        """Inverse of ``to_bytes``: (stats, extra). Raises DataError if it does not fit ``features``."""
        out = cls(features)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            for k, sk in out.sketches.items():
                sk.count = float(arrays[f"sketch/{k}/count"])
                for a in cls._SKETCH_FIELDS:
                    v = arrays[f"sketch/{k}/{a}"]
                    if v.shape != getattr(sk, a).shape:
                        raise DataError(f"{where}: sketch/{k}/{a} has shape {list(v.shape)}, "
                                        f"expected {list(getattr(sk, a).shape)}")
                    setattr(sk, a, v)
            for k in out.histograms:
                out.histograms[k] = arrays[f"hist/{k}"].astype(np.int64).reshape(3, 256)
            for k in out.frames:
                out.frames[k] = int(arrays[f"frames/{k}"])
        except KeyError as e:
            raise DataError(f"{where}: missing array {e}; saved for other features") from None
        except (OSError, ValueError) as e:
            raise DataError(f"{where}: cannot read statistics state ({e})") from None
        extra = {k.split("/", 1)[1]: int(v) for k, v in arrays.items() if k.startswith("extra/")}
        return out, extra

    def to_stats(self) -> Stats:
        """feature -> {mean, std, min, max, q01, q10, q50, q90, q99, count}; features with no
        frames are left out."""
        out: Stats = {}
        for k in self.features:
            if self.frames[k] == 0:
                continue
            if k in self.histograms:
                out[k] = image_sketch_from_histogram(self.histograms[k]).to_stats((3, 1, 1))
            else:
                out[k] = self.sketches[k].to_stats(self.features[k].shape)
            out[k]["count"] = np.array([self.frames[k]], dtype=np.int64)
        return out


def column_to_numpy(column, n_dims: int) -> np.ndarray:
    """A parquet column (scalars or fixed-size lists) as a numpy array [N, n_dims]."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        col = col.flatten()
    arr = col.to_numpy(zero_copy_only=False)
    return arr.reshape(len(column), n_dims) if len(column) else arr.reshape(0, n_dims)


def decode_png(data: bytes, where: str) -> np.ndarray:
    """PNG (or any PIL-readable image) bytes -> uint8 [H, W, 3]."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{where}: cannot decode image ({e})") from None


def image_cell_bytes(cell, root: Path, where: str) -> bytes:
    """Bytes of one image cell as LeRobot stores it ({"bytes": ..., "path": ...})."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):
            p = Path(cell["path"])
            p = p if p.is_absolute() else root / p
            if not p.is_file():
                raise DataError(f"{where}: image file {p} not found")
            return p.read_bytes()
    raise DataError(f"{where}: expected an image cell with 'bytes' or 'path', got {type(cell).__name__}")


def iter_episode_video(meta, key: str, episode: int,
                       window: int = FRAMES_PER_WINDOW) -> Iterable[np.ndarray]:
    """uint8 frames [n, 3, H, W] of one episode of video ``key``, ``window`` frames at a time.

    Checks that the file holds exactly the episode's number of frames in its time range.
    """
    from policystack.datasets.video import decode_segment

    path, t0, _ = meta.episode_video(key, episode)
    length = int(meta.episodes["length"][meta.episode_row(episode)])
    half = 0.5 / meta.fps
    for start in range(0, length, window):
        stop = min(start + window, length)
        frames, _ = decode_segment(path, t0 + start / meta.fps - half, t0 + stop / meta.fps - half)
        if len(frames) != stop - start:
            raise DataError(f"{path}: episode {episode} of {key!r} needs frames {start}..{stop - 1} "
                            f"at t={t0 + start / meta.fps:.4f}..{t0 + (stop - 1) / meta.fps:.4f}s, "
                            f"the file holds {len(frames)} of them; the video is truncated or out of sync")
        yield frames


def compute_dataset_stats(root: str | Path, progress: bool = True) -> Stats:
    """Statistics of every numeric and visual feature of the dataset at ``root``, streaming
    (see ``accumulate_dataset_stats``)."""
    from policystack.datasets.meta import DatasetMeta

    return accumulate_dataset_stats(DatasetMeta.load(root), progress=progress).to_stats()


def accumulate_dataset_stats(meta, progress: bool = True) -> DatasetStats:
    """Sketches of every numeric and visual feature of a dataset (``DatasetMeta``), streaming.

    Parquet files are read one row group at a time, videos ``FRAMES_PER_WINDOW`` frames at a
    time, images (PNG bytes in the parquet, as LeRobot v3 stores them) one row group at a time,
    so memory does not grow with the dataset. Shows a tqdm bar over frames when ``progress``.
    """
    from tqdm import tqdm

    acc = DatasetStats(meta.features)
    numeric = [k for k in acc.features if not meta.features[k].is_visual]
    n_passes = 1 + len(meta.video_keys)
    bar = tqdm(total=meta.total_frames * n_passes, desc="stats", unit="frame", disable=not progress)
    try:
        for path in meta.data_files():
            try:
                pf = pq.ParquetFile(path)
                names = pf.schema_arrow.names
                missing = [k for k in numeric + meta.image_keys if k not in names]
                if missing:
                    raise DataError(f"{path}: missing columns {missing} declared in meta/info.json")
                for rg in range(pf.num_row_groups):
                    table = pf.read_row_group(rg, columns=numeric + meta.image_keys + ["episode_index"])
                    if len(meta.episodes["episode_index"]) and table.num_rows:
                        # rows of episodes not in meta (an uncommitted save) are not counted
                        keep = np.isin(table.column("episode_index").to_numpy(), meta.episodes["episode_index"])
                        if not keep.all():
                            table = table.filter(pa.array(keep))
                    for k in numeric:
                        acc.add(k, column_to_numpy(table.column(k), acc.sketches[k].dim), where=f"{path}: {k}")
                    for k in meta.image_keys:
                        cells = table.column(k).to_pylist()
                        if cells:
                            imgs = np.stack([decode_png(image_cell_bytes(c, meta.root, f"{path}: {k}"),
                                                        f"{path}: {k}") for c in cells])
                            acc.add_images(k, imgs, channels_last=True)
                    bar.update(table.num_rows)
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{path}: cannot read parquet ({e}); the file is truncated or not parquet") from None
        for k in meta.video_keys:
            for ep in meta.episodes["episode_index"].tolist():
                for frames in iter_episode_video(meta, k, ep):
                    acc.add_images(k, frames, channels_last=False)
                    bar.update(len(frames))
    finally:
        bar.close()
    return acc

