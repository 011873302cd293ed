"""Scene generation: pipeline time per asset and hull counts, against CoACD's own defaults.

    python benchmarks/bench_scenegen.py [--peer-prompts "a mug;a cup;a bowl;a small apple"] [--write]

For every prompt of the issue and of the PlaceObject task, every other shape of the generator, and
for a mesh file and a SLAT file,
the asset pipeline runs in a fresh cache: mesh (generate / load + repair / marching cubes), hulls
(CoACD with our settings, or one hull for a convex solid), write (OBJ + MJCF + compile check), and
the drop test. The peer is CoACD with its defaults (threshold 0.05, manifold preprocessing on,
resolution 2000, MCTS 20 nodes x 150 iterations) on the same solids, timed in the same run.
CoACD runs single-threaded here (OMP_NUM_THREADS=1; no torch is involved). ``--write`` puts the
table into docs/benchmarks.md (section bench_scenegen).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def coacd_defaults(solid) -> tuple[int, float]:
    """(hull count, seconds) of CoACD with its own default settings on a watertight solid."""
    import coacd
    import numpy as np

    coacd.set_log_level("error")
    t = time.perf_counter()
    parts = coacd.run_coacd(coacd.Mesh(np.asarray(solid.vertices), np.asarray(solid.faces)), seed=0)
    return len(parts), time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from policystack.envs.scenegen import SHAPES, AssetConfig, drop_test, generate, import_mesh, import_slat
    from policystack.envs.scenegen.objects import SPLITS
    from policystack.envs.scenegen.procedural import parse_prompt, shape_solid
    from policystack.envs.scenegen.slat import mesh_to_slat

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-prompts", default="a mug;a cup;a yellow bowl;a small apple")
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    prompts = ["a red mug", "a small blue bottle", "a yellow bowl", "a green banana"]
    prompts += [q for split in SPLITS.values() for q in split if q not in prompts]
    prompts += [f"a {shape}" for shape in SHAPES if not any(q.endswith(f" {shape}") for q in prompts)]
    peers = [q.strip() for q in args.peer_prompts.split(";") if q.strip()]
    rows, peer_rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench_scenegen-") as tmp:
        cache = Path(tmp) / "cache"
        jobs = [(q, lambda q=q: generate(q, cache_dir=cache)) for q in prompts]
        mug = shape_solid(parse_prompt("a mug"))[0].solid
        mug.export(Path(tmp) / "mug.obj")
        np.savez(Path(tmp) / "mug_slat.npz", **mesh_to_slat(mug))
        jobs.append(("mug.obj (import, size 0.09)", lambda: import_mesh(Path(tmp) / "mug.obj", AssetConfig(size=0.09), cache)))
        jobs.append(("mug_slat.npz (SLAT, 64^3)",
                     lambda: import_slat(Path(tmp) / "mug_slat.npz", AssetConfig(size=0.09), cache)))
        for label, make in jobs:
            t = time.perf_counter()
            asset = make()
            total = time.perf_counter() - t
            t = time.perf_counter()
            report = drop_test(asset)
            drop = time.perf_counter() - t
            tm = asset.meta["timings"]
            rows.append((label, asset.hull_count, tm["mesh"], tm["hulls"], tm["write"], total, drop, report))
            print(f"{label}: {asset.hull_count} hulls, {total:.2f} s, drop test {drop:.2f} s "
                  f"{'PASS' if report.passed else 'FAIL'}", flush=True)
        for q in peers:
            solid = shape_solid(parse_prompt(q))[0].solid
            ours = next(r for r in rows if r[0] == q) if any(r[0] == q for r in rows) else None
            if ours is None:
                a = generate(q, cache_dir=cache)
                ours = (q, a.hull_count, 0, a.meta["timings"]["hulls"], 0, 0, 0, None)
            n, sec = coacd_defaults(solid)
            peer_rows.append((q, ours[1], ours[3], n, sec))
            print(f"{q}: ours {ours[1]} hulls in {ours[3]:.2f} s; CoACD defaults {n} hulls in {sec:.2f} s", flush=True)
    lines = [
        "## Scene generation: pipeline time per asset and hull counts (`benchmarks/bench_scenegen.py`)",
        "",
        f"Fresh asset cache, {platform.processor() or platform.machine()}, CoACD single-threaded (OMP_NUM_THREADS=1; no torch "
        "threads involved), on the shared 2-core machine (other jobs running: times are upper bounds). "
        f"{sum(r[7].passed for r in rows)}/{len(rows)} assets passed their drop test. "
        "mesh = generate / load + repair / marching cubes; hulls = CoACD with our settings (threshold 0.08, "
        "resolution 1000, MCTS 10 x 60, no preprocessing of already-closed solids; one hull when the solid is "
        "within 3% of convex); write = OBJ + MJCF + compile check; drop test = 6 poses (+ up to 4 seam probes) at 1 kHz.",
        "",
        "| asset | hulls | mesh (s) | hulls (s) | write (s) | total (s) | drop test (s) | drop test |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, n, tm, th, tw, tot, td, rep in rows:
        seams = sum(t.kind == "seam" for t in rep.trials)
        lines.append(f"| {label} | {n} | {tm:.2f} | {th:.2f} | {tw:.2f} | {tot:.2f} | {td:.2f} | "
                     f"{'pass' if rep.passed else 'FAIL'} ({len(rep.trials)} trials, {seams} on seams) |")
    lines += ["", "Against CoACD's own defaults on the same solids (same run):", "",
              "| object | ours: hulls | ours: s | CoACD defaults: hulls | CoACD defaults: s | speed-up |",
              "|---|---:|---:|---:|---:|---:|"]
    for q, n, s, pn, ps in peer_rows:
        lines.append(f"| {q} | {n} | {s:.2f} | {pn} | {ps:.2f} | {ps / max(s, 1e-9):.1f}x |")
    lines += ["", "`python benchmarks/bench_scenegen.py --write`"]
    text = "\n".join(lines)
    print(text)
    if args.write:
        from benchmarks._report import write_section

        print(f"wrote {write_section('bench_scenegen', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
