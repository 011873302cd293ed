"""EMMA plan latency on CPU: tokens per plan, ``predict_action_chunk`` (one plan: generate the reasoning and
the trajectory, parse, follow) p50 / p99, and the replanning rate that allows at the suite's 10 Hz, for the
tiny preset in its three reasoning modes (random weights: the reasoning runs to its token budget, the worst
case), a trained checkpoint (``--checkpoint``: the text it really writes) and SmolLM2-135M as the text model,
beside RT-2's tiny preset (the peer: one constrained 7-token action per call) in the same run. The tiny rows of
reasoning full and none are timed twice: decoded by ``VisionLanguageModel.generate``'s own KV-cache loop (the
default) and by transformers' ``model.generate`` with the same grammar processor (the peer rows: the same text,
token for token; ``--no-peer`` leaves them out).

Inputs are a tabletop step: front + wrist uint8 96x96 frames (new random ones every call), a 15-d state with
the pinch point inside the workspace, an instruction. Batch 1, greedy.

    .venv/bin/python benchmarks/bench_emma.py [--plans 12] [--threads 1] [--checkpoint DIR] [--skip-smollm2]
        [--no-peer] [--no-write]

The table goes to docs/benchmarks.md between ``<!-- BEGIN bench_emma -->`` and ``<!-- END bench_emma -->``.
"""

from __future__ import annotations

import argparse
import copy
import math
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
from bench_rt2 import CAMS, SIZE, build, stats  # noqa: E402

from policystack.types import Feature  # noqa: E402

FPS = 10  # the tabletop suite's policy rate
STATE_NAMES = [f"joint{i}" for i in range(1, 8)] + ["gripper", "ee_x", "ee_y", "ee_z", "ee_qw", "ee_qx", "ee_qy",
                                                    "ee_qz"]
ACTION_NAMES = ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]


def emma_features() -> dict:
    f = {"observation.state": Feature("float32", (15,), names=STATE_NAMES),
         "action": Feature("float32", (7,), names=ACTION_NAMES)}
    f.update({k: Feature("video", (SIZE, SIZE, 3)) for k in CAMS})
    return f


def obs(g: torch.Generator, task: str) -> dict:
    o = {k: torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8, generator=g) for k in CAMS}
    state = torch.zeros(1, 15)
    state[0, 8:11] = torch.tensor([0.45, 0.0, 0.3]) + 0.1 * torch.rand(3, generator=g)
    o["observation.state"], o["task"] = state, [task]
    return o


@torch.no_grad()
def measure(policy, plans: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(ms per predict_action_chunk call, tokens generated per call) after one warm-up call."""
    g = torch.Generator().manual_seed(0)
    policy.reset()
    policy.predict_action_chunk(obs(g, task))
    ms, tokens = [], []
    for _ in range(plans):
        o = obs(g, task)
        t0 = time.perf_counter()
        policy.predict_action_chunk(o)
        ms.append((time.perf_counter() - t0) * 1e3)
        texts = getattr(policy, "last_texts", None)
        tokens.append(len(policy.vlm.tokenizer.encode(texts[0], add_special_tokens=False)) if texts
                      else policy.config.horizon * policy.step_tokens)
    return np.array(ms), np.array(tokens)


def generate_peer(policy):
    """``policy`` decoding through transformers' ``model.generate`` (the grammar as its logits processor)
    instead of ``VisionLanguageModel.generate``'s own KV-cache loop: the reference path."""
    policy.vlm.family = copy.copy(policy.vlm.family)
    policy.vlm.family.cached_greedy = False
    return policy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=12, help="timed plans per row")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", default=None, help="a trained emma checkpoint to time as well")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--no-peer", action="store_true", help="no rows decoded by transformers' model.generate")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    task = "reach the red ball"
    cases = [("rt2 tiny (peer), 1 action per call", lambda: build("rt2"))]
    for r in ("full", "objects", "none"):
        make = lambda r=r: build("emma", emma_features(), stats(), reasoning=r)  # noqa: E731
        cases.append((f"emma tiny, reasoning {r}, random weights", make))
        if r != "objects" and not args.no_peer:
            cases.append((f"emma tiny, reasoning {r}, random weights, decoded by transformers' generate (peer)",
                          lambda make=make: generate_peer(make())))
    if args.checkpoint:
        from policystack.policies.base import Policy

        cases.append((f"emma tiny trained ({Path(args.checkpoint).name})",
                      lambda: Policy.from_pretrained(args.checkpoint).eval()))
    if not args.skip_smollm2:
        cases.append(("emma smollm2 (SmolLM2-135M text), reasoning full, untrained",
                      lambda: build("emma", emma_features(), stats(), vlm_weights="smollm2")))
    rows = []
    for name, make in cases:
        policy = make()
        ms, tokens = measure(policy, args.plans, task)
        p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
        every = math.ceil(p99 / (1e3 / FPS))  # replan every N policy steps and never fall behind 10 Hz
        rows.append(f"| {name} | {tokens.mean():.0f} | {args.plans} | {p50:.0f} | {p99:.0f} | "
                    f"{p50 / tokens.mean():.1f} | {1e3 / p50:.2f} | {every} |")
        print(rows[-1], flush=True)
    load_after = os.getloadavg()[0]
    table = "\n".join([
        "## EMMA plan latency on CPU (`benchmarks/bench_emma.py`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, no GPU, torch {torch.__version__}, {args.threads} torch "
        f"thread(s); 1-minute load average {load_before:.1f} before and {load_after:.1f} after (other jobs shared the "
        "cores: compare rows of one run). Batch 1, front + wrist 96x96 frames, greedy; one plan = one "
        "`predict_action_chunk` (reasoning + grammar-constrained trajectory of 4 waypoints, parse, follow), decoded "
        "by `VisionLanguageModel.generate`'s own KV-cache loop; the peer rows decode the same text through "
        "transformers' `model.generate` with the same grammar processor. "
        "Untrained weights write reasoning up to the 200-token budget (the worst case). 'replan every' = the "
        "fewest policy steps between plans whose p99 fits in them at 10 Hz.",
        "",
        "| policy | tokens per plan | plans | plan p50 ms | p99 ms | ms per token (p50) | plans/s (p50) "
        "| replan every (steps at 10 Hz) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])
    print(table)
    if not args.no_write:
        write_section("bench_emma", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
