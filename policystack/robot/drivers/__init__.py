"""Robot drivers: what the control loop reads state from and writes commands to.

A driver's command vector and measurement are ``[A]`` float64 in the robot config's limit order
(for the Panda: 7 joints in rad, gripper -1 open .. +1 closed). ``extra`` is driver-specific
state the supervisor needs (the simulator's full qpos, for rendering and success checks).
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class Driver(abc.ABC):
    dim: int  # A
    extra_dim: int = 0

    @property
    def names(self) -> list[str]:
        """One name per command component (recorded as the dataset's state / action names)."""
        return [f"q{i}" for i in range(self.dim)]

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def read(self, q_out: np.ndarray, extra_out: np.ndarray) -> None:
        """Measured positions into q_out [A]; driver extras into extra_out [extra_dim]."""

    @abc.abstractmethod
    def write(self, command: np.ndarray) -> None:
        """Send the filtered command [A] (one control tick)."""

    def reset(self, extra: np.ndarray, seed: int | None = None) -> None:
        """Episode reset: the simulator lays out episode ``seed``'s scene and teleports to the state
        ``extra``; hardware does nothing."""
        return None

    @abc.abstractmethod
    def close(self) -> None: ...


def make_driver(name: str, options: dict[str, Any], rate_hz: float, policy_hz: float) -> Driver:
    if name == "sim":
        from policystack.robot.drivers.sim import SimDriver

        return SimDriver(rate_hz=rate_hz, policy_hz=policy_hz, **options)
    if name == "lerobot":
        from policystack.robot.drivers.lerobot import LeRobotDriver

        return LeRobotDriver(**options)
    raise KeyError(f"unknown driver {name!r}; valid drivers: sim, lerobot")
