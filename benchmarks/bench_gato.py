"""Gato ``select_action`` latency on CPU with and without the KV cache (the peer: the same policy
recomputing the whole sequence for every action token), tokens per timestep and context length.

Two embodiments of one policy: tabletop Panda (front camera, 15-d state, 7-d action) and MetaWorld
Sawyer (corner2 camera, 39-d state, 4-d action), uint8 64x64 frames (a new random frame every step),
without and with a prompt (the last ``prompt_steps`` timesteps of a demonstration). Weights are random
(the speed does not depend on them). Each step is one ``select_action`` call (Gato decodes one action
per call: a prefix pass, then A tokens), timed with ``kv_cache`` on, then off, on the same inputs;
the actions are checked equal.

    .venv/bin/python benchmarks/bench_gato.py [--steps 20] [--big-steps 3] [--threads 1] [--no-write]

The table goes to docs/benchmarks.md between ``<!-- BEGIN bench_gato -->`` and ``<!-- END bench_gato -->``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from policystack.training.config import load_preset  # noqa: E402
from policystack.types import ACTION, TASK, Feature  # noqa: E402

SIZE = 64
PANDA = {"observation.state": Feature("float32", (15,)), "observation.images.front": Feature("video", (SIZE, SIZE, 3)),
         ACTION: Feature("float32", (7,))}
SAWYER = {"observation.state": Feature("float32", (39,)),
          "observation.images.corner2": Feature("video", (SIZE, SIZE, 3)), ACTION: Feature("float32", (4,))}
INSTRUCTION = "reach the red ball"


def build(preset: str):
    klass, cfg, _ = load_preset(preset)
    cfg.image_size = SIZE
    cfg.embodiments = {"sawyer": {k: f.to_json() for k, f in SAWYER.items()}}
    torch.manual_seed(0)
    return klass(cfg, PANDA, None).eval()


def step(feats: dict, g: torch.Generator, T: int | None = None) -> dict:
    """One observation [1, ...] (or, with T, a demonstration [T, ...] with its actions)."""
    n = 1 if T is None else T
    out = {k: (torch.randint(0, 256, (n, *f.chw), generator=g, dtype=torch.uint8) if f.is_visual
               else torch.randn(n, *f.shape, generator=g)) for k, f in feats.items() if k != ACTION or T}
    return out if T else {**out, TASK: [INSTRUCTION]}


def measure(policy, feats: dict, steps: int, prompt: bool) -> dict:
    g = torch.Generator().manual_seed(1)
    policy.set_prompt(INSTRUCTION, step(feats, g, policy.config.prompt_steps) if prompt else None)
    emb, x, _ = policy.prefix(step(feats, g))
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(steps):
        obs = step(feats, g)
        actions = {}
        for cache in (True, False):
            policy.config.kv_cache = cache
            policy.reset()
            t = time.perf_counter()
            actions[cache] = policy.select_action(obs)
            times[cache].append(time.perf_counter() - t)
        assert torch.equal(actions[True], actions[False]), "the KV cache changed the actions"
    policy.config.kv_cache = True
    A = feats[ACTION].shape[0]
    return {"embodiment": emb, "tokens": policy.obs_tokens(emb) + 1 + A, "context": x.shape[1] + A - 1,
            "cache": np.median(times[True]) * 1e3, "nocache": np.median(times[False]) * 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--big-steps", type=int, default=3, help="steps for the paper's 79M size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for preset, steps in (("gato", args.steps), ("gato_paper_79m", args.big_steps)):
        policy = build(preset)
        n = sum(p.numel() for p in policy.parameters())
        for feats in (PANDA, SAWYER):
            for prompt in (False, True):
                r = measure(policy, feats, steps, prompt)
                rows.append(f"| {preset} ({n / 1e6:.1f}M) | {r['embodiment']} | {'yes' if prompt else 'no'} | "
                            f"{r['tokens']} | {r['context']} | {r['cache']:.1f} | {r['nocache']:.1f} | "
                            f"{r['nocache'] / r['cache']:.2f}x |")
                print(rows[-1], flush=True)
    md = (f"## Gato `select_action` latency, KV cache vs recomputing (`benchmarks/bench_gato.py`)\n\n"
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} torch thread(s), "
          f"a shared machine (other jobs running); p50 over {args.steps} steps (tiny) / {args.big_steps} (79M) of "
          "one `select_action` each (one action: a prefix pass, then A tokens decoded). Tokens per timestep: "
          "16 patches (64x64 frame) + state values + `|` + A action tokens. Context: the tokens the last action "
          "token sees (prompt + instruction + the timestep). The same actions come out with and without the "
          "cache (checked every step).\n\n"
          "| preset | embodiment | prompt | tokens / timestep | context | with cache (ms) | without (ms) | "
          "speed-up |\n|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    if not args.no_write:
        print(f"wrote {write_section('bench_gato', md)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
