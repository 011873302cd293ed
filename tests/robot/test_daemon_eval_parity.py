"""One checkpoint with observation history, one seed: ``policystack daemon run robot=sim`` acts exactly as
``policystack eval`` does.

The checkpoint is RT-1 with 2 frames of history and a chunk every 2 steps (small, untrained: eval mode is
deterministic), a subclass that logs every call it gets (``daemon_test_policies.CallLogRT1Policy``). The
daemon runs in lockstep (simulated time: the loop steps one policy step once its chunk is in) with
limits that pass every target through within one tick, so its simulator steps exactly as the env does
in eval. Then the two runs must agree call by call -- the same ``reset`` / ``predict_action_chunk`` /
``observe`` sequence (a daemon that never observes, or sends frames only when it wants a chunk, fails
here), the same observed states and images, the same chunks -- and the actions the daemon's loop sent
(recorded in its dataset) must be eval's, step by step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from daemon_test_policies import CALL_LOG_ENV, make_rt1_checkpoint

from policystack.eval import commands as eval_commands

HERE = Path(__file__).resolve().parent
TOKEN = "parity-test-token-0123456789"
# the safety filter lets every target through within one tick, as the env sets a servo target
PASS_THROUGH = {"limits.velocity": [1e6] * 8, "limits.acceleration": [1e9] * 8, "limits.max_step": 1e6,
                "limits.max_tracking_error": 1e6, "limits.workspace_low": [-1e3] * 3,
                "limits.workspace_high": [1e3] * 3}


def read_calls(path: Path) -> list[dict]:
    calls = [json.loads(line) for line in path.read_text().splitlines()]
    assert calls and calls[0]["call"] == "reset", calls[:2]
    return calls


def executed_actions(calls: list[dict], every: int) -> np.ndarray:
    """The action executed at each step: chunk[k mod every] of the chunk predicted at the step's replan."""
    out, chunk = [], None
    for c in calls:
        if c["call"] == "predict":
            chunk, i = c["chunk"], 0
        elif c["call"] == "observe":
            out.append(chunk[i])
            i += 1
    assert all(len(out[k:k + every]) for k in range(0, len(out), every))
    return np.array(out)


def test_history_checkpoint_acts_the_same_in_daemon_run_and_in_eval(tmp_path, monkeypatch):
    every, steps, seed = 2, 12, 1000
    ckpt = make_rt1_checkpoint(tmp_path / "rt1", call_log=True, n_obs_steps=2, horizon=4, n_action_steps=every)

    eval_log = tmp_path / "eval_calls.jsonl"
    monkeypatch.setenv(CALL_LOG_ENV, str(eval_log))
    assert eval_commands.main([f"checkpoint={ckpt}", "env=Reach", "episodes=1", f"seed={seed}", "n_envs=1",
                               "videos=0", f"max_steps={steps}", f"out={tmp_path / 'eval'}"]) == 0

    daemon_log, rec = tmp_path / "daemon_calls.jsonl", tmp_path / "rec"
    env = {**os.environ, CALL_LOG_ENV: str(daemon_log), "POLICYSTACK_DAEMON_TOKEN": TOKEN,
           "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "policystack.cli", "daemon", "run", "robot=sim", f"checkpoint={ckpt}", "task=Reach",
           "episodes=1", f"seed={seed}", f"max_steps={steps}", "cameras=front", "image_size=32", "port=0",
           f"record={rec}", "import=daemon_test_policies", "no_rt=true", "lockstep=true"]
    cmd += [f"robot.{k}={json.dumps(v)}" for k, v in PASS_THROUGH.items()]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["results"][0]["reason"] == "timeout" and summary["results"][0]["obs_missed"] == 0

    ev, dm = read_calls(eval_log), read_calls(daemon_log)
    assert [c["call"] for c in dm] == [c["call"] for c in ev]  # reset, then predict + observe / observe ...
    assert sum(c["call"] == "observe" for c in ev) == steps
    for e, d in zip(ev, dm):
        if e["call"] == "observe":
            np.testing.assert_allclose(d["state"], e["state"], atol=1e-6)
            assert d["images"] == e["images"]  # the same rendered frames, bit for bit
        elif e["call"] == "predict":
            np.testing.assert_allclose(d["chunk"], e["chunk"], atol=1e-6)
    # what the daemon's loop sent, as recorded, is what eval executed
    table = pq.read_table(sorted(rec.glob("data/*/*.parquet"))[0]).to_pandas()
    sent = np.stack(table["action"].to_numpy())[:steps]
    np.testing.assert_allclose(sent, executed_actions(ev, every), atol=1e-6)
