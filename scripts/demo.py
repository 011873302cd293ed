"""The main job of the README (`make demo`): generate demos in sim, train a small policy, evaluate it.

    1. policystack collect  env=<task> episodes=N out=outputs/demo/<task>-<inputs>/data   (scripted expert)
    2. policystack train    policy=bc dataset.path=... out=outputs/demo/<task>-<inputs>/run
    3. policystack eval     checkpoint=outputs/demo/<task>-<inputs>/run env=<task>
    4. prints the success rate with its Wilson 95% interval and where the report and videos are.

``--inputs state`` (default, ~2 minutes): the policy observes the arm's state and the pose of the
object the instruction names (``observation.environment_state``, privileged sim state, see
docs/envs.md). ``--inputs images``: the front camera and the instruction instead -- what a real
robot has; it does not succeed yet with this budget (docs/results.md).

Idempotent: a dataset that validates is reused, a finished training run is reused and an
interrupted one resumes from its last checkpoint; evaluation is always run again.
Every step is an ordinary `policystack` command, printed before it runs, so it can be copied.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "policystack.cli", *args]
    print(f"\n$ policystack {shlex.join(args)}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def finished_steps(run_dir: Path) -> int:
    """Last step recorded in the run's metrics file (0 if none)."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="Reach", help="tabletop task (default: Reach)")
    ap.add_argument("--inputs", choices=("state", "images"), default="state",
                    help="state: arm state + named object's pose (default); images: front camera + instruction")
    ap.add_argument("--episodes", type=int, default=200, help="expert demonstrations to collect")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: 3000 state, 1500 images)")
    ap.add_argument("--eval-episodes", type=int, default=None, help="default: 50 state, 20 images")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "demo")
    a = ap.parse_args()

    t0 = time.monotonic()
    state = a.inputs == "state"
    steps = a.steps or (3000 if state else 1500)
    eval_episodes = a.eval_episodes or (50 if state else 20)
    base = a.out / f"{a.task.lower()}-{a.inputs}"
    data, run_dir, eval_dir = base / "data", base / "run", base / "eval"

    if (data / "meta" / "info.json").is_file():
        print(f"[demo] reusing dataset {data}")
        run(["dataset", "validate", str(data), "--fix"])
    else:
        inputs = ["cameras=none", "env_state=true"] if state else ["cameras=front", "image_size=96"]
        run(["collect", f"env={a.task}", f"episodes={a.episodes}", f"out={data}", "workers=2", *inputs])
    run(["dataset", "info", str(data)])

    train = ["train", "policy=bc", f"dataset.path={data}", f"steps={steps}", "batch_size=64", f"out={run_dir}"]
    # state: the pose of the named object already says which one is meant -> no instruction encoder
    train += ["policy.text_encoder=none"] if state else ["optim.lr=1e-3", "optim.warmup_steps=100"]
    done = finished_steps(run_dir)
    if done >= steps:
        print(f"[demo] reusing trained policy {run_dir} ({done} steps)")
    else:
        resumable = (run_dir / "checkpoints" / "latest").exists()
        run(["train", f"resume={run_dir}"] if resumable else train)

    run(["eval", f"checkpoint={run_dir}", f"env={a.task}", f"episodes={eval_episodes}", "n_envs=2",
         f"out={eval_dir}", "overwrite=true"])

    info = json.loads((eval_dir / "eval_info.json").read_text())
    o = info["overall"]
    videos = [e["video"] for t in info["per_task"] for e in t["episodes"] if e.get("video")]
    print(f"\n[demo] finished in {(time.monotonic() - t0) / 60:.1f} min")
    print(f"[demo] {a.task} ({a.inputs}): success {o['success_rate']:.0%} (Wilson 95% [{o['ci_low']:.0%}, {o['ci_high']:.0%}], "
          f"{o['successes']}/{o['episodes']} episodes)")
    print(f"[demo] report: {eval_dir / 'eval_info.json'}")
    print(f"[demo] plot:   {eval_dir / 'eval.png'}")
    for v in videos:
        print(f"[demo] video:  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
