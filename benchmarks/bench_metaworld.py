"""Env steps/s with image observations: policystack's MetaWorld adapter vs LeRobot's MetaworldEnv.

Both wrap the same metaworld 3.1.1 task (``--task``, default pick-place-v3) on the same mujoco and
return one RGB camera per step plus the state. LeRobot's env (``lerobot.envs.metaworld.MetaworldEnv``,
obs_type "pixels_agent_pos", camera corner2) renders through Gymnasium's MujocoRenderer with
MetaWorld's default look, always at 480x480 (lerobot 0.4.4 does not pass its observation_width /
observation_height to MetaWorld, so its images are 480x480 whatever its observation space says); the
comparison rows therefore use 480x480 for ours too, and one more row shows ours at ``--small``
(default 96). Ours renders with ``mujoco.Renderer``,
once per step, with shadows and reflections off by default (``shadows=True, reflections=True``
gives MetaWorld's look, measured as its own row). Each row: ``--steps`` steps of the same seeded
random actions after one reset, timed after a 5-step warm-up, in one process, one after another.
The table goes to docs/benchmarks.md between ``<!-- BEGIN bench_metaworld -->`` and
``<!-- END bench_metaworld -->``.

    MUJOCO_GL=egl .venv/bin/python benchmarks/bench_metaworld.py            # about 1 minute
    MUJOCO_GL=egl .venv/bin/python benchmarks/bench_metaworld.py --steps 20 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from policystack.envs.metaworld import import_metaworld, make_metaworld_env  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def steps_per_second(env, actions: np.ndarray, reset_seed: int = 0) -> float:
    env.reset(seed=reset_seed)
    for a in actions[:5]:
        env.step(a)
    t = time.perf_counter()
    for a in actions[5:]:
        env.step(a)
    return (len(actions) - 5) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="pick-place-v3")
    p.add_argument("--small", type=int, default=96, help="image side of the extra 'ours, small images' row")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--no-write", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    # Random actions that keep the arm inside MetaWorld's horizon (no episode end during the run).
    actions = np.random.default_rng(0).uniform(-1, 1, (args.steps + 5, 4)).astype(np.float32)

    rows: list[tuple[str, float]] = []
    import_metaworld()  # the mujoco 4 shim: LeRobot's env needs it too (it fails at construction otherwise)
    from lerobot.envs.metaworld import MetaworldEnv

    peer = MetaworldEnv(args.task, camera_name="corner2", obs_type="pixels_agent_pos",
                        observation_width=480, observation_height=480)
    assert peer.reset(seed=0)[0]["pixels"].shape == (480, 480, 3)
    rows.append(("LeRobot MetaworldEnv, 480x480, MetaWorld look", steps_per_second(peer, actions)))
    peer.close()
    for label, kw in [
        ("policystack, 480x480, shadows+reflections on (MetaWorld look)",
         {"shadows": True, "reflections": True, "image_size": 480}),
        ("policystack, 480x480, default (shadows/reflections off)", {"image_size": 480}),
        (f"policystack, {args.small}x{args.small}, default", {"image_size": args.small}),
    ]:
        env = make_metaworld_env(args.task, cameras=("corner2",), **kw)
        rows.append((label, steps_per_second(env, actions)))
        env.close()
    state_env = make_metaworld_env(args.task, cameras=())
    rows.append(("policystack, state only (no camera)", steps_per_second(state_env, actions)))
    state_env.close()

    base = rows[0][1]
    lines = [
        "## MetaWorld env steps/s (benchmarks/bench_metaworld.py)",
        "",
        f"Task {args.task}, one RGB camera (corner2) + state per step, {args.steps} timed steps "
        f"of seeded random actions; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"MUJOCO_GL={os.environ['MUJOCO_GL']} (software rendering, no GPU).",
        "",
        "| env | steps/s | vs LeRobot |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {sps:.1f} | {sps / base:.2f}x |" for label, sps in rows]
    lines += [
        "",
        "Measured with other jobs sharing the 2 cores: compare rows of one run only. "
        "Rendering dominates: MetaWorld's shadows and reflections cost most of the frame time under "
        "software rendering. The adapter turns them off by default (the images then look flatter than "
        "LeRobot's MetaWorld datasets; set `shadows=True, reflections=True` to match those).",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("bench_metaworld", table)
    return 0



if __name__ == "__main__":
    sys.exit(main())
