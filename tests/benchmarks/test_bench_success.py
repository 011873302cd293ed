"""benchmarks/bench_success.py: per-policy train arguments and demo seeds kept off the eval seeds."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_success import main, train_args  # noqa: E402


def test_train_args_go_to_every_policy_unless_prefixed_with_one():
    text = "threads=1 rt1:policy.random_shift=0.08 bc:policy.keypoints=16"
    assert train_args("rt1", text) == ["threads=1", "policy.random_shift=0.08"]
    assert train_args("bc", text) == ["threads=1", "policy.keypoints=16"]
    assert train_args("act", text) == ["threads=1"]
    assert train_args("act", "") == []


def test_demo_seeds_that_reach_the_eval_seeds_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--demos", "2000", "--work", str(tmp_path), "--no-write"])
    err = capsys.readouterr().err
    assert "collect may use seeds 0-4009, which overlap the evaluation seeds 1000-1049" in err
    assert "--demo-seed 100000" in err
    assert not (tmp_path / "logs").exists()  # refused before anything ran
