"""Evaluate one multi-embodiment Gato checkpoint on several tasks, each with its own embodiment, with
or without prompts taken from held-out demonstrations (docs/policies/gato.md).

    .venv/bin/python scripts/gato_eval.py CHECKPOINT --task Reach=main:/tmp/gato/reach_prompts \\
        --task metaworld/reach-v3=mw_reach:/tmp/gato/mw_prompts --episodes 30 --seed 5000 \\
        [--no-prompt] [--max-steps N] [--n-envs 1] [--expert] --out /tmp/gato/eval.json

``--task TASK=EMBODIMENT[:PROMPT_DATASET]``: the env task, the policy's embodiment that acts in it
(``GatoPolicy.for_embodiment``: its features choose the env's cameras and sizes as for any checkpoint)
and a dataset of demonstrations collected with other seeds than the training ones: for every
instruction it holds, the last ``prompt_steps`` frames of its last episode become the prompt of that
instruction (``GatoPolicy.set_prompt``). Episodes run through ``policystack.eval.runner.EvalRunner``
(success with a Wilson 95% interval); the JSON written (atomically) holds each task's result and how
many of its episodes had a prompt. ``--expert`` also runs each task's scripted expert on the same seeds and
episode limit and reports the expert-normalised success (Gato's score: the policy's success over the
expert's) and its mean over the tasks.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

from policystack.datasets.loader import WindowedDataset  # noqa: E402
from policystack.datasets.meta import DatasetMeta  # noqa: E402
from policystack.eval.expert import ScriptedExpert  # noqa: E402
from policystack.eval.runner import EvalRunner  # noqa: E402
from policystack.io import atomic_write_json  # noqa: E402
from policystack.policies.base import Policy  # noqa: E402
from policystack.types import TASK  # noqa: E402


def prompts_from(root: str, keys: list[str], steps: int) -> dict[str, dict[str, torch.Tensor]]:
    """Instruction -> the last ``steps`` frames ([T, ...] of ``keys``) of its last episode in ``root``."""
    meta = DatasetMeta.load(root)
    missing = [k for k in keys if k not in meta.features]
    if missing:
        raise ValueError(f"{root}: the prompt dataset lacks {missing} (the embodiment's features)")
    data = WindowedDataset(root, keys=keys, cache_dir=False)  # samples carry their task
    out = {}
    for end in meta.episodes["dataset_to_index"].tolist():
        idx = list(range(max(end - steps, 0), end))
        batch = data.get_batch(idx)
        out[batch[TASK][-1]] = {k: batch[k] for k in keys}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--task", action="append", required=True, help="TASK=EMBODIMENT[:PROMPT_DATASET]")
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=5000)
    ap.add_argument("--max-steps", type=int, default=0, help="episode limit (0: the task's own)")
    ap.add_argument("--n-envs", type=int, default=1, help="envs stepped together (subprocesses)")
    ap.add_argument("--no-prompt", action="store_true")
    ap.add_argument("--expert", action="store_true", help="also run the scripted expert: expert-normalised scores")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    policy = Policy.from_pretrained(args.checkpoint)
    specs = []  # every spec checked before the first episode, so a typo cannot cost a finished evaluation
    for spec in args.task:
        task, sep, rest = spec.partition("=")
        emb, _, prompt_root = rest.partition(":")
        if not sep or not task or not emb:
            ap.error(f"--task {spec!r}: expected TASK=EMBODIMENT[:PROMPT_DATASET]")
        if emb not in policy.embodiments:
            ap.error(f"--task {spec!r}: the checkpoint has no embodiment {emb!r}; it has {sorted(policy.embodiments)} "
                     "(datasets with the same observation and action shapes share one embodiment)")
        specs.append((task, emb, prompt_root))
    results = {}
    for task, emb, prompt_root in specs:
        view = policy.for_embodiment(emb)
        prompted = 0
        if prompt_root and not args.no_prompt:
            keys = [k for k in view.features]
            prompts = prompts_from(prompt_root, keys, policy.config.prompt_steps)
            for instruction, demo in prompts.items():
                view.set_prompt(instruction, demo)
            prompted = len(prompts)
        runner = EvalRunner(task=task, episodes=args.episodes, seed=args.seed, n_videos=0, n_envs=args.n_envs,
                            max_steps=args.max_steps or None)
        r = runner.run(view)
        with_prompt = sum(ep.task in view._prompts for ep in r.episodes) if prompted else 0
        results[task] = {"embodiment": emb, "success_rate": r.success_rate, "ci": [r.ci_low, r.ci_high],
                         "successes": r.successes, "episodes": r.n_episodes, "mean_length": r.mean_length,
                         "prompt_instructions": prompted, "episodes_with_prompt": with_prompt,
                         "eval_s": r.eval_s}
        print(f"{task} ({emb}, prompt {'off' if not prompted else f'{with_prompt}/{r.n_episodes} episodes'}): "
              f"{r.successes}/{r.n_episodes} = {r.success_rate:.0%} [{r.ci_low:.0%}, {r.ci_high:.0%}]",
              file=sys.stderr, flush=True)
        if args.expert:  # the same seeds and limit; the env decides the expert's cameras
            ex = runner.run(ScriptedExpert())
            results[task]["expert_success_rate"] = ex.success_rate
            results[task]["normalised"] = r.success_rate / ex.success_rate if ex.success_rate else None
    summary = {"checkpoint": args.checkpoint, "seed": args.seed, "prompt": not args.no_prompt, "results": results}
    if args.expert:
        scores = [r["normalised"] for r in results.values() if r["normalised"] is not None]
        summary["expert_normalised_mean"] = sum(scores) / len(scores) if scores else None
        print("expert-normalised: " + ", ".join(
            f"{t} {r['success_rate']:.0%} / {r['expert_success_rate']:.0%}" for t, r in results.items())
              + (f"; mean {summary['expert_normalised_mean']:.1%}" if scores else ""), file=sys.stderr)
    atomic_write_json(args.out, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
