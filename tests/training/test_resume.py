"""A run killed with SIGKILL right after a checkpoint and resumed reproduces, bit for bit on CPU,
the weights of the same run done without interruption."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from policystack.training import checkpoint
from policystack.training.commands import main as train_main
from policystack.training.config import load_config
from policystack.training.loop import train

from .conftest import tiny_overrides

# The child trains with the real loop; only its checkpoint writer is followed by a SIGKILL of the
# process itself once step KILL_AT is on disk: the kill lands exactly "right after the checkpoint".
KILLED_RUN = """
import os, signal, sys
from policystack.training import checkpoint, loop
from policystack.training.config import load_config
kill_at, overrides = int(sys.argv[1]), sys.argv[2:]
save = checkpoint.save_checkpoint
def save_then_die(run_dir, step, *args, **kwargs):
    out = save(run_dir, step, *args, **kwargs)
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
checkpoint.save_checkpoint = save_then_die
loop.train(load_config(overrides))
"""


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = checkpoint.latest_checkpoint(run_dir)
    state = load_file(ckpt / checkpoint.STATE_TENSORS)
    return {"pretrained": load_file(ckpt / "pretrained" / "model.safetensors"),
            "raw": {k: v for k, v in state.items() if k.startswith("model.")},
            "optimizer": {k: v for k, v in state.items() if k.startswith("optimizer.")}}


def _assert_identical(a: dict, b: dict) -> None:
    for part in a:
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}/{k} differs"


@pytest.mark.parametrize("extra", [
    ("policy.dropout=0.1", "ema.enabled=true", "dataset.num_workers=1"),  # camera, augmentation, EMA, a worker
])
def test_sigkill_resume_reproduces_uninterrupted_run(camera_ds, tmp_path, extra):
    args = [*extra, "steps=10", "checkpoint.every=4", "log.every=1"]
    full = train(load_config(tiny_overrides(camera_ds, tmp_path / "full", *args)))

    killed_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, "4", *tiny_overrides(camera_ds, killed_dir, *args)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert checkpoint.latest_checkpoint(killed_dir).name == "000004"
    assert not (killed_dir / "checkpoints" / "000008").exists()

    assert train_main([f"resume={killed_dir}"]) == 0
    assert checkpoint.latest_checkpoint(killed_dir).name == "000010"
    _assert_identical(_weights(full), _weights(killed_dir))
    # the resumed run's metrics read as one run: steps 1..10 once each, same losses
    steps = [json.loads(line)["step"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))
    losses = [json.loads(line)["loss"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line)["loss"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses == resumed


def test_resume_extends_a_finished_run(state_ds, tmp_path):
    """resume=<dir> steps=N continues a finished run from its last checkpoint up to N steps."""
    run = train(load_config(tiny_overrides(state_ds, tmp_path / "run", "steps=4", "checkpoint.every=2")))
    assert train_main([f"resume={run}", "steps=6"]) == 0
    assert checkpoint.latest_checkpoint(run).name == "000006"
    assert "steps: 6" in (run / "config.yaml").read_text()


def test_resume_refuses_nothing_to_do_and_policy_change(state_ds, tmp_path, capsys):
    run = train(load_config(tiny_overrides(state_ds, tmp_path / "run", "steps=2", "checkpoint.every=2")))
    assert train_main([f"resume={run}"]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert train_main([f"resume={run}", "policy=bc"]) == 2
    assert "keeps its policy" in capsys.readouterr().err
    # a run directory is never trained over without resume
    assert train_main(tiny_overrides(state_ds, run)) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_resume_rejects_a_different_policy_config(state_ds, tmp_path):
    run = train(load_config(tiny_overrides(state_ds, tmp_path / "run", "steps=2", "checkpoint.every=2")))
    cfg = load_config(tiny_overrides(state_ds, run, "steps=4", "policy.hidden_dim=16", "resume=true"))
    with pytest.raises(ValueError, match="hidden_dim"):
        train(cfg)
