"""RT-1 ``select_action`` latency on CPU (tiny and paper presets), with LeRobot's ACT in the same run.

Inputs are what the tabletop suite gives per step (``policystack.envs.make("PickPlace",
cameras=("front", "wrist"), image_size=96)``): uint8 [1, 3, 96, 96] per camera, a 15-dim state,
7-dim actions, one instruction. Each timed call gets a new random frame. RT-1 predicts one action per
call (horizon 1, as in the paper): every call encodes the new frame through the FiLM-EfficientNet and
runs the transformer over the 6-frame history. ACT (``lerobot.policies.act``, its default config:
ResNet-18, chunk 100, n_action_steps 100) runs its model once per 100 calls and pops queued actions
in between, so its ``select_action`` is reported per call and its model call (``predict_action_chunk``)
separately.

    .venv/bin/python benchmarks/bench_rt1.py [--calls 60] [--threads 1] [--no-write]

The table goes to docs/benchmarks.md between ``<!-- BEGIN bench_rt1 -->`` and ``<!-- END bench_rt1 -->``.
"""

from __future__ import annotations

import argparse
import dataclasses
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

from policystack.policies.rt1 import RT1Policy  # noqa: E402
from policystack.training.config import load_preset  # noqa: E402
from policystack.types import Feature  # noqa: E402

D, A, SIZE = 15, 7, 96
CAMS = ("front", "wrist")
TASK = "pick up the red block and put it in the bowl"


def rt1_policy(preset: str, cams: tuple[str, ...]) -> RT1Policy:
    _, cfg, _ = load_preset(preset)
    cfg = dataclasses.replace(cfg, n_obs_steps=6)  # RT-1's history in every row (the tiny preset trains with 1)
    features = {"action": Feature("float32", (A,)), "observation.state": Feature("float32", (D,))}
    features.update({f"observation.images.{c}": Feature("video", (SIZE, SIZE, 3)) for c in cams})
    stats = {"observation.state": {"mean": np.zeros(D), "std": np.ones(D)},
             "action": {"min": -np.ones(A), "max": np.ones(A)}}
    return RT1Policy(cfg, features, stats).eval()


def act_policy(cams: tuple[str, ...]):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (D,))}
    inputs.update({f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, SIZE, SIZE)) for c in cams})
    cfg = ACTConfig(input_features=inputs, output_features={"action": PolicyFeature(FeatureType.ACTION, (A,))},
                    pretrained_backbone_weights=None, device="cpu")  # no hub download; same architecture
    return ACTPolicy(cfg).eval()


def observation(cams: tuple[str, ...], g: torch.Generator, as_float: bool) -> dict:
    obs = {"observation.state": torch.randn(1, D, generator=g), "task": [TASK]}
    for c in cams:
        img = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
        obs[f"observation.images.{c}"] = img.float() / 255 if as_float else img
    return obs


@torch.no_grad()
def time_calls(fn, cams, calls: int, warmup: int, as_float: bool = False) -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    for _ in range(warmup):
        fn(observation(cams, g, as_float))
    out = []
    for _ in range(calls):
        obs = observation(cams, g, as_float)
        t0 = time.perf_counter()
        fn(obs)
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1e3


def row(name: str, params: int, ms: np.ndarray) -> str:
    return (f"| {name} | {params / 1e6:.2f}M | {len(ms)} | {np.percentile(ms, 50):.1f} | "
            f"{np.percentile(ms, 99):.1f} | {ms.mean():.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=60, help="timed select_action calls per RT-1 row")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine two threads contend with other jobs)")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    rows = []

    tiny = rt1_policy("rt1", CAMS)
    rows.append(row("RT-1 tiny (`rt1.yaml`), 2 cameras + state, `select_action`", n_params(tiny),
                    time_calls(tiny.select_action, CAMS, args.calls, warmup=8)))
    paper = rt1_policy("rt1_paper", CAMS[:1])
    rows.append(row("RT-1 paper (`rt1_paper.yaml`), 1 camera at 288 px, `select_action`", n_params(paper),
                    time_calls(paper.select_action, CAMS[:1], max(args.calls // 2, 10), warmup=7)))
    paper2 = rt1_policy("rt1_paper", CAMS)
    rows.append(row("RT-1 paper size, 2 cameras at 288 px, `select_action`", n_params(paper2),
                    time_calls(paper2.select_action, CAMS, max(args.calls // 3, 10), warmup=7)))
    del paper, paper2

    act = act_policy(CAMS)

    def act_select(obs):
        return act.select_action({k: v for k, v in obs.items() if k != "task"})

    def act_chunk(obs):
        return act.predict_action_chunk({k: v for k, v in obs.items() if k != "task"})

    act.reset()
    rows.append(row("LeRobot ACT (default config), 2 cameras + state, `select_action` (1 model call / 100)",
                    n_params(act), time_calls(act_select, CAMS, 200, warmup=0, as_float=True)))
    rows.append(row("LeRobot ACT (default config), 2 cameras + state, `predict_action_chunk`",
                    n_params(act), time_calls(act_chunk, CAMS, max(args.calls // 2, 10), warmup=2, as_float=True)))
    load_after = os.getloadavg()[0]

    table = "\n".join([
        "## RT-1 `select_action` latency on CPU (`benchmarks/bench_rt1.py`)",
        "",
        f"Batch 1, 96x96 uint8 frames per camera (the tabletop suite's size), 15-dim state, 7-dim action, "
        f"one random new frame per call after warm-up (RT-1's 6-frame history is full). Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU, torch {torch.__version__}, "
        f"{args.threads} torch threads; 1-minute load average {load_before:.1f} before and {load_after:.1f} "
        "after (other jobs shared the cores: compare rows of one run only).",
        "",
        "| policy / call | trainable params | calls | p50 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "RT-1 predicts one action per call (horizon 1, as in the paper), so every `select_action` runs the "
        "model: the new frame goes through the FiLM-EfficientNet (earlier frames' tokens are kept, as in "
        "RT-1's network state) and the transformer runs over all 6 frames. ACT predicts a 100-step chunk and "
        "then pops queued actions, so its per-call p50 is a queue pop and its model call is the "
        "`predict_action_chunk` row. Parameter counts exclude RT-1's frozen sentence encoder (MiniLM, 22.7M, "
        "embeddings cached per instruction).",
    ])
    print(table)
    if not args.no_write:
        write_section("bench_rt1", table)
    return 0


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


if __name__ == "__main__":
    sys.exit(main())
