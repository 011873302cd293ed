"""``daemon run`` on a real-robot path: LeRobot's ``SOFollower`` + ``FeetechMotorsBus`` in the control
loop process over a fake Feetech SDK (``fake_sdk`` / ``fake_scservo``: in-memory servo registers),
LeRobot's ``OpenCVCamera`` in the supervisor over a fake ``cv2.VideoCapture`` (``fake_camera``), a
real policy worker with a tiny checkpoint. Episodes run to their time limit, the arm is homed
through the safety filter between them, the worker sees the camera at the checkpoint's shape,
recording loads in LeRobot, a bus failure holds, and operator commands end episodes and the run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import fake_camera
import fake_scservo
import numpy as np
import pytest
from daemon_test_policies import OBS_LOG_ENV, SO101_NAMES, make_so101_checkpoint
from test_daemon import TOKEN, Running, assert_held, assert_never_jumped

from policystack.robot import commands
from policystack.robot.config import load_robot_config
from policystack.robot.safety import TRACKING
from policystack.robot.scene import RobotScene, resize_frame
from policystack.robot.supervisor import DaemonConfig, DaemonError, State, Supervisor

HERE = Path(__file__).resolve().parent
PORT = "/dev/ttyFAKE0"
VIDEO = "/dev/videoFAKE0"
MOTORS = [n.split(".")[0] for n in SO101_NAMES]
HOME = [20.0, -15.0, 10.0, 5.0, -10.0, 30.0]  # degrees (gripper 0..100); the fake arm starts at ~0 / 50
IMAGE_HW = (24, 32)  # what the checkpoint takes; the camera gives 64x48


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_so101_checkpoint(tmp_path_factory.mktemp("so101") / "bc", HOME, {"front": IMAGE_HW})


@pytest.fixture
def rig(tmp_path, monkeypatch):
    """The fake servo bus (in the loop process) and the fake camera (here); returns their files."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE / "fake_sdk"), str(HERE),
                                                       os.environ.get("PYTHONPATH", "")]))
    calib = {m: {"id": i + 1, "drive_mode": 0, "homing_offset": 0, "range_min": 0, "range_max": 4095}
             for i, m in enumerate(MOTORS)}
    (tmp_path / "so101_test.json").write_text(json.dumps(calib))
    files = {"unplug": tmp_path / "unplugged", "trace": tmp_path / "goals.json", "obs_log": tmp_path / "obs.jsonl",
             "calib": tmp_path}
    monkeypatch.setenv(fake_scservo.ENV, json.dumps({"port": PORT, "ids": list(range(1, 7)), "speed": 60,
                                                     "unplug_file": str(files["unplug"]),
                                                     "trace_file": str(files["trace"])}))
    monkeypatch.setenv(OBS_LOG_ENV, str(files["obs_log"]))
    monkeypatch.setattr(cv2, "VideoCapture", fake_camera.FakeVideoCapture)
    monkeypatch.setitem(fake_camera.DEVICES, VIDEO, (64, 48, 30.0))
    return files


def robot_config(rig, **overrides):
    o = {"driver_options.robot_options": {"port": PORT, "id": "so101_test", "calibration_dir": str(rig["calib"]),
                                          "use_degrees": True},
         "home": HOME, "episode_s": 1.0, "reset_wait_s": 0.2, "home_timeout_s": 10.0,
         "cameras": {"front": {"type": "opencv", "index_or_path": VIDEO, "width": 64, "height": 48, "fps": 30,
                               "warmup_s": 0}}}
    o.update(overrides)
    return load_robot_config("so101", o)


def daemon(ckpt, robot, logs: list[str] | None = None, **kw) -> Supervisor:
    base = dict(robot=robot, token=TOKEN, checkpoint=str(ckpt), task="pick up the cube", episodes=2, port=0,
                worker_imports=("daemon_test_policies",), no_rt=True, hello_timeout_s=180.0, stall_timeout_s=5.0,
                log=(logs.append if logs is not None else lambda s: None))
    base.update(kw)
    return Supervisor(DaemonConfig(**base))


def goal_trace(path: Path) -> np.ndarray:
    """Goal positions the servos were sent, one row per loop tick, in the config's units: [T, 6]."""
    rows = json.loads(path.read_text())
    raw = np.array([[goals[str(i)] for i in range(1, 7)] for _, goals in rows], dtype=np.float64)
    out = (raw - 2047.5) * 360.0 / 4095.0  # use_degrees joints (range 0..4095)
    out[:, 5] = raw[:, 5] / 4095.0 * 100.0  # the gripper: 0..100 over its range
    return out


def test_so101_episodes_homing_cameras_recording_and_status(ckpt, rig, tmp_path, monkeypatch, capsys):
    robot = robot_config(rig)
    logs: list[str] = []
    sup = daemon(ckpt, robot, logs, record=str(tmp_path / "rec"))
    run = Running(sup)
    run.wait(lambda: sup.state == State.RUNNING and len(sup.latencies) >= 2, what="chunks")
    monkeypatch.setenv("POLICYSTACK_DAEMON_TOKEN", TOKEN.decode())
    capsys.readouterr()
    assert commands.main(["status", f"telemetry={sup.addrs['telemetry']}", "timeout=10"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["state"] in ("RUNNING", "HOLD", "HOMING") and doc["successes"] is None
    assert doc["worker"]["images"] == {"front": [3, *IMAGE_HW]} and doc["worker"]["state_dim"] == 6
    run.join()
    assert [r.reason for r in sup.results] == ["timeout", "timeout"]
    assert [r.steps for r in sup.results] == [10, 10]  # episode_s 1.0 at 10 Hz
    assert sum("home reached" in line for line in logs) == 2
    assert any("reset the scene; next episode in 0.2 s" in line for line in logs)
    assert sup.state == State.STOPPED
    assert_never_jumped(sup)

    # the servos were only ever sent goals within the velocity limit (per loop tick, one raw tick of rounding)
    goals = goal_trace(rig["trace"])
    step = np.abs(np.diff(goals, axis=0)).max(axis=0)
    limit = np.array(robot.limits.velocity) / robot.rate_hz + np.array([360 / 4095] * 5 + [100 / 4095])
    assert goals.shape[0] > 100 and (step <= limit + 1e-9).all(), (step, limit)
    assert np.abs(goals[0, :5]).max() < 1.0  # the first goal is where the arm stood, not home

    # the worker saw the camera, resized to the checkpoint's shape, RGB (fake frames are BGR 200/100/n)
    seen = [json.loads(line) for line in rig["obs_log"].read_text().splitlines()]
    assert len(seen) >= 4
    for s in seen:
        assert s["observation.images.front"]["shape"] == [1, 3, *IMAGE_HW]
        assert s["observation.images.front"]["dtype"] == "uint8"
        r, g, b = s["observation.images.front"]["mean"]
        assert g == pytest.approx(100) and b == pytest.approx(200)
        assert s["observation.state"]["shape"] == [1, 6]

    # the recording: 2 episodes of 11 frames, starting at home, loading in LeRobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from policystack.datasets.meta import DatasetMeta

    meta = DatasetMeta.load(tmp_path / "rec")
    assert meta.total_episodes == 2 and meta.total_frames == 22
    lr = LeRobotDataset("local/so101", root=tmp_path / "rec")
    assert lr.num_episodes == 2 and len(lr) == 22 and lr.meta.robot_type == "so101_follower"
    assert lr.meta.features["observation.state"]["names"] == SO101_NAMES
    tol = np.array(robot.home_tolerance)
    for first in (0, 11):
        item = lr[first]
        assert item["observation.images.front"].shape == (3, *IMAGE_HW)
        assert item["task"] == "pick up the cube"
        assert (np.abs(item["observation.state"].numpy() - HOME) <= tol).all()  # each episode starts at home


def test_bus_failure_holds_then_operator_end_episode_then_stop(rig, tmp_path, monkeypatch, capsys):
    """One daemon, three episodes: a pulled cable ends the first (hold, ``sensor_fault``); plugged back
    in, the homing move goes through and ``daemon end-episode`` ends the second (``operator``);
    ``daemon stop`` ends the third (``stopped``) and the run. A state-only checkpoint on a robot
    without cameras (a valid set-up)."""
    state_only = make_so101_checkpoint(tmp_path / "state_only", HOME, {})
    sup = daemon(state_only, robot_config(rig, episode_s=30.0, cameras={}, reset_wait_s=0.0), task="wave",
                 episodes=3)
    run = Running(sup)
    monkeypatch.setenv("POLICYSTACK_DAEMON_TOKEN", TOKEN.decode())
    run.wait(lambda: sup.state == State.RUNNING and sup.step >= 3, what="episode 0")
    rig["unplug"].touch()  # the cable is pulled: every bus read fails
    try:
        assert_held(run, TRACKING, within=3.0)
        run.wait(lambda: len(sup.results) >= 1, timeout=5.0, what="episode 0 to end")
        assert sup.results[0].reason == "sensor_fault"
        assert any("not finite" in e for e in sup.events)
    finally:
        rig["unplug"].unlink()  # plugged back in: the homing move before episode 1 goes through
    run.wait(lambda: sup.episode == 1 and sup.state == State.RUNNING and sup.step >= 2, timeout=20,
             what="episode 1 after the bus came back")
    assert commands.main(["end-episode", f"commands={sup.addrs['chunks']}"]) == 0
    run.wait(lambda: sup.episode == 2 and sup.state == State.RUNNING and sup.step >= 2, timeout=20,
             what="episode 2 after end-episode")
    assert commands.main(["stop", f"commands={sup.addrs['chunks']}"]) == 0
    run.join(timeout=30)
    assert [r.reason for r in sup.results] == ["sensor_fault", "operator", "stopped"]
    assert sup.state == State.STOPPED and sup.loop.proc is None
    assert "operator command: end_episode" in sup.events and "operator command: stop" in sup.events
    assert not sup.dec.rejected
    assert sup.final_loop_state["counts"][TRACKING] > 0
    assert_never_jumped(sup)
    # no daemon there: the command says so instead of hanging
    capsys.readouterr()
    assert commands.main(["stop", "commands=tcp://127.0.0.1:9", "timeout=0.3"]) == 1
    assert "no daemon took the command" in capsys.readouterr().err


@pytest.mark.slow  # ~12 s here, most of it LeRobot's import in the loop process
def test_homing_that_cannot_finish_holds_and_fails_the_run(ckpt, rig):
    sup = daemon(ckpt, robot_config(rig, home_timeout_s=0.3), episodes=1)
    t0 = time.monotonic()
    with pytest.raises(DaemonError, match="did not reach home"):
        sup.run()
    assert time.monotonic() - t0 < 60
    assert sup.results == [] and sup.state == State.STOPPED
    assert any("homing timed out" in e for e in sup.events)


# --- the scene without processes ------------------------------------------------------------------

class _Cam:
    def __init__(self, frame):
        self.frame, self.connected = frame, False

    def connect(self):
        self.connected = True

    def async_read(self, timeout_ms):
        return self.frame

    def disconnect(self):
        self.connected = False


def _hello(state_dim=6, images=None):
    return {"state_dim": state_dim, "images": {k: np.array(v) for k, v in (images or {}).items()}}


def test_robot_scene_checks_the_checkpoint_and_builds_observations(tmp_path):
    robot = load_robot_config("so101", {"cameras": {"wrist": {"type": "opencv", "index_or_path": 0,
                                                              "feature": "observation.images.gripper"}}})
    cam = _Cam(np.zeros((48, 64, 3), np.uint8))
    scene = RobotScene(robot, "pick", cameras={"wrist": cam})
    assert cam.connected
    with pytest.raises(ValueError, match="observation.state has 8 values"):
        scene.check_policy(_hello(state_dim=8))
    with pytest.raises(ValueError, match=r"cameras \['wrist'\] feed \['observation.images.gripper'\]"):
        scene.check_policy(_hello(images={"front": [3, 24, 32]}))
    with pytest.raises(ValueError, match="no camera of robot 'so101' feeds"):
        scene.check_policy(_hello(images={"gripper": [3, 24, 32], "top": [3, 8, 8]}))
    scene.check_policy(_hello(images={"gripper": [3, 24, 32]}))
    obs, success = scene.frame({"q_meas": np.arange(6.0)})
    assert success is False and obs["observation.state"].dtype == np.float32
    assert obs["observation.images.gripper"].shape == (3, 24, 32)
    assert scene.features["observation.images.gripper"].shape == (24, 32, 3)
    from policystack.robot.scene import SensorFault

    with pytest.raises(SensorFault, match="not finite"):
        scene.frame({"q_meas": np.full(6, np.nan)})
    cam.frame = np.zeros((48, 64), np.uint8)
    with pytest.raises(SensorFault, match="camera 'wrist'.*expected \\[height, width, 3\\]"):
        scene.frame({"q_meas": np.zeros(6)})
    scene.close()
    assert not cam.connected
    with pytest.raises(ValueError, match="free text"):
        RobotScene(robot, " ", cameras={})


def test_resize_frame_and_camera_config_errors():
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = 255
    out = resize_frame(img, 24, 32, "cam")
    assert out.shape == (3, 24, 32) and out[:, :, :16].min() == 255 and out[:, :, 16:].max() == 0
    from policystack.robot.scene import make_lerobot_cameras

    with pytest.raises(KeyError, match="cameras.front.type='webcam'"):
        make_lerobot_cameras({"front": {"type": "webcam"}})
    with pytest.raises(ValueError, match="cameras.front"):
        make_lerobot_cameras({"front": {"type": "opencv", "index_or_path": 0, "rotation": 45}})
