"""benchmarks/bench_rt2_study.py: evaluated runs are reused from an earlier --out only when nothing differs."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_rt2_study import main  # noqa: E402

SETTINGS = {"task": "Reach", "episodes": 2, "seed": 5000, "n_envs": 1, "max_steps": 30, "paraphrases": False,
            "vqa_test": None, "vqa_examples": 200, "held_out_episodes": 0}


def test_a_recorded_run_is_reused_and_a_changed_one_is_evaluated_again(tmp_path, capsys):
    ckpt = str(tmp_path / "no_checkpoint_here")
    raw = {"RT-2": {"checkpoint": ckpt, "settings": SETTINGS, "seconds": 12.0, "paraphrases": [],
                    "templates": [{"task": "reach the purple ball", "success": True},
                                  {"task": "reach the red ball", "success": False}]}}
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    args = ["--run", f"RT-2={ckpt}", "--episodes", "2", "--max-steps", "30", "--no-paraphrases",
            "--reuse", str(tmp_path / "raw.json"), "--no-write", "--out", str(tmp_path / "again.json")]
    assert main(args) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| RT-2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].endswith("(1/2)") and cells[2].endswith("(0/1)") and cells[3].endswith("(1/1)")
    assert cells[4:] == ["-", "-", "12"]  # no every-goal-purple episodes, no paraphrases
    assert json.loads((tmp_path / "again.json").read_text())["RT-2"]["settings"] == SETTINGS
    # another episode limit is another measurement: the checkpoint is loaded (and here it does not exist)
    with pytest.raises(Exception, match="no_checkpoint_here"):
        main([*args[:5], "35", *args[6:]])


def test_seeds_a_checkpoints_demos_used_are_refused(monkeypatch, capsys):
    """Evaluating on training scenes is not held-out success: refused before any episode (seeds 1000.. were
    reach_xp's training scenes in the 2026-12-07 study; the default is now 5000)."""
    from types import SimpleNamespace

    from policystack.policies.base import Policy

    seen = SimpleNamespace(data_provenance={"dataset": "data/reach_xp", "sim_seeds": {"Reach": [0, 2387]}})
    monkeypatch.setattr(Policy, "from_pretrained", staticmethod(lambda path: seen))
    with pytest.raises(SystemExit):
        main(["--run", "RT-2=ckpt", "--episodes", "2", "--seed", "1000", "--no-paraphrases", "--no-write"])
    assert "are training scenes" in capsys.readouterr().err
