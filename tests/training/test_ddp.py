"""`torchrun --nproc_per_node 2 -m policystack.cli train ...` trains with DDP (gloo) on 2 CPU processes.

With no augmentation, no dropout and horizon 1 (no padded actions), 2 processes x batch 4 see
exactly the frames a single process with batch 8 sees at every step (StepBatchSampler slices one
permutation), and DDP averages their gradients: the weights must match a 1-process run up to
float rounding. A run without gradient synchronisation, or with the wrong data split, does not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from policystack.training import checkpoint
from policystack.training.config import load_config
from policystack.training.loop import train

from .conftest import tiny_overrides

EXACT = ("policy.random_shift=0", "policy.dropout=0.0", "policy.horizon=1", "policy.n_action_steps=1",
         "steps=6", "checkpoint.every=3")


def _pretrained(run: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint.latest_checkpoint(run) / "pretrained" / "model.safetensors")


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed beside this python")
def test_torchrun_two_cpu_processes_match_one_process(state_ds, tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    ddp_run = tmp_path / "ddp"
    args = tiny_overrides(state_ds, ddp_run, *EXACT, "batch_size=4")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "policystack.cli", "train",
                           *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("run: ") == 1  # rank 0 alone reports (and logs, and checkpoints)

    state = json.loads((checkpoint.latest_checkpoint(ddp_run) / checkpoint.STATE_JSON).read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's RNG is kept
    records = [json.loads(line) for line in (ddp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]

    single = train(load_config(tiny_overrides(state_ds, tmp_path / "single", *EXACT, "batch_size=8")))
    a, b = _pretrained(ddp_run), _pretrained(single)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between DDP and 1 process")
    earlier = load_file(ddp_run / "checkpoints" / "000003" / "pretrained" / "model.safetensors")
    assert any(not torch.allclose(a[k], earlier[k]) for k in a if a[k].is_floating_point())  # it did train
