"""Metadata of a LeRobot v3 dataset directory: paths, info.json, tasks, episodes, stats.

Layout (LeRobot format v3.0, local directory)::

    meta/info.json                                  fps, features, path templates, totals
    meta/stats.json                                 per-feature normalisation statistics
    meta/tasks.parquet                              task text (pandas index) -> task_index
    meta/episodes/chunk-XXX/file-XXX.parquet        one row per episode: length, tasks, data and
                                                    video file indices, from/to timestamps
    data/chunk-XXX/file-XXX.parquet                 one row per frame
    videos/<key>/chunk-XXX/file-XXX.mp4             several episodes back to back per file

``DatasetMeta.load(root)`` reads and checks all of it, raising ``DataError`` that names the file
and key on anything malformed, so that nothing downstream meets a half-valid dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from policystack.types import DataError, Feature, FeatureSpec, Stats, camera_record, stats_from_json

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
IMAGE_PATH = "images/{image_key}/episode-{episode_index:06d}/frame-{frame_index:06d}.png"
CHUNKS_SIZE = 1000  # files per chunk directory, as LeRobot

# The columns of meta/episodes that locate an episode (stats/* columns are read separately).
EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index",
                   "dataset_from_index", "dataset_to_index")
REQUIRED_INFO_KEYS = ("codebase_version", "fps", "features", "data_path", "total_episodes", "total_frames")


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """pq.read_table with errors that name the file (truncated, not parquet, missing columns)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, pa.ArrowKeyError, OSError) as e:
        raise DataError(f"{path}: cannot read parquet ({e}); the file is truncated or not parquet") from None


# --- the metadata ---------------------------------------------------------------------------
@dataclass
class DatasetMeta:
    root: Path
    info: dict
    features: FeatureSpec  # every feature of info.json, default columns included
    tasks: list[str]  # task_index -> instruction
    episodes: dict[str, np.ndarray]  # EPISODE_COLUMNS + "tasks" + videos/<key>/*, one row per episode
    stats: Stats | None
    # episodes listed in meta/episodes past info.json's total_episodes: the rows of a save that
    # was interrupted before info.json (the writer's commit record) was rewritten; left out above
    uncommitted_episodes: int = 0

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path) -> DatasetMeta:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"{root}: dataset directory not found")
        info = read_json(root / INFO_PATH)
        where = root / INFO_PATH
        if not isinstance(info, dict):
            raise DataError(f"{where}: expected a JSON object")
        missing = [k for k in REQUIRED_INFO_KEYS if k not in info]
        if missing:
            raise DataError(f"{where}: missing keys {missing}")
        version = str(info["codebase_version"])
        if not version.startswith("v3"):
            raise DataError(f"{where}: codebase_version {version!r}; policystack reads LeRobot format v3.x "
                            "(convert v2.1 datasets with LeRobot's convert_dataset_v21_to_v30 first)")
        fps = info["fps"]
        if not isinstance(fps, (int, float)) or isinstance(fps, bool) or fps <= 0:
            raise DataError(f"{where}: 'fps' must be a positive number, got {fps!r}")
        if not isinstance(info["features"], dict) or not info["features"]:
            raise DataError(f"{where}: 'features' must be a non-empty object")
        features = {k: Feature.from_json(v, f"{where}: features[{k!r}]") for k, v in info["features"].items()}
        if any(f.dtype == "video" for f in features.values()) and "video_path" not in info:
            raise DataError(f"{where}: has video features but no 'video_path' template")
        tasks = _load_tasks(root / TASKS_PATH)
        video_keys = [k for k, f in features.items() if f.dtype == "video"]
        episodes = _load_episodes(root, video_keys)
        episodes, uncommitted = _drop_uncommitted(episodes, info)
        n_eps, n_frames = len(episodes["episode_index"]), int(episodes["length"].sum())
        if n_eps != info["total_episodes"] or n_frames != info["total_frames"]:
            raise DataError(f"{where}: total_episodes={info['total_episodes']} total_frames={info['total_frames']}"
                            f" but {root / EPISODES_DIR} lists {n_eps} episodes with {n_frames} frames")
        stats = None
        if (root / STATS_PATH).is_file():
            raw = read_json(root / STATS_PATH)
            if not isinstance(raw, dict):
                raise DataError(f"{root / STATS_PATH}: expected a JSON object feature -> stats")
            stats = stats_from_json(raw, str(root / STATS_PATH))
        return cls(root=root, info=info, features=features, tasks=tasks, episodes=episodes, stats=stats,
                   uncommitted_episodes=uncommitted)

    # -- properties --------------------------------------------------------------------------
    @property
    def fps(self) -> float:
        return self.info["fps"]

    @property
    def total_episodes(self) -> int:
        return len(self.episodes["episode_index"])

    @property
    def total_frames(self) -> int:
        return int(self.episodes["length"].sum())

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.dtype == "video"]

    @property
    def image_keys(self) -> list[str]:
        """Cameras stored as PNG files (dtype "image")."""
        return [k for k, f in self.features.items() if f.dtype == "image"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.is_visual]

    # -- paths -------------------------------------------------------------------------------
    def data_path(self, chunk_index: int, file_index: int) -> Path:
        return self.root / self.info["data_path"].format(chunk_index=chunk_index, file_index=file_index)

    def video_path(self, video_key: str, chunk_index: int, file_index: int) -> Path:
        return self.root / self.info["video_path"].format(
            video_key=video_key, chunk_index=chunk_index, file_index=file_index)

    def data_files(self) -> list[Path]:
        """Distinct data files in episode order."""
        pairs = zip(self.episodes["data/chunk_index"].tolist(), self.episodes["data/file_index"].tolist())
        return [self.data_path(c, f) for c, f in dict.fromkeys(pairs)]

    def episode_video(self, video_key: str, episode: int) -> tuple[Path, float, float]:
        """(mp4 path, from_timestamp, to_timestamp) of one episode's stretch of one camera."""
        row = self.episode_row(episode)
        e = self.episodes
        prefix = f"videos/{video_key}/"
        return (self.video_path(video_key, int(e[prefix + "chunk_index"][row]), int(e[prefix + "file_index"][row])),
                float(e[prefix + "from_timestamp"][row]), float(e[prefix + "to_timestamp"][row]))

    def episode_row(self, episode: int) -> int:
        rows = np.flatnonzero(self.episodes["episode_index"] == episode)
        if len(rows) != 1:
            raise DataError(f"{self.root / EPISODES_DIR}: episode {episode} not found "
                            f"(dataset has episodes {self.episodes['episode_index'].min()}..{self.episodes['episode_index'].max()})")
        return int(rows[0])

    def summary(self) -> str:
        lines = [f"dataset     {self.root}",
                 f"format      LeRobot {self.info['codebase_version']}, robot_type={self.info.get('robot_type')}",
                 f"episodes    {self.total_episodes}   frames {self.total_frames}   fps {self.fps}"
                 f"   duration {self.total_frames / self.fps:.1f} s",
                 f"tasks       {len(self.tasks)}"]
        lines += [f"  [{i}] {t}" for i, t in enumerate(self.tasks[:10])]
        if len(self.tasks) > 10:
            lines.append(f"  ... {len(self.tasks) - 10} more")
        lines.append("features")
        for k, f in self.features.items():
            codec = f" ({f.info.get('video.codec')})" if f.info and f.dtype == "video" else ""
            made = camera_record(f)  # how the camera's images were made, when recorded (docs/envs.md)
            made_as = f" {made.get('camera.name')}, {made.get('camera.convention')} convention" if made else ""
            lines.append(f"  {k:<32} {f.dtype:<8} {list(f.shape)}{codec}{made_as}")
        lines.append(f"stats       {'present' if self.stats else 'missing (run `policystack dataset stats`)'}")
        if self.uncommitted_episodes:
            lines.append(f"note        {self.uncommitted_episodes} uncommitted episode(s) of an interrupted save "
                         "are ignored (`policystack dataset validate --fix` removes them)")
        return "\n".join(lines)


def _load_tasks(path: Path) -> list[str]:
    table = read_parquet(path)
    cols = table.column_names
    text_col = next((c for c in ("task", "__index_level_0__") if c in cols), None)
    if text_col is None or "task_index" not in cols:
        raise DataError(f"{path}: expected columns 'task_index' and the task text (index or 'task'), got {cols}")
    idx = table.column("task_index").to_numpy()
    text = table.column(text_col).to_pylist()
    if sorted(idx.tolist()) != list(range(len(idx))):
        raise DataError(f"{path}: task_index must be 0..{len(idx) - 1}, got {sorted(idx.tolist())}")
    out = [""] * len(idx)
    for i, t in zip(idx.tolist(), text):
        out[i] = t
    return out


def episode_files(root: Path) -> list[Path]:
    return sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))


def _load_episodes(root: Path, video_keys: list[str]) -> dict[str, np.ndarray]:
    files = episode_files(root)
    if not files:
        raise DataError(f"{root / EPISODES_DIR}: no chunk-XXX/file-XXX.parquet episode files")
    want = list(EPISODE_COLUMNS) + ["tasks"]
    for k in video_keys:
        want += [f"videos/{k}/{s}" for s in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    tables = []
    for f in files:
        names = pq.read_schema(f).names if f.stat().st_size > 0 else []
        missing = [c for c in want if c not in names]
        if missing:
            raise DataError(f"{f}: missing episode columns {missing}")
        tables.append(read_parquet(f, columns=want))
    table = pa.concat_tables(tables)
    out = {c: table.column(c).to_numpy() for c in want if c != "tasks"}
    tasks = table.column("tasks").to_pylist()
    out["tasks"] = np.empty(len(tasks), dtype=object)  # each entry a list[str]
    out["tasks"][:] = tasks
    order = np.argsort(out["episode_index"], kind="stable")
    out = {k: v[order] for k, v in out.items()}
    if np.any(out["dataset_to_index"] - out["dataset_from_index"] != out["length"]):
        raise DataError(f"{root / EPISODES_DIR}: dataset_to_index - dataset_from_index != length for some episode")
    return out


def _drop_uncommitted(episodes: dict[str, np.ndarray], info: dict) -> tuple[dict[str, np.ndarray], int]:
    """Leave out trailing episodes that info.json does not count yet (an interrupted save).

    Only when the episodes info.json counts are exactly 0..n-1 with its total_frames, so a
    mismatch of any other kind still fails the totals check."""
    n, total = info["total_episodes"], info["total_frames"]
    idx = episodes["episode_index"]
    if not isinstance(n, int) or len(idx) <= n or not np.array_equal(idx[:n], np.arange(n)):
        return episodes, 0
    if int(episodes["length"][:n].sum()) != total or np.any(idx[n:] < n):
        return episodes, 0
    return {k: v[:n] for k, v in episodes.items()}, len(idx) - n
