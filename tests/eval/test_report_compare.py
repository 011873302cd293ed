"""eval_info.json, the plot, `policystack eval` and `policystack compare`."""

from __future__ import annotations

import json

import pytest

from policystack.cli import main as cli
from policystack.eval.compare import load_runs, markdown_table
from policystack.eval.metrics import wilson_interval
from policystack.eval.report import find_eval_info, load_eval_info, write_report
from policystack.eval.runner import EpisodeRecord, EvalResult

PNG = b"\x89PNG\r\n\x1a\n"


def fake_result(task: str, successes: list[bool], policy: str = "bc") -> EvalResult:
    """A result assembled by hand (the runner itself is tested in test_runner.py)."""
    eps = [EpisodeRecord(index=i, seed=100 + i, success=s, length=10 + i, reward=float(s), max_reward=float(s),
                         task=f"do {task}") for i, s in enumerate(successes)]
    k, n = sum(successes), len(successes)
    lo, hi = wilson_interval(k, n)
    return EvalResult(task=task, policy=policy, seed=100, success_rate=k / n, ci_low=lo, ci_high=hi,
                      mean_length=sum(e.length for e in eps) / n, mean_reward=k / n, episodes=eps)


def test_write_and_load_report(tmp_path):
    results = [fake_result("Reach", [True, True, False, True]), fake_result("Push", [False, True])]
    paths = write_report(tmp_path / "ev", results, checkpoint="runs/x")
    assert paths["plot"].read_bytes()[:8] == PNG
    raw = json.loads(paths["eval_info"].read_text())
    assert raw["overall"]["episodes"] == 6 and raw["overall"]["successes"] == 4
    assert (raw["overall"]["ci_low"], raw["overall"]["ci_high"]) == wilson_interval(4, 6)
    assert raw["per_task"][0]["episodes"][2] == {"index": 2, "seed": 102, "success": False, "length": 12,
                                                "reward": 0.0, "max_reward": 0.0, "task": "do Reach", "video": None,
                                                "variation": None, "policy_done": False, "policy_stats": {},
                                                "detector_p": None, "detector_done": None}
    assert "detector" not in raw and raw["per_task"][0]["detector"] is None  # no detector= in this evaluation
    info = load_eval_info(paths["eval_info"])
    assert [r.task for r in info["per_task"]] == ["Reach", "Push"] and info["per_task"][1].successes == 1
    assert not list((tmp_path / "ev").glob(".*tmp"))  # atomic writes leave no temp files


def test_load_eval_info_errors(tmp_path):
    bad = tmp_path / "eval_info.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="eval_info.json: not valid JSON"):
        load_eval_info(bad)
    bad.write_text('{"x": 1}')
    with pytest.raises(ValueError, match="expected an object with a 'per_task' list"):
        load_eval_info(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no eval_info.json in this directory or below it"):
        find_eval_info(tmp_path / "empty")


def test_find_eval_info_in_run_dir(tmp_path):
    for step in ("500", "2000"):
        write_report(tmp_path / "run" / "eval" / f"step_{step}", [fake_result("Reach", [True])], f"ckpt{step}")
    assert find_eval_info(tmp_path / "run").parent.name == "step_2000"  # natural order, not lexical


def test_compare_table_and_plot(tmp_path, capsys):
    write_report(tmp_path / "bc", [fake_result("Reach", [True, False]), fake_result("Push", [True])], "runs/bc")
    write_report(tmp_path / "act", [fake_result("Reach", [True, True, True, True], policy="act")], "runs/act")
    runs = load_runs([tmp_path / "bc", tmp_path / "act" / "eval_info.json"])
    table = markdown_table(runs)
    lines = table.splitlines()
    assert lines[0] == "| task | bc | act |"
    assert lines[2] == "| Reach | 50.0% [9.5%, 90.5%] (1/2) | 100.0% [51.0%, 100.0%] (4/4) |"
    assert lines[3].startswith("| Push | 100.0% [20.7%, 100.0%] (1/1) | - |")
    assert "| **overall** | 66.7% [20.8%, 93.9%] (2/3) |" in table
    rc = cli(["compare", str(tmp_path / "bc"), str(tmp_path / "act"), f"out={tmp_path / 'cmp.md'}"])
    assert rc == 0
    assert (tmp_path / "cmp.md").read_text() == table
    assert (tmp_path / "cmp.png").read_bytes()[:8] == PNG
    assert "| Reach |" in capsys.readouterr().out
    assert cli(["compare", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


def test_eval_command_expert(tmp_path, capsys):
    out = tmp_path / "ev"
    rc = cli(["eval", "checkpoint=expert", "env=Reach", "episodes=2", "videos=1", f"out={out}"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Reach: success 100.0% [34.2%, 100.0%] (2/2)" in printed
    assert str(out / "eval_info.json") in printed and str(out / "eval.png") in printed
    videos = list((out / "videos" / "Reach").glob("*.mp4"))
    assert [v.name for v in videos] == ["episode_000_seed1000.mp4"] and str(videos[0]) in printed
    assert load_eval_info(out / "eval_info.json")["policy"] == "expert"
    assert cli(["eval", "checkpoint=expert", "env=Reach", "episodes=1", f"out={out}"]) == 2  # no overwrite
    assert "exists; pass another out= or overwrite=true" in capsys.readouterr().err


def test_eval_command_checkpoint_and_errors(tmp_path, capsys, bc_state):
    ckpt = bc_state.save_pretrained(tmp_path / "ckpt")
    rc = cli(["eval", f"checkpoint={ckpt}", "env=Reach", "episodes=1", "max_steps=2", "videos=0"])
    assert rc == 0 and (ckpt / "eval" / "Reach" / "eval_info.json").is_file()
    capsys.readouterr()
    cases = [
        (["checkpoint=expert", "env=Nope"], "unknown env 'Nope'; valid: the tabletop tasks Reach, PressButton"),
        ([f"checkpoint={ckpt}", "env=Reach", "policy=nope"], "unknown policy 'nope'; available: ["),
        ([f"checkpoint={ckpt}", "env=Reach", "policy=diffusion"], "checkpoint of policy 'bc', not 'diffusion'"),
        ([f"checkpoint={ckpt}", "env=Reach", "action_mode=joint", "out=" + str(tmp_path / "x")],
         "does not fit env 'Reach'"),
        ([f"checkpoint={tmp_path}", "env=Reach"], "not a policy checkpoint"),
        (["checkpoint=expert", "env=Reach", "episodes=many"], "episodes='many': expected an integer"),
        (["checkpoint=expert", "env=Reach", "bogus=1"], "unknown argument 'bogus'"),
        (["env=Reach"], "missing required argument(s): checkpoint="),
    ]
    for argv, message in cases:
        assert cli(["eval", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
