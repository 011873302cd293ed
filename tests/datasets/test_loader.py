"""WindowedDataset returns what LeRobotDataset returns, fast paths included, and fails clearly."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import _lerobot_fixtures
import numpy as np
import pytest
import torch
from _lerobot_fixtures import EPISODE_LENGTHS, FPS, IMAGE_KEY, TASKS, VIDEO_KEY
from _writer_data import MeanColour

from policystack.datasets.loader import FrameCache, WindowedDataset, collate_windows
from policystack.types import DataError

lerobot_root = _lerobot_fixtures.lerobot_root  # the session fixture (a LeRobot-written dataset)

OBS = [-1, 0]
ACT = list(range(16))
DELTAS = {"observation.state": OBS, "action": ACT, VIDEO_KEY: OBS, IMAGE_KEY: OBS}


def as_seconds(deltas: dict) -> dict:
    return {k: [d / FPS for d in v] for k, v in deltas.items()}


def assert_same_sample(ours: dict, theirs: dict, where: str) -> None:
    """Every key equal: numeric values exactly (dtype and shape too), images as uint8 == float * 255."""
    assert set(ours) == set(theirs), f"{where}: keys differ: {set(ours) ^ set(theirs)}"
    for k, want in theirs.items():
        got = ours[k]
        if isinstance(want, str):
            assert got == want, f"{where}: {k}"
        elif k in (VIDEO_KEY, IMAGE_KEY):
            assert got.dtype == torch.uint8 and got.shape == want.shape, f"{where}: {k} {got.shape} {want.shape}"
            assert torch.equal(got, (want * 255).round().to(torch.uint8)), f"{where}: {k} pixels differ"
            assert torch.equal(got.float() / 255, want), f"{where}: {k} not exactly LeRobot's float frames"
        else:
            assert got.dtype == want.dtype and got.shape == want.shape, f"{where}: {k} {got.dtype}{tuple(got.shape)} vs {want.dtype}{tuple(want.shape)}"
            assert torch.equal(got, want), f"{where}: {k} values differ"


def edge_and_random_indices(n_random: int = 12) -> list[int]:
    starts = np.cumsum((0, *EPISODE_LENGTHS))
    edges = {int(s + o) for s in starts[:-1] for o in (0, 1)} | {int(e - o) for e in starts[1:] for o in (1, 2)}
    rng = np.random.default_rng(0)
    return sorted(edges | set(rng.integers(0, starts[-1], n_random).tolist()))


@pytest.fixture(scope="module")
def lerobot_ds(lerobot_root):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset("test/loader", root=lerobot_root, delta_timestamps=as_seconds(DELTAS))


@pytest.mark.parametrize("cache", ["disk", "memory"])
def test_matches_lerobot_with_windows(lerobot_root, lerobot_ds, tmp_path, cache):
    ours = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path if cache == "disk" else False)
    assert len(ours) == len(lerobot_ds) == sum(EPISODE_LENGTHS)
    for i in edge_and_random_indices():
        assert_same_sample(ours[i], lerobot_ds[i], f"index {i}")
    # the pad masks are really exercised: first frame pads obs[-1], the 5-frame episode pads actions
    assert ours[0]["observation.state_is_pad"].tolist() == [True, False]
    short = EPISODE_LENGTHS[0] + EPISODE_LENGTHS[1]
    assert ours[short]["action_is_pad"].sum().item() == 16 - EPISODE_LENGTHS[2]
    assert {ours[i]["task"] for i in range(len(ours))} == set(TASKS)


def test_matches_lerobot_without_deltas_and_with_seconds(lerobot_root, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    plain = LeRobotDataset("test/loader", root=lerobot_root)
    ours = WindowedDataset(lerobot_root, cache_dir=tmp_path)
    for i in (0, 5, len(ours) - 1):
        assert_same_sample(ours[i], plain[i], f"index {i} (no deltas)")
        assert ours[i][VIDEO_KEY].shape == (3, 32, 32)
    # delta_timestamps in seconds is the same as frame offsets
    a = WindowedDataset(lerobot_root, delta_timestamps=as_seconds(DELTAS), cache_dir=tmp_path)
    b = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path)
    for k, v in a[13].items():
        assert v == b[13][k] if isinstance(v, str) else torch.equal(v, b[13][k])


def test_batch_gather_equals_single_items(lerobot_root, tmp_path):
    ds = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path)
    idx = [3, 0, 53, 12, 12, 40]
    batch = ds.get_batch(idx)
    for j, i in enumerate(idx):
        one = ds[i]
        for k, v in one.items():
            assert v == batch[k][j] if isinstance(v, str) else torch.equal(v, batch[k][j]), (k, i)
    assert batch[VIDEO_KEY].shape == (6, 2, 3, 32, 32) and batch["action"].shape == (6, 16, 3)
    with pytest.raises(IndexError, match="out of range"):
        ds.get_batch([len(ds)])


def test_episode_selection_matches_lerobots(lerobot_root, tmp_path):
    """episodes=[...] as LeRobotDataset(episodes=[...]): index i is the i-th frame of the selected
    episodes; the first epoch's decoding is counted and, once done, nothing is left."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    theirs = LeRobotDataset("test/loader", root=lerobot_root, episodes=[1, 3], delta_timestamps=as_seconds(DELTAS))
    ours = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path, episodes=[3, 1])
    assert len(ours) == len(theirs) == EPISODE_LENGTHS[1] + EPISODE_LENGTHS[3]
    for i in (0, 1, EPISODE_LENGTHS[1] - 1, EPISODE_LENGTHS[1], len(ours) - 1):
        assert_same_sample(ours[i], theirs[i], f"index {i} of episodes 1, 3")
    assert {int(ours[i]["episode_index"]) for i in range(len(ours))} == {1, 3}
    segments, frames, nbytes = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path / "fresh",
                                               episodes=[3, 1]).uncached_frames()
    assert (segments, frames) == (4, 2 * len(ours)) and nbytes == frames * 3 * 32 * 32  # 2 cameras x 2 episodes
    assert ours.warm_cache() <= 4 and ours.uncached_frames() == (0, 0, 0)
    with pytest.raises(DataError, match=r"episodes \[7\] are not in the dataset"):
        WindowedDataset(lerobot_root, cache_dir=tmp_path, episodes=[1, 7])


def test_keys_subset_skips_cameras(lerobot_root, tmp_path):
    ds = WindowedDataset(lerobot_root, delta_indices={"action": ACT}, keys=["observation.state", "action"],
                         cache_dir=tmp_path)
    s = ds[7]
    assert set(s) == {"observation.state", "action", "action_is_pad", "task"}
    assert s["action"].shape == (16, 3) and s["observation.state"].shape == (6,)
    assert not (ds.cache_dir / "frames").exists()  # nothing decoded


def test_future_observation_frames_without_the_action_match_lerobot(lerobot_root, tmp_path):
    """A world model's windows: past, current and future frames of observations only (no action)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    future = {"observation.state": [-1, 0, 1, 2], VIDEO_KEY: [0, 3]}
    ours = WindowedDataset(lerobot_root, delta_indices=future, keys=["observation.state", VIDEO_KEY],
                           cache_dir=tmp_path)
    theirs = LeRobotDataset("test/loader", root=lerobot_root, delta_timestamps=as_seconds(future))
    end = EPISODE_LENGTHS[0] - 1  # the last frame of the first episode: every future frame is padding
    for i in (0, end - 2, end, end + 1):
        want = {k: v for k, v in theirs[i].items() if k in ours[i]}
        assert_same_sample(ours[i], want, f"index {i}")
    s = ours[end]
    assert s["observation.state_is_pad"].tolist() == [False, False, True, True] and "action" not in s
    assert torch.equal(s["observation.state"][2], s["observation.state"][1])  # repeats the episode's last frame


def test_end_indices_give_the_last_frames_of_each_samples_episode(lerobot_root, tmp_path):
    """end_indices={key: [-1, 0]}: <key>_episode_end holds the last two frames of the sample's own episode
    (whatever frame was drawn; clamped in an episode shorter than the offsets), cameras included."""
    ends = {"observation.state": [-1, 0], "action": [-1, 0], VIDEO_KEY: [-1, 0]}
    ds = WindowedDataset(lerobot_root, delta_indices={"action": [0, 1]}, end_indices=ends, cache_dir=tmp_path)
    starts = np.cumsum((0, *EPISODE_LENGTHS))
    batch = ds.get_batch([0, 3, int(starts[1]), int(starts[2]) - 1])
    for row, i in enumerate([0, 3, int(starts[1]), int(starts[2]) - 1]):
        last = int(starts[np.searchsorted(starts, i, side="right")]) - 1
        for key in ends:
            want = torch.stack([ds[last - 1][key] if key != "action" else ds[last - 1][key][0],
                                ds[last][key] if key != "action" else ds[last][key][0]])
            assert torch.equal(batch[key + "_episode_end"][row], want), (key, i)
    assert batch["action"].shape[1] == 2 and "action_episode_end_is_pad" not in batch
    with pytest.raises(ValueError, match="must be <= 0"):
        WindowedDataset(lerobot_root, end_indices={"action": [0, 1]}, cache_dir=tmp_path)
    with pytest.raises(KeyError, match="end_indices on 'observation.nope'"):
        WindowedDataset(lerobot_root, end_indices={"observation.nope": [0]}, cache_dir=tmp_path)


@pytest.mark.parametrize("collate", ["default", "windows"])
def test_workers_give_the_same_batches(lerobot_root, tmp_path, collate):
    ds = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path)
    fn = collate_windows if collate == "windows" else None

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False, num_workers=workers, collate_fn=fn)
        return list(loader)

    single, multi = batches(0), batches(2)
    assert len(single) == len(multi) == -(-len(ds) // 8)
    for a, b in zip(single, multi):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k] if isinstance(a[k], list) else (a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])), k


def test_column_cache_is_reused_and_shared_by_mmap(lerobot_root, tmp_path):
    first = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path)
    manifest, column = first.cache_dir / "columns" / "manifest.json", first._column_path("action")
    os.utime(manifest, (1, 1))
    mtime = column.stat().st_mtime_ns
    second = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path)
    assert column.stat().st_mtime_ns == mtime  # not rebuilt
    assert manifest.stat().st_mtime > 1  # its mtime says when the entry was last used (`dataset cache`)
    assert isinstance(second._ensure_open()["action"], np.memmap)
    assert torch.equal(first[20]["action"], second[20]["action"])


def test_frame_cache_stays_within_budget(lerobot_root, tmp_path):
    one_segment = 20 * 3 * 32 * 32 + 128  # the longest episode, plus the .npy header
    ds = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path, frame_cache_bytes=2 * one_segment)
    for i in range(len(ds)):
        ds[i]
    frames = list((ds.cache_dir / "frames").glob("*.npy"))
    assert frames and sum(p.stat().st_size for p in frames) <= 2 * one_segment
    mem = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=False, frame_cache_bytes=one_segment)
    ref = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path / "ref")
    for i in (0, 30, 0, 50, 13):  # evictions and re-decodes give the same frames
        assert torch.equal(mem[i][VIDEO_KEY], ref[i][VIDEO_KEY])
    assert mem._frame_cache()._bytes <= one_segment


def test_frame_cache_scans_its_directory_rarely(tmp_path, monkeypatch):
    """A put does not stat every cached file (that made caching n segments O(n^2)): with room to spare,
    one scan per max_bytes / RESCAN_FRACTION written; near the bound, a scan per put keeps it."""
    scans = []
    real_glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: scans.append(pattern) or real_glob(self, pattern))
    seg = np.zeros((10, 3, 8, 8), np.uint8)  # 1920 bytes + the .npy header
    roomy = FrameCache(tmp_path / "roomy", max_bytes=16 * 100 * 2048)
    (tmp_path / "roomy").mkdir()
    for i in range(100):
        roomy.put(f"s{i}", seg)
    assert 1 <= len(scans) <= 2, len(scans)
    scans.clear()
    (tmp_path / "tight").mkdir()
    tight = FrameCache(tmp_path / "tight", max_bytes=5 * 2048)
    for i in range(20):
        tight.put(f"s{i}", seg)
        assert sum(p.stat().st_size for p in real_glob(tmp_path / "tight", "*.npy")) <= 5 * 2048
    assert len(scans) == 20


def test_frame_cache_treats_a_cut_short_file_as_absent(tmp_path):
    """Cache files are not fsync'd: after a power loss one may be empty or short; get() says absent."""
    (tmp_path / "c").mkdir()
    cache = FrameCache(tmp_path / "c", max_bytes=1 << 20)
    cache.put("a", np.ones((4, 3, 8, 8), np.uint8))
    assert FrameCache(tmp_path / "c", max_bytes=1 << 20).get("a").sum() == 4 * 3 * 8 * 8
    data = (tmp_path / "c" / "a.npy").read_bytes()
    for cut in (b"", data[:200]):
        (tmp_path / "c" / "a.npy").write_bytes(cut)
        assert FrameCache(tmp_path / "c", max_bytes=1 << 20).get("a") is None


def test_frame_cache_keeps_as_many_maps_open_as_file_descriptors_allow(tmp_path, monkeypatch):
    """Each open memory map holds a file descriptor: the bound follows the soft RLIMIT_NOFILE (1024 kept
    for the rest, 512..32768), and a cache holds at most that many, least recently used closed first."""
    import resource

    from policystack.datasets.loader import max_open_segments

    for soft, expected in ((1024, 512), (20000, 18976), (resource.RLIM_INFINITY, 32768)):
        monkeypatch.setattr(resource, "getrlimit", lambda _, s=soft: (s, resource.RLIM_INFINITY))
        assert max_open_segments() == expected
    monkeypatch.undo()
    (tmp_path / "c").mkdir()
    writer = FrameCache(tmp_path / "c", max_bytes=1 << 20, max_open=1)
    for i in range(5):
        writer.put(f"s{i}", np.full((2, 3, 4, 4), i, np.uint8))
    cache = FrameCache(tmp_path / "c", max_bytes=1 << 20, max_open=3)
    for i in range(5):
        assert cache.get(f"s{i}")[0, 0, 0, 0] == i
    assert list(cache._open) == ["s2", "s3", "s4"]  # the three most recent, s0 and s1 closed
    cache.get("s2")
    cache.get("s0")  # reopened from disk; s3 is now the least recently used
    assert list(cache._open) == ["s4", "s2", "s0"]


# --- bad input --------------------------------------------------------------------------------
@pytest.fixture
def broken_copy(lerobot_root, tmp_path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(lerobot_root, root)
    return root


def test_delta_on_unknown_key(lerobot_root, tmp_path):
    with pytest.raises(KeyError, match="observation.nope"):
        WindowedDataset(lerobot_root, delta_indices={"observation.nope": [0]}, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="multiples of 1/fps"):
        WindowedDataset(lerobot_root, delta_timestamps={"action": [0.05]}, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="not both"):
        WindowedDataset(lerobot_root, delta_timestamps={"action": [0.1]}, delta_indices={"action": [1]})


def test_truncated_parquet(broken_copy, tmp_path):
    data = broken_copy / "data/chunk-000/file-000.parquet"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(DataError, match=r"file-000\.parquet.*truncated"):
        WindowedDataset(broken_copy, delta_indices=DELTAS, cache_dir=tmp_path)


def test_missing_video(broken_copy, tmp_path):
    video = broken_copy / f"videos/{VIDEO_KEY}/chunk-000/file-000.mp4"
    video.unlink()
    ds = WindowedDataset(broken_copy, delta_indices=DELTAS, cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"file-000\.mp4: video file not found"):
        ds[0]


def test_truncated_video(broken_copy, tmp_path):
    video = broken_copy / f"videos/{VIDEO_KEY}/chunk-000/file-000.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size * 2 // 3])
    ds = WindowedDataset(broken_copy, delta_indices=DELTAS, cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"file-000\.mp4: .*(truncated|no frame)"):
        for i in range(len(ds)):
            ds[i]


def test_index_column_out_of_order(broken_copy, tmp_path):
    import pyarrow.parquet as pq

    path = broken_copy / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    idx = table.column("index").to_numpy().copy()
    idx[[3, 4]] = idx[[4, 3]]
    table = table.set_column(table.column_names.index("index"), "index", [idx])
    pq.write_table(table, path)
    with pytest.raises(DataError, match="column 'index'"):
        WindowedDataset(broken_copy, cache_dir=tmp_path)


# --- datasets written by policystack's own writer ---------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("policystack.datasets.writer") is None,
                    reason="policystack.datasets.writer is not written yet")
def test_matches_lerobot_on_our_writer(tmp_path):
    """Our writer puts each episode in its own data / video file: the multi-file path."""
    from _lerobot_fixtures import write_policystack_dataset
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = write_policystack_dataset(tmp_path / "ours")
    theirs = LeRobotDataset("test/ours", root=root, delta_timestamps=as_seconds(DELTAS))
    ours = WindowedDataset(root, delta_indices=DELTAS, cache_dir=tmp_path / "cache")
    assert len(ours) == len(theirs)
    for i in edge_and_random_indices(6):
        assert_same_sample(ours[i], theirs[i], f"index {i} (policystack writer)")


def test_string_feature(tmp_path):
    """A dtype "string" feature: as LeRobot without offsets; a list of strings with them (LeRobot
    cannot window strings: torch.stack fails)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path / "strings"
    w = LeRobotDataset.create("test/strings", fps=FPS, root=root, use_videos=False, features={
        "action": {"dtype": "float32", "shape": (2,), "names": None},
        "note": {"dtype": "string", "shape": (1,), "names": None}})
    for ep in range(2):
        for i in range(4):
            w.add_frame({"action": np.full(2, i, np.float32), "note": f"note {ep}-{i}", "task": "t"})
        w.save_episode()
    w.finalize()
    theirs = LeRobotDataset("test/strings", root=root)
    plain = WindowedDataset(root, cache_dir=tmp_path / "cache")
    for i in range(len(plain)):
        assert_same_sample(plain[i], theirs[i], f"index {i}")
    for _ in range(2):  # built, then from the column cache
        ds = WindowedDataset(root, delta_indices={"note": [-1, 0]}, cache_dir=tmp_path / "cache")
        assert ds[4]["note"] == ["note 1-0", "note 1-0"] and ds[4]["note_is_pad"].tolist() == [True, False]
        assert ds[6]["note"] == ["note 1-1", "note 1-2"]


# --- frame transforms (cached image features) --------------------------------------------------
@pytest.mark.parametrize("cache", ["disk", "memory"])
def test_frame_transforms_replace_frames_and_are_computed_once_per_episode(lerobot_root, tmp_path, cache):
    fn = MeanColour()
    cache_dir = tmp_path if cache == "disk" else False
    plain = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=cache_dir)
    ds = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=cache_dir, frame_transforms={VIDEO_KEY: fn})
    idx = edge_and_random_indices()
    got, want = ds.get_batch(idx), plain.get_batch(idx)
    assert got[VIDEO_KEY].dtype == torch.float16 and got[VIDEO_KEY].shape == (len(idx), len(OBS), 3, 1, 1)
    expected = want[VIDEO_KEY].float().mean((-2, -1), keepdim=True).half()
    assert torch.equal(got[VIDEO_KEY], expected)
    assert torch.equal(got[IMAGE_KEY], want[IMAGE_KEY])  # untransformed camera unchanged
    assert torch.equal(got[VIDEO_KEY + "_is_pad"], want[VIDEO_KEY + "_is_pad"])
    calls = fn.calls
    assert calls <= len(EPISODE_LENGTHS)
    ds.warm_cache()
    assert fn.calls == len(EPISODE_LENGTHS) and ds.warm_cache() == 0  # every episode once, then cached
    if cache == "disk":  # a new dataset object finds the transformed segments on disk
        fresh = MeanColour()
        again = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path, frame_transforms={VIDEO_KEY: fresh})
        assert again.warm_cache() == 0 and fresh.calls == 0
        assert torch.equal(again.get_batch(idx)[VIDEO_KEY], got[VIDEO_KEY])


def test_a_transformed_camera_caches_its_transform_not_its_decoded_frames(lerobot_root, tmp_path):
    """Training reads the transform (e.g. frozen-encoder features): the decoded frames, 1 GB per 2000
    Reach demos, are not written beside it."""
    ds = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path, frame_transforms={VIDEO_KEY: MeanColour()})
    assert ds.warm_cache() == 2 * len(EPISODE_LENGTHS)  # the transformed camera and the plain one (IMAGE_KEY)
    camera = VIDEO_KEY.replace("/", "_") + "--ep"
    names = sorted(p.name for p in (ds.cache_dir / "frames").glob(camera + "*.npy"))
    suffix = f".{MeanColour().cache_id}.npy"
    assert len(names) == len(EPISODE_LENGTHS) and all(n.endswith(suffix) for n in names), names


def test_warm_cache_with_worker_processes_builds_every_segment_once(lerobot_root, tmp_path):
    """workers=2 builds the segments in two other processes (the parent's transform is never called)
    into the shared on-disk cache: a fresh dataset finds all of them, equal to what one process builds."""
    fn = MeanColour()
    ds = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path / "two", frame_transforms={VIDEO_KEY: fn})
    todo = ds.uncached_frames()[0]
    assert todo >= len(EPISODE_LENGTHS) and ds.warm_cache(workers=2) == todo and fn.calls == 0
    fresh = MeanColour()
    again = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path / "two", frame_transforms={VIDEO_KEY: fresh})
    assert again.uncached_frames() == (0, 0, 0) and again.warm_cache(workers=2) == 0
    one = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path / "one", frame_transforms={VIDEO_KEY: MeanColour()})
    assert one.warm_cache() == todo
    idx = edge_and_random_indices()
    assert torch.equal(again.get_batch(idx)[VIDEO_KEY], one.get_batch(idx)[VIDEO_KEY]) and fresh.calls == 0


def test_a_dataset_reached_through_a_symlink_shares_its_cache(lerobot_root, tmp_path):
    """The cache directory is named after the resolved dataset, so features computed through one path
    are found through another (a symlinked copy recomputed a whole feature cache before)."""
    link = tmp_path / "link"
    link.symlink_to(lerobot_root, target_is_directory=True)
    direct = WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path / "c")
    linked = WindowedDataset(link, delta_indices=DELTAS, cache_dir=tmp_path / "c")
    assert linked.cache_dir == direct.cache_dir


def test_frame_transforms_are_checked(lerobot_root, tmp_path):
    with pytest.raises(KeyError, match="not a camera"):
        WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path,
                        frame_transforms={"observation.state": MeanColour()})
    with pytest.raises(TypeError, match="cache_id"):
        WindowedDataset(lerobot_root, delta_indices=DELTAS, cache_dir=tmp_path, frame_transforms={VIDEO_KEY: len})
