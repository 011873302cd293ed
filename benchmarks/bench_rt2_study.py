"""RT-2 vs RT-1 on Reach from a camera, and the held-out instruction study: evaluate trained checkpoints and
write docs/results.md's section ``rt2``.

Trainings are separate runs of the shared loop (commands in docs/results.md); this script evaluates their
checkpoints on the same seeds:

- ``templates``: ``policystack eval`` on Reach, seeds 5000.. (held out of every demo set here: a checkpoint
  whose demos used the seeds is refused, ``policystack eval``'s training-scene check), the instructions as demonstrations word them;
  the records are split by the colour the instruction names: colours seen as goals in the demonstrations,
  and the held-out one (the demos were collected with ``exclude=<colour>``: no demo names it).
- ``paraphrases``: the same seeds with ``instructions=paraphrases`` (wordings no demo uses).
- ``--held-out-episodes N``: N more episodes whose goal is always the held-out colour (``target_color=``),
  since among random episodes only ~1 in 6 names it.
- VQA / pointing accuracy on held-out scenes (``eval/vqa.py``) for checkpoints that answer in text, beside
  the training set's majority answer.

    .venv/bin/python benchmarks/bench_rt2_study.py --run "RT-2 tiny=runs/rt2" --run "RT-1=runs/rt1" \
        --episodes 30 --held-out purple --vqa-test data/vqa_heldout --vqa-train data/vqa_reach [--no-write]

``--run LABEL=CHECKPOINT`` (a run directory, a step directory or a policy directory) may repeat; ``--note``
adds a line to the section (training commands, budgets).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from policystack.eval.metrics import summarize  # noqa: E402
from policystack.io import atomic_write_bytes  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"


def rate(successes: list[bool]) -> str:
    if not successes:
        return "-"
    s = summarize(successes, [0] * len(successes), [0.0] * len(successes))
    return f"{s['success_rate']:.0%} [{s['ci_low']:.0%}, {s['ci_high']:.0%}] ({sum(successes)}/{len(successes)})"


def evaluate(policy, task: str, episodes: int, seed: int, instructions: str | None, n_envs: int = 1,
             max_steps: int | None = None, target_color: str | None = None) -> list:
    from policystack.eval.runner import EvalRunner

    kw = {**({"instructions": instructions} if instructions else {}),
          **({"target_color": target_color} if target_color else {})} or None
    return EvalRunner(task=task, episodes=episodes, n_envs=n_envs, seed=seed, env_kwargs=kw, video_dir=None,
                      max_steps=max_steps, progress=False).run(policy).episodes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="LABEL=CHECKPOINT (repeatable)")
    ap.add_argument("--task", default="Reach")
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=5000, help="the first episode seed (scenes no demo used)")
    ap.add_argument("--held-out", default="purple", help="the colour no demonstration names")
    ap.add_argument("--no-paraphrases", action="store_true")
    ap.add_argument("--held-out-episodes", type=int, default=0,
                    help="also this many episodes whose goal is always the held-out colour (target_color=)")
    ap.add_argument("--vqa-test", default=None, help="held-out `policystack vqa` dataset")
    ap.add_argument("--vqa-train", default=None, help="the training `policystack vqa` dataset (majority baseline)")
    ap.add_argument("--vqa-examples", type=int, default=200)
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-envs", type=int, default=1, help="environments stepped in parallel processes (the policy is called per environment)")
    ap.add_argument("--max-steps", type=int, default=None, help="episode limit (default: the task's own)")
    ap.add_argument("--out", default=None, help="also write the raw records as JSON here")
    ap.add_argument("--reuse", action="append", default=[],
                    help="an earlier --out JSON: a label recorded there with the same checkpoint and settings is not "
                         "evaluated again (evaluate runs as they finish, write the table once)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from policystack.eval.commands import training_scenes
    from policystack.policies.base import Policy

    load_before = os.getloadavg()[0]
    rows, vqa_rows, raw = [], [], {}
    reuse = {}
    for path in args.reuse:  # raw records of earlier runs of this script (--out), by label
        reuse.update(json.loads(Path(path).read_text()))
    settings = {"task": args.task, "episodes": args.episodes, "seed": args.seed, "n_envs": args.n_envs,
                "max_steps": args.max_steps, "paraphrases": not args.no_paraphrases, "vqa_test": args.vqa_test,
                "vqa_examples": args.vqa_examples, "held_out_episodes": args.held_out_episodes}
    for spec in args.run:
        label, _, ckpt = spec.partition("=")
        old = reuse.get(label)
        if old is not None and (old.get("checkpoint"), old.get("settings")) == (ckpt, settings):
            eps, para, only = ([SimpleNamespace(**e) for e in old.get(k, [])] for k in ("templates", "paraphrases", "held_out"))
            seconds, report = old["seconds"], old.get("vqa")
        else:
            policy = Policy.from_pretrained(ckpt)
            replayed = training_scenes(policy, [args.task], args.seed, max(args.episodes, args.held_out_episodes))
            if replayed:
                ap.error(f"--run {spec!r}: {replayed[args.task]}")
            t0 = time.perf_counter()
            run = {"n_envs": args.n_envs, "max_steps": args.max_steps}
            eps = evaluate(policy, args.task, args.episodes, args.seed, None, **run)
            para = [] if args.no_paraphrases else evaluate(policy, args.task, args.episodes, args.seed, "paraphrases", **run)
            only = [] if not args.held_out_episodes else evaluate(policy, args.task, args.held_out_episodes, args.seed,
                                                                  None, target_color=args.held_out, **run)
            seconds, report = time.perf_counter() - t0, None
            if args.vqa_test and hasattr(policy, "answer"):
                from policystack.eval.vqa import evaluate_vqa

                report = evaluate_vqa(policy, args.vqa_test, limit=args.vqa_examples)
        seen = [e.success for e in eps if args.held_out not in e.task.split()]
        held = [e.success for e in eps if args.held_out in e.task.split()]
        para_seen = [e.success for e in para if args.held_out not in e.task.split()]
        rows.append(f"| {label} | {rate([e.success for e in eps])} | {rate(seen)} | {rate(held)} | "
                    f"{rate([e.success for e in only]) if only else '-'} | "
                    f"{rate(para_seen) if para else '-'} | {seconds:.0f} |")
        raw[label] = {"checkpoint": ckpt, "settings": settings, "seconds": seconds, "templates": [vars(e) for e in eps],
                      "paraphrases": [vars(e) for e in para], "held_out": [vars(e) for e in only],
                      **({"vqa": report} if report else {})}
        print(rows[-1], flush=True)
        if report:
            vqa_rows.append((label, report))
    lines = [
        "## RT-2 on Reach from a camera, beside RT-1; held-out instructions",
        "",
        *args.note,
        "",
        f"{args.episodes} {args.task} episodes per policy and instruction set, seeds {args.seed}-{args.seed + args.episodes - 1} "
        f"(Wilson 95% intervals), episode limit {args.max_steps or 'the task default'}, {args.n_envs} environment(s) stepped in "
        f"parallel, {args.threads} torch thread(s), 1-minute load average {load_before:.1f} at the start. Columns: all "
        f"episodes; split by the colour the instruction names (seen as a goal in the demos, or `{args.held_out}`, held "
        f"out of them); {args.held_out_episodes or 'no'} episodes of the same seeds whose goal is always {args.held_out} "
        f"(`target_color={args.held_out}`: the goal and a {args.held_out} distractor swap colours, or the goal is "
        "repainted); the same seeds with paraphrased instructions (seen colours only).",
        "",
        f"| policy | all | seen colours | held-out colour ({args.held_out}) | every goal {args.held_out} | "
        "paraphrases, seen colours | eval s |",
        "|---|---|---|---|---|---|---:|",
        *rows,
    ]
    if vqa_rows:
        kinds = sorted({k for _, r in vqa_rows for k in r["kinds"]})
        base = None
        if args.vqa_train:
            from policystack.eval.vqa import majority_baseline

            base = majority_baseline(args.vqa_train, args.vqa_test)
        lines += ["", f"VQA / pointing on held-out scenes ({args.vqa_test}, {args.vqa_examples} examples spread over it; "
                  "exact answers, pointing within 0.05 of the image):", "",
                  "| policy | " + " | ".join(kinds) + " | all | pointing mean error |",
                  "|---|" + "---|" * (len(kinds) + 2)]
        for label, r in [*vqa_rows, *([("majority answer of the training set", base)] if base else [])]:
            cells = [f"{r['kinds'][k]['accuracy']:.0%} ({r['kinds'][k]['n']})" if k in r["kinds"] else "-" for k in kinds]
            err = r["kinds"].get("point", {}).get("mean_distance")
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['overall']:.0%} | "
                         f"{'-' if err is None else f'{err:.3f}'} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        atomic_write_bytes(args.out, json.dumps(raw, indent=1, default=str).encode())
    if not args.no_write:
        write_section("rt2", table, RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
