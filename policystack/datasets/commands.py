"""``policystack dataset ...``: inspect, validate, compute statistics of, merge and convert datasets.

    policystack dataset info PATH [--json]
    policystack dataset validate PATH [--fix]
    policystack dataset stats PATH [--write] [--json]
    policystack dataset merge SRC [SRC ...] --out DST [--copy]
    policystack dataset convert-rlds SRC DST [--mapping FILE.yaml] [--max-episodes N] [--no-videos] [--overwrite]
    policystack dataset cache [--dir DIR] [--prune [--stale] [--older-than DAYS] [--keep-gb GB] [--dry-run]]

Bad data -> one line on stderr naming the file and key, exit status 1 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from policystack.datasets.meta import STATS_PATH, DatasetMeta, read_parquet
from policystack.io import atomic_write_json
from policystack.types import DataError, stats_to_json

TIMESTAMP_TOLERANCE_S = 1e-4  # as LeRobotDataset's tolerance_s


# --- info -------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    meta = DatasetMeta.load(args.path)
    if args.json:
        out = {"root": str(meta.root), "codebase_version": meta.info["codebase_version"],
               "robot_type": meta.info.get("robot_type"), "fps": meta.fps,
               "total_episodes": meta.total_episodes, "total_frames": meta.total_frames,
               "tasks": meta.tasks, "features": {k: f.to_json() for k, f in meta.features.items()},
               "episode_lengths": meta.episodes["length"].tolist(), "has_stats": meta.stats is not None,
               "uncommitted_episodes": meta.uncommitted_episodes}
        print(json.dumps(out, indent=2))
    else:
        print(meta.summary())
    return 0


# --- validate ---------------------------------------------------------------------------------
def validate_dataset(root: str | Path, progress: bool = True) -> tuple[list[str], list[str]]:
    """Check everything of the dataset at ``root``; returns (problems, notes).

    Metadata (``DatasetMeta.load``), crash leftovers, every data file (readable, columns and
    types, rows per episode, episode_index / frame_index / index / task_index / timestamps
    consistent with meta/episodes), every image cell (decodable, right size), every video file
    (decodable, one frame at each of its episodes' timestamps, within LeRobot's tolerance),
    stats.json (features and shapes).
    """
    from tqdm import tqdm

    from policystack.datasets.writer import find_leftovers

    problems: list[str] = []
    notes: list[str] = []
    try:
        meta = DatasetMeta.load(root)
    except DataError as e:
        return [str(e)], notes
    problems += find_leftovers(meta.root)
    if meta.uncommitted_episodes:
        notes.append(f"{meta.uncommitted_episodes} uncommitted episode row(s) ignored")
    e = meta.episodes
    n_ep = meta.total_episodes
    # episode table: contiguous global indices
    starts, ends = e["dataset_from_index"], e["dataset_to_index"]
    if n_ep and (starts[0] != 0 or np.any(starts[1:] != ends[:-1])):
        problems.append(f"{meta.root / 'meta/episodes'}: dataset_from_index / dataset_to_index are not contiguous "
                        f"from 0 (from {starts.tolist()[:8]}, to {ends.tolist()[:8]})")
    if not np.array_equal(e["episode_index"], np.arange(n_ep)):
        problems.append(f"{meta.root / 'meta/episodes'}: episode_index must be 0..{n_ep - 1}, "
                        f"got {e['episode_index'].tolist()[:8]}...")
    bar = tqdm(total=meta.total_frames * (1 + len(meta.video_keys)), desc="validate", unit="frame",
               disable=not progress)
    try:
        _validate_data(meta, problems, bar)
        _validate_videos(meta, problems, bar)
    finally:
        bar.close()
    _validate_stats(meta, problems, notes)
    return problems, notes


def _validate_data(meta: DatasetMeta, problems: list[str], bar) -> None:
    from policystack.datasets.stats import decode_png, image_cell_bytes

    e = meta.episodes
    numeric = [k for k, f in meta.features.items() if not f.is_visual and f.dtype != "string"]
    by_file: dict[tuple[int, int], list[int]] = {}
    for row, (c, f) in enumerate(zip(e["data/chunk_index"].tolist(), e["data/file_index"].tolist())):
        by_file.setdefault((c, f), []).append(row)
    for (c, f), rows in by_file.items():
        path = meta.data_path(c, f)
        try:
            table = read_parquet(path)
        except DataError as err:
            problems.append(str(err))
            continue
        missing = [k for k in numeric + meta.image_keys if k not in table.column_names]
        if missing:
            problems.append(f"{path}: missing columns {missing} declared in meta/info.json")
            continue
        for k in numeric:
            shape = meta.features[k].shape
            col_type = table.schema.field(k).type
            width = getattr(col_type, "list_size", None) or (1 if not hasattr(col_type, "value_type") else None)
            if width is not None and width != int(np.prod(shape)):
                problems.append(f"{path}: column {k!r} holds {width} values per row, info.json shape is {list(shape)}")
        ep_col = table.column("episode_index").to_numpy()
        for row in rows:
            ep = int(e["episode_index"][row])
            length, start = int(e["length"][row]), int(e["dataset_from_index"][row])
            sel = np.flatnonzero(ep_col == ep)
            where = f"{path}: episode {ep}"
            if len(sel) != length:
                problems.append(f"{where}: {len(sel)} rows, meta/episodes says length {length}")
                continue
            sub = table.take(sel)
            fi = sub.column("frame_index").to_numpy()
            idx = sub.column("index").to_numpy()
            ts = sub.column("timestamp").to_numpy().astype(np.float64)
            ti = sub.column("task_index").to_numpy()
            if not np.array_equal(fi, np.arange(length)):
                problems.append(f"{where}: frame_index is not 0..{length - 1}")
            if not np.array_equal(idx, np.arange(start, start + length)):
                problems.append(f"{where}: index is not {start}..{start + length - 1} (dataset_from_index)")
            if length > 1 and not np.all(np.diff(ts) > 0):
                problems.append(f"{where}: timestamps are not increasing")
            if meta.video_keys and np.any(np.abs(ts - ts[0] - fi / meta.fps) > TIMESTAMP_TOLERANCE_S):
                bad = int(np.argmax(np.abs(ts - ts[0] - fi / meta.fps) > TIMESTAMP_TOLERANCE_S))
                problems.append(f"{where}: timestamp {ts[bad]:.6f} of frame {bad} is not frame_index / fps "
                                f"= {bad / meta.fps:.6f} (within {TIMESTAMP_TOLERANCE_S}s), needed to find video frames")
            if ti.size and (ti.min() < 0 or ti.max() >= len(meta.tasks)):
                problems.append(f"{where}: task_index outside 0..{len(meta.tasks) - 1} of meta/tasks.parquet")
            for k in meta.image_keys:
                _, h, w = meta.features[k].chw
                for i, cell in enumerate(sub.column(k).to_pylist()):
                    try:
                        img = decode_png(image_cell_bytes(cell, meta.root, f"{where}: {k}"), f"{where}: {k} frame {i}")
                    except DataError as err:
                        problems.append(str(err))
                        break
                    if img.shape != (h, w, 3):
                        problems.append(f"{where}: {k} frame {i} is {list(img.shape)}, info.json says [{h}, {w}, 3]")
                        break
            bar.update(length)


def _validate_videos(meta: DatasetMeta, problems: list[str], bar) -> None:
    e = meta.episodes
    for k in meta.video_keys:
        by_file: dict[Path, list[int]] = {}
        for row in range(meta.total_episodes):
            path, _, _ = meta.episode_video(k, int(e["episode_index"][row]))
            by_file.setdefault(path, []).append(row)
        _, h, w = meta.features[k].chw
        for path, rows in by_file.items():
            try:
                times = []
                for row in rows:
                    t0, t1 = (float(e[f"videos/{k}/{s}"][row]) for s in ("from_timestamp", "to_timestamp"))
                    times.append((row, t0, t1, _frame_times(path, t0, t1, meta.fps, (h, w), k)))
                    bar.update(int(e["length"][row]))
            except DataError as err:
                problems.append(f"{err} (video {k!r})")
                continue
            for row, t0, t1, t in times:
                ep, length = int(e["episode_index"][row]), int(e["length"][row])
                want = t0 + np.arange(length) / meta.fps
                if t1 - t0 < (length - 0.5) / meta.fps:
                    problems.append(f"{path}: episode {ep} of {k!r} spans {t0:.4f}..{t1:.4f}s, "
                                    f"too short for its {length} frames at {meta.fps} fps")
                pos = np.searchsorted(t, want)
                near = np.minimum(np.abs(t[np.clip(pos, 0, len(t) - 1)] - want) if len(t) else np.inf,
                                  np.abs(t[np.clip(pos - 1, 0, len(t) - 1)] - want) if len(t) else np.inf)
                miss = np.flatnonzero(near > TIMESTAMP_TOLERANCE_S)
                if len(miss):
                    problems.append(f"{path}: episode {ep} of {k!r} needs {length} frames from t={t0:.4f}s, "
                                    f"the file has {len(t)} there; {len(miss)} missing (first at "
                                    f"t={want[miss[0]]:.4f}s): the video is truncated or out of sync")


def _frame_times(path: Path, t0: float, t1: float, fps: float, hw: tuple[int, int], key: str,
                 window: int = 64) -> np.ndarray:
    """Times of the frames of ``path`` in [t0, t1) (decoded ``window`` frames at a time, so memory
    stays bounded); raises DataError on an undecodable file or a frame of the wrong size."""
    from policystack.datasets.video import decode_segment

    out = []
    start, tol = t0 - TIMESTAMP_TOLERANCE_S, TIMESTAMP_TOLERANCE_S
    while start < t1 - tol:
        end = min(start + window / fps, t1 - tol)
        frames, t = decode_segment(path, start, end)
        if len(frames) and frames.shape[2:] != hw:
            raise DataError(f"{path}: {key!r} frames are {list(frames.shape[2:])}, info.json says {list(hw)}")
        out.append(t)
        start = end
    return np.concatenate(out) if out else np.empty(0)


def _validate_stats(meta: DatasetMeta, problems: list[str], notes: list[str]) -> None:
    if meta.stats is None:
        notes.append(f"{meta.root / STATS_PATH} is missing (run `policystack dataset stats --write`)")
        return
    for k, sd in meta.stats.items():
        if k not in meta.features:
            problems.append(f"{meta.root / STATS_PATH}: stats for {k!r}, which is not a feature of info.json")
            continue
        f = meta.features[k]
        want = (3, 1, 1) if f.is_visual else f.shape
        for s, v in sd.items():
            if s != "count" and v.shape != want:
                problems.append(f"{meta.root / STATS_PATH}: {k}.{s} has shape {list(v.shape)}, expected {list(want)}")


def cmd_validate(args: argparse.Namespace) -> int:
    if args.fix:
        from policystack.datasets.writer import repair

        for line in repair(args.path):
            print(f"fixed: {line}")
    problems, notes = validate_dataset(args.path, progress=not args.quiet)
    for n in notes:
        print(f"note: {n}")
    if problems:
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        print(f"{args.path}: {len(problems)} problem(s)"
              + ("; `--fix` removes crash leftovers" if not args.fix else ""), file=sys.stderr)
        return 1
    meta = DatasetMeta.load(args.path)
    print(f"{meta.root}: OK ({meta.total_episodes} episodes, {meta.total_frames} frames, "
          f"{len(meta.data_files())} data files, {len(meta.video_keys)} video keys checked)")
    return 0


# --- stats ------------------------------------------------------------------------------------
def format_stats(stats: dict) -> str:
    lines = []
    for k, sd in stats.items():
        lines.append(k)
        for s, v in sd.items():
            flat = np.asarray(v).reshape(-1)
            vals = np.array2string(flat[:8], precision=4, separator=", ", max_line_width=10_000)
            lines.append(f"  {s:<6} {vals}{' ...' if flat.size > 8 else ''}")
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    from policystack.datasets.stats import compute_dataset_stats

    stats = compute_dataset_stats(args.path, progress=not args.quiet)
    print(json.dumps(stats_to_json(stats), indent=2) if args.json else format_stats(stats))
    if args.write:
        path = Path(args.path).expanduser() / STATS_PATH
        atomic_write_json(path, stats_to_json(stats))
        print(f"wrote {path}", file=sys.stderr)
    return 0


# --- convert-rlds -----------------------------------------------------------------------------
def cmd_convert_rlds(args: argparse.Namespace) -> int:
    from policystack.datasets.rlds import convert_rlds

    convert_rlds(args.src, args.dst, mapping=args.mapping, max_episodes=args.max_episodes,
                 use_videos=not args.no_videos, overwrite=args.overwrite)
    return 0


# --- merge ------------------------------------------------------------------------------------
def cmd_merge(args: argparse.Namespace) -> int:
    from policystack.datasets.merge import merge_datasets

    meta = merge_datasets(args.sources, args.out, link=not args.copy, progress=not args.quiet)
    print(meta.summary())
    return 0


# --- entry ------------------------------------------------------------------------------------
# --- cache ------------------------------------------------------------------------------------
def cmd_cache(args: argparse.Namespace) -> int:
    """List the loader's cache (one entry per dataset version: columns, decoded frames, encoder features),
    or remove entries: stale ones, unused ones, the least recently used beyond a size."""
    import shutil
    import time

    from policystack.datasets.loader import DEFAULT_CACHE_DIR, cache_entries, entries_to_prune

    root = Path(args.dir) if args.dir else DEFAULT_CACHE_DIR
    entries = cache_entries(root)
    gb = lambda n: f"{n / 2**30:.2f} GB"  # noqa: E731
    if not args.prune:
        now = time.time()
        for e in entries:
            print(f"{gb(e.nbytes):>10}  {(now - e.last_used) / 86400:6.1f} days ago  {e.state:<8} {e.path.name}"
                  f"  {e.source or '(dataset not recorded)'}")
        print(f"{len(entries)} entries, {gb(sum(e.nbytes for e in entries))} in {root}")
        return 0
    if not (args.stale or args.older_than is not None or args.keep_gb is not None):
        raise ValueError("--prune needs --stale, --older-than DAYS and/or --keep-gb GB (what to remove)")
    if (args.older_than is not None and args.older_than < 0) or (args.keep_gb is not None and args.keep_gb < 0):
        raise ValueError(f"--older-than ({args.older_than}) and --keep-gb ({args.keep_gb}) must be >= 0")
    doomed = entries_to_prune(entries, args.stale, args.older_than,
                              None if args.keep_gb is None else int(args.keep_gb * 2**30))
    for e in doomed:
        print(f"{'would remove' if args.dry_run else 'removing'} {e.path} ({gb(e.nbytes)}, {e.state})")
        if not args.dry_run:
            shutil.rmtree(e.path, ignore_errors=True)
    freed = sum(e.nbytes for e in doomed)
    print(f"{len(doomed)} of {len(entries)} entries, {gb(freed)} {'to free' if args.dry_run else 'freed'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="policystack dataset", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="print a dataset's summary")
    s.add_argument("path")
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    s.set_defaults(func=cmd_info)
    s = sub.add_parser("validate", help="check metadata, data files, videos, images and stats")
    s.add_argument("path")
    s.add_argument("--fix", action="store_true", help="first remove what an interrupted writer left")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_validate)
    s = sub.add_parser("stats", help="compute normalisation statistics (streaming)")
    s.add_argument("path")
    s.add_argument("--write", action="store_true", help="write them to meta/stats.json (atomically)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_stats)
    s = sub.add_parser("merge", help="merge datasets into a new one (e.g. every task's demos, for one model)")
    s.add_argument("sources", nargs="+", help="dataset directories, merged in this order")
    s.add_argument("--out", required=True, help="the new dataset's directory (must not exist)")
    s.add_argument("--copy", action="store_true", help="copy the video files instead of hard-linking them")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_merge)
    s = sub.add_parser("convert-rlds", help="convert an RLDS (TFDS) dataset to LeRobot v3")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--mapping", help="YAML file mapping RLDS keys to LeRobot features")
    s.add_argument("--max-episodes", type=int, default=None)
    s.add_argument("--no-videos", action="store_true", help="store cameras as PNG images, not MP4")
    s.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    s.set_defaults(func=cmd_convert_rlds)
    s = sub.add_parser("cache", help="list or prune the loader's cache (columns, decoded frames, encoder features)")
    s.add_argument("--dir", help="the cache directory (default: ~/.cache/policystack/loader, $POLICYSTACK_CACHE/loader)")
    s.add_argument("--prune", action="store_true", help="remove the entries the options below select")
    s.add_argument("--stale", action="store_true", help="entries whose dataset is gone or has changed since")
    s.add_argument("--older-than", type=float, metavar="DAYS", help="entries not used for DAYS days")
    s.add_argument("--keep-gb", type=float, metavar="GB", help="then the least recently used until GB are left")
    s.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    s.set_defaults(func=cmd_cache)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"policystack dataset {args.command}: error: {e}", file=sys.stderr)
        return 1
