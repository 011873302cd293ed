"""`torchrun --nproc_per_node 2 -m policystack.cli train strategy=fsdp ...`: RT-2 sharded with FSDP (gloo, 2 CPU
processes). 2 processes x batch 4 see the frames one process with batch 8 sees (StepBatchSampler), FSDP
averages their gradients through reduce-scatter: the weights match a 1-process run up to float rounding. Its
checkpoints hold the full weights and optimiser state (the single-process format), and a resumed FSDP run
continues exactly."""

from __future__ import annotations

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

RT2 = ("policy=rt2", "policy.text_width=64", "policy.text_depth=2", "policy.text_heads=2",
       "policy.context_length=256", "policy.image_size=32")
TORCHRUN = Path(sys.executable).parent / "torchrun"


def overrides(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [*RT2, f"dataset.path={dataset}", f"out={out}", "dataset.cache_dir=false", "dataset.num_workers=0",
            "steps=4", "checkpoint.every=2", "log.every=2", "log.wandb.enabled=false", "log.progress=false",
            "optim.warmup_steps=1", "optim.lr=1e-3", "threads=1", *extra]


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "policystack.cli", "train",
                           *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt / "pretrained" / "model.safetensors")


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun not installed beside this python")
def test_fsdp_matches_one_process_and_resumes_exactly(camera_ds, tmp_path):
    fsdp_run = tmp_path / "fsdp"
    torchrun(overrides(camera_ds, fsdp_run, "strategy=fsdp", "batch_size=4"))
    single = train(load_config(overrides(camera_ds, tmp_path / "single", "batch_size=8")))
    a, b = weights(checkpoint.latest_checkpoint(fsdp_run)), weights(checkpoint.latest_checkpoint(single))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between FSDP and 1 process")
    earlier = weights(fsdp_run / "checkpoints" / "000002")
    assert any(not torch.equal(a[k], earlier[k]) for k in a if a[k].is_floating_point())  # it trained
    opt_a = load_file(checkpoint.latest_checkpoint(fsdp_run) / checkpoint.STATE_TENSORS)
    opt_b = load_file(checkpoint.latest_checkpoint(single) / checkpoint.STATE_TENSORS)
    moments = [k for k in opt_b if k.startswith("optimizer.state.")]
    assert moments and set(moments) <= set(opt_a)  # the full optimiser state, keyed as one process keys it
    for k in moments:
        torch.testing.assert_close(opt_a[k], opt_b[k], rtol=1e-3, atol=1e-6, msg=k)

    # resume from step 2 (step 4 removed) under FSDP: the weights of the uninterrupted run
    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp_run, resumed, symlinks=True)
    shutil.rmtree(resumed / "checkpoints" / "000004")
    (resumed / "checkpoints" / "latest").unlink()
    (resumed / "checkpoints" / "latest").symlink_to("000002")
    torchrun([f"resume={resumed}"])
    c = weights(checkpoint.latest_checkpoint(resumed))
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=0, atol=1e-6, msg=f"{k}: resumed FSDP run differs")


def test_fsdp_refuses_what_it_cannot_do(camera_ds, tmp_path):
    with pytest.raises(ValueError, match="strategy=fsdp with ema.enabled=true"):
        load_config(overrides(camera_ds, tmp_path / "x", "strategy=fsdp", "ema.enabled=true"))
    with pytest.raises(ValueError, match="rank 0 alone cannot run a sharded model"):
        load_config(overrides(camera_ds, tmp_path / "x", "strategy=fsdp", "env=reach", "eval.every=2"))
    with pytest.raises(ValueError, match="expected ddp or fsdp"):
        load_config(overrides(camera_ds, tmp_path / "x", "strategy=zero3"))
