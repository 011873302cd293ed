"""The simulated robot: the tabletop suite's Panda (``policystack.envs``), stepped in real time by
the control loop, one ``mj_step`` per tick (the model's timestep is the loop period).

The loop process owns the physics (``SimDriver``); the supervisor owns a second copy of the
same task (``SimScene``) that it resets to pick the episode's layout and instruction, and that
renders the cameras and checks success from the loop's published qpos at the policy rate, so no
rendering ever runs inside the loop. At each episode reset the loop's copy is reset with the same
seed (objects placed through the model, such as buttons or a bowl, must collide where the scene
shows them) and then teleported to the scene's qpos.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from policystack.envs.robot import GRIPPER_CTRL_MAX, GRIPPER_JOINT_MAX
from policystack.robot.drivers import Driver
from policystack.robot.scene import LoopHandle, Scene


def _make_env(task: str, rate_hz: float, policy_hz: float, cameras: tuple[str, ...] = (), image_size: int = 96,
              env_state: bool = False):
    import policystack.envs as envs

    if abs(rate_hz - round(rate_hz)) > 1e-9 or abs(policy_hz - round(policy_hz)) > 1e-9:
        raise ValueError(f"sim driver: rate_hz ({rate_hz}) and policy_hz ({policy_hz}) must be integers")
    return envs.make(task, action_mode="joint", cameras=tuple(cameras), image_size=image_size,
                     fps=int(policy_hz), physics_hz=int(rate_hz), env_state=env_state).unwrapped


class SimDriver(Driver):
    """Driver over the suite's MuJoCo arm; ``task`` picks the scene (objects) of the episode."""

    dim = 8

    def __init__(self, rate_hz: float, policy_hz: float, task: str = "Reach", **_: Any):
        self.env = _make_env(task, rate_hz, policy_hz)
        self.model, self.data = self.env.model, self.env.data
        self.extra_dim = self.model.nq
        self._arm_qadr = self.env._arm_qadr
        self._arm_act = self.env._arm_act
        self._grip_act = self.env._grip_act
        self._grip_qadr = self.env._grip_qadr

    def connect(self) -> None:
        self.env.reset(seed=0)

    def read(self, q_out: np.ndarray, extra_out: np.ndarray) -> None:
        d = self.data
        q_out[:7] = d.qpos[self._arm_qadr]
        q_out[7] = 2.0 * min(max(d.qpos[self._grip_qadr] / GRIPPER_JOINT_MAX, 0.0), 1.0) - 1.0
        extra_out[: self.extra_dim] = d.qpos

    def write(self, command: np.ndarray) -> None:
        d = self.data
        d.ctrl[self._arm_act] = command[:7]
        d.ctrl[self._grip_act] = (command[7] + 1.0) * 0.5 * GRIPPER_CTRL_MAX
        mujoco.mj_step(self.model, d)

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
        self.data.ctrl[self._arm_act] = self.data.qpos[self._arm_qadr]
        self.data.ctrl[self._grip_act] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def close(self) -> None:
        self.env.close()


class SimScene(Scene):
    """The supervisor's copy of the scene: episode layouts, camera images, success."""

    robot_type = "panda"
    judges_success = True

    def __init__(self, task: str, rate_hz: float, policy_hz: float, cameras: tuple[str, ...], image_size: int,
                 env_state: bool = False):
        self.task = task
        self.env = _make_env(task, rate_hz, policy_hz, cameras, image_size, env_state)
        self.extra_dim = self.env.model.nq

    @property
    def max_steps(self) -> int:
        return type(self.env).max_episode_steps

    def driver_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {**options, "task": self.task}

    def start_episode(self, index: int, seed: int, loop: LoopHandle) -> str:
        """Lay out episode ``seed`` here and in the loop's sim (teleported to the same qpos)."""
        qpos, instruction = self.reset(seed)
        loop.reset_loop(qpos, seed)
        return instruction

    def frame(self, state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        return self.observe(state["extra"])

    def reset(self, seed: int) -> tuple[np.ndarray, str]:
        """(qpos to teleport the loop's sim to, instruction) of episode ``seed``."""
        self.env.reset(seed=seed)
        return self.env.data.qpos.copy(), self.env.task

    def observe(self, qpos: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        """Observation dict (state [15], images uint8 [3, H, W]) and success at ``qpos``."""
        env = self.env
        env.data.qpos[:] = qpos[: env.model.nq]
        env.data.qvel[:] = 0.0
        mujoco.mj_forward(env.model, env.data)
        success, _ = env.evaluate()
        return env._observation(), bool(success)

    @property
    def features(self):
        return self.env.features

    def close(self) -> None:
        self.env.close()
