"""eval warns when its seeds replay the scenes a policy was trained on: collect records the simulator
seeds in info.json (``sim_seeds``), training copies them into the checkpoint (``data_provenance``)."""

from __future__ import annotations

from policystack.envs.collect import CollectConfig, collect
from policystack.eval.commands import EvalArgs, evaluate
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
