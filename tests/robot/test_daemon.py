"""The daemon with real processes (control loop, policy worker) in sim: end to end with recording,
and the faults of the issue: worker killed, worker stalled, worker returning NaN, hostile network
messages. In every case the loop holds (no command jump: ``max_dq <= max_step``) and the daemon
survives."""

from __future__ import annotations

import os
import signal
import threading
import time

import msgpack
import numpy as np
import pytest
import torch
import zmq
from daemon_test_policies import make_checkpoint, make_done_checkpoint

from policystack.robot.config import load_robot_config
from policystack.robot.safety import NAN, STALE
from policystack.robot.supervisor import DaemonConfig, State, Supervisor
from policystack.robot.transport import Encoder

TOKEN = b"test-token-0123456789abcdef"


pytestmark = pytest.mark.usefixtures("worker_pythonpath")  # conftest.py; so is `ckpt`


def daemon(ckpt, **kw) -> Supervisor:
    robot = load_robot_config("sim", {"watchdog_s": 0.3})
    base = dict(robot=robot, token=TOKEN, checkpoint=str(ckpt), task="Reach", episodes=1, max_steps=20,
                port=0, cameras=("front",), image_size=32, worker_imports=("daemon_test_policies",),
                no_rt=True, hello_timeout_s=180.0, log=lambda s: None,
                # on a busy shared machine one inference can take longer than the 0.3 s watchdog; the stall
                # tests set their own
                stall_timeout_s=5.0)
    base.update(kw)
    return Supervisor(DaemonConfig(**base))


class Running:
    """Supervisor.run() in a thread; the test watches the loop's shared state meanwhile."""

    def __init__(self, sup: Supervisor):
        self.sup, self.error = sup, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.sup.run()
        except BaseException as e:  # surfaced by join()
            self.error = e

    def wait(self, pred, timeout=180.0, what=""):  # generous: startup (torch, MuJoCo) on a loaded machine
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.error is not None:
                raise self.error
            if pred():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")

    def state(self):
        return self.sup.loop.state.snapshot()

    def join(self, timeout=120.0):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "daemon did not finish"
        if self.error is not None:
            raise self.error


def assert_held(run: Running, fault: int, within: float):
    """The loop reports `fault` and its command comes to rest."""
    run.wait(lambda: run.sup.loop.state is not None, what="the control loop")
    run.wait(lambda: int(run.state()["faults"][0]) & (1 << fault), timeout=within, what=f"fault bit {fault}")
    run.wait(lambda: _at_rest(run), timeout=3.0, what="command at rest")


def _at_rest(run: Running) -> bool:
    a = run.state()["q_cmd"].copy()
    time.sleep(0.05)
    return bool(np.abs(run.state()["q_cmd"] - a).max() == 0.0)


def assert_never_jumped(sup: Supervisor):
    s = sup.final_loop_state
    assert s, "the daemon kept no final loop state"
    assert 0 < s["max_dq"][0] <= sup.cfg.robot.limits.max_step + 1e-12


@pytest.mark.parametrize("curve", [False, pytest.param(True, marks=pytest.mark.slow)])  # curve: ~8 s more
def test_worker_killed_mid_run_holds_then_restarts(ckpt, tmp_path, curve):
    kw = {}
    if curve:  # the restarted worker gets a fresh key pair, admitted by the allow-list
        from policystack.robot.curve import write_key_pair

        secret = write_key_pair(tmp_path / "server", "server")[1]
        write_key_pair(tmp_path / "clients", "operator")
        kw["robot"] = load_robot_config("sim", {"watchdog_s": 0.3, "transport.curve_server_secret": str(secret),
                                                "transport.curve_allowed_clients": str(tmp_path / "clients")})
    sup = daemon(ckpt, episodes=2, max_steps=25, **kw)
    run = Running(sup)
    run.wait(lambda: sup.state == State.RUNNING and sup.step >= 6 and len(sup.latencies) >= 2, what="chunks")
    os.kill(sup.worker_proc.pid, signal.SIGKILL)
    assert_held(run, STALE, within=3.0)
    run.join()
    assert [r.reason for r in sup.results][0] == "worker_lost"
    assert sup.results[1].reason in ("timeout", "success") and sup.restarts == 1
    assert sup.state == State.STOPPED
    if curve:
        assert sup.allow_list.denied == 0 and len(sup.allow_list) == 2  # operator + current worker
    assert_never_jumped(sup)


@pytest.mark.slow  # ~9 s; the killed-worker test covers the same hold path by default
def test_worker_stall_holds_and_resumes(ckpt):
    sup = daemon(ckpt, episodes=1, max_steps=45, stall_timeout_s=30.0)  # a short stall: no restart
    run = Running(sup)
    run.wait(lambda: sup.state == State.RUNNING and len(sup.latencies) >= 2, what="chunks")
    pid = sup.worker_proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        n = len(sup.latencies)
        assert_held(run, STALE, within=3.0)  # chunk runs out / watchdog: hold
    finally:
        os.kill(pid, signal.SIGCONT)
    run.wait(lambda: len(sup.latencies) > n and int(run.state()["faults"][0]) == 0, timeout=10,
             what="chunks resume after the stall")
    run.join()
    assert sup.results[0].reason in ("timeout", "success") and sup.restarts == 0
    assert_never_jumped(sup)


def test_worker_stalled_past_the_timeout_is_killed_and_restarted(ckpt):
    sup = daemon(ckpt, episodes=2, max_steps=20, stall_timeout_s=0.5)
    run = Running(sup)
    run.wait(lambda: sup.state == State.RUNNING and sup.step >= 3 and len(sup.latencies) >= 2, what="chunks")
    stalled = sup.worker_proc
    os.kill(stalled.pid, signal.SIGSTOP)  # alive, but answers nothing
    try:
        assert_held(run, STALE, within=3.0)
        run.join()
    finally:
        if stalled.poll() is None:
            os.kill(stalled.pid, signal.SIGKILL)
    assert stalled.returncode == -signal.SIGKILL  # the supervisor killed it
    assert [r.reason for r in sup.results][0] == "worker_stalled"
    assert sup.results[1].reason in ("timeout", "success") and sup.restarts == 1
    assert any("stalled" in e for e in sup.events)
    assert_never_jumped(sup)


def test_worker_returning_nan_holds(tmp_path):
    nan_ckpt = make_checkpoint(tmp_path / "nan", nan_after=2)
    sup = daemon(nan_ckpt, episodes=1, max_steps=25)
    run = Running(sup)
    assert_held(run, NAN, within=30.0)
    run.join()
    assert sup.final_loop_state["counts"][NAN] > 0
    assert np.isfinite(sup.final_loop_state["q_cmd"]).all()
    assert any("NaN" in e for e in sup.events)
    assert_never_jumped(sup)


def test_hostile_network_messages_are_rejected_and_the_daemon_survives(ckpt):
    sup = daemon(ckpt, episodes=1, max_steps=25)
    run = Running(sup)
    run.wait(lambda: sup.state == State.RUNNING and len(sup.latencies) >= 1, what="chunks")
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(sup.addrs["chunks"])
    try:
        body = dict(episode=0, obs_seq=1, t_obs=time.monotonic(), dt=0.1, infer_s=0.0, obs_missed=0,
                    replans_skipped=0, actions=np.full((8, 8), 100.0, np.float32), done_step=-1)
        push.send(b"\x93\x01\x02")  # garbage
        push.send(Encoder(b"wrong-token-wrong-token").encode("chunk", **body))  # unauthenticated
        enc = Encoder(TOKEN)
        valid = enc.encode("chunk", **body)
        push.send(valid)
        push.send(valid)  # replayed
        payload = msgpack.packb({"v": 1, "kind": "chunk", "sender": "x", "seq": 1, "ts": time.time() - 60,
                                 "body": {}}, use_bin_type=True)
        import hashlib
        import hmac
        push.send(payload + hmac.new(TOKEN, payload, hashlib.sha256).digest())  # old timestamp
        push.send(b"\0" * (sup.cfg.robot.transport.max_message_bytes + 10))  # oversized: zmq drops it
        run.wait(lambda: sum(sup.dec.rejected.get(k, 0) for k in ("auth", "replay", "stale")) >= 3,
                 timeout=10, what="rejections")
    finally:
        push.close(0)
        ctx.term()
    run.join()
    rej = sup.dec.rejected
    assert rej.get("short", 0) >= 1 and rej.get("auth", 0) >= 1
    assert rej.get("replay", 0) >= 1 and rej.get("stale", 0) >= 1
    # the authenticated chunk of absurd targets (100 rad) only moved the arm within the limits
    s = sup.final_loop_state
    assert s["counts"][5] > 0  # joint_limit clamp
    assert sup.results[0].reason in ("timeout", "success")
    assert_never_jumped(sup)


def test_cli_run_status_and_kill_9_keep_every_completed_episode(ckpt, tmp_path):
    """`policystack daemon run` end to end in sim with recording; `daemon status` reads its
    telemetry; after kill -9 of the daemon every completed episode loads (ours and LeRobot's)."""
    import json
    import subprocess
    import sys

    from policystack.datasets.loader import WindowedDataset
    from policystack.datasets.meta import DatasetMeta

    rec = tmp_path / "rec"
    env = {**os.environ, "POLICYSTACK_DAEMON_TOKEN": TOKEN.decode(), "MUJOCO_GL": "egl"}
    cmd = [sys.executable, "-m", "policystack.cli", "daemon", "run", "robot=sim", f"checkpoint={ckpt}",
           "task=Reach", "episodes=50", "max_steps=12", "image_size=32", "port=0", f"record={rec}",
           "import=daemon_test_policies", "no_rt=true"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        addrs = json.loads(proc.stdout.readline())
        status = subprocess.run([sys.executable, "-m", "policystack.cli", "daemon", "status",
                                 f"telemetry={addrs['telemetry']}", "timeout=60"],
                                env=env, capture_output=True, text=True, timeout=90)
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["state"] in ("IDLE", "RUNNING", "HOLD") and "loop" in doc and "worker" in doc
        end = time.monotonic() + 90
        while time.monotonic() < end:
            info = rec / "meta" / "info.json"
            if info.is_file() and json.loads(info.read_text())["total_episodes"] >= 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the daemon did not record 2 episodes")
        time.sleep(0.4)  # kill it in the middle of the next episode
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    from policystack.robot.processes import remove_orphaned_blocks

    remove_orphaned_blocks()  # the killed daemon's shared blocks (the next daemon would do it)
    meta = DatasetMeta.load(rec)
    n = meta.total_episodes
    assert n >= 2
    ds = WindowedDataset(rec)
    assert len(ds) == meta.total_frames == 13 * n  # every frame of every completed episode
    item = ds[len(ds) - 1]
    assert item["action"].shape[-1] == 8 and item["observation.images.front"].shape[-3:] == (3, 32, 32)
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    lr = LeRobotDataset("local/daemon", root=rec)
    assert lr.num_episodes == n and len(lr) == 13 * n
    assert lr[len(lr) - 1]["observation.images.front"].shape == (3, 32, 32)


def test_daemon_over_curve_with_an_allow_list(ckpt, tmp_path, monkeypatch, capsys):
    """Curve on, allow-list on: the local worker (ephemeral keys through its environment) acts; a
    listed status client reads telemetry; an unlisted one and a plaintext one read nothing."""
    import json

    from policystack.robot import commands
    from policystack.robot.curve import CLIENT_SECRET_ENV, write_key_pair

    server_pub, server_sec = write_key_pair(tmp_path / "server", "server")
    write_key_pair(tmp_path / "clients", "operator")
    write_key_pair(tmp_path / "other", "stranger")
    robot = load_robot_config("sim", {"watchdog_s": 0.3, "transport.curve_server_secret": str(server_sec),
                                      "transport.curve_allowed_clients": str(tmp_path / "clients")})
    sup = daemon(ckpt, robot=robot, episodes=1, max_steps=15)
    run = Running(sup)
    run.wait(lambda: sup.state == State.RUNNING and len(sup.latencies) >= 2, what="chunks over curve")
    assert CLIENT_SECRET_ENV not in os.environ  # the worker's secret went to its environment only
    monkeypatch.setenv("POLICYSTACK_DAEMON_TOKEN", TOKEN.decode())
    tele = f"telemetry={sup.addrs['telemetry']}"
    capsys.readouterr()
    assert commands.main(["status", tele, f"server_key={server_pub}",
                          f"client_key={tmp_path / 'clients' / 'operator.key_secret'}", "timeout=10"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["curve"] == {"on": True, "allow_list": True, "denied_handshakes": 0}
    assert commands.main(["status", tele, f"server_key={server_pub}",
                          f"client_key={tmp_path / 'other' / 'stranger.key_secret'}", "timeout=0.5"]) == 1
    assert commands.main(["status", tele, "timeout=0.5"]) == 1  # plaintext
    assert "no telemetry" in capsys.readouterr().err
    run.join()
    assert sup.results[0].reason in ("timeout", "success") and sup.restarts == 0
    assert sup.allow_list.denied >= 1  # the stranger was refused by the ZAP handler
    assert not sup.dec.rejected  # nothing unauthenticated ever reached the decoder
    assert_never_jumped(sup)


def test_sim_scene_is_checked_against_the_checkpoints_cameras_before_the_loop_starts(ckpt):
    """A checkpoint whose images were made otherwise than the sim renders them, or that takes a
    camera the scene does not make, is refused with the key named, and no loop process is started."""
    from dataclasses import replace

    from policystack.policies.files import read_checkpoint_meta
    from policystack.robot.processes import DaemonError

    _, features = read_checkpoint_meta(ckpt)
    key = next(k for k in features if k.startswith("observation.images."))
    recorded = {**features, key: replace(features[key], info={"camera.convention": "lerobot"})}
    for policy_features, match in ((recorded, "camera.convention"),
                                   ({**features, "observation.images.wrist": features[key]}, "observation.images.wrist")):
        sup = daemon(ckpt, policy_features=policy_features)
        try:
            with pytest.raises(DaemonError, match=match):
                sup.start_loop()
            assert sup.loop.pid == -1
        finally:
            sup.shutdown()
    sup = daemon(ckpt, policy_features=features)  # the checkpoint's own features pass
    try:
        sup.start_loop()
    finally:
        sup.shutdown()


def test_a_policy_that_says_done_ends_the_episode(tmp_path):
    """A worker chunk with done_step = k ends the episode once its actions up to step k had their ticks
    (RT-2's terminate token on a robot, where nothing judges success)."""
    ckpt = make_done_checkpoint(tmp_path / "done", done_after=3)  # 4 steps per chunk: done on the 3rd chunk's step 1
    sup = daemon(ckpt, episodes=2, max_steps=40, stall_timeout_s=30.0)  # a loaded machine: no stall verdicts
    Running(sup).join()
    assert [(r.reason, r.steps) for r in sup.results] == [("policy_done", 2 * 4 + 2)] * 2


def test_an_ee_delta_checkpoint_runs_as_joint_targets_from_the_worker(tmp_path):
    """A policy trained on the suite's ee_delta actions (every camera dataset's default) runs on the
    daemon, which drives joint targets: the worker says so in its hello, the daemon asks every step,
    the policy predicts every n_action_steps (2) as in eval, and each step's joint command is
    ``EEDeltaFollower`` of that step's action from that step's recorded (measured) pose: what the env's
    ``step`` would set."""
    import pyarrow.parquet as pq

    from policystack.datasets.meta import DatasetMeta
    from policystack.envs.base import EEDeltaFollower
    from policystack.policies.base import Policy
    from policystack.types import ACTION, OBS_STATE, TASK

    ckpt = make_checkpoint(tmp_path / "bc_ee", cameras=(), ee_delta=True, n_action_steps=2, action_std=0.5)
    logs: list[str] = []
    # limits that let every target through within one tick (as test_daemon_eval_parity), so the recorded
    # command is the worker's target, the gripper's too
    robot = load_robot_config("sim", {"watchdog_s": 0.3, "limits.velocity": [1e6] * 8, "limits.acceleration": [1e9] * 8,
                                      "limits.max_step": 1e6, "limits.max_tracking_error": 1e6})
    sup = daemon(ckpt, robot=robot, cameras=(), max_steps=6, lockstep=True, record=str(tmp_path / "rec"),
                 log=logs.append)
    Running(sup).join()
    assert any("n_action_steps 1, actions ee_delta -> joint targets" in line for line in logs), logs
    assert sup.results[0].reason == "timeout"
    table = pq.read_table(sorted((tmp_path / "rec").glob("data/*/*.parquet"))[0]).to_pandas()
    states, sent = np.stack(table[OBS_STATE].to_numpy()), np.stack(table[ACTION].to_numpy())
    assert sent.shape[1] == 8
    instruction = DatasetMeta.load(tmp_path / "rec").tasks[table["task_index"][0]]
    policy = Policy.from_pretrained(ckpt)
    follower = EEDeltaFollower(dt=0.1)
    for k in range(4):
        start = states[k - k % 2]  # the observation the chunk was predicted from (steps 0, 2)
        chunk = policy.predict_action_chunk({OBS_STATE: torch.from_numpy(start)[None], TASK: [instruction]})[0]
        np.testing.assert_allclose(sent[k], follower.follow(states[k], chunk[k % 2:k % 2 + 1].numpy())[0], atol=1e-5)
    assert np.linalg.norm(states[-1][8:11] - states[0][8:11]) > 0.01  # the pinch site moved
