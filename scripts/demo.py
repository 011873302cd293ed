"""The main job of the README (`make demo`): generate demos in sim, train a small policy, evaluate it.

    1. policystack collect  env=<task> episodes=N out=outputs/demo/<task>/data   (scripted expert)
    2. policystack train    policy=bc dataset.path=... out=outputs/demo/<task>/run
    3. policystack eval     checkpoint=outputs/demo/<task>/run env=<task>
    4. prints the success rate with its Wilson 95% interval and where the report and videos are.

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
    ap.add_argument("--episodes", type=int, default=200, help="expert demonstrations to collect")
    ap.add_argument("--steps", type=int, default=1500, help="training steps")
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "demo")
    a = ap.parse_args()

    t0 = time.monotonic()
    base = a.out / a.task.lower()
    data, run_dir, eval_dir = base / "data", base / "run", base / "eval"

    if (data / "meta" / "info.json").is_file():
        print(f"[demo] reusing dataset {data}")
        run(["dataset", "validate", str(data), "--fix"])
    else:
        run(["collect", f"env={a.task}", f"episodes={a.episodes}", f"out={data}", "workers=2",
             "cameras=front", "image_size=96"])
    run(["dataset", "info", str(data)])

    train = ["train", "policy=bc", f"dataset.path={data}", f"steps={a.steps}", "batch_size=64",
             "optim.lr=1e-3", "optim.warmup_steps=100", f"out={run_dir}"]
    done = finished_steps(run_dir)
    if done >= a.steps:
        print(f"[demo] reusing trained policy {run_dir} ({done} steps)")
    else:
        resumable = (run_dir / "checkpoints" / "latest").exists()
        run(["train", f"resume={run_dir}"] if resumable else train)

    run(["eval", f"checkpoint={run_dir}", f"env={a.task}", f"episodes={a.eval_episodes}", "n_envs=2",
         f"out={eval_dir}", "overwrite=true"])

    info = json.loads((eval_dir / "eval_info.json").read_text())
    o = info["overall"]
    videos = [e["video"] for t in info["per_task"] for e in t["episodes"] if e.get("video")]
    print(f"\n[demo] finished in {(time.monotonic() - t0) / 60:.1f} min")
    print(f"[demo] {a.task}: success {o['success_rate']:.0%} (Wilson 95% [{o['ci_low']:.0%}, {o['ci_high']:.0%}], "
          f"{o['successes']}/{o['episodes']} episodes)")
    print(f"[demo] report: {eval_dir / 'eval_info.json'}")
    print(f"[demo] plot:   {eval_dir / 'eval.png'}")
    for v in videos:
        print(f"[demo] video:  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
