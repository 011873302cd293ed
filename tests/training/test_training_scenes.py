"""eval of a trained checkpoint. It warns when its seeds replay the scenes a policy was trained on
(collect records the simulator seeds in info.json ``sim_seeds``, training copies them into the
checkpoint's ``data_provenance``); ``n_action_steps=`` sets how much of each chunk runs."""

from __future__ import annotations

import pytest
import torch

from policystack.envs.collect import CollectConfig, collect
from policystack.eval.commands import EvalArgs, evaluate, set_n_action_steps
from policystack.policies.base import Policy
from policystack.training.config import load_config
from policystack.training.loop import train

from .conftest import tiny_overrides


def test_eval_names_the_training_scenes_among_its_seeds(tmp_path, capsys):
    data = tmp_path / "reach"
    collect(CollectConfig(env="Reach", out=data, episodes=2, cameras=(), seed=1000), progress=False)
    run = train(load_config(tiny_overrides(data, tmp_path / "run", "policy.text_encoder=none")))

    seen = evaluate(EvalArgs(checkpoint=str(run), env="Reach", episodes=3, seed=999, videos=0,
                             out=str(tmp_path / "e1")), progress=False)["training_scenes"]
    assert list(seen) == ["Reach"] and "2 of the eval seeds 999-1001 are training scenes" in seen["Reach"]
    assert "seeds 1000-1001" in seen["Reach"] and "seed=1002" in seen["Reach"]
    assert "warning: Reach: 2 of the eval seeds" in capsys.readouterr().err

    held_out = evaluate(EvalArgs(checkpoint=str(run), env="Reach", episodes=2, seed=1002, videos=0,
                                 out=str(tmp_path / "e2")), progress=False)
    assert held_out["training_scenes"] == {}


def test_eval_n_action_steps_sets_how_much_of_each_chunk_runs(tmp_path):
    data = tmp_path / "reach"
    collect(CollectConfig(env="Reach", out=data, episodes=2, cameras=(), seed=0), progress=False)
    run = train(load_config(tiny_overrides(data, tmp_path / "run", "policy.text_encoder=none")))  # horizon 4, 2 run
    policy = Policy.from_pretrained(run)
    calls = []
    predict = policy.predict_action_chunk
    policy.predict_action_chunk = lambda obs: calls.append(1) or predict(obs)
    obs = {"observation.state": torch.zeros(1, *policy.features["observation.state"].shape)}
    set_n_action_steps(policy, 4, str(run))
    for _ in range(8):
        policy.select_action(obs)
    assert len(calls) == 2  # one chunk every 4 actions (the checkpoint's own setting: every 2)
    with pytest.raises(ValueError, match=r"n_action_steps=5: expected 1 \.\. 4"):
        set_n_action_steps(policy, 5, str(run))
    with pytest.raises(ValueError, match="predicts no action chunks"):
        evaluate(EvalArgs(checkpoint="expert", env="Reach", episodes=1, videos=0, n_action_steps=2,
                          out=str(tmp_path / "e")), progress=False)
