"""LeRobotDriver on a real LeRobot SO-101 follower (``SOFollower`` + ``FeetechMotorsBus``) whose
serial bus is faked below LeRobot (``fake_scservo``: the Feetech SDK's surface over in-memory
servos), run by the real control loop: commands reach the servo registers within the limits, and
an unplugged bus makes the loop hold instead of crashing."""

from __future__ import annotations

import json
import time

import fake_scservo
import numpy as np
import pytest

from policystack.robot.config import load_robot_config
from policystack.robot.drivers.lerobot import LeRobotDriver
from policystack.robot.loop import MAX_CHUNK, ControlLoop
from policystack.robot.safety import STALE, TRACKING
from policystack.robot.shm import Block, command_fields, control_fields, state_fields

PORT = "/dev/ttyFAKE0"
MOTORS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]


@pytest.fixture
def bus(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "scservo_sdk", fake_scservo)
    bus = fake_scservo.FakeBus(ids=range(1, 7), speed=60)
    monkeypatch.setitem(fake_scservo.BUSES, PORT, bus)
    calib = {m: {"id": i + 1, "drive_mode": 0, "homing_offset": 0, "range_min": 0, "range_max": 4095}
             for i, m in enumerate(MOTORS)}
    (tmp_path / "so101_test.json").write_text(json.dumps(calib))
    return bus


def make_driver(tmp_path):
    return LeRobotDriver(robot_type="so101_follower",
                         robot_options={"port": PORT, "id": "so101_test", "calibration_dir": str(tmp_path),
                                        "use_degrees": True})


def test_driver_reads_and_writes_through_lerobot(bus, tmp_path):
    drv = make_driver(tmp_path)
    assert drv.keys == [f"{m}.pos" for m in MOTORS] and drv.dim == 6
    drv.connect()
    q, extra = np.zeros(6), np.zeros(1)
    drv.read(q, extra)
    assert np.all(np.abs(q[:5]) < 0.5)  # raw 2048 of 0..4095 is the middle: ~0 degrees
    cmd = q.copy()
    cmd[0] = 10.0
    drv.write(cmd)
    assert abs(bus.get(1, fake_scservo.GOAL, 2) - (2047.5 + 10 * 4096 / 360)) < 1.5
    bus.unplugged = True
    drv.read(q, extra)
    assert np.isnan(q).all() and drv.errors == 1
    drv.write(cmd)  # does not raise
    bus.unplugged = False
    drv.close()
    assert bus.regs[1][fake_scservo.TORQUE] == 0  # LeRobot disables torque on disconnect


def test_control_loop_drives_the_fake_arm_and_holds_when_unplugged(bus, tmp_path):
    cfg = load_robot_config("so101", {"watchdog_s": 5.0})
    drv = make_driver(tmp_path)
    drv.connect()
    blocks = {name: Block.create(tmp_path / name, f) for name, f in
              (("state", state_fields(6, 0)), ("command", command_fields(6, MAX_CHUNK)),
               ("control", control_fields(0)))}
    loop = ControlLoop(cfg, drv, blocks["state"], blocks["command"], blocks["control"])
    now = time.monotonic()
    target = np.array([15.0, -10.0, 5.0, 0.0, 0.0, 30.0])
    cmd = blocks["command"]
    cmd.begin()
    cmd.f["t_obs"][0], cmd.f["dt"][0], cmd.f["n"][0] = now, 0.1, 20
    cmd.f["actions"][:20] = target
    cmd.f["gen"][0] = 1
    cmd.end()
    loop.run(duration=0.5)
    assert loop.safety.counts[STALE] == 0 and loop.safety.counts[TRACKING] == 0
    state = blocks["state"].snapshot()
    assert 0 < state["max_dq"][0] <= cfg.limits.max_step + 1e-12
    # commands reached the servo registers and the servos followed
    q, extra = np.zeros(6), np.zeros(1)
    drv.read(q, extra)
    assert q[0] > 1.0 and q[1] < -1.0
    # unplug: reads turn NaN, the loop holds (tracking fault) and keeps running
    bus.unplugged = True
    cmd.begin()
    cmd.f["t_obs"][0] = time.monotonic()
    cmd.f["gen"][0] = 2
    cmd.end()
    loop.run(duration=0.1)
    assert loop.safety.counts[TRACKING] > 0 and drv.errors > 0
    bus.unplugged = False
    drv.close()
