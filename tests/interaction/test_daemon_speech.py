"""The daemon with speech on, real processes (control loop, policy worker, announcer) in sim: what it
says, and that a missing voice or a dead announcer is one log line while the run goes on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from policystack.robot.transport import Decoder, Encoder

HERE = Path(__file__).resolve().parent
ROBOT_TESTS = HERE.parent / "robot"
TOKEN = b"speech-daemon-test-token-0123456789"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    sys.path.insert(0, str(ROBOT_TESTS))
    try:
        from daemon_test_policies import make_checkpoint
    finally:
        sys.path.remove(str(ROBOT_TESTS))
    from .speech_test_policies import make_deciding_checkpoint

    return make_deciding_checkpoint(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "deciding"))


def env() -> dict[str, str]:
    return {**os.environ, "POLICYSTACK_DAEMON_TOKEN": TOKEN.decode(), "MUJOCO_GL": "egl",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


def daemon_run(ckpt: Path, *extra: str, episodes: int = 3) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "policystack.cli", "daemon", "run", "robot=sim", f"checkpoint={ckpt}", "task=Reach",
           f"episodes={episodes}", "max_steps=15", "image_size=32", "port=0", "import=speech_test_policies",
           "no_rt=true", *extra]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)


def results(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_daemon_says_episodes_instructions_results_and_decisions(ckpt, tmp_path):
    stats = tmp_path / "stats.jsonl"
    out = daemon_run(ckpt, "speech=piper", "speech.output=wav", f"speech.out_dir={tmp_path / 'wav'}",
                     f"speech.stats={stats}", "speech.queue=8")
    summary = results(out)
    assert summary["episodes"] == 3
    said = [json.loads(line) for line in stats.read_text().splitlines()]
    texts = [s["text"] for s in said]
    instructions = re.findall(r"^\[daemon\] episode \d+: '(.*)' \(seed", out.stderr, re.M)
    assert len(instructions) == 3
    last = instructions[-1]  # the announcer may still be loading piper at the first episode's start
    assert f"Episode 2. {last[0].upper()}{last[1:]}." in texts
    assert "Episode 2: time is up." in texts
    assert f"Heading for {last.split(' the ')[-1]}." in texts  # the policy's decision, read out
    assert texts[-1] == "Run over: 0 of 3 episodes succeeded." or "Episode 2: time is up." == texts[-1]
    for s in said:  # every announcement became a WAV file, timed from its event
        assert Path(s["where"]).is_file() and s["t_first_sample"] >= s["t_event"] - 0.05
    assert "[speech]" not in out.stderr.replace("[speech] announcing", "")  # no problem to report


def test_speech_over_curve_with_an_allow_list(ckpt, tmp_path):
    """The announcer gets a key pair of its own, admitted to the allow-list like a local worker's."""
    from policystack.robot.curve import write_key_pair

    _, server_secret = write_key_pair(tmp_path / "server", "server")
    write_key_pair(tmp_path / "clients", "operator")
    stats = tmp_path / "stats.jsonl"
    out = daemon_run(ckpt, f"robot.transport.curve_server_secret={server_secret}",
                     f"robot.transport.curve_allowed_clients={tmp_path / 'clients'}", "speech=piper",
                     "speech.output=wav", f"speech.out_dir={tmp_path / 'wav'}", f"speech.stats={stats}", episodes=2)
    assert results(out)["episodes"] == 2
    assert "Episode 1: time is up." in [json.loads(line)["text"] for line in stats.read_text().splitlines()]


def test_a_missing_voice_is_one_line_and_the_run_goes_on(ckpt, tmp_path):
    out = daemon_run(ckpt, "speech=piper", f"speech.voice={tmp_path / 'nope.onnx'}", "speech.output=wav",
                     f"speech.out_dir={tmp_path / 'wav'}", episodes=2)
    assert results(out)["episodes"] == 2
    speech = [line for line in out.stderr.splitlines() if "speech" in line.lower()]
    assert speech == [f"[speech] speech off: piper: voice model (.onnx) {tmp_path / 'nope.onnx'} not found "
                      "(voice= expects a Piper .onnx file with its .onnx.json beside it)"]


def test_bad_speech_options_fail_before_anything_starts(ckpt):
    t0 = time.monotonic()
    for extra, message in ((["speech=piper", "speech.wmp=3"], "unknown argument 'wmp'"),
                           (["speech.voice=x.onnx"], "speech is off; add speech=piper"),
                           (["speech=festival"], "backend='festival'")):
        out = daemon_run(ckpt, *extra)
        assert out.returncode == 2 and message in out.stderr, out.stderr
    assert time.monotonic() - t0 < 120  # (generous) nothing was started: no loop, no worker


def test_a_dead_announcer_is_one_line_and_the_daemon_runs_on(ckpt, tmp_path, monkeypatch):
    from policystack.interaction.announcer import AnnouncerProcess
    from policystack.robot.config import load_robot_config
    from policystack.robot.supervisor import DaemonConfig, Supervisor

    monkeypatch.setenv("PYTHONPATH", env()["PYTHONPATH"])
    lines: list[str] = []
    sup = Supervisor(DaemonConfig(
        robot=load_robot_config("sim"), token=TOKEN, checkpoint=str(ckpt), task="Reach", episodes=4, max_steps=15,
        port=0, image_size=32, worker_imports=("speech_test_policies",), no_rt=True, log=lines.append))
    ann = AnnouncerProcess(sup.addrs["telemetry"], TOKEN, ["backend=piper", "output=wav", f"out_dir={tmp_path}",
                                                           f"avoid_cpu={sup.cfg.robot.cpu}"], lines.append)
    run = threading.Thread(target=sup.run, daemon=True)
    run.start()
    try:
        end = time.monotonic() + 120
        while not list(tmp_path.glob("*.wav")) and time.monotonic() < end:  # it is speaking
            time.sleep(0.05)
        assert list(tmp_path.glob("*.wav")), "the announcer said nothing"
        # it yields to everything else and keeps off the control loop's CPU
        assert os.getpriority(os.PRIO_PROCESS, ann.proc.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
        if len(os.sched_getaffinity(0)) > 1:
            assert sup.cfg.robot.cpu not in os.sched_getaffinity(ann.proc.pid)
        os.kill(ann.proc.pid, signal.SIGKILL)
        run.join(180)
        assert not run.is_alive()
    finally:
        ann.stop()
    assert [r.reason for r in sup.results] == ["timeout"] * 4  # every episode ran to its end
    died = [line for line in lines if "announcer" in line]
    assert died == [f"speech announcer (pid {ann.proc.pid}) died (signal SIGKILL); the daemon goes on without speech"]


def test_a_chunks_decision_is_optional_on_the_wire():
    enc, dec = Encoder(TOKEN), Decoder(TOKEN)
    body = dict(episode=0, obs_seq=1, t_obs=1.0, dt=0.1, actions=np.zeros((2, 8), np.float32), infer_s=0.01,
                obs_missed=0, replans_skipped=0)
    msg, _ = dec.decode(enc.encode("chunk", **body))
    assert "decision" not in msg.body  # a worker without decisions (or from before them) still speaks the protocol
    assert "done_step" not in msg.body  # nor one whose policy never says an episode is over
    msg, _ = dec.decode(enc.encode("chunk", decision="Yield, then go.", **body))
    assert msg.body["decision"] == "Yield, then go."
    with pytest.raises(KeyError, match="body keys"):
        enc.encode("chunk", decision="x", colour="red", **body)
    msg, why = dec.decode(enc.encode("chunk", decision=3, **body))  # the encoder passes it; the decoder refuses
    assert msg is None and why.startswith("schema: chunk.decision: expected str")
