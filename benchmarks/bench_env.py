"""Env step rate of the tabletop suite next to the raw MuJoCo physics it runs.

For each task and mode, in one run and on the same compiled model, the env's step rate and the
raw physics rate of exactly the same steps (``mujoco.mj_step(model, data, nstep=n_substeps)``,
50 substeps = one 10 Hz env step at 500 Hz, replayed from the saved state with the env's ctrl):
- joint:    ``env.step`` in ``action_mode="joint"``, no cameras (validation, servo targets,
            physics, success check, state vector);
- ee_delta: ``env.step`` in ``action_mode="ee_delta"``, no cameras (+ mink differential IK);
- cameras:  ``env.step`` in ee_delta mode rendering front + wrist at 96x96 (software EGL here).
Actions are seeded random ones (scaled by 0.3) so the arm moves and touches things.

    python benchmarks/bench_env.py [--steps 300] [--tasks Reach,PickPlace] [--no-write]

The table goes to docs/benchmarks.md between ``<!-- BEGIN bench_env -->`` and
``<!-- END bench_env -->``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from policystack import envs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def time_env(task: str, steps: int, **kwargs) -> tuple[float, float]:
    """(env steps/s, raw mj_step rate in env-step units) over `steps` steps (resets excluded).

    The raw rate replays the very same physics: before each env step the full MuJoCo state is
    saved, and afterwards the physics of that step (same state, same ctrl, n_substeps mj_step
    calls) is timed on its own, so both numbers cover identical contacts and constraints.
    """
    env = envs.make(task, **kwargs)
    rng = np.random.default_rng(0)
    u = env.unwrapped
    model, data = u.model, u.data
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    env.reset(seed=0)
    states, ctrls = [], []
    elapsed, done = 0.0, 0
    while done < steps:
        if u.action_mode == "joint":
            action = np.append(u.arm_qpos + rng.normal(0, 0.05, 7), rng.uniform(-1, 1)).astype(np.float32)
        else:
            action = (rng.uniform(-1, 1, 7) * 0.3).astype(np.float32)
        state = np.empty(mujoco.mj_stateSize(model, spec))
        mujoco.mj_getState(model, data, state, spec)
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        elapsed += time.perf_counter() - t0
        states.append(state)
        ctrls.append(data.ctrl.copy())
        done += 1
        if terminated or truncated:
            env.reset(seed=done)
    raw = 0.0
    for state, ctrl in zip(states, ctrls):
        mujoco.mj_setState(model, data, state, spec)
        data.ctrl[:] = ctrl
        t0 = time.perf_counter()
        mujoco.mj_step(model, data, nstep=u.n_substeps)
        raw += time.perf_counter() - t0
    env.close()
    return steps / elapsed, steps / raw


def run(tasks: list[str], steps: int) -> list[dict]:
    rows = []
    for task in tasks:
        joint, raw_j = time_env(task, steps, cameras=(), action_mode="joint")
        ee, raw_e = time_env(task, steps, cameras=())
        cams, raw_c = time_env(task, max(steps // 3, 30), cameras=("front", "wrist"), image_size=96)
        rows.append({"task": task, "raw_j": raw_j, "joint": joint, "raw_e": raw_e, "ee": ee,
                     "raw_c": raw_c, "cams": cams})
        print(f"{task:12s} joint {joint:6.0f}/s vs raw {raw_j:6.0f}/s ({raw_j / joint:.2f}x)  "
              f"ee_delta {ee:6.0f}/s vs raw {raw_e:6.0f}/s ({raw_e / ee:.2f}x)  "
              f"2 cams 96px {cams:5.0f}/s vs raw {raw_c:6.0f}/s", flush=True)
    return rows


def table(rows: list[dict], steps: int) -> str:
    lines = [
        "## Tabletop env step rate (bench_env)",
        "",
        f"`python benchmarks/bench_env.py --steps {steps}` on {platform.machine()}, {os.cpu_count()} cores, "
        f"mujoco {mujoco.__version__}, MUJOCO_GL={os.environ.get('MUJOCO_GL')} (software rendering). "
        "Env steps per second (one env step = 1/10 s = 50 physics steps at 500 Hz), single process. "
        "\"raw\" replays the same steps with `mujoco.mj_step(model, data, nstep=50)` alone (same "
        "states, same ctrl); \"time / raw\" is the env's time per step over the physics' time (1.00x = "
        "the wrapper is free; the aim is <= 2x without rendering). Load average when the run started: "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine: absolute rates vary between "
        "runs; the env and raw numbers of one row come from the same steps, timed one right after the other).",
        "",
        "| task | raw mj_step | joint mode | time / raw | raw mj_step | ee_delta (mink IK) | time / raw "
        "| ee_delta + front & wrist 96x96 | time / raw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['task']} | {r['raw_j']:.0f} | {r['joint']:.0f} | {r['raw_j'] / r['joint']:.2f}x | "
                     f"{r['raw_e']:.0f} | {r['ee']:.0f} | {r['raw_e'] / r['ee']:.2f}x | "
                     f"{r['cams']:.0f} | {r['raw_c'] / r['cams']:.1f}x |")
    return "\n".join(lines)



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--tasks", default=",".join(envs.task_names()))
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in envs.task_names()]
    if unknown:
        p.error(f"unknown tasks {unknown}; valid: {', '.join(envs.task_names())}")
    rows = run(tasks, args.steps)
    text = table(rows, args.steps)
    print(text)
    if not args.no_write:
        write_section("bench_env", text)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
