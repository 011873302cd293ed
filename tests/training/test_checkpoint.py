"""The pieces under the resume guarantee: the step-addressed data order, RNG and optimiser round
trips, pruning, and metrics truncation."""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from policystack.training import checkpoint
from policystack.training.sampler import StepBatchSampler
from policystack.training.tracking import truncate_metrics


def test_sampler_resumes_mid_epoch_and_splits_ranks():
    full = list(StepBatchSampler(50, 4, seed=3, start_step=0, end_step=30))
    assert len(full) == 30 and all(len(b) == 4 for b in full)
    assert list(StepBatchSampler(50, 4, seed=3, start_step=17, end_step=30)) == full[17:]
    per_epoch = 50 // 4
    first_epoch = [i for b in full[:per_epoch] for i in b]
    assert len(set(first_epoch)) == len(first_epoch)  # a permutation: no frame twice in an epoch
    assert full[:per_epoch] != full[per_epoch:2 * per_epoch]  # epochs are reshuffled
    # 2 ranks x batch 2 read, step by step, exactly the frames of 1 process x batch 4
    ranks = [list(StepBatchSampler(50, 2, seed=3, start_step=0, end_step=12, rank=r, world_size=2)) for r in (0, 1)]
    for step in range(12):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(full[step])
    assert StepBatchSampler(50, 4, 3, 0, 1).batch_at(5) == full[5]


def test_rng_round_trip_through_files():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(3), np.random.rand(), random.random()  # move off the seeded start
    tensors, meta = checkpoint._rng_to_files([checkpoint.capture_rng()])
    expected = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    meta = json.loads(json.dumps(meta))  # as stored in training_state.json
    checkpoint.restore_rng(checkpoint._rng_from_files(tensors, meta, rank=0))
    again = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_optimizer_round_trip_through_files():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = checkpoint._optimizer_to_files(opt.state_dict())
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    opt2.load_state_dict(checkpoint._optimizer_from_files(tensors, json.loads(json.dumps(meta))))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for k in a["state"][pid]:
            assert torch.equal(a["state"][pid][k], b["state"][pid][k])


def test_prune_keeps_latest_and_clean_partial(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        (ckpts / f"{step:06d}").mkdir(parents=True)
        (ckpts / f"{step:06d}" / checkpoint.STATE_JSON).write_text("{}")
    checkpoint._point_latest(ckpts, "000002")  # e.g. latest still names an older one
    (ckpts / ".tmp-000005-123").mkdir()
    assert [p.name for p in checkpoint.prune(tmp_path, keep_last=1)] == ["000001", "000003"]
    assert [p.name for p in checkpoint.step_dirs(tmp_path)] == ["000002", "000004"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "000002"
    assert [p.name for p in checkpoint.clean_partial(tmp_path)] == [".tmp-000005-123"]


def test_truncate_metrics_drops_later_and_torn_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "loss": 1}\n{"step": 4, "loss": 0.5}\n{"step": 6, "lo')
    assert truncate_metrics(path, 4) == 1
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 4]
