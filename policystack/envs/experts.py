"""Scripted experts for the tabletop suite: privileged (they read object poses from the sim),
closed-loop waypoint followers. Each step an expert picks an end-effector target (position,
yaw about the vertical, gripper command) from its current phase, then turns it into an action of
the env's ``action_mode`` (:meth:`Expert.to_action`). Diversity between demonstrations comes from
the seed: per-episode offsets of the waypoints and small Gaussian noise on the motion.

Usage::

    env = policystack.envs.make("PickPlace", cameras=())
    expert = make_expert(env, seed=0)
    obs, info = env.reset(seed=0); expert.reset()
    while True:
        obs, r, term, trunc, info = env.step(expert.act())
        if term or trunc: break
"""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import mujoco
import numpy as np

from policystack.envs.base import DOWN_QUAT, POS_SCALE, ROT_SCALE, TabletopEnv
from policystack.envs.scene import CUBE_HALF
from policystack.envs.tasks import (
    OpenDrawerEnv,
    PickPlaceEnv,
    PlaceObjectEnv,
    PlaceObjectHeldOutEnv,
    PressButtonEnv,
    PushEnv,
    ReachEnv,
    StackEnv,
)
from policystack.types import PRIVILEGED_DECISION, PRIVILEGED_OBJECTS, Feature, FeatureSpec

OPEN, CLOSED = -1.0, 1.0


def yaw_quat(yaw: float) -> np.ndarray:
    """Gripper pointing down, rotated by yaw about world z: [4] wxyz."""
    out = np.empty(4)
    mujoco.mju_mulQuat(out, np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]), DOWN_QUAT)
    return out


def cube_grasp_yaw(quat: np.ndarray) -> float:
    """Yaw in [-pi/4, pi/4] that aligns the fingers with a cube's faces (cubes are 90-deg symmetric)."""
    w, x, y, z = quat
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class Expert:
    """Base: phase bookkeeping and conversion of an EE target to an action."""

    task_class: ClassVar[type[TabletopEnv]]
    # what each phase does, in words (the meta-decision of a reasoning policy's labels, privileged_step)
    phases: ClassVar[tuple[str, ...]]
    max_speed = 0.5  # fraction of POS_SCALE per step (0.25 m/s at 10 Hz)
    noise = 0.05  # std of the action noise on the position components (normalised units)

    def __init__(self, env: gym.Env, seed: int | None = None):
        self.env: TabletopEnv = env.unwrapped  # type: ignore[assignment]
        if not isinstance(self.env, self.task_class):
            raise TypeError(f"{type(self).__name__} drives {self.task_class.__name__}, got {type(self.env).__name__}")
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode; a seed makes the episode's noise reproducible on its own."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.phase = 0
        self.phase_steps = 0
        self.offset = self.rng.normal(0.0, 0.003, size=3)  # per-episode waypoint jitter (m)

    def next_phase(self) -> None:
        self.phase += 1
        self.phase_steps = 0

    def plan(self) -> tuple[np.ndarray, float, float]:
        """(target position [3], yaw, gripper) for the current state; may advance the phase."""
        raise NotImplementedError

    def at(self, target: np.ndarray, tol: float = 0.01) -> bool:
        return bool(np.linalg.norm(self.env.ee_pos - target) < tol)

    def act(self) -> np.ndarray:
        pos, yaw, grip = self.plan()
        self.phase_steps += 1
        return self.to_action(pos, yaw_quat(yaw), grip)

    def to_action(self, pos: np.ndarray, quat: np.ndarray, grip: float) -> np.ndarray:
        env = self.env
        step = (pos - env.ee_pos) / POS_SCALE
        norm = np.linalg.norm(step)
        if norm > self.max_speed:
            step *= self.max_speed / norm
        step = step + self.rng.normal(0.0, self.noise, size=3)
        if env.action_mode == "ee_delta":
            dq = np.empty(4)
            mujoco.mju_mulQuat(dq, quat, np.array([1.0, -1.0, -1.0, -1.0]) * env.ee_quat)  # quat * ee^-1
            dq = -dq if dq[0] < 0 else dq  # shortest rotation
            rot = np.empty(3)
            mujoco.mju_quat2Vel(rot, dq, 1.0)
            return np.clip(np.concatenate([step, rot / ROT_SCALE, [grip]]), -1.0, 1.0).astype(np.float32)
        q = env.ik_joint_targets(env.ee_pos + np.clip(step, -1.0, 1.0) * POS_SCALE, quat)
        return np.append(q, grip).astype(np.float32)


class ReachExpert(Expert):
    task_class = ReachEnv
    phases = ("move to the ball",)

    def plan(self):
        return self.env.body_pos(self.env.target) + self.offset * 0.5, 0.0, OPEN


class PressButtonExpert(Expert):
    task_class = PressButtonEnv
    phases = ("move above the button", "press the button")

    def plan(self):
        top = self.env.body_pos(self.env.target) + [0.0, 0.0, 0.016] + self.offset * [1, 1, 0]
        if self.phase == 0:
            above = top + [0, 0, 0.08]
            if self.at(above, 0.015):
                self.next_phase()
            return above, 0.0, CLOSED
        return top - [0, 0, 0.02], 0.0, CLOSED


class OpenDrawerExpert(Expert):
    task_class = OpenDrawerEnv
    phases = ("move above the handle", "lower behind the handle", "pull the drawer open")

    def plan(self):
        env = self.env
        h = env.handle_pos()
        slot = h + [0.026, 0.0, 0.0] + self.offset * [0, 1, 0]  # between handle and drawer front
        if self.phase == 0:
            above = slot + [0, 0, 0.1]
            if self.at(above, 0.015):
                self.next_phase()
            return above, 0.0, CLOSED
        if self.phase == 1:
            down = slot - [0, 0, 0.015]
            if self.at(down, 0.01):
                self.next_phase()
            return down, 0.0, CLOSED
        return slot - [0.06, 0.0, 0.015], 0.0, CLOSED


class PushExpert(Expert):
    task_class = PushEnv
    phases = ("move above the cube", "lower behind the cube", "push the cube to the zone")
    max_speed = 0.4
    push_height = 0.018

    def plan(self):
        env = self.env
        cube, goal = env.body_pos("cube"), env.body_pos("zone")
        to_goal = goal[:2] - cube[:2]
        direction = to_goal / max(np.linalg.norm(to_goal), 1e-6)
        behind = np.array([*(cube[:2] - direction * (CUBE_HALF + 0.035)), self.push_height]) + self.offset * [1, 1, 0]
        ee = env.ee_pos
        rel = ee[:2] - cube[:2]
        lateral = abs(rel[0] * direction[1] - rel[1] * direction[0])
        along = -(rel @ direction)  # > 0 when behind the cube
        if self.phase == 0:  # above the pre-push point
            target = behind + [0, 0, 0.08]
            if self.at(target, 0.02):
                self.next_phase()
            return target, 0.0, CLOSED
        if self.phase == 1:  # down behind the cube
            if self.at(behind, 0.01):
                self.next_phase()
            return behind, 0.0, CLOSED
        if lateral > 0.02 or along < CUBE_HALF or along > 0.09:  # lost the cube: go round again
            self.phase = 0
            return ee + [0, 0, 0.05], 0.0, CLOSED
        ahead = np.array([*(goal[:2] - direction * (CUBE_HALF + 0.015)), self.push_height])
        return ahead, 0.0, CLOSED


class _PickExpert(Expert):
    """Shared pick-and-drop sequence: above, down, close, lift, carry, lower, open, retreat."""

    phases = ("move above the object", "lower to the object", "close the gripper", "lift the object",
              "carry it to the goal", "lower it", "open the gripper", "retreat")

    def grasp_pose(self, obj: str) -> tuple[np.ndarray, float]:
        """Pinch point [3] and gripper yaw that hold body ``obj``: a cube's centre, face-aligned."""
        env = self.env
        return env.body_pos(obj), cube_grasp_yaw(env.data.xquat[env.model.body(obj).id])

    def pick_and_drop(self, obj: str, drop: np.ndarray):
        cube, yaw = self.grasp_pose(obj)
        grasp = cube + self.offset * [1, 1, 0.5]
        if self.phase == 0:  # above the cube
            target = grasp + [0, 0, 0.1]
            if self.at(target, 0.015) and self.phase_steps > 2:
                self.next_phase()
            return target, yaw, OPEN
        if self.phase == 1:  # down
            if self.at(grasp, 0.008) or self.phase_steps > 15:
                self.next_phase()
            return grasp, yaw, OPEN
        if self.phase == 2:  # close
            if self.phase_steps >= 5:
                self.next_phase()
                self.grasp_yaw = yaw
            return grasp, yaw, CLOSED
        if self.phase == 3:  # lift
            target = np.array([*grasp[:2], max(0.15, drop[2] + 0.06)])
            if self.at(target, 0.02):
                self.next_phase()
            return target, self.grasp_yaw, CLOSED
        if self.phase == 4:  # carry above the drop point
            target = drop + [0, 0, 0.06]
            if self.at(target, 0.012):
                self.next_phase()
            return target, self.grasp_yaw, CLOSED
        if self.phase == 5:  # lower
            if self.at(drop, 0.008) or self.phase_steps > 15:
                self.next_phase()
            return drop, self.grasp_yaw, CLOSED
        if self.phase == 6:  # open
            if self.phase_steps >= 4:
                self.next_phase()
            return drop, self.grasp_yaw, OPEN
        return drop + [0, 0, 0.1], self.grasp_yaw, OPEN  # retreat


class PickPlaceExpert(_PickExpert):
    task_class = PickPlaceEnv

    def plan(self):
        bowl = self.env.body_pos("bowl")
        return self.pick_and_drop(self.env.target, np.array([bowl[0], bowl[1], 0.07]))


class StackExpert(_PickExpert):
    task_class = StackEnv

    def plan(self):
        bottom = self.env.body_pos(self.env.bottom)
        return self.pick_and_drop(self.env.top, bottom + [0, 0, 2 * CUBE_HALF + 0.008])


class PlaceObjectExpert(_PickExpert):
    task_class = PlaceObjectEnv

    def grasp_pose(self, obj: str) -> tuple[np.ndarray, float]:
        return self.env.grasp_pose()

    def plan(self):
        env = self.env
        bowl = env.body_pos(env.bowl)
        return self.pick_and_drop(env.target, np.array([bowl[0], bowl[1], env.grasp_height() + 0.03]))


class PlaceObjectHeldOutExpert(PlaceObjectExpert):
    task_class = PlaceObjectHeldOutEnv


EXPERTS: dict[str, type[Expert]] = {
    cls.task_class.name: cls
    for cls in (ReachExpert, PressButtonExpert, OpenDrawerExpert, PushExpert, PickPlaceExpert, StackExpert,
                PlaceObjectExpert, PlaceObjectHeldOutExpert)
}


DECISIONS: tuple[str, ...] = tuple(dict.fromkeys(p for e in EXPERTS.values() for p in e.phases))
MAX_OBJECTS = 8  # object slots of privileged.objects (a tabletop scene has at most 6 coloured objects)


def privileged_features() -> FeatureSpec:
    """The privileged columns ``policystack collect privileged=true`` adds (docs/envs.md): the scene's
    coloured objects (``vqa.scene_objects``: colour and kind as ids into the lists in ``info``, true
    world position in m; empty slots -1, -1, 0, 0, 0) and the expert's phase (an id into ``DECISIONS``)."""
    from policystack.envs.scene import COLORS
    from policystack.envs.vqa import KINDS

    names = [f"object{i}.{n}" for i in range(MAX_OBJECTS) for n in ("color", "kind", "x", "y", "z")]
    return {PRIVILEGED_OBJECTS: Feature("float32", (5 * MAX_OBJECTS,), names=names,
                                        info={"colors": list(COLORS), "kinds": list(KINDS)}),
            PRIVILEGED_DECISION: Feature("float32", (1,), names=["decision"], info={"decisions": list(DECISIONS)})}


def privileged_step(env: gym.Env, expert: Expert) -> dict[str, np.ndarray]:
    """This step's privileged columns (see ``privileged_features``); call after ``expert.act()``, so
    the phase is the one whose target made the action."""
    from policystack.envs.scene import COLORS
    from policystack.envs.vqa import KINDS, scene_objects

    objects = np.zeros((MAX_OBJECTS, 5), np.float32)
    objects[:, :2] = -1
    for i, o in enumerate(scene_objects(env.unwrapped)[:MAX_OBJECTS]):
        objects[i] = [list(COLORS).index(o.color), KINDS.index(o.kind), *o.position]
    phase = expert.phases[min(expert.phase, len(expert.phases) - 1)]
    return {PRIVILEGED_OBJECTS: objects.reshape(-1),
            PRIVILEGED_DECISION: np.array([DECISIONS.index(phase)], np.float32)}


def make_expert(env: gym.Env, seed: int | None = None) -> Expert:
    """The scripted expert for env's task."""
    name = type(env.unwrapped).name
    if name not in EXPERTS:
        raise KeyError(f"no scripted expert for task {name!r}; experts exist for {', '.join(EXPERTS)}")
    return EXPERTS[name](env, seed=seed)


def perturb(env: gym.Env, action: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``action`` with Gaussian noise of std ``noise`` on its motion part (ee_delta: the position deltas,
    in the action's normalised units; joint: the seven joint targets, ``noise`` x 0.1 rad), clipped to the
    action space. The gripper command is left alone."""
    out = np.array(action, dtype=np.float32)
    n = 3 if env.unwrapped.action_mode == "ee_delta" else 7
    scale = 1.0 if n == 3 else 0.1
    out[:n] += rng.normal(0.0, noise * scale, size=n).astype(np.float32)
    space = env.action_space
    return np.clip(out, space.low, space.high).astype(np.float32)


def run_episode(env: gym.Env, expert: Expert, seed: int, noise: float = 0.0,
                privileged: bool = False) -> tuple[list[tuple[dict, np.ndarray]], bool]:
    """Roll the expert out for one episode: ([(observation, action), ...], success).
    The same seed gives the same episode (env and expert noise are both seeded with it).
    ``privileged``: each recorded observation also holds ``privileged_step``'s columns.

    ``noise`` > 0 is DART (Laskey et al. 2017): the env executes the expert's action plus Gaussian noise
    (``perturb``) while the recorded action stays the expert's own, so the demonstrations visit states off
    the expert's path together with the action that corrects them."""
    obs, info = env.reset(seed=seed)
    expert.reset(seed=seed)
    rng = np.random.default_rng([seed, 0xDA27])  # its own stream: noise=0 episodes are unchanged
    frames = []
    while True:
        action = expert.act()
        frames.append(({**obs, **privileged_step(env, expert)} if privileged else obs, action))
        executed = perturb(env, action, noise, rng) if noise > 0 else action
        obs, _, terminated, truncated, info = env.step(executed)
        if terminated or truncated:
            return frames, bool(info["is_success"])


def success_rates(episodes: int = 100, action_mode: str = "ee_delta", tasks: list[str] | None = None,
                  seed: int = 0, noise: float = 0.0, start_pose: str = "random") -> list[dict]:
    """Expert success over seeds seed..seed+episodes-1 per task (state only, no rendering)."""
    from policystack.envs import make

    rows = []
    for task in tasks or list(EXPERTS):
        env = make(task, cameras=(), action_mode=action_mode, start_pose=start_pose)
        expert = make_expert(env)
        lengths, successes = [], 0
        for s in range(seed, seed + episodes):
            frames, ok = run_episode(env, expert, s, noise)
            successes += ok
            lengths.append(len(frames))
        env.close()
        rows.append({"task": task, "action_mode": action_mode, "episodes": episodes, "successes": successes,
                     "mean_length": float(np.mean(lengths)), "max_steps": type(env.unwrapped).max_episode_steps})
    return rows


def _write_doc_section(path: str, name: str, body: str) -> None:
    import pathlib
    import re

    from policystack.io import atomic_write_bytes

    doc = pathlib.Path(path)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    text = doc.read_text() if doc.is_file() else ""
    section = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text = section + "\n\n" + text.lstrip("\n")
    atomic_write_bytes(doc, text.encode())


def main(argv: list[str] | None = None) -> int:
    """``python -m policystack.envs.experts [--episodes 100] [--write docs/envs.md]``: measure
    every expert's success rate in both action modes and (optionally) write the table."""
    import argparse

    p = argparse.ArgumentParser(description="Scripted expert success rates of the tabletop suite.")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--modes", default="ee_delta,joint")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task with an expert)")
    p.add_argument("--write", default=None, help="markdown file to (re)write the expert_success section of")
    args = p.parse_args(argv)
    lines = ["| task | action mode | success | mean episode length (steps) | time limit |",
             "|---|---|---:|---:|---:|"]
    for mode in args.modes.split(","):
        for r in success_rates(args.episodes, mode, args.tasks.split(",") if args.tasks else None):
            line = (f"| {r['task']} | {mode} | {r['successes']}/{r['episodes']} | {r['mean_length']:.1f} | "
                    f"{r['max_steps']} |")
            print(line, flush=True)
            lines.append(line)
    body = (f"Scripted expert success over seeds 0..{args.episodes - 1} (`python -m policystack.envs.experts "
            f"--episodes {args.episodes}`; state-only, the same seeds in both modes).\n\n" + "\n".join(lines))
    if args.write:
        _write_doc_section(args.write, "expert_success", body)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
