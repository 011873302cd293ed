"""Success of policies trained on the same expert demos with the same step budget -> docs/results.md.

Per task: ``policystack collect`` the demos (once), then per policy ``policystack train`` with one
shared budget (steps, batch size, learning rate schedule, seed 0), then ``policystack eval`` on the
same held-out evaluation seeds (5000, 5001, ...); the scripted expert is evaluated on those seeds too. Each
cell is the success rate with its Wilson 95% interval. Every stage runs the CLI a user would run,
and is skipped when its output exists (a finished run is reused, a killed run resumes from its
latest checkpoint), so a grid can be built over several sittings or split across machines.

Inputs (``--inputs``):
  state   ``observation.state`` + ``observation.environment_state`` (the poses of the objects the
          instruction names; see docs/envs.md), no camera. Fast on CPU: the policies' own capacity
          to imitate, without perception.
  images  ``observation.state`` + front and wrist cameras (96x96); bc and rt1 also read the
          instruction (ACT and Diffusion have no language input in LeRobot).

    .venv/bin/python benchmarks/bench_success.py --inputs state --tasks Reach,PressButton,OpenDrawer \\
        --policies bc,act,diffusion --work /tmp/success          # ~1 h on 2 CPU cores
    .venv/bin/python benchmarks/bench_success.py --inputs state --tasks Reach --policies bc --steps 200 \\
        --demos 10 --eval-episodes 4 --work /tmp/s --no-write    # smoke run, ~1 min
    .venv/bin/python benchmarks/bench_success.py --inputs images --multitask --policies rt1 \\
        --tasks Reach,PressButton,OpenDrawer,Push,PickPlace,Stack --demos 100   # one RT-1, all tasks

The table goes to docs/results.md between ``<!-- BEGIN success_<inputs> -->`` markers (written by
benchmarks/_report.py), with the run settings beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from policystack.training.config import load_preset  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
INPUTS = {
    "state": {"collect": ["cameras=none", "env_state=true"], "train": ["dataset.cameras=[]"]},
    "images": {"collect": ["cameras=front,wrist"], "train": []},
}
# per policy and inputs: overrides on top of the shared budget and each preset's recipe (its lr; RT-1
# tiny's preset carries its 2 frames and lr 1e-3). With env state the named objects' poses already say
# which object is meant, so bc runs without its instruction encoder there.
POLICY_OVERRIDES = {("bc", "state"): ["policy.text_encoder=none"]}


def overrides(policy: str, inputs: str) -> list[str]:
    return POLICY_OVERRIDES.get((policy, inputs), [])


def train_args(policy: str, text: str) -> list[str]:
    """The --train-args words for ``policy``: plain ``key=value`` words go to every policy,
    ``<policy>:key=value`` only to that one."""
    words = text.split()
    return ([w for w in words if ":" not in w.split("=", 1)[0]]
            + [w.split(":", 1)[1] for w in words if w.split("=", 1)[0].startswith(f"{policy}:")])


def run(cmd: list[str], log: Path) -> None:
    """Run a policystack CLI command, output to ``log``; raise with the log's tail on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    full = [sys.executable, "-m", "policystack.cli", *cmd]
    print("  $ policystack " + " ".join(cmd), flush=True)
    with open(log, "a") as f:
        code = subprocess.call(full, stdout=f, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"`policystack {' '.join(cmd)}` exited with {code}; log {log}:\n{tail}")


def eval_info(path: Path) -> dict | None:
    return json.loads(path.read_text())["overall"] if path.is_file() else None


def task_info(path: Path, task: str) -> dict | None:
    """One task's result from a multi-task eval_info.json, in ``overall``'s keys."""
    if not path.is_file():
        return None
    for r in json.loads(path.read_text())["per_task"]:
        if r["task"] == task:
            eps = r["episodes"]
            return {"success_rate": r["success_rate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                    "successes": sum(bool(e["success"]) for e in eps), "episodes": len(eps)}
    raise KeyError(f"{path}: no per_task entry for {task!r}")


def cell(res: dict | None) -> str:
    if res is None:
        return "not run"
    return (f"{res['success_rate']:.0%} [{res['ci_low']:.0%}, {res['ci_high']:.0%}] "
            f"({res['successes']}/{res['episodes']})")


def train_minutes(run_dir: Path) -> str:
    """Wall time of the last training session of a run (metrics.jsonl ``time_s``), in minutes."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else []
    times = [json.loads(x).get("time_s") for x in lines if x.strip()]
    times = [t for t in times if t is not None]
    return f"{times[-1] / 60:.1f}" if times else "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", choices=sorted(INPUTS), default="state")
    ap.add_argument("--tasks", default="Reach,PressButton,OpenDrawer,Push,PickPlace")
    ap.add_argument("--policies", default="bc,act,diffusion")
    ap.add_argument("--demos", type=int, default=200)
    ap.add_argument("--demo-seed", type=int, default=0, help="first collect seed; the seeds collect may use "
                    "(up to 2 * demos + 10 from it) must not reach the evaluation seeds")
    ap.add_argument("--eval-seed", type=int, default=5000, help="first evaluation seed (held out: past every "
                    "collect seed of up to 2490 demos from --demo-seed 0)")
    ap.add_argument("--noise", type=float, default=0.0, help="collect noise= (DART: the expert's actions are "
                    "perturbed by this fraction, the labels stay clean); 0 = plain expert demos")
    ap.add_argument("--time-limit-min", type=float, default=0.0, help="equal wall-clock budget: every training "
                    "stops after this many minutes (time_limit_min=) or at --steps, whichever comes first")
    ap.add_argument("--section", default=None, help="docs/results.md section to write (default: "
                    "success_<inputs>[_multitask])")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--action-mode", default="ee_delta", choices=("ee_delta", "joint"))
    ap.add_argument("--train-args", default="", help="extra `policystack train` overrides, space-separated "
                    "(e.g. 'policy.n_obs_steps=2'), to every policy; 'rt1:policy.random_shift=0.08' to rt1 "
                    "only; recorded in the table's settings")
    ap.add_argument("--work", type=Path, default=Path("runs/success"), help="datasets and runs go here")
    ap.add_argument("--table-only", action="store_true", help="write the table from the runs that exist")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave docs/results.md alone")
    ap.add_argument("--multitask", action="store_true", help="one dataset of all --tasks (--demos each), one "
                    "policy per family trained on it, evaluated per task")
    args = ap.parse_args(argv)
    if args.multitask and args.inputs == "state":
        ap.error("--multitask needs --inputs images: each task's environment_state names different objects, "
                 "so the tasks cannot share one dataset")
    eval_seeds = range(args.eval_seed, args.eval_seed + args.eval_episodes)
    demo_seeds = range(args.demo_seed, args.demo_seed + 2 * args.demos + 10)
    if demo_seeds.start < eval_seeds.stop and eval_seeds.start < demo_seeds.stop:
        ap.error(f"--demo-seed {args.demo_seed} with --demos {args.demos}: collect may use seeds "
                 f"{demo_seeds.start}-{demo_seeds.stop - 1}, which overlap the evaluation seeds "
                 f"{eval_seeds.start}-{eval_seeds.stop - 1}; pass another --demo-seed or --eval-seed")
    tasks = [t for t in args.tasks.split(",") if t]
    policies = [p for p in args.policies.split(",") if p]
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    spec = INPUTS[args.inputs]
    budget = [f"steps={args.steps}", f"batch_size={args.batch_size}", "seed=0"]
    if args.time_limit_min:
        budget.append(f"time_limit_min={args.time_limit_min}")
    collect_args = [f"action_mode={args.action_mode}", f"noise={args.noise}", *spec["collect"]]
    evals = [f"episodes={args.eval_episodes}", f"seed={args.eval_seed}", "n_envs=2", "videos=0"]

    rows: dict[str, dict[str, dict | None]] = {}
    minutes: dict[tuple[str, str], str] = {}
    for task in tasks:  # per task: its demos (single-task mode) and the expert on the eval seeds
        rows[task] = {}
        expert_out = work / "runs" / f"{task}_expert"
        if not args.table_only:
            print(f"{task}:", flush=True)
            data = work / "data" / task
            if not args.multitask and not (data / "meta" / "info.json").is_file():
                run(["collect", f"env={task}", f"episodes={args.demos}", f"seed={args.demo_seed}", f"out={data}",
                     "workers=2", *collect_args], work / "logs" / f"{task}.log")
            if not (expert_out / "eval_info.json").is_file():
                run(["eval", "checkpoint=expert", f"env={task}", f"out={expert_out}",
                     f"action_mode={args.action_mode}", *evals], work / "logs" / f"{task}.log")
        rows[task]["expert"] = eval_info(expert_out / "eval_info.json")

    # (dataset, tasks it is evaluated on, run name) per training run
    if args.multitask:
        data = work / "data" / "multitask"
        if not args.table_only and not (data / "meta" / "info.json").is_file():
            run(["collect", f"env={','.join(tasks)}", f"episodes={args.demos}", f"seed={args.demo_seed}",
                 f"out={data}", "workers=2", *collect_args], work / "logs" / "multitask.log")
        jobs = [(data, tasks, "multitask")]
    else:
        jobs = [(work / "data" / t, [t], t) for t in tasks]
    for data, on, name in jobs:
        for policy in policies:
            out = work / "runs" / f"{name}_{policy}"
            info = out / "eval" / "_".join(on) / "eval_info.json"
            if not args.table_only and not info.is_file():
                t0 = time.monotonic()
                log = work / "logs" / f"{name}.log"
                if (out / "config.yaml").is_file():  # trained (or killed) earlier: continue it to --steps
                    run(["train", f"resume={out}", f"steps={args.steps}"], log)
                else:
                    run(["train", f"policy={policy}", f"dataset.path={data}", *budget, f"out={out}",
                         *spec["train"], *overrides(policy, args.inputs), *train_args(policy, args.train_args)], log)
                run(["eval", f"checkpoint={out}", f"env={','.join(on)}", *evals], log)
                print(f"  {name} {policy}: {(time.monotonic() - t0) / 60:.1f} min", flush=True)
            for t in on:
                rows[t][policy] = task_info(info, t)
            minutes[name, policy] = train_minutes(out)

    cols = ["expert", *policies]
    lines = [f"| task | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]
    lines += [f"| {t} | " + " | ".join(cell(rows[t][c]) for c in cols) + " |" for t in tasks]
    lines += ["", "Training wall time per run (min; 2 CPU cores shared with the other runs going at the time): "
              + "; ".join(f"{n} " + ", ".join(f"{p} {minutes[n, p]}" for p in policies) for _, _, n in jobs)]
    extra = "; ".join(f"{p}: `{' '.join(overrides(p, args.inputs))}`" for p in policies
                      if overrides(p, args.inputs))
    lrs = ", ".join(f"{p} {load_preset(p)[2].get('optim', {}).get('lr', 'default')}" for p in policies)
    kind = (f"one policy of each family trained on all {len(tasks)} tasks' demos together "
            f"(`collect env={','.join(tasks)}`), evaluated per task" if args.multitask else
            "one policy per task and family")
    clock = "CPU" if "time_limit_clock=cpu" in args.train_args.split() else "wall"
    limit = f" or {args.time_limit_min:g} min of {clock} time, whichever came first," if args.time_limit_min else ""
    settings = (f"Inputs `{args.inputs}`; {args.demos} expert demos per task (`policystack collect`, "
                f"action_mode={args.action_mode}, noise={args.noise:g}); {kind}; every policy trained {args.steps} "
                f"steps{limit} at batch size {args.batch_size}, seed 0, the loop's AdamW at each preset's recipe (lr: {lrs}; its warm-up, "
                f"then cosine); evaluated on {args.eval_episodes} episodes per task, seeds "
                f"{eval_seeds.start}-{eval_seeds.stop - 1}. Per-family overrides: {extra or 'none'}. "
                f"Produced by `benchmarks/bench_success.py --inputs {args.inputs} --tasks {','.join(tasks)} "
                f"--policies {','.join(policies)} --demos {args.demos} --steps {args.steps} "
                f"--batch-size {args.batch_size} --eval-episodes {args.eval_episodes}"
                + (f" --demo-seed {args.demo_seed}" if args.demo_seed else "")
                + (f" --eval-seed {args.eval_seed}" if args.eval_seed != 5000 else "")
                + (f" --noise {args.noise:g}" if args.noise else "")
                + (f" --time-limit-min {args.time_limit_min:g}" if args.time_limit_min else "")
                + (f" --section {args.section}" if args.section else "")
                + (" --multitask" if args.multitask else "")
                + (f" --train-args '{args.train_args}'" if args.train_args else "") + "`.")
    section = args.section or f"success_{args.inputs}" + ("_multitask" if args.multitask else "")
    md = (f"### Inputs: {args.inputs}" + (", multi-task" if args.multitask else "")
          + f"\n\n{settings}\n\n" + "\n".join(lines))
    print(md)
    if not args.no_write:
        print(f"wrote {write_section(section, md, RESULTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
