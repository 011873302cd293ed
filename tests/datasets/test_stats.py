"""Streaming statistics: exact moments, quantiles within the documented bound, bounded memory,
order-independent merging, and a dataset's stats from its files (ours and LeRobot-written)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from _writer_data import action, image, length, state

from policystack.datasets.meta import DatasetMeta
from policystack.datasets.stats import (
    NUM_BINS,
    QUANTILES,
    DatasetStats,
    FeatureSketch,
    compute_dataset_stats,
    image_channel_histogram,
    image_sketch_from_histogram,
)
from policystack.types import DataError, Feature


def sample(rng, n):
    """Columns of different shapes: normal, heavy-tailed, tiny scale, huge offset, discrete."""
    return np.stack([rng.normal(5, 3, n), rng.standard_cauchy(n), rng.exponential(1e-4, n),
                     1e9 + rng.uniform(0, 10, n), rng.integers(0, 4, n).astype(np.float64)], axis=1)


def assert_quantiles_within_bound(sketch: FeatureSketch, x: np.ndarray) -> None:
    w = sketch.bin_width()
    span = x.max(0) - x.min(0)
    # the documented bin-width bound
    assert np.all(w <= np.maximum(2 * span / (NUM_BINS - 1), 2.0 ** -30) * (1 + 1e-12))
    for q in QUANTILES:
        est = sketch.quantile(q)
        lo = np.quantile(x, q, axis=0, method="lower")
        hi = np.quantile(x, q, axis=0, method="higher")
        assert np.all(est >= lo - w) and np.all(est <= hi + w), (q, est, lo, hi, w)


def test_sketch_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    x = sample(rng, 50_000)
    s = FeatureSketch(x.shape[1])
    for chunk in np.array_split(x, 17):  # streamed in uneven batches
        s.add(chunk)
    assert s.count == len(x)
    np.testing.assert_array_equal(s.min, x.min(0))
    np.testing.assert_array_equal(s.max, x.max(0))
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.std, x.std(0), rtol=1e-8)  # float64 rounding (the 1e9-offset column)
    assert_quantiles_within_bound(s, x)
    stats = s.to_stats()
    assert set(stats) == {"mean", "std", "min", "max", "count", "q01", "q10", "q50", "q90", "q99"}
    assert stats["count"].tolist() == [50_000] and stats["q50"].shape == (5,)


def test_merge_is_exact_and_order_independent():
    rng = np.random.default_rng(1)
    parts = [sample(rng, n) * (1 + k) for k, n in enumerate((10, 3000, 1, 700))]  # growing ranges
    forward = FeatureSketch(5)
    for p in parts:
        forward.merge(_sketch(p))
    backward = FeatureSketch(5)
    for p in parts[::-1]:
        backward.add(p)
    whole = _sketch(np.concatenate(parts))
    for other in (backward, whole):
        np.testing.assert_array_equal(forward.counts, other.counts)
        np.testing.assert_array_equal(forward.level, other.level)
        np.testing.assert_allclose(forward.mean, other.mean, rtol=1e-12)
        np.testing.assert_allclose(forward.m2, other.m2, rtol=1e-9)
    assert_quantiles_within_bound(forward, np.concatenate(parts))


def _sketch(x):
    s = FeatureSketch(x.shape[1])
    s.add(x)
    return s


def test_memory_does_not_grow_with_samples():
    rng = np.random.default_rng(2)
    small, big = FeatureSketch(3), FeatureSketch(3)
    small.add(rng.normal(size=(100, 3)))
    for _ in range(20):
        big.add(rng.normal(size=(50_000, 3)) * 10)
    size = lambda s: sum(getattr(s, a).nbytes for a in ("mean", "m2", "min", "max", "level", "offset", "counts"))  # noqa: E731
    assert size(small) == size(big) == 3 * (NUM_BINS * 8 + 6 * 8)
    assert big.count == 1_000_000


def test_constant_and_weighted_values():
    s = FeatureSketch(2)
    s.add(np.full((10, 2), 3.25))
    for q in QUANTILES:
        np.testing.assert_array_equal(s.quantile(q), [3.25, 3.25])
    assert np.all(s.std == 0)
    w = FeatureSketch(1)
    w.add(np.array([[0.0], [1.0]]), weights=np.array([3, 1]))  # == [0, 0, 0, 1]
    np.testing.assert_allclose([w.mean[0], w.std[0]], [0.25, np.std([0, 0, 0, 1])])


def test_non_finite_values_are_rejected():
    with pytest.raises(DataError, match=r"action: non-finite value nan at row 1, dimension 0"):
        FeatureSketch(2).add(np.array([[0, 0], [np.nan, 0]]), where="action")
    with pytest.raises(DataError, match=r"expected values shaped \[N, 2\], got \[3\]"):
        FeatureSketch(2).add(np.zeros(3))


def test_image_stats_per_channel_in_unit_range():
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, size=(5, 12, 10, 3), dtype=np.uint8)
    hist = image_channel_histogram(imgs, channels_last=True)
    np.testing.assert_array_equal(hist, image_channel_histogram(imgs.transpose(0, 3, 1, 2), channels_last=False))
    s = image_sketch_from_histogram(hist)
    px = imgs.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(s.mean, px.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.std, px.std(0), rtol=1e-9)
    assert_quantiles_within_bound(s, px)
    acc = DatasetStats({"observation.images.a": Feature("image", (12, 10, 3))})
    acc.add_images("observation.images.a", imgs[:2], channels_last=True)
    acc.add_images("observation.images.a", imgs[2:], channels_last=True)
    st = acc.to_stats()["observation.images.a"]
    assert st["mean"].shape == (3, 1, 1) and st["count"].tolist() == [5]  # frames, as LeRobot
    np.testing.assert_allclose(st["mean"].reshape(3), px.mean(0), rtol=1e-12)


def test_dataset_stats_from_files_of_our_dataset(ours_ds):
    st = compute_dataset_stats(ours_ds, progress=False)
    states = np.stack([state(ep, i) for ep in range(3) for i in range(length(ep))]).astype(np.float64)
    np.testing.assert_allclose(st["observation.state"]["mean"], states.mean(0), rtol=1e-6)
    np.testing.assert_array_equal(st["observation.state"]["max"], states.max(0))
    assert st["index"]["max"].tolist() == [14] and st["task_index"]["mean"].tolist() == [pytest.approx(5 / 15)]
    # video stats come from decoded frames: within codec error of the source pixels
    px = np.stack([image(ep, i, 0) for ep in range(3) for i in range(length(ep))]).reshape(-1, 3) / 255
    np.testing.assert_allclose(st["observation.images.front"]["mean"].reshape(3), px.mean(0), atol=3 / 255)
    assert st["observation.images.front"]["count"].tolist() == [15]


def test_lerobot_written_metadata_and_stats(lerobot_written):
    """LeRobot -> ours at the metadata / stats level."""
    m = DatasetMeta.load(lerobot_written)
    assert (m.total_episodes, m.total_frames) == (3, 15)
    assert m.episodes["length"].tolist() == [4, 5, 6] and m.video_keys == ["observation.images.front"]
    path, t0, t1 = m.episode_video("observation.images.front", 1)
    assert path.is_file() and (t0, t1) == pytest.approx((0.4, 0.9))  # episodes share one mp4
    ours = compute_dataset_stats(lerobot_written, progress=False)
    theirs = json.loads((lerobot_written / "meta/stats.json").read_text())
    for k in ("observation.state", "action"):
        vals = np.stack([(state if k == "observation.state" else action)(ep, i)
                         for ep in range(3) for i in range(length(ep))]).astype(np.float64)
        for s in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(ours[k][s], theirs[k][s], rtol=1e-5, atol=1e-6, err_msg=f"{k}.{s}")
        np.testing.assert_allclose(ours[k]["mean"], vals.mean(0), rtol=1e-6)
        assert ours[k]["count"].tolist() == theirs[k]["count"] == [15]
    # LeRobot computes image stats from the source frames, we from the decoded video
    np.testing.assert_allclose(ours["observation.images.front"]["mean"],
                               np.asarray(theirs["observation.images.front"]["mean"]), atol=3 / 255)
    # our per-episode table columns are named and typed like LeRobot's
    from policystack.datasets.writer import episodes_schema

    lr_schema = pq.read_schema(sorted((lerobot_written / "meta/episodes").rglob("*.parquet"))[0])
    ours_schema = episodes_schema(m.features)
    assert set(ours_schema.names) == set(lr_schema.names)
    for name in ours_schema.names:
        assert ours_schema.field(name).type == lr_schema.field(name).type, name


def test_stats_state_round_trip():
    rng = np.random.default_rng(4)
    feats = {"action": Feature("float32", (3,)), "observation.images.a": Feature("image", (4, 4, 3))}
    acc = DatasetStats(feats)
    acc.add("action", rng.normal(size=(50, 3)))
    acc.add_images("observation.images.a", rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8), channels_last=True)
    back, extra = DatasetStats.from_bytes(feats, acc.to_bytes(episodes=2), "state.npz")
    assert extra == {"episodes": 2}
    for k, sd in acc.to_stats().items():
        for s, v in sd.items():
            np.testing.assert_array_equal(back.to_stats()[k][s], v)
    with pytest.raises(DataError, match="state.npz: missing array"):
        DatasetStats.from_bytes({"other": Feature("float32", (1,))}, acc.to_bytes(), "state.npz")
    with pytest.raises(DataError, match="state.npz: cannot read"):
        DatasetStats.from_bytes(feats, b"garbage", "state.npz")
