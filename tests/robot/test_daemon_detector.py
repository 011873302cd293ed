"""The daemon's success detector (perception/watcher.py): verdict logic, the newest-frame-only queue, the
daemon ending an episode on a positive verdict from a detector stubbed at the model boundary, and a
detector that cannot load being one log line while the run goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import zmq

from policystack.perception.watcher import (
    EXIT_NO_DETECTOR,
    DetectorConfig,
    EpisodeJudge,
    parse_detector_args,
    start_detector_process,
    watch,
)
from policystack.robot.config import load_robot_config
from policystack.robot.supervisor import DaemonConfig, Supervisor
from policystack.robot.transport import Decoder, Encoder

TOKEN = b"detector-test-token-0123456789abc"


class StubDetector:
    """The model boundary: a fixed P(done) per call, recording what it was shown."""

    camera_keys = ["observation.images.front"]

    def __init__(self, p: float, delay_s: float = 0.0):
        self.p, self.delay_s, self.seen = p, delay_s, []

    def success_probability(self, images, instructions):
        assert images["observation.images.front"].dtype == torch.uint8
        self.seen.append((tuple(images["observation.images.front"].shape), instructions[0]))
        time.sleep(self.delay_s)
        return torch.tensor([self.p])


def test_a_verdict_needs_consecutive_frames_of_one_episode_and_comes_once():
    judge = EpisodeJudge(threshold=0.5, consecutive=2)
    assert [judge.update(0, p) for p in (0.9, 0.1, 0.9, 0.9, 0.9)] == [False, False, False, True, False]
    assert [judge.update(1, p) for p in (0.9, 0.9)] == [False, True]  # a new episode starts a new streak
    assert judge.update(2, 0.5) is False and judge.update(2, 0.5) is True  # the threshold itself counts


def test_bad_detector_options_name_the_fix():
    assert parse_detector_args(["checkpoint=d", "threshold=0.8", "consecutive=3"]).consecutive == 3
    for argv, message in ((["checkpoint=d", "threshold=1.5"], "threshold=1.5: expected a probability"),
                          (["checkpoint=d", "consecutive=0"], "consecutive=0: expected >= 1"),
                          (["checkpoint=d", "tresh=1"], "unknown argument 'tresh'; valid: checkpoint, threshold"),
                          (["checkpoint="], "expected a describer checkpoint")):
        with pytest.raises(ValueError, match=message):
            parse_detector_args(argv)


def obs(episode: int, seq: int, cameras=("front",)) -> dict:
    return dict(episode=episode, obs_seq=seq, t_obs=time.monotonic(), dt=0.1, task="reach the red ball",
                state=np.zeros(15, np.float32), env_state=np.zeros(0, np.float32),
                images={c: np.full((3, 8, 8), seq % 256, np.uint8) for c in cameras}, reset=seq == 1, seed=0,
                replan=False)


def test_the_watcher_judges_the_newest_frame_and_asks_once_per_episode():
    ctx = zmq.Context()
    pub, pull = ctx.socket(zmq.PUB), ctx.socket(zmq.PULL)
    obs_port, cmd_port = pub.bind_to_random_port("tcp://127.0.0.1"), pull.bind_to_random_port("tcp://127.0.0.1")
    enc, dec = Encoder(TOKEN), Decoder(TOKEN, kinds=("command",))
    stub, stop, lines = StubDetector(0.9, delay_s=0.3), threading.Event(), []
    cfg = DetectorConfig(checkpoint="stub", consecutive=2)
    out = {}
    t = threading.Thread(target=lambda: out.update(watch(stub, f"tcp://127.0.0.1:{obs_port}", f"tcp://127.0.0.1:{cmd_port}",
                                                         TOKEN, cfg, stop=stop, log=lines.append)), daemon=True)
    t.start()
    try:
        time.sleep(0.5)  # the subscription is up
        pub.send(enc.encode("obs", **obs(4, 1, cameras=("wrist",))))  # not a camera it knows: said once, skipped
        pub.send(enc.encode("obs", **obs(4, 2, cameras=("wrist",))))
        time.sleep(1.0)  # judged (and refused) before the burst replaces it
        for seq in range(3, 60):  # a burst much faster than the 0.3 s judgement
            pub.send(enc.encode("obs", **obs(4, seq)))
            time.sleep(0.01)
        assert pull.poll(10_000), "no verdict"
        msg, why = dec.decode(pull.recv())
        assert msg is not None, why
        assert msg.body["op"] == "detector_done" and msg.body["episode"] == 4 and msg.body["p"] == pytest.approx(0.9)
        time.sleep(1.0)
        assert not pull.poll(200)  # once per episode
    finally:
        stop.set()
        t.join(10)
        pub.close(0)
        pull.close(0)
        ctx.term()
    assert out["ended"] == 1 and out["judged"] >= 2
    assert out["judged"] == len(stub.seen) and out["dropped"] > 0  # older frames were dropped, not waited for
    assert len(stub.seen) < 20 and stub.seen[0] == ((1, 3, 8, 8), "reach the red ball")
    assert [line for line in lines if "cameras" in line] == [
        "the daemon sends cameras ['wrist']; the detector needs ['observation.images.front']: no verdicts until it does"]


pytestmark = pytest.mark.usefixtures("worker_pythonpath")  # conftest.py; so is `ckpt`


def run_with_stub(ckpt, p: float, episodes: int = 2) -> Supervisor:
    lines: list[str] = []
    sup = Supervisor(DaemonConfig(
        robot=load_robot_config("sim"), token=TOKEN, checkpoint=str(ckpt), task="Reach", episodes=episodes,
        max_steps=25, port=0, cameras=("front",), image_size=32, worker_imports=("daemon_test_policies",),
        no_rt=True, hello_timeout_s=180.0, stall_timeout_s=30.0, log=lines.append))
    stop = threading.Event()
    judge = threading.Thread(target=watch, args=(StubDetector(p), sup.addrs["obs"], sup.addrs["chunks"], TOKEN,
                                                 DetectorConfig(checkpoint="stub", consecutive=2), None, stop),
                             daemon=True)
    judge.start()
    try:
        sup.run()
    finally:
        stop.set()
        judge.join(10)
    return sup


def test_the_daemon_ends_an_episode_the_detector_judges_done(ckpt):
    sup = run_with_stub(ckpt, p=0.97)
    assert [r.reason for r in sup.results] == ["detector_done"] * 2
    assert all(r.steps < 25 and not r.success for r in sup.results)  # ended early; the sim's check said no
    assert any("detector: episode 1 looks done (P 0.97)" in e for e in sup.events)


def test_a_detector_that_says_no_changes_nothing(ckpt):
    sup = run_with_stub(ckpt, p=0.1, episodes=1)
    assert [(r.reason, r.steps) for r in sup.results] == [("timeout", 25)]


def test_a_verdict_for_another_episode_is_ignored(ckpt):
    from policystack.robot.supervisor import State

    sup = Supervisor(DaemonConfig(robot=load_robot_config("sim"), token=TOKEN, checkpoint=str(ckpt), port=0,
                                  image_size=32, log=lambda s: None))
    try:
        sup.state, sup.episode = State.RUNNING, 3
        msg, _ = Decoder(TOKEN, kinds=("command",)).decode(Encoder(TOKEN).encode("command", op="detector_done", episode=2, p=0.9))
        sup._command(msg)
        assert not sup._detector_done and "detector verdict for episode 2 ignored" in sup.events[-1]
        msg, _ = Decoder(TOKEN, kinds=("command",)).decode(Encoder(TOKEN).encode("command", op="detector_done", episode=3))
        sup._command(msg)
        assert sup._detector_done
    finally:
        sup.channels.close()


def test_a_missing_detector_is_one_line_and_the_daemon_runs_on(ckpt, tmp_path):
    env = {**os.environ, "POLICYSTACK_DAEMON_TOKEN": TOKEN.decode(), "MUJOCO_GL": "egl"}
    missing = tmp_path / "no-such-detector"
    out = subprocess.run([sys.executable, "-m", "policystack.cli", "daemon", "run", "robot=sim", f"checkpoint={ckpt}",
                          "task=Reach", "episodes=2", "max_steps=30", "image_size=32", "port=0",
                          "import=daemon_test_policies", "no_rt=true", f"detector={missing}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["reason"] for r in summary["results"]] == ["timeout", "timeout"]
    said = [line for line in out.stderr.splitlines() if "detector" in line.lower()]
    assert len(said) == 1 and said[0].startswith(f"[detector] detector off: cannot load {missing}: "), said


def test_the_side_process_says_nothing_more_when_the_detector_explains_itself(tmp_path):
    lines: list[str] = []
    proc = start_detector_process("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", TOKEN, [f"checkpoint={tmp_path / 'x'}"],
                                  lines.append)
    assert proc.proc.wait(300) == EXIT_NO_DETECTOR
    time.sleep(0.2)
    assert lines == []  # its own line is on stderr; the daemon adds none
    proc.stop()
