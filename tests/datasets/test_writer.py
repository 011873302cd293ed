"""DatasetWriter: LeRobot interop, frame validation, discard, resume and crash safety (SIGKILL)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from _writer_data import FEATURES, FPS, TASKS, action, image, length, state, task, write_episodes

from policystack.datasets.meta import DatasetMeta
from policystack.datasets.stats import compute_dataset_stats
from policystack.datasets.writer import STATS_STATE_PATH, DatasetWriter, find_leftovers, repair
from policystack.types import DataError, Feature, camera_record

HERE = Path(__file__).parent
# mean abs pixel difference (0..255) allowed after an AV1 crf-30 yuv420p round trip of these 32x32
# frames (measured up to ~3; LeRobot's own encoder gives the same pixels, see test_same_pixels_as_lerobot_encoder)
VIDEO_TOLERANCE = 4.0


@pytest.fixture(autouse=True)
def _close_lerobot_decoders():
    """LeRobot caches open video decoders (files, threads) globally: do not leak them into
    later tests (a fork with decoder threads alive can deadlock)."""
    yield
    from lerobot.datasets.video_utils import _default_decoder_cache

    _default_decoder_cache.clear()


def check_in_lerobot(root: Path, episodes: list[int]) -> None:
    """Every frame of ``episodes`` (0..n-1) loads in LeRobotDataset with our exact values."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/policystack_written", root=root)
    assert ds.num_episodes == len(episodes)
    assert len(ds) == sum(length(ep) for ep in episodes)
    idx = 0
    for ep in episodes:
        for i in range(length(ep)):
            item = ds[idx]
            assert item["episode_index"].item() == ep and item["frame_index"].item() == i
            assert item["index"].item() == idx
            assert item["timestamp"].item() == pytest.approx(i / FPS, abs=1e-6)
            assert item["task"] == task(ep)
            np.testing.assert_array_equal(item["observation.state"].numpy(), state(ep, i))
            np.testing.assert_array_equal(item["action"].numpy(), action(ep, i))
            top = (item["observation.images.top"].numpy() * 255).round().astype(np.uint8)
            np.testing.assert_array_equal(top, image(ep, i, 2).transpose(2, 0, 1))  # PNG: lossless
            for key, cam in (("observation.images.front", 0), ("observation.images.wrist", 1)):
                got = item[key].numpy() * 255
                want = image(ep, i, cam).transpose(2, 0, 1).astype(np.float64)
                assert got.shape == want.shape
                err = np.abs(got - want).mean()
                assert err < VIDEO_TOLERANCE, (key, ep, i, err)
                for j in (i - 1, i + 1):  # and it is this frame, not a neighbour
                    if 0 <= j < length(ep):
                        assert err < np.abs(got - image(ep, j, cam).transpose(2, 0, 1)).mean(), (key, ep, i, j)
            idx += 1


def test_ours_loads_in_lerobot_with_identical_values(ours_ds):
    check_in_lerobot(ours_ds, [0, 1, 2])


def test_ours_metadata(ours_ds):
    m = DatasetMeta.load(ours_ds)
    assert (m.total_episodes, m.total_frames, m.fps) == (3, 4 + 5 + 6, FPS)
    assert m.tasks == list(TASKS)
    assert [list(t) for t in m.episodes["tasks"]] == [[task(0)], [task(1)], [task(2)]]
    assert m.video_keys == ["observation.images.front", "observation.images.wrist"]
    assert m.image_keys == ["observation.images.top"]
    info = m.features["observation.images.front"].info
    assert info["video.codec"] == "av1" and info["video.pix_fmt"] == "yuv420p" and info["video.fps"] == FPS
    assert m.info["robot_type"] == "panda" and m.info["splits"] == {"train": "0:3"}
    # arrow types as LeRobot writes them
    schema = pq.read_schema(m.data_files()[0])
    assert str(schema.field("observation.state").type) == "fixed_size_list<element: float>[4]"
    assert str(schema.field("timestamp").type) == "float" and str(schema.field("index").type) == "int64"
    assert b"huggingface" in schema.metadata
    # stats.json: exact moments of what was written, images [3, 1, 1] in [0, 1]
    states = np.stack([state(ep, i) for ep in range(3) for i in range(length(ep))]).astype(np.float64)
    st = m.stats["observation.state"]
    np.testing.assert_allclose(st["mean"], states.mean(0), rtol=1e-6)
    np.testing.assert_allclose(st["std"], states.std(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(st["min"], states.min(0))
    assert st["count"].tolist() == [15]
    img = m.stats["observation.images.top"]
    pixels = np.stack([image(ep, i, 2) for ep in range(3) for i in range(length(ep))]).reshape(-1, 3) / 255
    assert img["mean"].shape == (3, 1, 1)
    np.testing.assert_allclose(img["mean"].reshape(3), pixels.mean(0), rtol=1e-9)
    # per-episode stats in meta/episodes, as LeRobot
    eps = pq.read_table(sorted((ours_ds / "meta/episodes").rglob("*.parquet"))[0]).to_pylist()
    np.testing.assert_allclose(eps[1]["stats/observation.state/mean"],
                               np.stack([state(1, i) for i in range(5)]).astype(np.float64).mean(0), rtol=1e-6)
    assert eps[2]["stats/observation.images.front/count"] == [6]
    # the stats the writer kept while writing equal a fresh streaming pass over the files
    # (except video pixels: the writer saw the frames before encoding)
    fresh = compute_dataset_stats(ours_ds, progress=False)
    for k in ("observation.state", "action", "observation.images.top", "index"):
        for s in ("mean", "min", "max", "q01", "q50", "q99"):
            np.testing.assert_allclose(fresh[k][s], m.stats[k][s], rtol=1e-9, atol=1e-12, err_msg=f"{k}.{s}")


def test_same_pixels_as_lerobot_encoder(ours_ds, tmp_path):
    """Our streamed MP4 decodes to exactly the pixels of LeRobot's encode_video_frames (same
    encoder settings) for the same frames."""
    from lerobot.datasets.video_utils import encode_video_frames
    from PIL import Image

    from policystack.datasets.video import decode_segment

    for i in range(length(1)):
        Image.fromarray(image(1, i, 0)).save(tmp_path / f"frame-{i:06d}.png")
    encode_video_frames(tmp_path, tmp_path / "lerobot.mp4", fps=FPS)
    theirs, t_theirs = decode_segment(tmp_path / "lerobot.mp4")
    ours, t_ours = decode_segment(DatasetMeta.load(ours_ds).episode_video("observation.images.front", 1)[0])
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_allclose(t_ours, np.arange(length(1)) / FPS, atol=1e-9)


def test_h264_and_png_only_datasets_load_in_lerobot(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    feats = {"observation.state": Feature("float32", (4,)), "observation.images.front": Feature("video", (16, 24, 3))}
    with DatasetWriter.create(tmp_path / "h264", fps=FPS, features=feats, vcodec="h264") as w:
        for i in range(5):
            w.add_frame({"observation.state": state(0, i), "task": "t",
                         "observation.images.front": np.full((16, 24, 3), 40 * i, np.uint8)})
        w.save_episode()
    m = DatasetMeta.load(tmp_path / "h264")
    assert m.features["observation.images.front"].info["video.codec"] == "h264"
    ds = LeRobotDataset("local/h264", root=tmp_path / "h264")
    assert abs(ds[4]["observation.images.front"].mean().item() * 255 - 160) < VIDEO_TOLERANCE
    # use_videos=False stores video cameras as PNG images
    with DatasetWriter.create(tmp_path / "png", fps=FPS, features=feats, use_videos=False) as w:
        w.add_frame({"observation.state": state(0, 0), "task": "t",
                     "observation.images.front": np.full((16, 24, 3), 7, np.uint8)})
        w.save_episode()
    assert DatasetMeta.load(tmp_path / "png").features["observation.images.front"].dtype == "image"
    ds = LeRobotDataset("local/png", root=tmp_path / "png")
    assert round(ds[0]["observation.images.front"].max().item() * 255) == 7


def test_feature_info_of_the_caller_is_kept_beside_the_video_entries(tmp_path):
    """camera.* records (how the images were made, types.camera_record) survive writing, resuming and
    loading in LeRobot."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    record = {"camera.name": "metaworld/corner2", "camera.convention": "lerobot", "camera.shadows": False}
    feats = {"observation.state": Feature("float32", (4,)),
             "observation.images.front": Feature("video", (16, 24, 3), info=record)}
    with DatasetWriter.create(tmp_path / "ds", fps=FPS, features=feats, vcodec="h264") as w:
        w.add_frame({"observation.state": state(0, 0), "task": "t",
                     "observation.images.front": np.full((16, 24, 3), 90, np.uint8)})
        w.save_episode()
    with DatasetWriter.resume(tmp_path / "ds") as w:
        w.add_frame({"observation.state": state(1, 0), "task": "t",
                     "observation.images.front": np.full((16, 24, 3), 90, np.uint8)})
        w.save_episode()
    info = DatasetMeta.load(tmp_path / "ds").features["observation.images.front"].info
    assert camera_record(Feature("video", (16, 24, 3), info=info)) == record and info["video.codec"] == "h264"
    ds = LeRobotDataset("local/recorded", root=tmp_path / "ds")
    assert len(ds) == 2 and abs(ds[1]["observation.images.front"].mean().item() * 255 - 90) < VIDEO_TOLERANCE


# --- validation -------------------------------------------------------------------------------
@pytest.fixture
def writer(tmp_path):
    feats = {"observation.state": Feature("float32", (4,)), "action": Feature("int64", (2,)),
             "observation.images.front": Feature("image", (8, 8, 3))}
    w = DatasetWriter.create(tmp_path / "ds", fps=FPS, features=feats)
    yield w
    w.__exit__(RuntimeError, None, None)


def good(**over):
    f = {"observation.state": np.zeros(4, np.float32), "action": np.zeros(2, np.int64),
         "observation.images.front": np.zeros((8, 8, 3), np.uint8), "task": "t"}
    f.update(over)
    return {k: v for k, v in f.items() if v is not None}


@pytest.mark.parametrize("frame_, expect", [
    (good(action=None), "missing keys ['action']"),
    (good(extra=np.zeros(1)), "unexpected keys ['extra']"),
    (good(task=None), "missing keys ['task']"),
    (good(task=""), "frame['task']: expected a non-empty string"),
    (good(**{"observation.state": np.zeros(5, np.float32)}), "frame['observation.state']: expected shape [4], got [5]"),
    (good(**{"observation.state": np.zeros((1, 4), np.float32)}), "expected shape [4], got [1, 4]"),
    (good(**{"observation.state": np.array([0, np.nan, 0, 0], np.float32)}), "frame['observation.state']: non-finite"),
    (good(**{"observation.state": np.array(["a"] * 4)}), "frame['observation.state']: expected float32"),
    (good(action=np.array([0.5, 1.0])), "frame['action']: expected int64"),
    (good(**{"observation.images.front": np.zeros((8, 8, 3), np.float32)}),
     "frame['observation.images.front']: expected uint8 image [8, 8, 3] or [3, 8, 8], got dtype float32"),
    (good(**{"observation.images.front": np.zeros((8, 9, 3), np.uint8)}), "got [8, 9, 3]"),
    (good(timestamp=-1.0), "frame['timestamp']"),
])
def test_bad_frames_name_key_expected_and_got(writer, frame_, expect):
    with pytest.raises(DataError) as e:
        writer.add_frame(frame_)
    assert expect in str(e.value)
    assert writer.episode_frames == 0  # a rejected frame adds nothing


def test_accepted_conversions_and_explicit_timestamps(writer):
    writer.add_frame(good(**{"observation.state": [1, 2, 3, 4]}, action=np.array([1, 2], np.int32)))
    writer.add_frame(good(timestamp=0.25))
    with pytest.raises(DataError, match="increasing"):
        writer.add_frame(good(timestamp=0.25))
    writer.save_episode()
    m = DatasetMeta.load(writer.root)
    t = pq.read_table(m.data_files()[0])
    assert t.column("timestamp").to_pylist() == [0.0, 0.25]
    assert t.column("observation.state").to_pylist()[0] == [1, 2, 3, 4]


def test_create_refuses_existing_dataset_and_second_writer(tmp_path, writer):
    with pytest.raises(FileExistsError, match="not an empty directory"):
        DatasetWriter.create(writer.root, fps=FPS, features={"a": Feature("float32", (1,))})
    with pytest.raises(DataError, match="another DatasetWriter"):
        DatasetWriter.resume(writer.root)
    with pytest.raises(ValueError, match="vcodec"):
        DatasetWriter.create(tmp_path / "x", fps=FPS, features={"a": Feature("float32", (1,))}, vcodec="hevc")
    with pytest.raises(DataError, match="even height and width"):
        DatasetWriter.create(tmp_path / "y", fps=FPS, features={"observation.images.a": Feature("video", (9, 8, 3))})
    with pytest.raises(DataError, match="at least 32 px wide"):
        DatasetWriter.create(tmp_path / "z", fps=FPS, features={"observation.images.a": Feature("video", (64, 16, 3))})


def test_discard_episode_drops_frames_tasks_and_temp_files(tmp_path):
    feats = {"observation.state": Feature("float32", (4,)), "observation.images.front": Feature("video", (32, 32, 3))}
    with DatasetWriter.create(tmp_path / "ds", fps=FPS, features=feats) as w:
        w.add_frame({"observation.state": state(0, 0), "observation.images.front": image(0, 0, 0),
                     "task": "kept"})
        w.save_episode()
        for i in range(3):
            w.add_frame({"observation.state": state(1, i), "observation.images.front": image(1, i, 0),
                         "task": "dropped"})
        assert list((tmp_path / "ds").rglob("*.tmp"))  # the episode streams into temp files
        w.discard_episode()
        assert not list((tmp_path / "ds").rglob("*.tmp"))
        w.add_frame({"observation.state": state(2, 0), "observation.images.front": image(2, 0, 0),
                     "task": "kept"})
        assert w.save_episode() == 1
    m = DatasetMeta.load(tmp_path / "ds")
    assert m.tasks == ["kept"] and m.episodes["length"].tolist() == [1, 1]
    assert m.episodes["dataset_from_index"].tolist() == [0, 1]


def test_finalize_with_unsaved_frames_raises_and_is_idempotent(writer):
    writer.add_frame(good())
    with pytest.raises(ValueError, match="1 frames were added since the last save_episode"):
        writer.finalize()
    writer.save_episode()
    writer.finalize()
    writer.finalize()
    with pytest.raises(ValueError, match="finalized"):
        writer.add_frame(good())


def test_resume_appends_episodes(tmp_path):
    root = tmp_path / "ds"
    with DatasetWriter.create(root, fps=FPS, features=FEATURES) as w:
        write_episodes(w, [0, 1])
    before = json.loads((root / "meta/stats.json").read_text())
    with DatasetWriter.resume(root) as w:
        assert w.num_episodes == 2 and w.num_frames == 9
        write_episodes(w, [2])
    m = DatasetMeta.load(root)
    assert m.total_episodes == 3 and m.tasks == list(TASKS)
    assert len(list((root / "meta/episodes").rglob("*.parquet"))) == 2  # resume starts a new episodes file
    st = m.stats["observation.state"]
    states = np.stack([state(ep, i) for ep in range(3) for i in range(length(ep))]).astype(np.float64)
    np.testing.assert_allclose(st["mean"], states.mean(0), rtol=1e-6)
    assert st["count"].tolist() == [15] and before["observation.state"]["count"] == [9]
    # resume took the saved sketches, not a re-decode: video stats are of the source pixels
    px = np.stack([image(ep, i, 0) for ep in range(3) for i in range(length(ep))]).reshape(-1, 3) / 255
    np.testing.assert_allclose(m.stats["observation.images.front"]["mean"].reshape(3), px.mean(0), rtol=1e-12)
    check_in_lerobot(root, [0, 1, 2])
    # without the saved state (e.g. a dataset LeRobot wrote), resume recomputes from the files
    (root / STATS_STATE_PATH).unlink()
    with DatasetWriter.resume(root) as w:
        write_episodes(w, [3])
    st = DatasetMeta.load(root).stats["observation.state"]
    states = np.stack([state(ep, i) for ep in range(4) for i in range(length(ep))]).astype(np.float64)
    np.testing.assert_allclose(st["mean"], states.mean(0), rtol=1e-6)
    assert st["count"].tolist() == [22]


# --- crash safety -----------------------------------------------------------------------------
CRASH_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from _writer_data import FEATURES, FPS, frame, length
    from policystack.datasets.writer import DatasetWriter

    root, kill_ep, marker = Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    w = DatasetWriter.create(root, fps=FPS, features=FEATURES) if not root.exists() else DatasetWriter.resume(root)
    for ep in range(w.num_episodes, 100):
        for i in range(length(ep)):
            w.add_frame(frame(ep, i))
            if ep == kill_ep and i == 2:
                marker.write_text("in episode")
                time.sleep(120)
        w.save_episode()
""")


def run_and_kill(root: Path, kill_ep: int, tmp_path: Path) -> None:
    marker = tmp_path / f"marker-{kill_ep}"
    env = {**os.environ, "PYTHONPATH": str(HERE.parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(HERE), str(root), str(kill_ep), str(marker)],
                            env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"writer exited early: {proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "writer never reached the kill point"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_during_episode_keeps_completed_episodes(tmp_path):
    root = tmp_path / "ds"
    run_and_kill(root, kill_ep=2, tmp_path=tmp_path)
    # the killed episode left temp files (parquet + 2 MP4s), invisible to readers
    assert len(find_leftovers(root)) == 3
    m = DatasetMeta.load(root)
    assert m.total_episodes == 2 and m.episodes["length"].tolist() == [4, 5]
    assert m.stats is not None and m.stats["observation.state"]["count"].tolist() == [9]
    check_in_lerobot(root, [0, 1])
    # resume cleans up and appends; the dataset ends up as if never interrupted
    with DatasetWriter.resume(root) as w:
        assert w.num_episodes == 2
        write_episodes(w, [2, 3])
    assert find_leftovers(root) == []
    check_in_lerobot(root, [0, 1, 2, 3])


def test_interrupted_save_before_info_commit_is_ignored_then_repaired(tmp_path):
    """The on-disk state of a kill inside save_episode() after the episode's files and its
    meta/episodes row were written but before info.json (the commit record) was."""
    root = tmp_path / "ds"
    with DatasetWriter.create(root, fps=FPS, features=FEATURES) as w:
        write_episodes(w, [0, 1])
        committed_info = (root / "meta/info.json").read_bytes()
        write_episodes(w, [2])
    (root / "meta/info.json").write_bytes(committed_info)
    m = DatasetMeta.load(root)
    assert m.total_episodes == 2 and m.uncommitted_episodes == 1
    check_in_lerobot(root, [0, 1])
    left = find_leftovers(root)
    assert any("episodes [2]" in x for x in left)
    assert sum("file of an uncommitted episode" in x for x in left) == 3  # data + 2 videos
    repair(root)
    assert find_leftovers(root) == []
    assert DatasetMeta.load(root).uncommitted_episodes == 0
    with DatasetWriter.resume(root) as w:
        write_episodes(w, [2])
    check_in_lerobot(root, [0, 1, 2])


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path):
    """Kill the writer at random times (inside add_frame, encoding, save_episode ...): every
    committed episode stays loadable with exact values, and resume always continues."""
    rng = np.random.default_rng(0)
    script = CRASH_SCRIPT.replace("if ep == kill_ep and i == 2:", "if False:")
    for trial in range(6):
        root = tmp_path / f"ds{trial}"
        env = {**os.environ, "PYTHONPATH": str(HERE.parent.parent)}
        proc = subprocess.Popen([sys.executable, "-c", script, str(HERE), str(root), "-1", str(tmp_path / "m")],
                                env=env, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(3.0, 6.0)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if not (root / "meta/info.json").exists():
            continue
        n = json.loads((root / "meta/info.json").read_text())["total_episodes"]
        if n == 0:
            continue
        m = DatasetMeta.load(root)
        assert m.total_episodes == n
        check_in_lerobot(root, list(range(n)))
        with DatasetWriter.resume(root) as w:
            write_episodes(w, [n])
        check_in_lerobot(root, list(range(n + 1)))
        shutil.rmtree(root)
