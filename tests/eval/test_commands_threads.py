"""``policystack eval threads=``: the rollout's torch threads (1 by default), a bad value refused."""

from __future__ import annotations

import pytest
import torch

from policystack.eval.commands import EvalArgs, evaluate


def test_eval_sets_torch_threads_and_refuses_zero(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        evaluate(EvalArgs(checkpoint="expert", env="Reach", episodes=1, videos=0, out=str(tmp_path / "a")),
                 progress=False)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads=0: expected >= 1"):
            evaluate(EvalArgs(checkpoint="expert", env="Reach", episodes=1, videos=0, threads=0,
                              out=str(tmp_path / "b")), progress=False)
    finally:
        torch.set_num_threads(before)


def test_eval_target_color_asks_for_that_colour_in_every_episode(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = EvalArgs(checkpoint="expert", env="Reach", episodes=3, videos=0, target_color="purple")
    assert args.env_overrides() == {"target_color": "purple"}
    out = evaluate(args, progress=False)
    assert str(out["eval_info"]).endswith("outputs/eval/expert/Reach_purple/eval_info.json")
    episodes = out["results"][0].episodes
    assert len(episodes) == 3 and all("purple" in e.task.split() and e.success for e in episodes)
