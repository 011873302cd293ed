"""The simulated robot: the tabletop suite's Panda (``policystack.envs``), stepped in real time by
the control loop, one ``mj_step`` per tick (the model's timestep is the loop period).

The loop process owns the physics (``SimDriver``); the supervisor owns a second copy of the same
task (``scene.SimScene``) that picks the episode's layout and instruction, renders the cameras and
checks success from the loop's published qpos at the policy rate, so no rendering ever runs inside
the loop. At each episode reset the loop's copy is reset with the same seed (objects placed through
the model, such as buttons or a bowl, must collide where the scene shows them) and, if its state
differs from the scene's, teleported to the scene's qpos.

Both copies talk to the env only through its public robot handle (``TabletopEnv.joint_positions``,
``set_joint_targets``, ``observation``; docs in ``policystack/envs/base.py``) and MuJoCo's
``model`` / ``data``.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from policystack.robot.drivers import Driver


def make_sim_env(task: str, rate_hz: float, policy_hz: float, cameras: tuple[str, ...] = (), image_size: int = 96,
                 env_state: bool = False):
    """The suite's ``task`` in joint mode with physics at the loop rate (unwrapped ``TabletopEnv``)."""
    import policystack.envs as envs

    if abs(rate_hz - round(rate_hz)) > 1e-9 or abs(policy_hz - round(policy_hz)) > 1e-9:
        raise ValueError(f"sim driver: rate_hz ({rate_hz}) and policy_hz ({policy_hz}) must be integers")
    return envs.make(task, action_mode="joint", cameras=tuple(cameras), image_size=image_size,
                     fps=int(policy_hz), physics_hz=int(rate_hz), env_state=env_state).unwrapped


class SimDriver(Driver):
    """Driver over the suite's MuJoCo arm; ``task`` picks the scene (objects) of the episode."""

    dim = 8

    def __init__(self, rate_hz: float, policy_hz: float, task: str = "Reach", **_: Any):
        self.env = make_sim_env(task, rate_hz, policy_hz)
        self.model, self.data = self.env.model, self.env.data
        self.extra_dim = self.model.nq

    def connect(self) -> None:
        self.env.reset(seed=0)

    def read(self, q_out: np.ndarray, extra_out: np.ndarray) -> None:
        self.env.joint_positions(q_out)
        extra_out[: self.extra_dim] = self.data.qpos

    def write(self, command: np.ndarray) -> None:
        self.env.set_joint_targets(command)
        mujoco.mj_step(self.model, self.data)

    def reset(self, extra: np.ndarray, seed: int | None = None) -> None:
        """Teleport to qpos ``extra`` [nq]. With ``seed``, first reset the env with it, as SimScene.reset
        does, so that what tasks place through the model (``model.body_pos``: Reach's balls,
        PressButton's buttons, OpenDrawer's cabinet, PickPlace's bowl) matches the supervisor's scene;
        without it those keep their previous layout."""
        if seed is None:
            mujoco.mj_resetData(self.model, self.data)
        else:
            self.env.reset(seed=seed)
            self.data.qvel[:] = 0.0
        self.data.qpos[:] = extra[: self.extra_dim]
        hold = self.env.joint_positions()
        hold[7] = -1.0  # gripper open
        self.env.set_joint_targets(hold)
        mujoco.mj_forward(self.model, self.data)

    def close(self) -> None:
        self.env.close()
