"""scripts/probe_inputs.py: a trained policy's loss with each input shuffled across the batch."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import torch

from policystack.datasets.loader import WindowedDataset
from policystack.eval.commands import load_policy
from policystack.training.config import load_config
from policystack.training.loop import train

from .conftest import tiny_overrides

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe_inputs.py"


def load_script():
    spec = importlib.util.spec_from_file_location("probe_inputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probe_prints_the_real_loss_and_the_rise_per_shuffled_input(camera_ds, tmp_path, capsys):
    run = train(load_config(tiny_overrides(camera_ds, tmp_path / "run")))
    probe = load_script()
    assert probe.main([str(run), str(camera_ds), "--samples", "16"]) == 0
    rows = dict(re.findall(r"^\| (.+?) \| ([-\d.]+) \| [-+\d.]+ \|$", capsys.readouterr().out, flags=re.M))
    assert list(rows) == ["nothing (the real batch)", "cameras", "observation.state", "instruction (task)"]
    # the first row is the policy's own loss on those windows
    policy = load_policy(str(run)).eval()
    deltas = policy.config.delta_indices(policy.features)
    ds = WindowedDataset(camera_ds, delta_indices=deltas, keys=list(deltas), cache_dir=False)
    batch = probe.batch_of(ds, np.random.default_rng(0).choice(len(ds), 16, replace=False))
    torch.manual_seed(0)
    with torch.no_grad():
        assert abs(policy.compute_loss(batch)[0].item() - float(rows["nothing (the real batch)"])) < 1e-3
    # the state drives this dataset's actions: swapping it between samples must change the loss
    assert float(rows["observation.state"]) != float(rows["nothing (the real batch)"])
