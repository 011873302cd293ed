"""Simulation environments. Importing this package registers the MuJoCo tabletop suite as
``policystack/<Task>-v0`` (Reach, PressButton, OpenDrawer, Push, PickPlace, Stack,
PlaceObject, PlaceObjectHeldOut).

Conventions every env here follows (adapters for other suites, e.g. MetaWorld, match them):

- Observations are a ``gymnasium.spaces.Dict`` keyed by the data contract's names
  (``policystack.types``): ``observation.state`` float32 [D] and, per camera,
  ``observation.images.<camera>`` uint8 [3, H, W] (CHW). Camera set and resolution are
  constructor arguments (``cameras=("front", "wrist")`` or ``()``, ``image_size=96``).
- The language instruction is ``info["task"]`` (from ``reset`` and every ``step``) and
  ``env.unwrapped.task`` (str).
- ``info["is_success"]`` (bool) is the task's success predicate; reward terms are in ``info``
  as ``reward_<term>`` (Gymnasium convention) and the reward is their sum.
- ``env.unwrapped.fps`` (policy rate, Hz) and ``env.unwrapped.features`` (a
  ``policystack.types.FeatureSpec`` of ``observation.*`` and ``action``; cameras as dtype
  "video" with shape (H, W, 3)) are what a dataset recorded from the env needs.
- Actions are float32 Boxes; a wrong shape or NaN/inf raises ValueError, values out of range
  are clipped. The tabletop suite's layouts (``action_mode``):
  ``ee_delta`` = [dx, dy, dz, drx, dry, drz, gripper] in [-1, 1] (0.05 m and 0.25 rad per step
  at 1); ``joint`` = [q1..q7 (rad), gripper]; gripper -1 open .. +1 closed.
  ``observation.state`` = 7 joints, gripper closure [0, 1], end-effector xyz, quaternion wxyz.
- ``gymnasium.vector.AsyncVectorEnv`` works; with cameras, pass ``context="spawn"`` (or
  "forkserver") when the parent process has rendered before: an EGL context does not survive
  ``fork`` and the forked workers hang.
- Episodes end with ``terminated=True`` on success; ``TimeLimit`` truncates at the registered
  ``max_episode_steps``.
"""

from __future__ import annotations

import gymnasium as gym

from policystack.envs.tasks import TASKS


def env_id(task: str) -> str:
    return f"policystack/{task}-v0"


def _register() -> None:
    for name, cls in TASKS.items():
        if env_id(name) not in gym.registry:
            gym.register(id=env_id(name), entry_point=f"{cls.__module__}:{cls.__qualname__}",
                         max_episode_steps=cls.max_episode_steps)


def task_names() -> list[str]:
    return list(TASKS)


def make(task: str, **kwargs) -> gym.Env:
    """``gym.make`` for a task name ("Reach" or "policystack/Reach-v0"); unknown names raise a
    KeyError listing the valid ones."""
    name = task.removeprefix("policystack/").removesuffix("-v0")
    if name not in TASKS:
        raise KeyError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return gym.make(env_id(name), **kwargs)


_register()
