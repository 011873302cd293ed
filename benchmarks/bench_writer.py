"""Recording speed: policystack's DatasetWriter vs LeRobot 0.4.4's LeRobotDataset writer.

The same frames (E episodes x T frames: two 96x96 RGB cameras as AV1 video, 14-dim state,
7-dim action, one task per episode, 30 fps) go through

- LeRobot: ``LeRobotDataset.create(...)``, ``add_frame`` per frame, ``save_episode`` per episode,
  ``finalize``;
- ours: ``DatasetWriter.create(...)``, the same calls.

Reported: frames/s over the whole run (add_frame + save_episode + finalize), the mean and
maximum time one ``save_episode`` call blocks, and the bytes on disk. Both results are then
loaded back by LeRobot (a check, not timed). Run::

    .venv/bin/python benchmarks/bench_writer.py [--episodes 10] [--frames 100] [--no-write]

and the table replaces the section between ``<!-- BEGIN bench_writer -->`` and
``<!-- END bench_writer -->`` of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
H = W = 96
FPS = 30


def make_frames(n: int, ep: int) -> list[dict]:
    rng = np.random.default_rng(ep)
    yy, xx = np.mgrid[0:H, 0:W]
    out = []
    for i in range(n):
        cy, cx = (20 + 0.5 * i + 3 * ep) % H, (30 + 0.3 * i) % W
        blob = (150 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 80)).astype(np.int64)
        front = np.stack([xx + blob, yy + blob, np.full_like(xx, 60) + blob], -1).clip(0, 255).astype(np.uint8)
        wrist = np.roll(front, 7 * i, axis=1)
        out.append({"observation.state": rng.normal(size=14).astype(np.float32),
                    "action": rng.normal(size=7).astype(np.float32),
                    "observation.images.front": front, "observation.images.wrist": wrist,
                    "task": f"task {ep % 3}"})
    return out


def run(kind: str, root: Path, episodes: list[list[dict]]) -> dict:
    cams = {"observation.images.front", "observation.images.wrist"}
    if kind == "lerobot":
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        feats = {"observation.state": {"dtype": "float32", "shape": (14,), "names": None},
                 "action": {"dtype": "float32", "shape": (7,), "names": None}}
        feats.update({c: {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]}
                      for c in cams})
        t0 = time.perf_counter()
        w = LeRobotDataset.create("bench/writer", root=root, fps=FPS, features=feats, use_videos=True)
    else:
        from policystack.datasets.writer import DatasetWriter
        from policystack.types import Feature

        feats = {"observation.state": Feature("float32", (14,)), "action": Feature("float32", (7,))}
        feats.update({c: Feature("video", (H, W, 3)) for c in cams})
        t0 = time.perf_counter()
        w = DatasetWriter.create(root, fps=FPS, features=feats)
    saves = []
    for frames in episodes:
        for f in frames:
            w.add_frame(dict(f))
        s0 = time.perf_counter()
        w.save_episode()
        saves.append(time.perf_counter() - s0)
    w.finalize()
    total = time.perf_counter() - t0
    n = sum(len(e) for e in episodes)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"fps": n / total, "total": total, "save_mean": float(np.mean(saves)), "save_max": float(np.max(saves)),
            "mb": size / 2**20}


def check_loads(root: Path, n_frames: int) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("bench/check", root=root)
    assert len(ds) == n_frames, (root, len(ds))
    ds[n_frames - 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    episodes = [make_frames(args.frames, ep) for ep in range(args.episodes)]
    n = args.episodes * args.frames
    load_before = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("lerobot", "ours"):
            root = Path(tmp) / kind
            results[kind] = run(kind, root, episodes)
            check_loads(root, n)
            shutil.rmtree(root)
    load_after = os.getloadavg()[0]
    base = results["lerobot"]["fps"]
    rows = [f"| {name} | {r['fps']:,.0f} | {r['fps'] / base:.2f}x | {r['save_mean'] * 1000:,.0f} | "
            f"{r['save_max'] * 1000:,.0f} | {r['mb']:.2f} |"
            for name, r in (("LeRobot 0.4.4 `LeRobotDataset`", results["lerobot"]),
                            ("policystack `DatasetWriter`", results["ours"]))]
    table = "\n".join([
        "## Recording: DatasetWriter vs LeRobotDataset (`benchmarks/bench_writer.py`)",
        "",
        f"{args.episodes} episodes x {args.frames} frames at {FPS} fps: two {H}x{W} cameras as AV1 video "
        "(both with LeRobot's encoder settings), 14-dim state, 7-dim action. Timed: create, add_frame per "
        "frame, save_episode per episode, finalize. Both datasets are then loaded by LeRobotDataset "
        f"(not timed). Machine: {os.cpu_count()} cores, no GPU; 1-minute load average {load_before:.1f} "
        f"before and {load_after:.1f} after the run (other jobs may share the cores: compare rows of one run).",
        "",
        "| writer | frames/s | vs LeRobot | save_episode mean (ms) | save_episode max (ms) | MB on disk |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "LeRobot runs with its defaults (`image_writer_threads=0`): it writes every camera frame to a "
        "PNG file in `add_frame`, then encodes the episode's videos and computes image statistics in "
        "`save_episode`. Ours encodes frames as they arrive (into temp files) and spends `save_episode` "
        "on flushing the encoder, fsync, renames and the metadata rewrite that makes the episode durable "
        "(one data file and one MP4 per camera per episode, hence the slightly larger size on disk).",
    ])
    print(table)
    if not args.no_write:
        write_section("bench_writer", table)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
