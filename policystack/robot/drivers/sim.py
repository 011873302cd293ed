"""The simulated robot: the tabletop suite's Panda (``policystack.envs``), stepped in real time by
the control loop, one ``mj_step`` per tick (the model's timestep is the loop period).

The loop process owns the physics (``SimDriver``); the supervisor owns a second copy of the same
task (``scene.SimScene``) that picks the episode's layout and instruction, renders the cameras and
checks success from the loop's published state at the policy rate, so no rendering ever runs inside
the loop. That state (the driver's ``extra``, [2 nq]) is the qpos and the qpos before the last
``mj_step`` (NaN right after a reset): an env observes after ``mj_step``, whose positions of bodies,
sites and cameras are those computed at the start of its last physics step while its qpos is the
step's end, and the scene rebuilds exactly that (``SimScene.observe``). At each episode reset the loop's copy is reset with the same seed (objects placed through
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
        self.nq = self.model.nq
        self.extra_dim = 2 * self.nq  # qpos, qpos before the last mj_step
        self.qpos_before = np.full(self.nq, np.nan)

    def connect(self) -> None:
        self.env.reset(seed=0)

    def read(self, q_out: np.ndarray, extra_out: np.ndarray) -> None:
        self.env.joint_positions(q_out)
        extra_out[: self.nq] = self.data.qpos
        extra_out[self.nq: self.extra_dim] = self.qpos_before

    def write(self, command: np.ndarray) -> None:
        self.env.set_joint_targets(command)
        self.qpos_before[:] = self.data.qpos
        mujoco.mj_step(self.model, self.data)

    def reset(self, extra: np.ndarray, seed: int | None = None) -> None:
        """Teleport to qpos ``extra[:nq]`` (at rest). With ``seed``, first reset the env with it, as
        SimScene.reset does, so that what tasks place through the model (``model.body_pos``: Reach's
        balls, PressButton's buttons, OpenDrawer's cabinet, PickPlace's bowl) matches the supervisor's
        scene (without it those keep their previous layout); when that reset already gives the scene's
        qpos (the normal case: both copies are the same deterministic env), nothing is teleported and
        the state is exactly the env's after ``reset(seed)``, velocities of the settling objects
        included, as an eval rollout starts."""
        q = extra[: self.nq]
        self.qpos_before[:] = np.nan
        if seed is None:
            mujoco.mj_resetData(self.model, self.data)
        else:
            self.env.reset(seed=seed)
        if seed is None or not np.array_equal(self.data.qpos, q):
            self.data.qvel[:] = 0.0
            self.data.qpos[:] = q
        hold = self.env.joint_positions()
        hold[7] = -1.0  # gripper open
        self.env.set_joint_targets(hold)
        mujoco.mj_forward(self.model, self.data)

    def close(self) -> None:
        self.env.close()
