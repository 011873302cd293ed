"""Merge LeRobot v3 datasets into one (``policystack dataset merge --out DST SRC [SRC ...]``).

What a multi-task model trains on: one dataset holding every source's episodes, so that its
normalisation statistics, its episode sampling and its instruction vocabulary cover all of them
(LeRobot's ``lerobot-edit-dataset --operation.type merge`` does the same for the Hub format).

- Episodes keep their order, source after source, renumbered from 0; ``index`` runs on across
  sources; ``task_index`` points into the union of the sources' tasks (first-seen order).
- Data files are rewritten with those three columns changed (rows of episodes a source does not
  commit, the leftovers of an interrupted save, are left out); video files are hard-linked (no
  re-encoding, no extra disk; copied where the sources lie on another file system, or with
  ``link=False``), so a merge of 10,000 episodes takes seconds.
- ``meta/episodes`` rows keep their per-episode statistics; the dataset statistics are the exact
  merge of each source's sketches (the writer's saved state) or recomputed from a source's files
  where it has none (a dataset written by LeRobot), streaming; those of the renumbered columns are
  computed from the rewritten files, and each episode's own statistics of them shifted to match.
- The sources must agree on fps, on every feature (dtype, shape, names, video codec, how each
  camera was made) and on robot_type; a mismatch is a ``DataError`` naming both datasets and the key.
- The loader's cache of each source (decoded frames, frozen-encoder features) is hard-linked into the
  merged dataset's cache (``loader.link_cached_segments``): the same videos give the same frames, so a
  model trained on the merge does not decode and encode everything again.
- Crash-safe: everything is written into a hidden directory beside ``DST`` that is renamed to
  ``DST`` when complete, so ``DST`` is either absent or a whole dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from policystack.datasets.loader import link_cached_segments
from policystack.datasets.meta import (
    CHUNKS_SIZE,
    DATA_PATH,
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    VIDEO_PATH,
    DatasetMeta,
    episode_files,
    read_parquet,
)
from policystack.datasets.stats import QUANTILES, DatasetStats, accumulate_dataset_stats, quantile_name
from policystack.datasets.writer import (
    EPISODES_PER_META_FILE,
    STATS_STATE_PATH,
    episodes_schema,
    saved_stats,
    write_tasks,
)
from policystack.io import atomic_write_bytes, atomic_write_json, atomic_write_parquet, fsync_dir
from policystack.types import EPISODE_INDEX, INDEX, TASK_INDEX, DataError, camera_record, stats_to_json

RENUMBERED = (EPISODE_INDEX, INDEX, TASK_INDEX)  # the columns a merge rewrites


def merge_datasets(sources: list[str | Path], out: str | Path, link: bool = True, progress: bool = True,
                   cache_dir: str | Path | None = None) -> DatasetMeta:
    """Write the episodes of ``sources`` (in that order) as one new dataset at ``out``.

    Args:
        sources: dataset directories (at least one).
        out: the new dataset's directory; must not exist (or be an empty directory).
        link: hard-link the video files (True) or copy them.
        progress: show a bar over the episodes.
        cache_dir: the loader's cache root (default: its default, ``$POLICYSTACK_CACHE/loader``): what it
            holds for the sources (decoded frames, frozen-encoder features) is hard-linked into the
            merged dataset's cache, so training on it does not decode and encode every frame again.
    Returns:
        The merged dataset's metadata, as loaded back from ``out``.
    """
    if not sources:
        raise ValueError("merge_datasets: give at least one source dataset")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty directory; choose a new --out")
    metas = [DatasetMeta.load(s) for s in sources]
    _check_compatible(metas)
    tasks: list[str] = []
    for m in metas:
        tasks += [t for t in m.tasks if t not in tasks]

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.merge-"))
    try:
        rows, stats = _write_episodes(metas, tasks, stage, link, progress)
        features = metas[0].features
        schema = episodes_schema(features)
        for start in range(0, len(rows), EPISODES_PER_META_FILE):
            chunk, file = divmod(start // EPISODES_PER_META_FILE, CHUNKS_SIZE)
            part = rows[start:start + EPISODES_PER_META_FILE]
            for r in part:
                r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = chunk, file
            atomic_write_parquet(stage / EPISODES_PATH.format(chunk_index=chunk, file_index=file),
                                 pa.Table.from_pylist(part, schema=schema))
        write_tasks(stage, tasks)
        n_eps, n_frames = len(rows), sum(int(r["length"]) for r in rows)
        atomic_write_json(stage / STATS_PATH, stats_to_json(stats.to_stats()))
        atomic_write_bytes(stage / STATS_STATE_PATH, stats.to_bytes(episodes=n_eps, frames=n_frames))
        info = dict(metas[0].info, total_episodes=n_eps, total_frames=n_frames, total_tasks=len(tasks),
                    splits={"train": f"0:{n_eps}"})
        atomic_write_json(stage / INFO_PATH, info)  # last: the commit record, as the writer's
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(stage, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    merged = DatasetMeta.load(out)
    offset = linked = 0
    for m in metas:
        linked += link_cached_segments(m, merged, offset, cache_dir)
        offset += m.total_episodes
    if linked and progress:
        print(f"dataset merge: {linked} cached frame segments of the sources linked into the merged dataset's cache")
    return merged


def _check_compatible(metas: list[DatasetMeta]) -> None:
    first = metas[0]
    for m in metas[1:]:
        where = f"{m.root} does not match {first.root}"
        if m.fps != first.fps:
            raise DataError(f"{where}: fps {m.fps} vs {first.fps}")
        if m.info.get("robot_type") != first.info.get("robot_type"):
            raise DataError(f"{where}: robot_type {m.info.get('robot_type')!r} vs {first.info.get('robot_type')!r}")
        if set(m.features) != set(first.features):
            raise DataError(f"{where}: features differ (only in {m.root.name}: {sorted(set(m.features) - set(first.features))}"
                            f", only in {first.root.name}: {sorted(set(first.features) - set(m.features))})")
        for k, f in first.features.items():
            g = m.features[k]
            if (g.dtype, g.shape, g.names) != (f.dtype, f.shape, f.names):
                raise DataError(f"{where}: feature {k!r} is {g.dtype} {list(g.shape)} names={g.names} vs "
                                f"{f.dtype} {list(f.shape)} names={f.names}")
            codec_g, codec_f = ((x.info or {}).get("video.codec") for x in (g, f))
            if codec_g != codec_f:
                raise DataError(f"{where}: camera {k!r} is encoded as {codec_g!r} vs {codec_f!r}")
            if camera_record(g) != camera_record(f):
                raise DataError(f"{where}: camera {k!r} was made differently: {camera_record(g)} vs {camera_record(f)}")


def _write_episodes(metas: list[DatasetMeta], tasks: list[str], stage: Path, link: bool,
                    progress: bool) -> tuple[list[dict], DatasetStats]:
    """Data and video files of every source into ``stage``; returns the new meta/episodes rows (without
    their meta/episodes location) and the merged statistics."""
    features = metas[0].features
    rows: list[dict] = []
    stats = DatasetStats(features)
    renumbered = DatasetStats({k: features[k] for k in RENUMBERED})  # their sources' statistics no longer hold
    next_data, next_video = 0, dict.fromkeys(metas[0].video_keys, 0)  # running file numbers
    ep_offset = frame_offset = 0
    bar = tqdm(total=sum(m.total_episodes for m in metas), unit="episode", desc="merging", disable=not progress)
    for m in metas:
        committed = set(m.episodes[EPISODE_INDEX].tolist())
        task_map = np.array([tasks.index(t) for t in m.tasks], dtype=np.int64)
        src_rows = _episode_rows(m, committed)
        data_files: dict[tuple[int, int], tuple[int, int]] = {}
        video_files: dict[tuple[str, int, int], tuple[int, int]] = {}
        for r in src_rows:
            src = (int(r["data/chunk_index"]), int(r["data/file_index"]))
            if src not in data_files:
                data_files[src] = divmod(next_data, CHUNKS_SIZE)
                next_data += 1
                table = _rewrite_data(m.data_path(*src), stage / DATA_PATH.format(
                    chunk_index=data_files[src][0], file_index=data_files[src][1]),
                    committed, ep_offset, frame_offset, task_map)
                for k in RENUMBERED:
                    renumbered.add(k, table.column(k).to_numpy()[:, None])
            r["data/chunk_index"], r["data/file_index"] = data_files[src]
            for k in m.video_keys:
                vsrc = (k, int(r[f"videos/{k}/chunk_index"]), int(r[f"videos/{k}/file_index"]))
                if vsrc not in video_files:
                    video_files[vsrc] = divmod(next_video[k], CHUNKS_SIZE)
                    next_video[k] += 1
                    c, f = video_files[vsrc]
                    _link_or_copy(m.video_path(*vsrc), stage / VIDEO_PATH.format(video_key=k, chunk_index=c, file_index=f),
                                  link)
                r[f"videos/{k}/chunk_index"], r[f"videos/{k}/file_index"] = video_files[vsrc]
            _shift_episode_stats(r, ep_offset, frame_offset, task_map)
            r[EPISODE_INDEX] = int(r[EPISODE_INDEX]) + ep_offset
            r["dataset_from_index"] = int(r["dataset_from_index"]) + frame_offset
            r["dataset_to_index"] = int(r["dataset_to_index"]) + frame_offset
            rows.append(r)
            bar.update(1)
        stats.merge(saved_stats(m.root, features, m) or accumulate_dataset_stats(m, progress=progress))
        ep_offset += m.total_episodes
        frame_offset += m.total_frames
    bar.close()
    stats.sketches.update(renumbered.sketches)
    return rows, stats


def _episode_rows(m: DatasetMeta, committed: set[int]) -> list[dict]:
    """Every column of the source's meta/episodes rows of its committed episodes, in episode order."""
    table = pa.concat_tables([read_parquet(f) for f in episode_files(m.root)], promote_options="default")
    rows = [r for r in table.to_pylist() if r[EPISODE_INDEX] in committed]
    rows.sort(key=lambda r: r[EPISODE_INDEX])
    if [r[EPISODE_INDEX] for r in rows] != list(range(len(rows))):
        raise DataError(f"{m.root}: episode_index must run 0..{len(rows) - 1} to be merged, got "
                        f"{[r[EPISODE_INDEX] for r in rows][:10]}...")
    return rows


LOCATION_STATS = ("min", "max", "mean") + tuple(quantile_name(q) for q in QUANTILES)  # move with a shift


def _shift_episode_stats(row: dict, ep_offset: int, frame_offset: int, task_map: np.ndarray) -> None:
    """An episode's own statistics of the renumbered columns, in the merged numbering: a constant shift
    moves min, max, mean and quantiles and leaves std; an episode of one task gets that task's new index
    (of several tasks: its task_index statistics keep the source's numbering)."""
    for col, off in ((EPISODE_INDEX, ep_offset), (INDEX, frame_offset)):
        for s in LOCATION_STATS:
            v = row.get(f"stats/{col}/{s}")
            if v is not None:
                row[f"stats/{col}/{s}"] = [type(x)(x + off) for x in v]
    lo, hi = row.get(f"stats/{TASK_INDEX}/min"), row.get(f"stats/{TASK_INDEX}/max")
    if lo is not None and hi is not None and lo == hi and 0 <= int(lo[0]) < len(task_map):
        new = int(task_map[int(lo[0])])
        for s in LOCATION_STATS:
            v = row.get(f"stats/{TASK_INDEX}/{s}")
            if v is not None:
                row[f"stats/{TASK_INDEX}/{s}"] = [type(x)(new) for x in v]


def _rewrite_data(src: Path, dst: Path, committed: set[int], ep_offset: int, frame_offset: int,
                  task_map: np.ndarray) -> pa.Table:
    """One data file with episode_index, index and task_index moved into the merged numbering; returns
    what it wrote."""
    table = read_parquet(src)
    for col in (EPISODE_INDEX, INDEX, TASK_INDEX):
        if col not in table.column_names:
            raise DataError(f"{src}: no {col!r} column (got {table.column_names})")
    keep = pc.is_in(table.column(EPISODE_INDEX), value_set=pa.array(sorted(committed), pa.int64()))
    table = table.filter(keep)
    shift = {EPISODE_INDEX: ep_offset, INDEX: frame_offset}
    for col, off in shift.items():
        i = table.column_names.index(col)
        table = table.set_column(i, table.schema.field(i), pc.add(table.column(col), pa.scalar(off, pa.int64())))
    i = table.column_names.index(TASK_INDEX)
    old = table.column(TASK_INDEX).to_numpy()
    if old.size and (old.min() < 0 or old.max() >= len(task_map)):
        raise DataError(f"{src}: task_index {int(old.min())}..{int(old.max())} outside the dataset's "
                        f"{len(task_map)} tasks")
    table = table.set_column(i, table.schema.field(i), pa.array(task_map[old], pa.int64()))
    atomic_write_parquet(dst, table)
    return table


def _link_or_copy(src: Path, dst: Path, link: bool) -> None:
    if not src.is_file():
        raise DataError(f"{src}: video file not found")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed: copy
            pass
    shutil.copyfile(src, dst)
