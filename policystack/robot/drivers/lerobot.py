"""Driver over LeRobot's ``Robot`` API (``connect`` / ``get_observation`` / ``send_action`` /
``disconnect``): any LeRobot robot (SO-100/101, Koch, ...) under the daemon's loop and safety.

The loop talks to the motors only: the robot is built with no cameras (camera frames are taken at
the policy rate outside the loop). Command component i is the robot's action key ``keys[i]``
(default: its ``action_features`` in order) times ``scale[i]`` (e.g. degrees -> the units of the
robot config's limits); reading divides back. The robot config is built by LeRobot's own
registry from ``robot_type`` (``so101_follower``, ``koch_follower``, ...) and ``robot_options``
(``port``, ``id``, ``calibration_dir``, ...)::

    driver: lerobot
    driver_options: {robot_type: so101_follower, robot_options: {port: /dev/ttyACM0, id: arm}}

If the bus fails (a serial error, a missing motor), ``read`` reports NaN, the safety filter
holds (tracking fault) and ``write`` keeps trying; the loop never dies of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from policystack.robot.drivers import Driver

log = logging.getLogger(__name__)


def make_lerobot_robot(robot_type: str, robot_options: dict[str, Any]):
    """A LeRobot ``Robot`` from its registered config type, without cameras."""
    import lerobot.robots.so_follower  # noqa: F401  (registers the SO follower configs)
    from lerobot.robots import RobotConfig as LeRobotConfig
    from lerobot.robots.utils import make_robot_from_config

    try:
        config_cls = LeRobotConfig.get_choice_class(robot_type)
    except KeyError:
        raise KeyError(f"unknown LeRobot robot_type {robot_type!r}; known: "
                       f"{sorted(LeRobotConfig.get_known_choices())}") from None
    opts = {**robot_options, "cameras": {}}
    if opts.get("calibration_dir") is not None:
        opts["calibration_dir"] = Path(opts["calibration_dir"])
    return make_robot_from_config(config_cls(**opts))


class LeRobotDriver(Driver):
    def __init__(self, robot_type: str | None = None, robot_options: dict[str, Any] | None = None,
                 keys: list[str] | None = None, scale: list[float] | None = None, robot: Any = None,
                 calibrate: bool = False):
        if robot is None:
            if robot_type is None:
                raise KeyError("lerobot driver: driver_options needs 'robot_type' (e.g. so101_follower)")
            robot = make_lerobot_robot(robot_type, robot_options or {})
        self.robot = robot
        self.keys = list(keys) if keys is not None else list(robot.action_features)
        missing = [k for k in self.keys if k not in robot.action_features]
        if missing:
            raise KeyError(f"lerobot driver: keys {missing} are not actions of {robot}; its actions: "
                           f"{list(robot.action_features)}")
        self.dim = len(self.keys)
        self.scale = np.ones(self.dim) if scale is None else np.asarray(scale, dtype=np.float64)
        if self.scale.shape != (self.dim,) or not np.all(self.scale != 0):
            raise ValueError(f"lerobot driver: scale needs {self.dim} non-zero numbers, got {scale!r}")
        self.calibrate = calibrate
        self._action = dict.fromkeys(self.keys, 0.0)
        self.errors = 0

    @property
    def names(self) -> list[str]:
        return list(self.keys)

    def connect(self) -> None:
        self.robot.connect(calibrate=self.calibrate)

    def read(self, q_out: np.ndarray, extra_out: np.ndarray) -> None:
        try:
            obs = self.robot.get_observation()
            for i, k in enumerate(self.keys):
                q_out[i] = float(obs[k]) * self.scale[i]
        except Exception as e:  # a bus error must not kill the loop: NaN makes the filter hold
            self.errors += 1
            if self.errors < 10:
                log.error("lerobot driver: read failed: %s", e)
            q_out[:] = np.nan

    def write(self, command: np.ndarray) -> None:
        a = self._action
        for i, k in enumerate(self.keys):
            a[k] = float(command[i] / self.scale[i])
        try:
            self.robot.send_action(a)
        except Exception as e:
            self.errors += 1
            if self.errors < 10:
                log.error("lerobot driver: write failed: %s", e)

    def close(self) -> None:
        if self.robot.is_connected:
            self.robot.disconnect()
