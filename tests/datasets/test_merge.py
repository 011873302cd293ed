"""policystack dataset merge: episodes, frames, tasks and statistics of the sources, renumbered;
incompatible sources refused by name; nothing at --out unless the merge completed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _writer_data import FEATURES, FPS, MeanColour, frame, length, write_episodes

from policystack.datasets.commands import main as dataset_main
from policystack.datasets.loader import WindowedDataset
from policystack.datasets.merge import merge_datasets
from policystack.datasets.meta import STATS_PATH, DatasetMeta
from policystack.datasets.stats import compute_dataset_stats
from policystack.datasets.writer import DatasetWriter
from policystack.types import DataError, Feature


@pytest.fixture(scope="module")
def other_ds(tmp_path_factory):
    """2 episodes (the fixture's episodes 3 and 4: 7 and 8 frames) with a task of their own."""
    root = tmp_path_factory.mktemp("other") / "ds"
    with DatasetWriter.create(root, fps=FPS, features=FEATURES, robot_type="panda") as w:
        for ep in (3, 4):
            for i in range(length(ep)):
                w.add_frame(dict(frame(ep, i), task="stack the blocks" if ep == 3 else frame(ep, i)["task"]))
            w.save_episode()
    return root


def frames_of(root):
    """Every frame of a dataset: (episode, task, state, action, the three cameras)."""
    ds = WindowedDataset(root, cache_dir=None)
    out = []
    for i in range(len(ds)):
        s = ds[i]
        out.append((int(s["episode_index"]), s["task"], s["observation.state"].numpy(), s["action"].numpy(),
                    *(s[k].numpy() for k in sorted(ds.meta.camera_keys))))
    return out


def test_merged_dataset_holds_every_episode_renumbered_with_exact_stats(ours_ds, other_ds, tmp_path):
    out = tmp_path / "merged"
    meta = merge_datasets([ours_ds, other_ds], out, progress=False)
    a, b = DatasetMeta.load(ours_ds), DatasetMeta.load(other_ds)
    assert meta.total_episodes == 5 and meta.total_frames == a.total_frames + b.total_frames
    assert meta.tasks == [*a.tasks, "stack the blocks"]  # the union, first seen first
    assert meta.episodes["episode_index"].tolist() == [0, 1, 2, 3, 4]
    assert meta.episodes["length"].tolist() == [4, 5, 6, 7, 8]
    assert [t[0] for t in meta.episodes["tasks"]] == [*[t[0] for t in a.episodes["tasks"]], "stack the blocks",
                                                        b.episodes["tasks"][1][0]]
    # frame for frame what the sources hold, cameras decoded from the linked videos
    merged, want = frames_of(out), frames_of(ours_ds) + frames_of(other_ds)
    assert len(merged) == len(want)
    for (_, task, *arrays), (_, task0, *arrays0) in zip(merged, want):
        assert task == task0
        for x, y in zip(arrays, arrays0):
            np.testing.assert_array_equal(x, y)
    assert [m[0] for m in merged] == [e for e in range(5) for _ in range(length(e))]
    # the statistics: the sketches' merge is what one writer recording all five episodes writes (images
    # from the frames before encoding) and, for numbers, what a recomputation from the merged files gives
    direct = tmp_path / "direct"
    with DatasetWriter.create(direct, fps=FPS, features=FEATURES, robot_type="panda") as w:
        for ep in range(5):
            for i in range(length(ep)):
                w.add_frame(dict(frame(ep, i), task="stack the blocks" if ep == 3 else frame(ep, i)["task"]))
            w.save_episode()
    written, want = (json.loads((d / STATS_PATH).read_text()) for d in (out, direct))
    again = compute_dataset_stats(out, progress=False)
    for key in want:
        for s in want[key]:
            np.testing.assert_allclose(np.asarray(written[key][s]), np.asarray(want[key][s]), rtol=1e-6, atol=1e-6)
    for key in ("observation.state", "action"):
        for s in ("min", "max", "mean", "std", "q01", "q99"):
            np.testing.assert_allclose(np.asarray(written[key][s]), again[key][s], rtol=1e-6, atol=1e-6)
    # each episode's own statistics follow the renumbering
    import pyarrow.parquet as pq
    ep_rows = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["stats/episode_index/mean"] for r in ep_rows] == [[float(e)] for e in range(5)]
    assert [r["stats/index/min"][0] for r in ep_rows] == meta.episodes["dataset_from_index"].tolist()
    assert [r["stats/task_index/max"][0] for r in ep_rows] == [0, 1, 0, 2, 0]  # task(4) is the first task again
    # videos are hard links of the sources' files (no copy, no re-encoding)
    path, _, _ = meta.episode_video("observation.images.front", 3)
    src, _, _ = b.episode_video("observation.images.front", 0)
    assert os.path.samefile(path, src)
    # and the merged dataset can take more episodes
    with DatasetWriter.resume(out) as w:
        write_episodes(w, [5])
    assert DatasetMeta.load(out).total_episodes == 6


def test_merge_of_a_dataset_written_by_lerobot_recomputes_its_stats(lerobot_written, tmp_path):
    meta = merge_datasets([lerobot_written, lerobot_written], tmp_path / "twice", link=False, progress=False)
    one = DatasetMeta.load(lerobot_written)
    assert meta.total_episodes == 2 * one.total_episodes and meta.tasks == one.tasks
    assert meta.episodes["dataset_from_index"].tolist() == [0, *np.cumsum(meta.episodes["length"])[:-1].tolist()]
    ds = WindowedDataset(tmp_path / "twice", cache_dir=None)
    src = WindowedDataset(lerobot_written, cache_dir=None)
    n = len(src)
    for i in (0, n - 1):
        np.testing.assert_array_equal(ds[n + i]["observation.images.front"].numpy(),
                                      src[i]["observation.images.front"].numpy())
        assert int(ds[n + i]["index"]) == n + int(src[i]["index"])
    np.testing.assert_allclose(meta.stats["action"]["mean"], one.stats["action"]["mean"], rtol=1e-5, atol=1e-6)


def test_incompatible_sources_and_an_existing_out_are_refused_and_nothing_is_left(ours_ds, tmp_path):
    other = tmp_path / "fps20"
    with DatasetWriter.create(other, fps=2 * FPS, features=FEATURES, robot_type="panda") as w:
        write_episodes(w, [0])
    with pytest.raises(DataError, match=f"{other} does not match {ours_ds}: fps 20 vs 10"):
        merge_datasets([ours_ds, other], tmp_path / "out", progress=False)
    narrow = tmp_path / "narrow"
    feats = dict(FEATURES, action=Feature("float32", (2,)))
    with DatasetWriter.create(narrow, fps=FPS, features=feats, robot_type="panda") as w:
        w.add_frame(dict(frame(0, 0), action=np.zeros(2, np.float32)))
        w.save_episode()
    with pytest.raises(DataError, match=r"feature 'action' is float32 \[2\].* vs float32 \[3\]"):
        merge_datasets([ours_ds, narrow], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.merge-")]  # no staging left behind
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    with pytest.raises(FileExistsError, match="taken: exists and is not an empty directory"):
        merge_datasets([ours_ds], tmp_path / "taken", progress=False)
    assert (tmp_path / "taken" / "x").read_text() == "mine"


def test_cli_merges_and_reports_bad_input_in_one_line(ours_ds, other_ds, tmp_path, capsys):
    assert dataset_main(["merge", str(ours_ds), str(other_ds), "--out", str(tmp_path / "m"), "-q"]) == 0
    assert "episodes    5" in capsys.readouterr().out
    assert dataset_main(["merge", str(ours_ds), str(tmp_path / "missing"), "--out", str(tmp_path / "n"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("policystack dataset merge: error:") and "missing: dataset directory not found" in err


def test_the_sources_cached_features_carry_over_to_the_merged_dataset(ours_ds, other_ds, tmp_path):
    cache, cams = tmp_path / "cache", ["observation.images.front", "observation.images.wrist"]
    want = []
    for src in (ours_ds, other_ds):
        fn = MeanColour()
        ds = WindowedDataset(src, cache_dir=cache, frame_transforms={k: fn for k in cams})
        assert ds.warm_cache() == 3 * DatasetMeta.load(src).total_episodes  # the PNG camera too, decoded
        want += [{k: ds[i][k].numpy() for k in cams} for i in range(len(ds))]
    merge_datasets([ours_ds, other_ds], tmp_path / "merged", progress=False, cache_dir=cache)
    fn = MeanColour()
    merged = WindowedDataset(tmp_path / "merged", cache_dir=cache, frame_transforms={k: fn for k in cams})
    assert merged.warm_cache() == 0  # every segment found: nothing decoded or encoded again
    got = [{k: merged[i][k].numpy() for k in cams} for i in range(len(merged))]
    assert fn.calls == 0 and len(got) == len(want)
    for g, w in zip(got, want):
        for k in cams:
            np.testing.assert_array_equal(g[k], w[k])
    # a merge without the sources' caches links nothing and still works
    fresh = tmp_path / "fresh-cache"
    merge_datasets([ours_ds], tmp_path / "merged2", progress=False, cache_dir=fresh)
    assert not fresh.exists()
