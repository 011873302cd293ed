"""Write LeRobot v3 datasets frame by frame, crash-safe: every saved episode survives a kill.

Usage::

    with DatasetWriter.create(root, fps=10, features=spec, robot_type="panda") as w:
        for episode in demos:
            for frame in episode:
                w.add_frame({"observation.state": s, "observation.images.front": img,
                             "action": a, "task": "put the red cube in the blue bowl"})
            w.save_episode()          # durable when it returns

On-disk layout (LeRobot format v3.0, loads in ``LeRobotDataset``): each episode's frames go to
their own data file ``data/chunk-CCC/file-FFF.parquet`` and, per video camera, their own MP4
``videos/<key>/chunk-CCC/file-FFF.mp4`` (from_timestamp 0). Both are streamed while frames arrive
(parquet row groups of ``ROW_GROUP_FRAMES`` rows, MP4 packets), so memory does not grow with
episode length, into temporary files (``.<name>.<random>.tmp``, invisible to readers) that
``save_episode`` fsyncs and renames. Then the metadata is rewritten atomically, in this order:
``meta/tasks.parquet``, the current ``meta/episodes`` file (at most ``EPISODES_PER_META_FILE``
rows, so a rewrite stays small), ``meta/stats.json``, the statistics sketches
(``STATS_STATE_PATH``, for ``resume``) and last ``meta/info.json``: info.json is
the commit record. A crash at any point leaves the dataset as of the last completed
``save_episode``: temp files are ignored by every reader, and an episode whose files were
renamed but which info.json does not count yet is ignored by ``DatasetMeta`` (and lies past
LeRobot's ``total_frames``). ``repair(root)`` (run by ``DatasetWriter.resume`` and
``policystack dataset validate --fix``) deletes both kinds of leftovers.

Frame validation (``add_frame``): every declared feature and ``task`` must be present and nothing
else (``timestamp`` is optional); numeric values must have the declared shape (a scalar is
accepted for shape (1,)), a dtype that casts safely (ints and floats into float features, ints
into int features, bools into bool features) and, for float features, finite values: NaN or inf
is rejected, because it would poison the normalisation statistics. Images must be uint8
[H, W, 3] or [3, H, W]. Errors are ``DataError`` naming the key, the expected and the got value.

Cameras: dtype "video" -> MP4 (PyAV, yuv420p, LeRobot's encoder settings); dtype "image" -> PNG
bytes inside the data parquet, as LeRobot v3 stores image features.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from policystack.datasets.meta import (
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    INFO_PATH,
    STATS_PATH,
    TASKS_PATH,
    VIDEO_PATH,
    DatasetMeta,
    episode_files,
    read_json,
    read_parquet,
)
from policystack.datasets.stats import QUANTILES, DatasetStats, accumulate_dataset_stats, quantile_name
from policystack.io import (
    MIN_SVTAV1_WIDTH,
    PIX_FMT,
    VIDEO_CODECS,
    VideoEncoder,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    commit_file,
    fsync_dir,
    temp_path,
)
from policystack.types import (
    DEFAULT_FEATURE_KEYS,
    EPISODE_INDEX,
    FRAME_INDEX,
    INDEX,
    TASK,
    TASK_INDEX,
    TIMESTAMP,
    DataError,
    Feature,
    FeatureSpec,
    stats_to_json,
)

ROW_GROUP_FRAMES = 64  # rows buffered before a parquet row group is written
EPISODES_PER_META_FILE = 100  # rows of meta/episodes per file (each save rewrites one file)
LOCK_FILE = ".policystack-writer.lock"
# the writer's mergeable statistics (sketches) as of the episode count stored inside, so that
# resume() need not decode the whole dataset again; LeRobot ignores the file
STATS_STATE_PATH = "meta/policystack_stats_state.npz"
TIMESTAMP_TOLERANCE_S = 1e-4  # LeRobot's tolerance_s: video datasets need timestamp = frame / fps
DATA_FILE_SIZE_MB = 100  # LeRobot's size bounds, written to info.json (our files are per episode)
VIDEO_FILE_SIZE_MB = 200

CODEC_FROM_INFO = {"av1": "libsvtav1", "h264": "h264"}  # info.json codec name -> vcodec argument

DEFAULT_FEATURES: FeatureSpec = {
    TIMESTAMP: Feature("float32", (1,)),
    FRAME_INDEX: Feature("int64", (1,)),
    EPISODE_INDEX: Feature("int64", (1,)),
    INDEX: Feature("int64", (1,)),
    TASK_INDEX: Feature("int64", (1,)),
}
_ARROW = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(), "int32": pa.int32(),
          "int16": pa.int16(), "int8": pa.int8(), "uint8": pa.uint8(), "bool": pa.bool_()}
_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _list(t: pa.DataType, size: int = -1) -> pa.DataType:
    """A list type with LeRobot's (pandas / HF datasets) child name "element"."""
    return pa.list_(pa.field("element", t), size)


# --- parquet schemas --------------------------------------------------------------------------
def data_schema(features: FeatureSpec) -> pa.Schema:
    """Arrow schema of a data file, with the ``huggingface`` metadata LeRobot's loader reads:
    shape (1,) -> scalar, (D,) -> fixed_size_list<D>, image -> struct<bytes, path>; videos have
    no column."""
    fields, hf = [], {}
    for k, f in features.items():
        if f.dtype == "video":
            continue
        if f.dtype == "image":
            fields.append(pa.field(k, _IMAGE_TYPE))
            hf[k] = {"_type": "Image"}
        elif f.shape == (1,):
            fields.append(pa.field(k, _ARROW[f.dtype]))
            hf[k] = {"dtype": f.dtype, "_type": "Value"}
        else:
            fields.append(pa.field(k, _list(_ARROW[f.dtype], f.shape[0])))
            hf[k] = {"feature": {"dtype": f.dtype, "_type": "Value"}, "length": f.shape[0], "_type": "List"}
    meta = {"huggingface": json.dumps({"info": {"features": hf}})}
    return pa.schema(fields, metadata=meta)


def _stat_type(f: Feature, stat: str) -> pa.DataType:
    if stat == "count":
        return _list(pa.int64())
    base = pa.int64() if stat in ("min", "max") and f.dtype.startswith("int") else pa.float64()
    return _list(_list(_list(base))) if f.is_visual else _list(base)


STAT_COLUMNS = ("min", "max", "mean", "std", "count") + tuple(quantile_name(q) for q in QUANTILES)


def episodes_schema(features: FeatureSpec) -> pa.Schema:
    """Arrow schema of a meta/episodes file, column for column as LeRobot 0.4.4 writes it."""
    fields = [pa.field(EPISODE_INDEX, pa.int64()), pa.field("tasks", _list(pa.string())),
              pa.field("length", pa.int64()), pa.field("data/chunk_index", pa.int64()),
              pa.field("data/file_index", pa.int64()), pa.field("dataset_from_index", pa.int64()),
              pa.field("dataset_to_index", pa.int64())]
    for k, f in features.items():
        if f.dtype == "video":
            fields += [pa.field(f"videos/{k}/chunk_index", pa.int64()), pa.field(f"videos/{k}/file_index", pa.int64()),
                       pa.field(f"videos/{k}/from_timestamp", pa.float64()),
                       pa.field(f"videos/{k}/to_timestamp", pa.float64())]
    for k, f in features.items():
        if f.dtype != "string":
            fields += [pa.field(f"stats/{k}/{s}", _stat_type(f, s)) for s in STAT_COLUMNS]
    fields += [pa.field("meta/episodes/chunk_index", pa.int64()), pa.field("meta/episodes/file_index", pa.int64())]
    return pa.schema(fields)


def _chunk_file(n: int) -> tuple[int, int]:
    return divmod(n, CHUNKS_SIZE)


def _next_chunk_file(chunk: int, file: int) -> tuple[int, int]:
    return _chunk_file(chunk * CHUNKS_SIZE + file + 1)


# --- frame validation -------------------------------------------------------------------------
def _check_value(key: str, f: Feature, value: Any) -> np.ndarray:
    """One frame's value of feature ``key`` as a numpy array of the declared dtype and shape."""
    if f.is_visual:
        arr = np.asarray(value)
        h, w = f.chw[1], f.chw[2]
        if arr.dtype != np.uint8:
            raise DataError(f"frame[{key!r}]: expected uint8 image [{h}, {w}, 3] or [3, {h}, {w}], got dtype {arr.dtype}")
        if arr.shape == (h, w, 3):
            return arr
        if arr.shape == (3, h, w):
            return arr.transpose(1, 2, 0)
        raise DataError(f"frame[{key!r}]: expected image shape [{h}, {w}, 3] or [3, {h}, {w}], got {list(arr.shape)}")
    arr = np.asarray(value)
    if arr.shape != f.shape and not (f.shape == (1,) and arr.shape == ()):
        raise DataError(f"frame[{key!r}]: expected shape {list(f.shape)}, got {list(arr.shape)}")
    want = np.dtype(f.dtype)
    ok = {"f": "fiub", "i": "iub", "u": "iub", "b": "b"}[want.kind]
    if arr.dtype.kind not in ok:
        raise DataError(f"frame[{key!r}]: expected {f.dtype} (or a type that casts safely), got {arr.dtype}")
    if want.kind in "iu" and arr.dtype.kind in "iu" and not np.can_cast(arr.dtype, want) and arr.size:
        if arr.min() < np.iinfo(want).min or arr.max() > np.iinfo(want).max:
            raise DataError(f"frame[{key!r}]: values {arr.min()}..{arr.max()} do not fit {f.dtype}")
    out = arr.astype(want).reshape(f.shape)
    if want.kind == "f" and not np.isfinite(out).all():
        raise DataError(f"frame[{key!r}]: non-finite value(s) {out[~np.isfinite(out)][:4].tolist()}; "
                        "NaN / inf are not allowed (they would poison the statistics)")
    return out


# --- the writer -------------------------------------------------------------------------------
@dataclass
class _Episode:
    """Everything of the episode being recorded (since the last save / discard)."""

    index: int
    from_index: int
    data_chunk: int
    data_file: int
    data_tmp: Path
    parquet: pq.ParquetWriter | None
    videos: dict[str, VideoEncoder]
    stats: DatasetStats
    rows: dict[str, list]  # column -> values not yet written as a row group
    tasks: list[str]  # distinct task texts in first-seen order
    n: int = 0
    last_ts: float = -np.inf


class DatasetWriter:
    """Appends episodes to a LeRobot v3 dataset; see the module docstring for the guarantees.

    Build with ``DatasetWriter.create(...)`` (new dataset) or ``DatasetWriter.resume(root)``.
    One writer per dataset at a time (an advisory lock file enforces it).
    """

    def __init__(self, root: Path, info: dict, features: FeatureSpec, tasks: list[str],
                 episodes: list[dict], stats: DatasetStats, vcodec: str, lock_fd: int,
                 meta_chunk_file: tuple[int, int], next_data: tuple[int, int]):
        self.root, self.info, self.features, self.tasks = root, info, features, tasks
        self.vcodec = vcodec
        self._lock_fd = lock_fd
        self._stats = stats  # dataset-level sketches (all saved episodes)
        self._meta_rows: list[dict] = episodes  # rows of the current meta/episodes file
        self._meta_cf = meta_chunk_file
        self._next_data = next_data  # (chunk, file) of the next episode's data / video files
        self._total_episodes = int(info["total_episodes"])
        self._total_frames = int(info["total_frames"])
        self._ep: _Episode | None = None
        self._closed = False
        self._schema = data_schema(features)
        self._episodes_schema = episodes_schema(features)
        self._user_keys = [k for k in features if k not in DEFAULT_FEATURE_KEYS]

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, fps: int, features: dict[str, Feature | dict], robot_type: str | None = None,
               use_videos: bool = True, vcodec: str = "libsvtav1") -> DatasetWriter:
        """Start a new dataset at ``root`` (which must not exist or be empty).

        ``features``: key -> Feature (or LeRobot's dict form) for the user's features; cameras
        are dtype "video" or "image" with shape (H, W, 3). ``use_videos=False`` stores "video"
        cameras as "image" (PNG). ``vcodec``: "libsvtav1" (AV1, LeRobot's default) or "h264".
        """
        root = Path(root).expanduser()
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise FileExistsError(f"{root}: exists and is not an empty directory; "
                                  "use DatasetWriter.resume(root) to append to a dataset")
        if isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0:
            raise ValueError(f"fps must be a positive int (LeRobot stores an int), got {fps!r}")
        if vcodec not in VIDEO_CODECS:
            raise ValueError(f"vcodec {vcodec!r} is not one of {sorted(VIDEO_CODECS)}")
        spec = _user_features(features, use_videos)
        spec = _with_video_info(spec, fps, vcodec)
        spec.update(DEFAULT_FEATURES)
        root.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(root)
        has_video = any(f.dtype == "video" for f in spec.values())
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": 0,
            "total_frames": 0, "total_tasks": 0, "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILE_SIZE_MB, "video_files_size_in_mb": VIDEO_FILE_SIZE_MB,
            "fps": fps, "splits": {}, "data_path": DATA_PATH, "video_path": VIDEO_PATH if has_video else None,
            "features": {k: f.to_json() for k, f in spec.items()},
        }
        w = cls(root, info, spec, [], [], DatasetStats(spec), vcodec, lock_fd, (0, 0), (0, 0))
        # an empty dataset has no episodes file yet, so only info.json marks the directory as ours
        atomic_write_json(root / INFO_PATH, info)
        return w

    @classmethod
    def resume(cls, root: str | Path, progress: bool = False) -> DatasetWriter:
        """Reopen the dataset at ``root`` to append episodes, after ``repair`` removed what an
        interrupted writer left. The dataset statistics come from the state the writer saved
        with the last committed episode (``STATS_STATE_PATH``), else (a dataset from another
        writer, or a crash between that file and info.json) they are recomputed from the files,
        streaming (``progress`` shows a bar)."""
        root = Path(root).expanduser()
        lock_fd = _lock(root)
        try:
            repair(root)
            info = read_json(root / INFO_PATH)
            spec = {k: Feature.from_json(v, f"{root / INFO_PATH}: features[{k!r}]") for k, v in info["features"].items()}
            codecs = {f.info.get("video.codec") for f in spec.values() if f.dtype == "video" and f.info}
            vcodec = CODEC_FROM_INFO.get(next(iter(codecs), "av1"), None) if len(codecs) <= 1 else None
            if vcodec is None:
                raise DataError(f"{root / INFO_PATH}: cannot append with video codec(s) {sorted(codecs)}; "
                                f"the writer encodes {sorted(CODEC_FROM_INFO)}")
            if info["total_episodes"] == 0:
                w = cls(root, info, spec, [], [], DatasetStats(spec), vcodec, lock_fd, (0, 0), (0, 0))
                return w
            meta = DatasetMeta.load(root)
            stats = saved_stats(root, spec, meta) or accumulate_dataset_stats(meta, progress=progress)
            last_meta = episode_files(root)[-1]
            meta_cf = _next_chunk_file(*_chunk_file_of(last_meta))  # appends go to a new episodes file
            e = meta.episodes
            last = (int(e["data/chunk_index"].max()) * CHUNKS_SIZE + int(e["data/file_index"].max()))
            for k in meta.video_keys:
                last = max(last, int(e[f"videos/{k}/chunk_index"].max()) * CHUNKS_SIZE
                           + int(e[f"videos/{k}/file_index"].max()))
            return cls(root, info, spec, list(meta.tasks), [], stats, vcodec, lock_fd, meta_cf,
                       _chunk_file(last + 1))
        except BaseException:
            _unlock(lock_fd)
            raise

    # -- recording ---------------------------------------------------------------------------
    def add_frame(self, frame: dict[str, Any]) -> None:
        """Validate and append one frame to the current episode (see the module docstring)."""
        self._check_open()
        missing = [k for k in self._user_keys + [TASK] if k not in frame]
        extra = [k for k in frame if k not in self._user_keys and k not in (TASK, TIMESTAMP)]
        if missing or extra:
            raise DataError(f"frame: missing keys {missing}, unexpected keys {extra} "
                            f"(expected {self._user_keys + [TASK]}, optionally {TIMESTAMP!r})")
        task = frame[TASK]
        if not isinstance(task, str) or not task.strip():
            raise DataError(f"frame[{TASK!r}]: expected a non-empty string, got {task!r}")
        values = {k: _check_value(k, self.features[k], frame[k]) for k in self._user_keys}
        ep = self._ep or self._start_episode()
        ts = self._timestamp(frame.get(TIMESTAMP), ep)
        if task not in self.tasks:
            self.tasks.append(task)
        if task not in ep.tasks:
            ep.tasks.append(task)
        values.update({TIMESTAMP: np.float32(ts), FRAME_INDEX: ep.n, EPISODE_INDEX: ep.index,
                       INDEX: ep.from_index + ep.n, TASK_INDEX: self.tasks.index(task)})
        for k, v in values.items():
            f = self.features[k]
            if f.dtype == "video":
                ep.videos[k].add(v)
                ep.stats.add_images(k, v[None], channels_last=True)
            elif f.dtype == "image":
                ep.rows[k].append({"bytes": _png(v), "path": f"frame-{ep.n:06d}.png"})
                ep.stats.add_images(k, v[None], channels_last=True)
            else:
                ep.rows[k].append(v)
        ep.n += 1
        ep.last_ts = ts
        if len(ep.rows[INDEX]) >= ROW_GROUP_FRAMES:
            self._flush_rows(ep)

    def save_episode(self) -> int:
        """Make the current episode durable and part of the dataset; returns its index."""
        self._check_open()
        ep = self._ep
        if ep is None or ep.n == 0:
            raise ValueError("save_episode(): no frames were added since the last save")
        self._flush_rows(ep)
        ep.parquet.close()
        ep.parquet = None
        commit_file(ep.data_tmp, self.root / DATA_PATH.format(chunk_index=ep.data_chunk, file_index=ep.data_file))
        for enc in ep.videos.values():
            enc.commit()
        ep_stats = ep.stats.to_stats()
        self._stats.merge(ep.stats)
        row: dict[str, Any] = {
            EPISODE_INDEX: ep.index, "tasks": list(ep.tasks), "length": ep.n,
            "data/chunk_index": ep.data_chunk, "data/file_index": ep.data_file,
            "dataset_from_index": ep.from_index, "dataset_to_index": ep.from_index + ep.n}
        for k in ep.videos:
            row.update({f"videos/{k}/chunk_index": ep.data_chunk, f"videos/{k}/file_index": ep.data_file,
                        f"videos/{k}/from_timestamp": 0.0, f"videos/{k}/to_timestamp": ep.n / self.fps})
        for k, sd in ep_stats.items():
            f = self.features[k]
            for s in STAT_COLUMNS:
                v = sd[s]
                if s in ("min", "max") and f.dtype.startswith("int"):
                    v = v.astype(np.int64)
                row[f"stats/{k}/{s}"] = v.tolist()
        if len(self._meta_rows) >= EPISODES_PER_META_FILE:
            self._meta_rows, self._meta_cf = [], _next_chunk_file(*self._meta_cf)
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = self._meta_cf
        self._meta_rows.append(row)
        self._ep = None
        self._next_data = _next_chunk_file(ep.data_chunk, ep.data_file)
        self._total_episodes += 1
        self._total_frames += ep.n
        self._write_meta(tasks_changed=True)
        return ep.index

    def discard_episode(self) -> None:
        """Drop the frames added since the last save (their temp files are deleted)."""
        self._check_open()
        ep, self._ep = self._ep, None
        if ep is None:
            return
        _abort_episode(ep)
        self.tasks = self.tasks[:self._saved_tasks]  # tasks first seen in the dropped frames

    def finalize(self) -> None:
        """Write the final stats.json and info.json and release the dataset; idempotent.

        Raises if frames were added since the last save (save or discard them first)."""
        if self._closed:
            return
        if self._ep is not None and self._ep.n:
            raise ValueError(f"finalize(): {self._ep.n} frames were added since the last save_episode(); "
                             "call save_episode() or discard_episode() first")
        self._write_meta(tasks_changed=False)
        self._close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.finalize()
        else:  # keep every saved episode, drop the unfinished one
            if self._ep is not None:
                _abort_episode(self._ep)
                self._ep = None
            self._close()

    def __del__(self):
        if not getattr(self, "_closed", True) and getattr(self, "_ep", None) is not None:
            _abort_episode(self._ep)

    # -- properties --------------------------------------------------------------------------
    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def num_episodes(self) -> int:
        """Saved episodes."""
        return self._total_episodes

    @property
    def num_frames(self) -> int:
        """Saved frames."""
        return self._total_frames

    @property
    def episode_frames(self) -> int:
        """Frames added to the current (unsaved) episode."""
        return self._ep.n if self._ep else 0

    # -- internals ---------------------------------------------------------------------------
    @property
    def _saved_tasks(self) -> int:
        return int(self.info["total_tasks"])

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.root}: the writer is finalized; use DatasetWriter.resume() to append")

    def _start_episode(self) -> _Episode:
        chunk, file = self._next_data
        final = self.root / DATA_PATH.format(chunk_index=chunk, file_index=file)
        tmp = temp_path(final)
        videos = {}
        try:
            for k, f in self.features.items():
                if f.dtype == "video":
                    _, h, w = f.chw
                    videos[k] = VideoEncoder(self.root / VIDEO_PATH.format(video_key=k, chunk_index=chunk, file_index=file),
                                              self.fps, h, w, self.vcodec)
            writer = pq.ParquetWriter(tmp, self._schema)
        except BaseException:
            for enc in videos.values():
                enc.abort()
            tmp.unlink(missing_ok=True)
            raise
        self._ep = _Episode(index=self._total_episodes, from_index=self._total_frames, data_chunk=chunk,
                            data_file=file, data_tmp=tmp, parquet=writer, videos=videos,
                            stats=DatasetStats(self.features), rows={k: [] for k in self._schema.names}, tasks=[])
        return self._ep

    def _timestamp(self, given: Any, ep: _Episode) -> float:
        expected = ep.n / self.fps
        if given is None:
            return expected
        try:
            ts = float(np.asarray(given).reshape(-1)[0]) if np.size(given) == 1 else None
        except (TypeError, ValueError):
            ts = None
        if ts is None or not np.isfinite(ts) or ts < 0 or ts <= ep.last_ts:
            raise DataError(f"frame[{TIMESTAMP!r}]: expected a finite number >= 0 increasing within the episode "
                            f"(previous {ep.last_ts}), got {given!r}")
        if self._has_video and abs(ts - expected) > TIMESTAMP_TOLERANCE_S:
            raise DataError(f"frame[{TIMESTAMP!r}]: a video dataset needs timestamp = frame_index / fps = "
                            f"{expected:.6f} (within {TIMESTAMP_TOLERANCE_S}s), got {ts}")
        return ts

    @property
    def _has_video(self) -> bool:
        return any(f.dtype == "video" for f in self.features.values())

    def _flush_rows(self, ep: _Episode) -> None:
        n = len(ep.rows[INDEX])
        if n == 0:
            return
        arrays = []
        for fld in self._schema:
            vals = ep.rows[fld.name]
            f = self.features[fld.name]
            if f.dtype == "image":
                arrays.append(pa.array(vals, type=_IMAGE_TYPE))
            elif f.shape == (1,):
                arrays.append(pa.array(np.asarray(vals).reshape(n), type=fld.type))
            else:
                flat = pa.array(np.stack(vals).reshape(-1), type=fld.type.value_type)
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, fld.type.list_size))
        # numeric stats of this row group (images were added frame by frame)
        for k in ep.stats.features:
            if not self.features[k].is_visual:
                ep.stats.add(k, np.stack(ep.rows[k]).reshape(n, -1), where=f"frame[{k!r}]")
        ep.parquet.write_table(pa.Table.from_arrays(arrays, schema=self._schema))
        for k in ep.rows:
            ep.rows[k] = []

    def _write_meta(self, tasks_changed: bool) -> None:
        """Rewrite tasks, the current episodes file, stats.json and (last, the commit) info.json."""
        if tasks_changed:
            write_tasks(self.root, self.tasks)
        if self._meta_rows:
            c, f = self._meta_cf
            table = pa.Table.from_pylist(self._meta_rows, schema=self._episodes_schema)
            atomic_write_parquet(self.root / EPISODES_PATH.format(chunk_index=c, file_index=f), table)
        if self._total_episodes:
            atomic_write_json(self.root / STATS_PATH, stats_to_json(self._stats.to_stats()))
            atomic_write_bytes(self.root / STATS_STATE_PATH,
                               self._stats.to_bytes(episodes=self._total_episodes, frames=self._total_frames))
        self.info.update(total_episodes=self._total_episodes, total_frames=self._total_frames,
                         total_tasks=len(self.tasks), splits={"train": f"0:{self._total_episodes}"})
        atomic_write_json(self.root / INFO_PATH, self.info)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            _unlock(self._lock_fd)


# --- helpers ----------------------------------------------------------------------------------
def _user_features(features: dict[str, Feature | dict], use_videos: bool) -> FeatureSpec:
    if not isinstance(features, dict) or not features:
        raise ValueError("features must be a non-empty dict key -> Feature")
    spec: FeatureSpec = {}
    for k, f in features.items():
        if not isinstance(f, Feature):
            f = Feature.from_json(f, f"features[{k!r}]")
        if k in DEFAULT_FEATURE_KEYS:
            if f.dtype != DEFAULT_FEATURES[k].dtype or f.shape != (1,):
                raise DataError(f"features[{k!r}]: a default column, written by the writer as "
                                f"{DEFAULT_FEATURES[k].dtype} [1]; got {f.dtype} {list(f.shape)}")
            continue
        if k == TASK or "/" in k:
            raise DataError(f"features[{k!r}]: reserved name or contains '/' (not allowed by LeRobot)")
        if f.dtype == "string":
            raise DataError(f"features[{k!r}]: string features are not supported; the task text goes in 'task'")
        if f.is_visual:
            c, h, w = f.chw
            dtype = "video" if f.dtype == "video" and use_videos else "image"
            f = Feature(dtype, (h, w, c), names=["height", "width", "channels"], info=f.info)
        elif len(f.shape) != 1 or f.shape[0] < 1:
            raise DataError(f"features[{k!r}]: the writer stores numeric features of shape [D] (D >= 1), "
                            f"got {list(f.shape)}")
        spec[k] = f
    return spec


def _with_video_info(spec: FeatureSpec, fps: int, vcodec: str) -> FeatureSpec:
    out = {}
    for k, f in spec.items():
        if f.dtype == "video":
            _, h, w = f.chw
            if h % 2 or w % 2:
                raise DataError(f"features[{k!r}]: yuv420p video needs an even height and width, got {h}x{w}")
            if vcodec == "libsvtav1" and w < MIN_SVTAV1_WIDTH:
                raise DataError(f"features[{k!r}]: libsvtav1 needs frames at least {MIN_SVTAV1_WIDTH} px wide "
                                f"(narrower ones crash the encoder), got width {w}; use vcodec='h264'")
            info = {"video.height": h, "video.width": w, "video.codec": VIDEO_CODECS[vcodec][1],
                    "video.pix_fmt": PIX_FMT, "video.is_depth_map": False, "video.fps": fps,
                    "video.channels": 3, "has_audio": False}
            # the caller's own entries (e.g. camera.* records, types.camera_record) stay beside them
            f = Feature(f.dtype, f.shape, names=f.names, info={**(f.info or {}), **info})
        out[k] = f
    return out


def write_tasks(root: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet (atomically) as LeRobot writes it: the text as the pandas index, then task_index."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                      "__index_level_0__": pa.array(tasks, pa.large_string())})
    pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [],
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}]}
    atomic_write_parquet(root / TASKS_PATH, table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}))


def saved_stats(root: Path, spec: FeatureSpec, meta: DatasetMeta) -> DatasetStats | None:
    """The writer's saved statistics state if it covers exactly the committed episodes."""
    path = root / STATS_STATE_PATH
    if not path.is_file():
        return None
    try:
        stats, extra = DatasetStats.from_bytes(spec, path.read_bytes(), str(path))
    except DataError:
        return None  # unreadable or for other features: recompute from the files
    if extra.get("episodes") != meta.total_episodes or extra.get("frames") != meta.total_frames:
        return None  # written by a save that info.json did not commit
    return stats


def _png(hwc: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(hwc).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _abort_episode(ep: _Episode) -> None:
    if ep.parquet is not None:
        try:
            ep.parquet.close()
        except (OSError, pa.ArrowException):
            pass
    ep.data_tmp.unlink(missing_ok=True)
    for enc in ep.videos.values():
        enc.abort()


def _chunk_file_of(path: Path) -> tuple[int, int]:
    """(chunk, file) from .../chunk-CCC/file-FFF.ext."""
    try:
        return int(path.parent.name.split("-")[1]), int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        raise DataError(f"{path}: expected a chunk-CCC/file-FFF name") from None


def _lock(root: Path) -> int:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataError(f"{root}: another DatasetWriter has this dataset open ({root / LOCK_FILE} is locked)") from None
    return fd


def _unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- crash leftovers --------------------------------------------------------------------------
def find_leftovers(root: str | Path) -> list[str]:
    """What an interrupted writer left in ``root``, one line each (nothing is changed)."""
    return _leftovers(Path(root), fix=False)


def repair(root: str | Path) -> list[str]:
    """Delete what an interrupted writer left: temp files, and files and episode rows of an
    episode that info.json (the commit record) does not count. Returns what was done."""
    return _leftovers(Path(root), fix=True)


def _leftovers(root: Path, fix: bool) -> list[str]:
    if not (root / INFO_PATH).is_file():
        raise DataError(f"{root / INFO_PATH}: file not found; not a dataset")
    done = []
    for sub in ("data", "videos", "meta", "images"):
        for p in sorted((root / sub).rglob(".*.tmp")) if (root / sub).is_dir() else []:
            done.append(f"temp file of an unfinished write: {p}")
            if fix:
                p.unlink(missing_ok=True)
    info = read_json(root / INFO_PATH)
    n = int(info.get("total_episodes", 0))
    rows_kept: dict[Path, pa.Table] = {}
    # per file family (data/, videos/<key>/): highest chunk * CHUNKS_SIZE + file of a committed episode
    max_file: dict[Path, int] = {}
    for path in episode_files(root):
        table = read_parquet(path)
        ep = table.column(EPISODE_INDEX).to_numpy()
        keep = ep < n
        committed = table.filter(pa.array(keep))
        for col in committed.column_names:
            if col == "data/file_index" or (col.startswith("videos/") and col.endswith("/file_index")):
                family = root / col.rsplit("/", 1)[0]
                files = (committed.column(col).to_numpy()
                         + committed.column(col.replace("file_index", "chunk_index")).to_numpy() * CHUNKS_SIZE)
                if len(files):
                    max_file[family] = max(max_file.get(family, -1), int(files.max()))
        if not keep.all():
            done.append(f"episodes {ep[~keep].tolist()} in {path} are not counted by info.json "
                        f"(total_episodes={n}): an interrupted save")
            rows_kept[path] = committed
    if fix:
        for path, table in rows_kept.items():
            if table.num_rows:
                atomic_write_parquet(path, table)
            else:
                path.unlink()
                fsync_dir(path.parent)
    families = [root / "data"] + ([p for p in (root / "videos").iterdir() if p.is_dir()]
                                  if (root / "videos").is_dir() else [])
    for d in families:
        for p in sorted(d.glob("chunk-*/file-*.*")):
            c, f = _chunk_file_of(p)
            if c * CHUNKS_SIZE + f > max_file.get(d, -1):
                done.append(f"file of an uncommitted episode: {p}")
                if fix:
                    p.unlink()
                    fsync_dir(p.parent)
    return done


__all__ = ["DatasetWriter", "repair", "find_leftovers", "data_schema", "episodes_schema"]
