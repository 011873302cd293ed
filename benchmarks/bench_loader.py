"""Samples/s of policystack's WindowedDataset vs LeRobot's LeRobotDataset on the same files.

The dataset is written by LeRobot's own writer (``LeRobotDataset.create`` / ``add_frame`` /
``save_episode``): ``--episodes`` x ``--frames`` frames, two 96x96 cameras stored as video, a
14-dim state and a 7-dim action; a second copy without cameras serves the state/action rows
(LeRobot cannot skip the cameras of a dataset that has them). Both are cached under ``--root``.

Access: offsets obs [-1, 0] (state and cameras) and action [0..15], shuffled, through
``torch.utils.data.DataLoader`` (batch ``--batch-size``, default collate) with num_workers 0 and 2.
Throughput is counted after the first batch (worker start-up excluded) for ``--seconds`` per row.
Ours is measured cold (empty frame cache: decoding included, first pass over shuffled data) and
warm (frames already decoded into the cache). The table goes to docs/benchmarks.md between
``<!-- BEGIN bench_loader -->`` and ``<!-- END bench_loader -->``.

    .venv/bin/python benchmarks/bench_loader.py            # full run, about 5 minutes on 2 cores
    .venv/bin/python benchmarks/bench_loader.py --episodes 10 --frames 100 --seconds 3 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from policystack.datasets.loader import WindowedDataset, collate_windows  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

CAMERAS = ("observation.images.top", "observation.images.wrist")
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_datasets(root: Path, episodes: int, frames: int, size: int, fps: int) -> tuple[Path, Path]:
    """LeRobot-written datasets (with cameras, and the same values without), reused when present."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    tag = f"e{episodes}-f{frames}-s{size}-fps{fps}"
    with_cams, no_cams = root / f"cams-{tag}", root / f"nocams-{tag}"
    if (with_cams / "meta/info.json").is_file() and (no_cams / "meta/info.json").is_file():
        return with_cams, no_cams
    shutil.rmtree(with_cams, ignore_errors=True)
    shutil.rmtree(no_cams, ignore_errors=True)
    base = {"observation.state": {"dtype": "float32", "shape": (14,), "names": None},
            "action": {"dtype": "float32", "shape": (7,), "names": None}}
    cams = {k: {"dtype": "video", "shape": (size, size, 3), "names": ["height", "width", "channels"]}
            for k in CAMERAS}
    t0 = time.perf_counter()
    a = LeRobotDataset.create("bench/cams", fps=fps, root=with_cams, features={**base, **cams}, use_videos=True)
    b = LeRobotDataset.create("bench/nocams", fps=fps, root=no_cams, features=base, use_videos=False)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for ep in range(episodes):
        phase = rng.uniform(0, 255, 3)
        for i in range(frames):
            frame = {"observation.state": rng.standard_normal(14).astype(np.float32),
                     "action": rng.standard_normal(7).astype(np.float32), "task": f"task {ep % 5}"}
            b.add_frame(dict(frame))
            for c, k in enumerate(CAMERAS):  # moving gradients: compressible like real footage
                img = np.stack([(xx * (2 + c) + 3 * i + phase[0]) % 256, (yy * 2 + 5 * i + phase[1]) % 256,
                                (xx + yy + 7 * i + phase[2]) % 256], -1).astype(np.uint8)
                frame[k] = img
            a.add_frame(frame)
        a.save_episode()
        b.save_episode()
    a.finalize()
    b.finalize()
    print(f"wrote {with_cams} and {no_cams} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return with_cams, no_cams


def throughput(dataset, num_workers: int, batch_size: int, seconds: float, max_samples: int | None = None,
               collate_fn=None) -> float:
    """Samples/s through a shuffled DataLoader, counted after the first batch."""
    # LeRobot keeps torchcodec decoders (with open file handles) in a module-level cache; forked
    # workers that inherit them share file offsets and fail ("Invalid data found"). LeRobot's
    # docs say not to decode in the main process before using workers, so start each run clean.
    from lerobot.datasets.video_utils import _default_decoder_cache

    _default_decoder_cache.clear()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                         drop_last=True, collate_fn=collate_fn)
    n, t0 = 0, None
    for batch in loader:
        if t0 is None:
            t0 = time.perf_counter()
            continue
        n += len(batch["index"])
        dt = time.perf_counter() - t0
        if dt >= seconds or (max_samples is not None and n >= max_samples):
            break
    dt = time.perf_counter() - t0
    del loader
    return n / dt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("/tmp/policystack-bench"))
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0, help="measuring time per row")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    # One intra-op thread for everyone (both loaders, main process and workers): with 2 cores and
    # other processes running, OpenMP threads spinning in torch.stack made both loaders 10-30x
    # slower in trial runs. Workers of both loaders run with 1 thread anyway.
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    with_cams, no_cams = write_datasets(args.root, args.episodes, args.frames, args.size, args.fps)
    fps = args.fps
    obs, act = [-1 / fps, 0.0], [i / fps for i in range(16)]
    dt_cams = {"observation.state": obs, "action": act, **{k: obs for k in CAMERAS}}
    dt_plain = {"observation.state": obs, "action": act}
    cache = args.root / "cache"
    shutil.rmtree(cache, ignore_errors=True)

    rows = []  # (config, workers, lerobot, ours cold, ours warm, ours warm with collate_windows)
    t0 = time.perf_counter()
    ours_plain = WindowedDataset(no_cams, delta_timestamps=dt_plain, cache_dir=cache)
    build_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours_cams = WindowedDataset(with_cams, delta_timestamps=dt_cams, cache_dir=cache)
    build_cols = time.perf_counter() - t0
    lr_cams = LeRobotDataset("bench/cams", root=with_cams, delta_timestamps=dt_cams)
    lr_plain = LeRobotDataset("bench/nocams", root=no_cams, delta_timestamps=dt_plain)
    n = len(ours_cams)
    warm_s = None
    for w in args.workers:
        lr = throughput(lr_cams, w, args.batch_size, args.seconds)
        # cold: a fresh frame cache, one pass over (at most) the whole shuffled dataset
        shutil.rmtree(ours_cams.cache_dir / "frames", ignore_errors=True)
        fresh = WindowedDataset(with_cams, delta_timestamps=dt_cams, cache_dir=cache)
        cold = throughput(fresh, w, args.batch_size, 1e9, max_samples=n - 2 * args.batch_size)
        if warm_s is None:
            shutil.rmtree(ours_cams.cache_dir / "frames", ignore_errors=True)
            t0 = time.perf_counter()
            WindowedDataset(with_cams, delta_timestamps=dt_cams, cache_dir=cache).warm_cache()
            warm_s = time.perf_counter() - t0
        warm = throughput(ours_cams, w, args.batch_size, args.seconds)
        fast = throughput(ours_cams, w, args.batch_size, args.seconds, collate_fn=collate_windows)
        rows.append(("2 cameras + state + action", w, lr, cold, warm, fast))
        print(rows[-1], file=sys.stderr)
    for w in args.workers:
        lr = throughput(lr_plain, w, args.batch_size, args.seconds)
        ours = throughput(ours_plain, w, args.batch_size, args.seconds)
        fast = throughput(ours_plain, w, args.batch_size, args.seconds, collate_fn=collate_windows)
        rows.append(("state + action only", w, lr, None, ours, fast))
        print(rows[-1], file=sys.stderr)

    table = render(args, rows, build_cols, build_plain, warm_s, (load_before, os.getloadavg()[0]))
    print(table)
    if not args.no_write:
        write_section("bench_loader", table)
        print(f"wrote {DOC}", file=sys.stderr)
    return 0


def render(args, rows, build_cols: float, build_plain: float, warm_s: float, load: tuple[float, float]) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        "## Windowed loader vs LeRobotDataset (`benchmarks/bench_loader.py`)",
        "",
        f"Dataset written by LeRobot 0.4.4's own writer: {args.episodes} episodes x {args.frames} frames at "
        f"{args.fps} fps, two {args.size}x{args.size} cameras as AV1 video (LeRobot's default encoder), "
        "14-dim state, 7-dim action. Offsets: state and cameras [-1, 0], action [0..15]; shuffled "
        f"DataLoader, batch {args.batch_size}; samples/s counted after the first batch "
        f"for {args.seconds:g} s per cell. Machine: {os.cpu_count()} cores ({cpu}), no GPU, torch "
        f"{torch.__version__}, 1 torch thread per process; 1-minute load average {load[0]:.1f} before and "
        f"{load[1]:.1f} after the run (the machine was shared: rates are noisy). Ours returns uint8 "
        "images, LeRobot float32 (its only output).",
        "",
        "| config | num_workers | LeRobot | ours cold | ours warm | ours warm, `collate_windows` "
        "| warm / LeRobot (same collate) | best / LeRobot |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config, w, lr, cold, warm, fast in rows:
        cold_s = f"{cold:,.0f}" if cold is not None else "-"
        lines.append(f"| {config} | {w} | {lr:,.0f} | {cold_s} | {warm:,.0f} | {fast:,.0f} | "
                     f"{warm / lr:,.0f}x | {max(warm, fast) / lr:,.0f}x |")
    lines += [
        "",
        "Rates in samples/s. LeRobot, \"ours cold\" and \"ours warm\" use torch's default collate; "
        "`collate_windows` (what `WindowedDataset.dataloader()` uses) takes the batch gathered by "
        "`__getitems__` as it is and ships it from a worker in one shared-memory buffer.",
        "",
        "One-time costs of ours (not in the rates above): reading the data parquet into the column "
        f"cache {build_cols:.2f} s (cameras dataset), {build_plain:.2f} s (state/action dataset); decoding "
        f"every camera segment into the frame cache (`warm_cache()`, 1 process) {warm_s:.1f} s. \"Cold\" "
        "is one shuffled pass that starts from an empty frame cache and decodes segments as batches "
        "need them (the first epoch of a training run); \"warm\" is every later epoch. Cached frames are "
        "memory-mapped uint8 files shared by all workers through the page cache.",
    ]
    return "\n".join(lines)



if __name__ == "__main__":
    sys.exit(main())
