"""Train steps/s of bc and of the LeRobot ACT / Diffusion adapters at one batch size, in one run.

One training step = ``compute_loss`` (forward) + backward + AdamW step, on batches already in memory
(data loading is measured by bench_loader.py). Every policy trains from its preset
(``policystack/configs/policy/<name>.yaml``) on windows cut from the same generated episodes: two
96x96 cameras (uint8), a 14-dim state and a 7-dim action, each policy with its own observation and
action offsets (bc: obs [0], action [0..7]; act: obs [0], action [0..19]; diffusion: obs [-1, 0],
action [-1..14]).

References for the adapters' overhead: LeRobot's own ``ACTPolicy`` and ``DiffusionPolicy``, built
from the same LeRobot configs the adapters build, trained directly on batches already normalised
and scaled to float [0, 1] (what LeRobot's processor pipeline hands them), so the adapter rows
include the work the reference rows skip: uint8 -> float conversion and normalisation.

The rows take turns, one step each per round (so all see the same load when other jobs share the
machine): ``--warmup`` untimed rounds, then ``--steps`` timed ones; the table gives each row's
fastest and median step times (the fastest is the least disturbed by other jobs); steps/s from
the fastest. The table goes to docs/benchmarks.md
between ``<!-- BEGIN bench_train -->`` and ``<!-- END bench_train -->``.

    .venv/bin/python benchmarks/bench_train.py                 # about 2 minutes on 2 idle CPU cores
    .venv/bin/python benchmarks/bench_train.py --steps 2 --warmup 1 --batch-size 4 --no-write
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from policystack.policies.base import Policy  # noqa: E402
from policystack.training.config import load_preset  # noqa: E402
from policystack.types import Feature  # noqa: E402

CAMERAS = ("observation.images.front", "observation.images.wrist")
STATE_DIM, ACTION_DIM = 14, 7
REFERENCE = {"act": "ACTPolicy", "diffusion": "DiffusionPolicy"}  # LeRobot's class per adapter


def make_episodes(n_episodes: int, frames: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """[E, F, ...] arrays of smooth random episodes: state, action, and two moving-gradient cameras."""
    rng = np.random.default_rng(seed)
    walk = lambda d: np.cumsum(rng.normal(0, 0.05, (n_episodes, frames, d)), 1).astype(np.float32)  # noqa: E731
    yy, xx = np.mgrid[:size, :size]
    t = np.arange(frames)[None, :, None, None]
    phase = rng.uniform(0, 255, (n_episodes, 1, 1, 1))
    eps = {"observation.state": walk(STATE_DIM), "action": walk(ACTION_DIM)}
    for c, key in enumerate(CAMERAS):
        chans = [(xx * (2 + c) + 3 * t + phase) % 256, (yy * 2 + 5 * t + phase) % 256, (xx + yy + 7 * t + phase) % 256]
        eps[key] = np.stack(chans, 2).astype(np.uint8)  # [E, F, 3, H, W]
    return eps


def features_and_stats(eps: dict[str, np.ndarray]):
    features = {"observation.state": Feature("float32", (STATE_DIM,)), "action": Feature("float32", (ACTION_DIM,))}
    stats = {}
    for key in ("observation.state", "action"):
        x = eps[key].reshape(-1, eps[key].shape[-1]).astype(np.float64)
        stats[key] = {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0),
                      "q01": np.quantile(x, 0.01, 0), "q99": np.quantile(x, 0.99, 0)}
    for key in CAMERAS:
        size = eps[key].shape[-1]
        features[key] = Feature("video", (size, size, 3))
        px = eps[key].transpose(2, 0, 1, 3, 4).reshape(3, -1) / 255.0
        stats[key] = {"mean": px.mean(1).reshape(3, 1, 1), "std": px.std(1).reshape(3, 1, 1),
                      "min": px.min(1).reshape(3, 1, 1), "max": px.max(1).reshape(3, 1, 1)}
    return features, stats


def make_batch(eps: dict[str, np.ndarray], obs_offsets: list[int], action_offsets: list[int], batch_size: int,
               seed: int = 0) -> dict:
    """A batch of windows (the loader's layout) at random (episode, frame), offsets clamped to the
    episode with ``<key>_is_pad`` set where they were."""
    rng = np.random.default_rng(seed)
    n_eps, frames = eps["action"].shape[:2]
    e = rng.integers(0, n_eps, batch_size)
    f = rng.integers(0, frames, batch_size)
    batch: dict = {"task": ["benchmark task"] * batch_size}
    for key in ("observation.state", *CAMERAS, "action"):
        offsets = np.asarray(action_offsets if key == "action" else obs_offsets)
        idx = f[:, None] + offsets[None]
        batch[key] = torch.from_numpy(np.ascontiguousarray(eps[key][e[:, None], np.clip(idx, 0, frames - 1)]))
        if key == "action":
            batch["action_is_pad"] = torch.from_numpy((idx < 0) | (idx >= frames))
    return batch


def time_round_robin(steps: dict[str, object], warmup: int, n: int) -> dict[str, list[float]]:
    """Step times per row, the rows taking turns (one step each per round) so that every row sees
    the same load when other jobs share the machine."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(n):
        for label, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - t0)
        print(f"round {i + 1}/{n}: " + ", ".join(f"{k.split()[0]} {v[-1] * 1e3:.0f} ms" for k, v in times.items()),
              file=sys.stderr)
    return times


def train_step(module: torch.nn.Module, loss_fn, lr: float):
    """One timed training step of ``module``: ``loss_fn()`` (forward), backward, AdamW."""
    opt = torch.optim.AdamW(module.parameters(), lr=lr)

    def step():
        loss, _ = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def lerobot_direct(adapter: Policy, batch: dict, lr: float, stack_images: bool):
    """LeRobot's own policy class, same LeRobot config as the adapter's, on the batch its processor
    would give (normalised; images float [0, 1] then mean/std), preprocessed once, outside the timing."""
    device = next(adapter.parameters()).device
    lerobot_policy = type(adapter.lerobot)(adapter.config.to_lerobot(adapter.features)).to(device).train()
    with torch.no_grad():
        inputs = adapter.lerobot_inputs(batch)
    if not stack_images:  # ACT reads one observation step: drop the time axis
        inputs = {k: v[:, -1] if k.startswith("observation.") else v for k, v in inputs.items()}
    return train_step(lerobot_policy, partial(lerobot_policy.forward, inputs), lr), lerobot_policy


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed rounds (one step of every row each)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads; 1 (default) keeps timings stable when other jobs share the cores "
                         "(two threads then wait on each other); 0 = torch's default")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--no-write", action="store_true", help="print the table, leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    eps = make_episodes(n_episodes=8, frames=120, size=args.image_size)
    features, stats = features_and_stats(eps)
    load_before = os.getloadavg()[0]

    steps, params = {}, {}
    for name in ("bc", "act", "diffusion"):
        torch.manual_seed(0)
        klass, cfg, _ = load_preset(name)
        batch = make_batch(eps, cfg.observation_delta_indices, cfg.action_delta_indices, args.batch_size)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        policy = klass(cfg, features, stats).to(device).train()
        label = f"`{name}` (policystack)"
        steps[label], params[label] = train_step(policy, partial(policy.compute_loss, batch), args.lr), n_params(policy)
        if name in ("act", "diffusion"):
            torch.manual_seed(0)
            step, ref = lerobot_direct(policy, batch, args.lr, stack_images=name == "diffusion")
            label = f"LeRobot `{REFERENCE[name]}` direct (reference for `{name}`)"
            steps[label], params[label] = step, n_params(ref)
    times = time_round_robin(steps, args.warmup, args.steps)
    rows = [(label, params[label], times[label]) for label in steps]
    table = render(args, rows, load_before, os.getloadavg()[0])
    print(table)
    if not args.no_write:
        print(f"wrote {write_section('bench_train', table)}", file=sys.stderr)
    return 0


def render(args, rows, load_before: float, load_after: float) -> str:
    best = {label: min(times) for label, _, times in rows}
    bc_best = best[rows[0][0]]
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
               f"{torch.get_num_threads()} torch threads" if args.device == "cpu"
               else f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    lines = [
        "## Train steps/s: bc and the LeRobot adapters (`benchmarks/bench_train.py`)",
        "",
        f"One step = forward (`compute_loss`) + backward + AdamW, batch {args.batch_size}, two "
        f"{args.image_size}x{args.image_size} cameras (uint8) + 14-dim state, 7-dim action, batches already in "
        f"memory (loading excluded). Each policy at its preset (`policystack/configs/policy/<name>.yaml`) with "
        f"its own windows over the same generated episodes. Rows take turns step by step: {args.warmup} warm-up "
        f"+ {args.steps} timed rounds. Device: {args.device} ({machine}); 1-minute load average "
        f"{load_before:.1f} before, {load_after:.1f} after. Other jobs may share the machine and slow single "
        f"steps at random: steps/s, samples/s and the ratios use each row's fastest step (the least "
        f"disturbed); the median shows the spread. Compare rows of one run only.",
        "",
        "| policy | trainable params | ms/step (fastest) | ms/step (median) | steps/s | samples/s | vs bc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, params, times in rows:
        b = best[label]
        lines.append(f"| {label} | {params / 1e6:.2f}M | {b * 1e3:,.0f} | {statistics.median(times) * 1e3:,.0f} | "
                     f"{1 / b:.2f} | {args.batch_size / b:,.1f} | {bc_best / b:.2f}x |")
    notes = []
    for name, ref in REFERENCE.items():
        ratio = best[f"`{name}` (policystack)"] / best[f"LeRobot `{ref}` direct (reference for `{name}`)"]
        notes.append(f"`{name}` adapter / LeRobot `{ref}` direct, fastest step time: {ratio:.2f}x")
    lines += ["", "; ".join(notes) + ". The adapters run LeRobot's own model code; their extra work per "
              "step is the uint8 -> float conversion and normalisation that LeRobot's processor does "
              "outside the model (the reference rows get batches normalised beforehand)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
