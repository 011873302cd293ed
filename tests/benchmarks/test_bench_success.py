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
        main(["--demos", "2000", "--eval-seed", "1000", "--work", str(tmp_path), "--no-write"])
    err = capsys.readouterr().err
    assert "collect may use seeds 0-4009, which overlap the evaluation seeds 1000-1049" in err
    assert "pass another --demo-seed or --eval-seed" in err
    assert not (tmp_path / "logs").exists()  # refused before anything ran
    with pytest.raises(SystemExit):  # the default eval seeds 5000-5049 are reached by 2500 demos
        main(["--demos", "2500", "--work", str(tmp_path), "--no-write"])
    assert "overlap the evaluation seeds 5000-5049" in capsys.readouterr().err


def test_table_only_settings_name_noise_time_limit_and_eval_seeds(tmp_path, capsys):
    assert main(["--table-only", "--no-write", "--tasks", "Reach", "--policies", "bc", "--noise", "0.2",
                 "--time-limit-min", "20", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "noise=0.2" in out and "or 20 min of wall time" in out and "seeds 5000-5049" in out
    assert "--noise 0.2 --time-limit-min 20" in out and "| Reach | not run | not run |" in out
