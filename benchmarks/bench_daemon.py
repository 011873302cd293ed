"""Control-loop timing of the daemon, beside a busy policy worker, against the bare-loop floor.

Rows (each run for ``--duration`` s, default 60, while a CPU-bound process runs BC inference
with torch on every core, as a busy policy worker does):

- bare loop, plain ``time.sleep`` to each deadline (the floor without care);
- bare loop, LeRobot's ``precise_sleep`` (the peer: what LeRobot's record/teleop loops use);
- bare loop, hybrid sleep/spin (our timing, nothing else in the body);
- the daemon's control loop (``policystack.robot.loop``: sim driver stepping MuJoCo, chunk
  interpolation, safety filter, shared-memory state) at 500 Hz and 1 kHz, fed a new action
  chunk at 10 Hz as the supervisor does.

Period error = how late each tick woke up after its deadline; a miss = a tick whose body ended
after the next deadline. All loops ask for SCHED_FIFO + CPU pinning (reported when refused).
Then observation-to-action latency through the whole daemon (supervisor + worker + loop):
observation taken -> chunk in the loop's command block.

    python benchmarks/bench_daemon.py [--duration 60] [--no-write]

Writes its table between ``<!-- BEGIN bench_daemon -->`` and ``<!-- END bench_daemon -->`` in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
TOKEN = "bench-daemon-token-0123456789"


def make_checkpoint(directory: Path, image_size: int = 96, **bc: object) -> Path:
    """A BC checkpoint (random weights, actions around the Panda's home posture), one ``front`` camera of
    ``image_size``; ``bc``: BCConfig fields (default: BCConfig's)."""
    import torch

    from policystack.envs.base import JOINT_ACTION_NAMES, STATE_NAMES
    from policystack.envs.robot import HOME_QPOS
    from policystack.policies.bc import BCConfig, BCPolicy
    from policystack.types import Feature

    torch.manual_seed(0)
    feats = {"observation.state": Feature("float32", (15,), names=list(STATE_NAMES)),
             "observation.images.front": Feature("video", (image_size, image_size, 3)),
             "action": Feature("float32", (8,), names=list(JOINT_ACTION_NAMES))}
    stats = {"observation.state": {"mean": np.zeros(15), "std": np.ones(15)},
             "action": {"mean": np.append(HOME_QPOS, -1.0), "std": np.full(8, 0.05)}}
    return BCPolicy(BCConfig(**bc), feats, stats).save_pretrained(directory)


# --- child processes ---------------------------------------------------------------------------------
def child_busy(ckpt: str) -> None:
    """CPU-bound: BC inference on 96x96 images forever, torch on every core."""
    import torch

    from policystack.policies.base import Policy

    torch.set_num_threads(os.cpu_count() or 2)
    policy = Policy.from_pretrained(ckpt)
    obs = {"observation.state": torch.zeros(1, 15), "task": ["x"],
           "observation.images.front": torch.zeros(1, 3, 96, 96, dtype=torch.uint8)}
    while True:
        policy.predict_action_chunk(obs)


def child_bare(mode: str, rate: float, duration: float, out: str) -> None:
    from policystack.robot.loop import setup_realtime

    refused = setup_realtime(80, 1)
    period, spin = 1.0 / rate, 0.0003
    n = int(duration * rate)
    late = np.zeros(n)
    clock = time.monotonic
    if mode == "lerobot":
        from lerobot.utils.robot_utils import precise_sleep
    deadline = clock() + period
    misses = 0
    for i in range(n):
        if mode == "plain":
            rem = deadline - clock()
            if rem > 0:
                time.sleep(rem)
            now = clock()
        elif mode == "lerobot":
            precise_sleep(deadline - clock())
            now = clock()
        else:
            rem = deadline - clock() - spin
            if rem > 0:
                time.sleep(rem)
            now = clock()
            while now < deadline:
                now = clock()
        late[i] = now - deadline
        deadline += period
        done = clock()
        if done > deadline:
            k = int((done - deadline) // period) + 1
            misses += k
            deadline += k * period
    np.savez(out, late=late, body=np.zeros(0), misses=misses, ticks=n, rt_refused=np.array(refused, dtype=str))


# --- rows ----------------------------------------------------------------------------------------------
def start_busy(ckpt: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, __file__, "--child", "busy", "--ckpt", str(ckpt)])
    time.sleep(3.0)  # torch import + first inference
    return p


def summarize(npz: str) -> dict:
    d = np.load(npz)
    late = d["late"] * 1e6
    body = d["body"] * 1e6 if d["body"].size else None
    return {"p50": float(np.percentile(late, 50)), "p99": float(np.percentile(late, 99)),
            "max": float(late.max()), "misses": int(d["misses"]), "ticks": int(d["ticks"]),
            "body_p99": float(np.percentile(body, 99)) if body is not None else None,
            "rt_refused": [str(x) for x in d["rt_refused"]]}


def bare_row(mode: str, rate: float, duration: float, ckpt: Path, tmp: Path) -> dict:
    busy = start_busy(ckpt)
    try:
        out = str(tmp / f"bare-{mode}-{rate:g}.npz")
        subprocess.run([sys.executable, __file__, "--child", "bare", "--mode", mode, "--rate", str(rate),
                        "--duration", str(duration), "--out", out], check=True)
    finally:
        busy.kill()
        busy.wait()
    return summarize(out)


def loop_row(rate: float, duration: float, ckpt: Path, tmp: Path, each_chunk=None) -> dict:
    """The daemon loop's row; ``each_chunk(tick)`` (optional) runs after every chunk fed, with the
    loop's tick count then (bench_speech toggles its speech load there). The per-tick arrays are in
    the returned ``npz``."""
    from policystack.envs.robot import HOME_QPOS
    from policystack.robot.config import load_robot_config
    from policystack.robot.loop import MAX_CHUNK
    from policystack.robot.shm import Block, command_fields, control_fields, state_fields

    cfg = load_robot_config("sim", {"rate_hz": rate})
    d = cfg.to_dict()
    d["driver_options"] = {"task": "Reach"}
    (tmp / "robot.json").write_text(json.dumps(d))
    prefix = str(tmp / f"blocks-{rate:g}")
    nq = 128  # larger than any suite scene's sim-driver state (2 x qpos; Stack: 2 x 36)
    state = Block.create(prefix + ".state", state_fields(8, nq))
    cmd = Block.create(prefix + ".command", command_fields(8, MAX_CHUNK))
    Block.create(prefix + ".control", control_fields(nq))
    out = str(tmp / f"loop-{rate:g}.npz")
    busy = start_busy(ckpt)
    loop = subprocess.Popen([sys.executable, "-m", "policystack.robot.loop", "--config", str(tmp / "robot.json"),
                             "--blocks", prefix, "--duration", str(duration), "--stats", out])
    try:
        home = np.append(HOME_QPOS, -1.0)
        k = 0
        while loop.poll() is None:  # a new 16-step chunk every 0.1 s: slow sinusoids around home
            t = time.monotonic()
            steps = np.arange(16)[:, None] * 0.1 + t
            acts = home + 0.15 * np.sin(steps * np.array([1.0, 0.7, 1.3, 0.9, 1.1, 0.8, 1.2, 3.0]))
            acts[:, 7] = np.sign(acts[:, 7] - home[7])
            cmd.begin()
            cmd.f["t_obs"][0], cmd.f["dt"][0], cmd.f["n"][0] = t, 0.1, 16
            cmd.f["actions"][:16] = acts
            cmd.f["gen"][0] += 1
            cmd.end()
            k += 1
            if each_chunk is not None:
                each_chunk(int(state.f["tick"][0]))
            time.sleep(0.1)
    finally:
        busy.kill()
        busy.wait()
        loop.wait()
    return {**summarize(out), "npz": out}


def latency_row(ckpt: Path) -> dict:
    from policystack.robot.config import load_robot_config
    from policystack.robot.supervisor import DaemonConfig, Supervisor

    cfg = DaemonConfig(robot=load_robot_config("sim"), token=TOKEN.encode(), checkpoint=str(ckpt), task="Reach",
                       episodes=3, max_steps=40, port=0, cameras=("front",), image_size=96,
                       replan_every=1, log=lambda s: None)
    sup = Supervisor(cfg)
    sup.run()
    lat = np.array(sup.latencies) * 1e3
    return {"n": int(lat.size), "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max()), "tick_ms": 1e3 / cfg.robot.rate_hz}


def table(rows: list[tuple[str, dict]], lat: dict | None, duration: float, load: tuple[float, float]) -> str:
    cpu = platform.processor() or platform.machine()
    refused = sorted({r for _, d in rows for r in d["rt_refused"]})
    lines = [f"Control-loop timing, {duration:g} s per row beside a CPU-bound BC inference process "
             f"(torch on all {os.cpu_count()} cores); {cpu}, Python {platform.python_version()}, "
             f"SCHED_FIFO + pinning {'refused: ' + '; '.join(refused) if refused else 'granted'}. "
             "Period error = wake-up lateness after each deadline; miss = body ended after the next deadline. "
             f"Rows run one after another; 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end "
             "(other work on the machine shows up in every row's max, the bare floor's included).",
             "", "| loop | rate | period error p50 (us) | p99 (us) | max (us) | missed deadlines | body p99 (us) |",
             "|---|---|---|---|---|---|---|"]
    for name, d in rows:
        body = f"{d['body_p99']:.0f}" if d["body_p99"] is not None else "-"
        lines.append(f"| {name} | {d['rate']:g} Hz | {d['p50']:.1f} | {d['p99']:.1f} | {d['max']:.0f} | "
                     f"{d['misses']} / {d['ticks']} | {body} |")
    if lat:
        lines += ["", f"Observation-to-action latency through the daemon (BC, one 96x96 camera, sim at 500 Hz, "
                  f"{lat['n']} chunks): observation taken -> chunk in the loop's command block "
                  f"p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms; the loop "
                  f"takes it up at its next tick (<= {lat['tick_ms']:g} ms)."]
    lines += ["", "Run: `python benchmarks/bench_daemon.py --duration 60`."]
    return "\n".join(lines)



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds per row")
    p.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--child", choices=["busy", "bare"], help=argparse.SUPPRESS)
    p.add_argument("--ckpt", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child == "busy":
        return child_busy(a.ckpt)
    if a.child == "bare":
        return child_bare(a.mode, a.rate, a.duration, a.out)
    os.environ.setdefault("MUJOCO_GL", "egl")
    with tempfile.TemporaryDirectory(prefix="bench-daemon-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as td:
        tmp = Path(td)
        load0 = os.getloadavg()[0]
        ckpt = make_checkpoint(tmp / "ckpt")
        rows = []
        for mode, name in (("plain", "bare, time.sleep"), ("lerobot", "bare, LeRobot precise_sleep"),
                           ("hybrid", "bare, hybrid sleep/spin (ours)")):
            d = bare_row(mode, 500.0, a.duration, ckpt, tmp)
            rows.append((name, {**d, "rate": 500.0}))
            print(name, json.dumps(d), flush=True)
        d = bare_row("hybrid", 1000.0, a.duration, ckpt, tmp)
        rows.append(("bare, hybrid sleep/spin (ours)", {**d, "rate": 1000.0}))
        print("bare hybrid 1k", json.dumps(d), flush=True)
        for rate in (500.0, 1000.0):
            d = loop_row(rate, a.duration, ckpt, tmp)
            rows.append(("daemon loop (sim driver, interpolation, safety)", {**d, "rate": rate}))
            print("loop", rate, json.dumps(d), flush=True)
        lat = None
        if not a.no_latency:
            os.environ["POLICYSTACK_DAEMON_TOKEN"] = TOKEN
            lat = latency_row(ckpt)
            print("latency", json.dumps(lat), flush=True)
    out = table(rows, lat, a.duration, (load0, os.getloadavg()[0]))
    print(out)
    if not a.no_write:
        write_section("bench_daemon", out)


if __name__ == "__main__":
    main()
