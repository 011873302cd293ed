"""Merging datasets: ``policystack dataset merge`` vs LeRobot 0.4.4's ``aggregate_datasets``.

S source datasets of E episodes x T frames each (two 96x96 cameras as AV1 video, 14-dim state, 7-dim
action, three tasks; written once by our DatasetWriter, not timed) are merged into one by

- LeRobot: ``lerobot.datasets.aggregate.aggregate_datasets(repo_ids, aggr_repo_id, roots, aggr_root)``
  (what ``lerobot-edit-dataset --operation.type merge`` runs);
- ours: ``policystack.datasets.merge.merge_datasets(sources, out)``, with the video files hard-linked
  (the default) and copied (``--copy``).

Reported: seconds per merge (best of ``--repeats``), the ratio to LeRobot, bytes the merge added on
disk. Each result is then loaded by LeRobotDataset and its frame count and last frame checked (not
timed). Run::

    .venv/bin/python benchmarks/bench_merge.py [--sources 3] [--episodes 20] [--frames 100] [--no-write]

and the table replaces the section between ``<!-- BEGIN bench_merge -->`` and ``<!-- END bench_merge -->``
of docs/benchmarks.md.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402
from bench_writer import check_loads, make_frames, run  # noqa: E402


def disk_bytes(root: Path) -> int:
    """Bytes of the files under root, a hard-linked file counted once per inode."""
    seen, total = set(), 0
    for p in root.rglob("*"):
        if p.is_file():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def merge(kind: str, sources: list[Path], out: Path) -> float:
    """Seconds of one merge (imports done before the clock starts)."""
    from lerobot.datasets.aggregate import aggregate_datasets

    from policystack.datasets.merge import merge_datasets

    t0 = time.perf_counter()
    if kind.startswith("LeRobot"):
        aggregate_datasets([f"bench/src{i}" for i in range(len(sources))], "bench/merged", roots=sources,
                           aggr_root=out)
    else:
        merge_datasets(sources, out, link=kind == "ours (hard links)", progress=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", type=int, default=3)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    kinds = ("LeRobot 0.4.4 `aggregate_datasets`", "ours (hard links)", "ours (copies)")
    n = args.sources * args.episodes * args.frames
    with tempfile.TemporaryDirectory() as tmp:
        sources = []
        for s in range(args.sources):
            sources.append(Path(tmp) / f"src{s}")
            run("ours", sources[-1], [make_frames(args.frames, s * args.episodes + e) for e in range(args.episodes)])
        src_bytes = sum(disk_bytes(s) for s in sources)
        load_before = os.getloadavg()[0]
        results: dict[str, list[float]] = {k: [] for k in kinds}
        added: dict[str, int] = {}
        for r in range(args.repeats):
            for kind in kinds:
                out = Path(tmp) / f"out-{r}-{kinds.index(kind)}"
                results[kind].append(merge(kind, sources, out))
                if r == 0:
                    check_loads(out, n)
                    added[kind] = disk_bytes(Path(tmp)) - src_bytes - sum(added.values())
                else:
                    shutil.rmtree(out)
        load_after = os.getloadavg()[0]
    best = {k: min(v) for k, v in results.items()}
    rows = [f"| {k} | {best[k]:.2f} | {best[kinds[0]] / best[k]:.1f}x | {added[k] / 2**20:.2f} |" for k in kinds]
    table = "\n".join([
        "## Merging datasets: `dataset merge` vs LeRobot's `aggregate_datasets` (`benchmarks/bench_merge.py`)",
        "",
        f"{args.sources} source datasets of {args.episodes} episodes x {args.frames} frames at 30 fps (two 96x96 "
        f"cameras as AV1 video, 14-dim state, 7-dim action, written by our DatasetWriter: one file per episode), "
        f"{src_bytes / 2**20:.1f} MB in all, merged into one; best of {args.repeats}. Each result is then loaded "
        f"by LeRobotDataset (frame count and last frame checked, not timed). Machine: {os.cpu_count()} cores, "
        f"no GPU, no torch work; 1-minute load average {load_before:.1f} before and {load_after:.1f} after "
        "(other jobs may share the cores: compare rows of one run).",
        "",
        "| merge | seconds | speed vs LeRobot | MB added on disk |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        "LeRobot 0.4.4 concatenates the sources' data, episode and video files into files of up to its size "
        "limits (videos re-muxed); ours rewrites each data file's three renumbered columns and hard-links "
        "(or copies) each video file, keeping one file per episode.",
    ])
    print(table)
    if not args.no_write:
        write_section("bench_merge", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
