"""Which inputs does a trained policy use? Its training loss on dataset windows, then again with one
input shuffled across the batch (each sample gets another sample's cameras, state or instruction).

A large rise means the policy reads that input; none means it ignores it. For example, a policy that
fails from cameras but whose loss barely moves when the cameras are shuffled has learnt to act from
the arm's state alone (docs/policies/rt1.md, "Trained and evaluated").

    python scripts/probe_inputs.py runs/rt1 data/PressButton [--samples 256] [--seed 0]

The checkpoint is anything ``policystack eval checkpoint=`` takes (a run, a training checkpoint, a
policy directory); the dataset must have the features the policy was trained on.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from policystack.datasets.loader import WindowedDataset
from policystack.eval.commands import load_policy
from policystack.types import OBS_STATE, TASK, image_keys


def batch_of(dataset: WindowedDataset, indices: np.ndarray) -> dict:
    items = [dataset[int(i)] for i in indices]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != TASK}
    batch[TASK] = [it[TASK] for it in items]
    return batch


def shuffled(batch: dict, keys: list[str], perm: list[int]) -> dict:
    out = dict(batch)
    for k in keys:
        out[k] = [batch[k][i] for i in perm] if k == TASK else batch[k][perm]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("dataset")
    ap.add_argument("--samples", type=int, default=256, help="dataset windows in the batch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.samples < 2:
        ap.error(f"--samples {args.samples}: need at least 2 to shuffle")
    torch.manual_seed(args.seed)
    policy = load_policy(args.checkpoint).eval()
    cams = sorted(image_keys(policy.features))
    deltas = policy.config.delta_indices(policy.features)
    dataset = WindowedDataset(args.dataset, delta_indices=deltas, keys=list(deltas), cache_dir=False)
    rng = np.random.default_rng(args.seed)
    n = min(args.samples, len(dataset))
    batch = batch_of(dataset, rng.choice(len(dataset), n, replace=False))
    perm = [(i + 1) % n for i in range(n)]  # every sample gets its neighbour's input
    groups = {"nothing (the real batch)": []}
    if cams:
        groups["cameras"] = cams
    if OBS_STATE in policy.features:
        groups[OBS_STATE] = [OBS_STATE]
    groups["instruction (task)"] = [TASK]
    print(f"{args.checkpoint} ({policy.name}) on {n} windows of {args.dataset}\n")
    print("| shuffled | loss | rise |\n|---|---:|---:|")
    base = None
    with torch.no_grad():
        for name, ks in groups.items():
            torch.manual_seed(args.seed)  # the same dropout/noise draws in every row
            loss = policy.compute_loss(shuffled(batch, ks, perm))[0].item()
            base = loss if base is None else base
            print(f"| {name} | {loss:.3f} | {loss - base:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
