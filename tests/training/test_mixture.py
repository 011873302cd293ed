"""A mixture of datasets through the loop (co-training): robot windows + vision-language examples of
`policystack vqa` in every batch, at the configured shares; the parts, the sampler and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policystack.datasets.mixture import MixtureDataset, mixture_key, split_mixture
from policystack.policies.base import Policy
from policystack.training import checkpoint
from policystack.training.config import load_config
from policystack.training.loop import train
from policystack.training.sampler import MixtureBatchSampler, StepBatchSampler, mixture_counts
from policystack.types import DataError

from .conftest import tiny_overrides

RT2 = ["policy=rt2", "policy.text_width=64", "policy.text_depth=2", "policy.text_heads=2",
       "policy.context_length=256", "policy.image_size=32"]


@pytest.fixture(scope="module")
def vqa_ds(tmp_path_factory):
    from policystack.envs.vqa import VQAConfig, generate

    out = tmp_path_factory.mktemp("vqa") / "vqa"
    generate(VQAConfig(env="Reach", scenes=3, out=out, questions=4, cameras=("front",), image_size=32),
             progress=False)
    return out


def rt2_overrides(camera_ds, out, *extra):
    return [f"dataset.path={camera_ds}", f"out={out}", "dataset.cache_dir=false", "dataset.num_workers=0",
            "batch_size=8", "steps=4", "log.every=1", "checkpoint.every=2", "log.wandb.enabled=false",
            "log.progress=false", "optim.warmup_steps=1", "optim.lr=1e-3", "threads=1", *RT2, *extra]


def test_rt2_co_trains_on_robot_windows_and_vqa_examples(camera_ds, vqa_ds, tmp_path):
    mix = [f"dataset.mixture=[{vqa_ds}]", "dataset.mixture_weights=[0.25]"]
    run = train(load_config(rt2_overrides(camera_ds, tmp_path / "run", *mix)))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all({"action_loss", "vl_loss"} <= set(r) for r in records)
    state = json.loads((run / "checkpoints" / "latest" / "training_state.json").read_text())
    assert [p["batch_size"] for p in state["data_order"]["parts"]] == [6, 2]  # 75% robot, 25% VQA
    # resuming a mixed run continues its data order exactly
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(run, resumed, symlinks=True)
    shutil.rmtree(resumed / "checkpoints" / "000004")
    (resumed / "checkpoints" / "latest").unlink()
    (resumed / "checkpoints" / "latest").symlink_to("000002")
    from policystack.training.commands import main as train_main

    assert train_main([f"resume={resumed}"]) == 0
    from safetensors.torch import load_file

    a = load_file(run / "checkpoints" / "latest" / "pretrained" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "latest" / "pretrained" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rt2_tied_weights_checkpoint_and_resume_with_ema(camera_ds, tmp_path):
    """RT-2's tied embedding / output layer is written once in every file of a checkpoint, also the raw
    weights kept beside the EMA ones, and a resumed EMA run loads them all back."""
    run = train(load_config(rt2_overrides(camera_ds, tmp_path / "run", "steps=2", "checkpoint.every=1",
                                          "ema.enabled=true")))
    from policystack.policies.base import tied_aliases
    from policystack.training.commands import main as train_main

    policy = Policy.from_pretrained(run)
    assert tied_aliases(policy.state_dict())  # the tiny text model ties its embedding and output layer
    assert train_main([f"resume={run}", "steps=3"]) == 0
    assert checkpoint.latest_checkpoint(run).name == "000003"


def test_mixture_is_refused_where_it_cannot_work(camera_ds, state_ds, vqa_ds, tmp_path):
    mix = [f"dataset.mixture=[{vqa_ds}]", "dataset.mixture_weights=[0.25]"]
    with pytest.raises(DataError, match="policy 'bc' does not train on mixed datasets"):
        train(load_config(tiny_overrides(camera_ds, tmp_path / "bc", *mix)))
    with pytest.raises(ValueError, match="one weight .* per mixed-in dataset"):
        load_config(rt2_overrides(camera_ds, tmp_path / "x", f"dataset.mixture=[{vqa_ds}]"))
    with pytest.raises(ValueError, match="their sum below 1"):
        load_config(rt2_overrides(camera_ds, tmp_path / "x", f"dataset.mixture=[{vqa_ds},{vqa_ds}]",
                                  "dataset.mixture_weights=[0.5,0.6]"))
    with pytest.raises(DataError, match="needs the policy's cameras"):
        train(load_config(rt2_overrides(camera_ds, tmp_path / "y", f"dataset.mixture=[{state_ds}]",
                                        "dataset.mixture_weights=[0.25]")))


def test_mixed_batches_split_back_into_their_parts():
    class Fake:
        def __init__(self, n, tag):
            self.n, self.tag = n, tag

        def __len__(self):
            return self.n

        def get_batch(self, idx):
            idx = np.asarray(idx)
            return {"x": torch.as_tensor(idx) + self.tag, "task": [f"{self.tag}"] * len(idx)}

    ds = MixtureDataset([Fake(10, 0), Fake(5, 100)])
    batch = ds.get_batch([0, 3, 10, 14])  # two of each: indices 10.. are the second dataset's 0..
    assert batch["x"].tolist() == [0, 3] and batch[mixture_key(1, "x")].tolist() == [100, 104]
    parts = split_mixture(batch)
    assert [p["task"] for p in parts] == [["0", "0"], ["100", "100"]]
    assert len(split_mixture({"x": torch.zeros(2)})) == 1  # a plain batch is one part
    assert mixture_counts(32, [0.66, 0.34]) == [21, 11] and sum(mixture_counts(7, [0.5, 0.25, 0.25])) == 7
    with pytest.raises(ValueError, match="raise batch_size"):
        mixture_counts(2, [0.9, 0.05, 0.05])
    sampler = MixtureBatchSampler([10, 5], [0, 10], [3, 1], seed=0, start_step=0, end_step=6)
    batches = list(sampler)
    assert len(batches) == 6 and all(sum(i >= 10 for i in b) == 1 and len(b) == 4 for b in batches)
    assert batches[4] == sampler.batch_at(4)
    assert [b[:3] for b in batches] == [StepBatchSampler(10, 3, 0, 0, 6).batch_at(s) for s in range(6)]
