"""RT-2 ``select_action`` latency on CPU: the tiny and smollm2 presets, one action per call (OpenVLA) and
action chunks, beside RT-1's tiny preset (the peer) in the same run.

Inputs are a tabletop step: front + wrist uint8 96x96 frames (a new random pair every step), a 15-d state,
an instruction; a 7-d action (``ee_delta``). Weights are random (the speed does not depend on them). Every
step calls ``select_action`` as ``policystack eval`` does; a chunked policy runs the model once every
``n_action_steps`` steps and pops its queue in between, so its p50 is a queue pop and its p99 a model call.
The control rate a policy sustains is steps / total time (the mean), also what the daemon's worker needs
per replanning: ``chunk`` column = one ``predict_action_chunk`` call.

    .venv/bin/python benchmarks/bench_rt2.py [--steps 32] [--threads 1] [--skip-smollm2] [--no-write]
    .venv/bin/python benchmarks/bench_rt2.py --daemon-checkpoint DIR [--daemon-preset rt2_smollm2]  # an untrained joint-mode RT-2 for
        # `policystack daemon run robot=sim checkpoint=DIR` (the daemon drives the Panda's joints)

The table goes to docs/benchmarks.md between ``<!-- BEGIN bench_rt2 -->`` and ``<!-- END bench_rt2 -->``.
"""

from __future__ import annotations

import argparse
import copy
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
from policystack.types import Feature  # noqa: E402

A, D, SIZE = 7, 15, 96
CAMS = ("observation.images.front", "observation.images.wrist")
TASK = "reach the red ball"


def features() -> dict:
    f = {"observation.state": Feature("float32", (D,)), "action": Feature("float32", (A,))}
    f.update({k: Feature("video", (SIZE, SIZE, 3)) for k in CAMS})
    return f


def stats() -> dict:
    out = {}
    for k, n in (("observation.state", D), ("action", A)):
        out[k] = {"mean": np.zeros(n), "std": np.ones(n), "min": -np.ones(n), "max": np.ones(n),
                  "q01": -np.ones(n), "q99": np.ones(n)}
    return out


def build(preset: str, feats: dict | None = None, st: dict | None = None, **overrides):
    """An untrained ``preset`` policy (``overrides`` on its config) with its pretrained parts loaded, as
    ``policystack train`` starts one; default features and statistics: ``features()`` / ``stats()``."""
    klass, cfg, _ = load_preset(preset)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cfg.__post_init__()
    torch.manual_seed(0)
    policy = klass(cfg, feats or features(), st or stats())
    policy.load_external_weights()
    return policy.eval()


def obs(g: torch.Generator) -> dict:
    o = {k: torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8, generator=g) for k in CAMS}
    o["observation.state"] = torch.randn(1, D, generator=g)
    o["task"] = [TASK]
    return o


@torch.no_grad()
def measure(policy, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(select_action ms per step, predict_action_chunk ms per call), after a warm-up episode."""
    g = torch.Generator().manual_seed(0)
    policy.reset()
    for _ in range(2 * policy.config.n_action_steps):
        policy.select_action(obs(g))
    policy.reset()
    per_step = []
    for _ in range(steps):
        o = obs(g)
        t0 = time.perf_counter()
        policy.select_action(o)
        per_step.append(time.perf_counter() - t0)
    chunk = []
    for _ in range(max(3, steps // max(policy.config.n_action_steps, 4))):
        o = obs(g)
        t0 = time.perf_counter()
        policy.predict_action_chunk(o)
        chunk.append(time.perf_counter() - t0)
    return np.array(per_step) * 1e3, np.array(chunk) * 1e3


def daemon_checkpoint(directory: str, preset: str = "rt2", **overrides) -> Path:
    """An untrained RT-2 taking what the daemon's sim sends (front camera 96 px, the Panda's 15-d state) and
    writing joint targets (8-d), with statistics around the home posture so its actions stay near it."""
    from policystack.envs.base import JOINT_ACTION_NAMES, STATE_NAMES
    from policystack.envs.robot import HOME_QPOS

    feats = {"observation.state": Feature("float32", (D,), names=list(STATE_NAMES)),
             "action": Feature("float32", (8,), names=list(JOINT_ACTION_NAMES)),
             "observation.images.front": Feature("video", (SIZE, SIZE, 3))}
    home = np.append(HOME_QPOS, -1.0)
    st = {"observation.state": {"mean": np.zeros(D), "std": np.ones(D)},
          "action": {"q01": home - 0.05, "q99": home + 0.05, "min": home - 0.1, "max": home + 0.1}}
    return build(preset, feats, st, **overrides).save_pretrained(directory)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=32, help="timed select_action steps per row")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=8, help="horizon = n_action_steps of the chunked rows")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--daemon-checkpoint", default=None, help="only write an untrained joint-mode checkpoint here")
    ap.add_argument("--daemon-preset", default="rt2", help="the preset of --daemon-checkpoint (rt2, rt2_smollm2)")
    args = ap.parse_args(argv)
    if args.daemon_checkpoint:
        print(daemon_checkpoint(args.daemon_checkpoint, args.daemon_preset, horizon=args.chunk,
                                n_action_steps=args.chunk, terminate_token=True))
        return 0
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    c = args.chunk
    cases = [("rt1 (tiny preset, peer)", "rt1", {}),
             ("rt2 tiny, 1 action per call", "rt2", {}),
             (f"rt2 tiny, chunks of {c}", "rt2", {"horizon": c, "n_action_steps": c}),
             ("rt2 tiny, 1 action + terminate token", "rt2", {"terminate_token": True})]
    if not args.skip_smollm2:
        cases += [("rt2 smollm2, 1 action per call", "rt2_smollm2", {"horizon": 1, "n_action_steps": 1}),
                  ("rt2 smollm2 preset: chunks of 4, 2 executed", "rt2_smollm2", {}),
                  (f"rt2 smollm2, chunks of {c}", "rt2_smollm2", {"horizon": c, "n_action_steps": c}),
                  ("rt2 smollm2 preset, decoded by transformers' generate (peer)", "rt2_smollm2", {"_generate": True}),
                  ("rt2 smollm2 preset, first 8 of 30 layers (text_layers=8)", "rt2_smollm2", {"text_layers": 8})]
    rows = []
    for name, preset, over in cases:
        over = dict(over)
        peer = over.pop("_generate", False)
        policy = build(preset, **over)
        if peer:  # the reference path: model.generate with the AllowedTokens processor over all 49k logits
            policy.vlm.family = copy.copy(policy.vlm.family)
            policy.vlm.family.cached_greedy = False
        steps = args.steps if "smollm2" not in preset else max(c, args.steps // 2)
        per_step, chunk = measure(policy, steps)
        params = sum(p.numel() for p in policy.parameters())
        tokens = policy.config.horizon * getattr(policy, "step_tokens", 0)
        rows.append(f"| {name} | {params / 1e6:.1f}M | {tokens or '-'} | {steps} | {np.percentile(per_step, 50):.1f} | "
                    f"{np.percentile(per_step, 99):.1f} | {per_step.mean():.1f} | {1e3 / per_step.mean():.1f} | "
                    f"{np.percentile(chunk, 50):.0f} |")
        print(rows[-1], flush=True)
    load_after = os.getloadavg()[0]
    table = "\n".join([
        "## RT-2 `select_action` latency on CPU (`benchmarks/bench_rt2.py`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, no GPU, torch {torch.__version__}, {args.threads} torch "
        f"thread(s); 1-minute load average {load_before:.1f} before and {load_after:.1f} after (other jobs shared the "
        "cores: compare rows of one run). Batch 1, front + wrist 96x96 frames, greedy decoding constrained to the "
        "256 action tokens (KV cache, output layer on the 256 action rows; the peer row: transformers' generate with "
        "the same constraint as a logits processor); frozen Lite0 features computed live (no cache at inference).",
        "",
        "| policy | params | tokens per call | steps | select_action p50 ms | p99 ms | mean ms | control rate Hz "
        "| one chunk call p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])
    print(table)
    if not args.no_write:
        write_section("bench_rt2", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
