"""What the supervisor does per episode besides relaying chunks: set the episode up, build each
observation, judge success. One interface, two implementations:

- ``SimScene`` (here): a second copy of the MuJoCo task (the loop's ``drivers/sim.py`` holds the
  first) picks the episode's layout and instruction, teleports the loop's sim there, renders the
  cameras from the loop's qpos and checks success.
- ``RobotScene`` (here): a real robot. Before every episode the loop drives the arm to the config's
  ``home`` through the safety filter (velocity / acceleration limits apply) and, between episodes,
  waits ``reset_wait_s`` for a person to reset the scene. Observations are the measured joint
  positions from the loop's state block plus camera frames read here, at the policy rate, through
  LeRobot's camera API (never inside the loop), resized to the shape the checkpoint takes. There is
  no success check: an episode ends at ``episode_s`` or on an operator command.

The supervisor hands a scene a ``LoopHandle`` (itself): the few loop operations a scene may use.
"""

from __future__ import annotations

import abc
import json
import sys
from typing import Any, Protocol

import mujoco
import numpy as np

from policystack.robot.config import RobotConfig
from policystack.robot.drivers.sim import make_sim_env
from policystack.types import ACTION, OBS_IMAGES, OBS_STATE, Feature, FeatureSpec


class SensorFault(RuntimeError):
    """An observation could not be built (bus read NaN, camera failed): the episode ends, the loop holds."""


class LoopHandle(Protocol):
    """What a scene may ask of the supervisor's control loop."""

    def reset_loop(self, extra: np.ndarray, seed: int) -> None:
        """Simulator only: lay out episode ``seed`` and teleport to state ``extra`` (waits for the ack)."""

    def move_to(self, target: np.ndarray, tolerance: np.ndarray, timeout_s: float) -> bool:
        """Drive the arm to ``target`` [A] through the safety filter; True once every measured component
        is within ``tolerance`` [A] (then hold), False on timeout or stop (hold)."""

    def pause(self, seconds: float) -> None:
        """Hold for ``seconds`` (telemetry and operator commands keep being served; a stop ends it)."""

    def log(self, line: str) -> None: ...


class Scene(abc.ABC):
    """Per-episode set-up, observations and success of one robot."""

    robot_type: str  # LeRobot's robot type, written into the recorded dataset
    judges_success: bool  # False: every episode's ``success`` is False and means "not judged"
    extra_dim: int  # size of the driver's ``extra`` in the loop's state block

    @property
    @abc.abstractmethod
    def features(self) -> FeatureSpec:
        """What one recorded frame holds (besides ``action``'s shape, which is the robot's)."""

    @property
    @abc.abstractmethod
    def max_steps(self) -> int:
        """Policy steps of an episode unless the run overrides it."""

    def driver_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The loop's driver options (the sim adds its task)."""
        return options

    def attach(self, loop_info: dict[str, Any]) -> None:
        """The loop is up; ``loop_info``: what its driver reported (``names`` of the components)."""
        return None

    def check_policy(self, hello: dict[str, Any]) -> None:
        """The worker's ``hello`` (state_dim, images {camera: [3, H, W]}): raise ValueError if this scene
        cannot feed it."""
        return None

    @abc.abstractmethod
    def start_episode(self, index: int, seed: int, loop: LoopHandle) -> str:
        """Bring robot and scene to the start of episode ``index``; returns the episode's instruction."""

    @abc.abstractmethod
    def frame(self, state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        """(observation {state float32 [D], images uint8 [3, H, W]}, success) from the loop's state
        block snapshot (``q_meas``, ``q_cmd``, ``extra``); raises SensorFault."""

    def close(self) -> None:
        return None


def resize_frame(img: np.ndarray, height: int, width: int, where: str) -> np.ndarray:
    """A camera frame uint8 [h, w, 3] (RGB) -> uint8 [3, height, width] (area interpolation when
    shrinking, linear when growing)."""
    import cv2

    if img.ndim != 3 or img.shape[2] != 3:
        raise SensorFault(f"{where}: frame of shape {list(img.shape)}; expected [height, width, 3]")
    if img.dtype != np.uint8:
        raise SensorFault(f"{where}: frame of dtype {img.dtype}; expected uint8")
    if img.shape[:2] != (height, width):
        shrink = img.shape[0] * img.shape[1] > height * width
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def make_lerobot_cameras(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """LeRobot cameras (not connected) from the robot config's ``cameras`` entries, built as LeRobot's
    ``make_cameras_from_configs`` does: the entry's ``type`` picks the registered ``CameraConfig``
    (opencv, intelrealsense, ... or a third-party one that is imported), the other keys but
    ``feature`` are its fields."""
    import lerobot.cameras.opencv  # noqa: F401  (registers "opencv")
    from lerobot.cameras import CameraConfig
    from lerobot.cameras.utils import make_cameras_from_configs

    try:
        import lerobot.cameras.realsense  # noqa: F401  (registers "intelrealsense"; its SDK loads on connect)
    except ImportError:
        pass
    configs = {}
    for name, entry in entries.items():
        opts = {k: v for k, v in entry.items() if k not in ("type", "feature")}
        try:
            cls = CameraConfig.get_choice_class(entry["type"])
        except KeyError:
            raise KeyError(f"cameras.{name}.type={entry['type']!r}: not a LeRobot camera type; known: "
                           f"{sorted(CameraConfig.get_known_choices())}") from None
        try:
            configs[name] = cls(**opts)
        except (TypeError, ValueError) as e:
            raise ValueError(f"cameras.{name}: {e}") from None
    return make_cameras_from_configs(configs)


class SimScene(Scene):
    """The supervisor's copy of the simulated scene: episode layouts, camera images, success."""

    robot_type = "panda"
    judges_success = True

    def __init__(self, task: str, rate_hz: float, policy_hz: float, cameras: tuple[str, ...], image_size: int,
                 env_state: bool = False):
        self.task = task
        self.env = make_sim_env(task, rate_hz, policy_hz, cameras, image_size, env_state)
        self.nq = self.env.model.nq
        self.extra_dim = 2 * self.nq  # the sim driver's: qpos, qpos before its last mj_step

    @property
    def max_steps(self) -> int:
        return type(self.env).max_episode_steps

    @property
    def features(self) -> FeatureSpec:
        return self.env.features

    def driver_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {**options, "task": self.task}

    def start_episode(self, index: int, seed: int, loop: LoopHandle) -> str:
        """Lay out episode ``seed`` here and in the loop's sim (teleported to the same qpos)."""
        extra, instruction = self.reset(seed)
        loop.reset_loop(extra, seed)
        return instruction

    def frame(self, state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        return self.observe(state["extra"])

    def reset(self, seed: int) -> tuple[np.ndarray, str]:
        """(the driver state to reset the loop's sim to [2 nq]: qpos and NaN, instruction) of episode ``seed``."""
        self.env.reset(seed=seed)
        return np.concatenate([self.env.data.qpos, np.full(self.nq, np.nan)]), self.env.task

    def observe(self, extra: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        """Observation dict (state [15], images uint8 [3, H, W]) and success of the driver state ``extra``
        (qpos [nq], qpos before the last physics step [nq]), exactly as the env observes after ``step``:
        positions of bodies, sites and cameras computed at the earlier qpos, joint readings at the later
        one. Right after a reset (no earlier qpos), the env's own reset state when it is at that qpos."""
        env, nq = self.env, self.nq
        qpos, before = extra[:nq], extra[nq: 2 * nq]
        if np.isfinite(before).all():
            env.data.qpos[:] = before
            env.data.qvel[:] = 0.0
            mujoco.mj_forward(env.model, env.data)
            env.data.qpos[:] = qpos
        elif not np.array_equal(env.data.qpos, qpos):
            env.data.qpos[:] = qpos
            env.data.qvel[:] = 0.0
            mujoco.mj_forward(env.model, env.data)
        success, _ = env.evaluate()
        return env.observation(), bool(success)

    def close(self) -> None:
        self.env.close()


class RobotScene(Scene):
    """A real robot (driver ``lerobot``): homing between episodes, LeRobot cameras, the ``task=`` text
    as instruction, episodes of ``episode_s``."""

    judges_success = False
    extra_dim = 0

    def __init__(self, robot: RobotConfig, instruction: str, cameras: dict[str, Any] | None = None,
                 read_timeout_ms: float = 500.0):
        if not instruction or not instruction.strip():
            raise ValueError("task: a real robot needs the instruction as free text, e.g. task=\"pick up the cube\"")
        self.robot = robot
        self.instruction = instruction
        self.robot_type = str(robot.driver_options.get("robot_type", robot.name))
        self.names = [f"q{i}" for i in range(robot.limits.dim)]
        self.read_timeout_ms = read_timeout_ms
        self.feature_of = {name: cam.get("feature", f"{OBS_IMAGES}.{name}") for name, cam in robot.cameras.items()}
        self.cameras = make_lerobot_cameras(robot.cameras) if cameras is None else cameras
        self.shapes: dict[str, tuple[int, int, int]] = {}  # feature key -> (3, H, W) the policy takes
        self._connected: list[Any] = []
        try:
            for name, cam in self.cameras.items():
                try:
                    cam.connect()
                except Exception as e:
                    raise SensorFault(f"camera {name!r} ({type(cam).__name__}) did not connect: {e}") from None
                self._connected.append(cam)
        except BaseException:
            self.close()
            raise

    @property
    def max_steps(self) -> int:
        return max(1, int(round(self.robot.episode_s * self.robot.policy_hz)))

    @property
    def features(self) -> FeatureSpec:
        A = self.robot.limits.dim
        feats: FeatureSpec = {OBS_STATE: Feature("float32", (A,), names=list(self.names)),
                              ACTION: Feature("float32", (A,), names=list(self.names))}
        for key in self.feature_of.values():
            _, h, w = self.shapes[key]
            feats[key] = Feature("video", (h, w, 3))
        return feats

    def attach(self, loop_info: dict[str, Any]) -> None:
        names = loop_info.get("names")
        if isinstance(names, list) and len(names) == self.robot.limits.dim:
            self.names = [str(n) for n in names]

    def check_policy(self, hello: dict[str, Any]) -> None:
        A = self.robot.limits.dim
        if hello["state_dim"] != A:
            raise ValueError(f"the checkpoint's observation.state has {hello['state_dim']} values; robot "
                             f"{self.robot.name!r} measures {A} ({', '.join(self.names)})")
        wanted = {f"{OBS_IMAGES}.{cam}": tuple(int(x) for x in shape) for cam, shape in hello["images"].items()}
        have = set(self.feature_of.values())
        extra = sorted(have - set(wanted))
        if extra:
            cams = [n for n, k in self.feature_of.items() if k in extra]
            raise ValueError(f"cameras {cams} feed {extra}, which the checkpoint does not take; it takes "
                             f"{sorted(wanted) or 'no images'} (set cameras.<name>.feature, or remove the camera)")
        missing = sorted(set(wanted) - have)
        if missing:
            raise ValueError(f"the checkpoint takes {missing}, which no camera of robot {self.robot.name!r} feeds "
                             f"(cameras: {self.feature_of or 'none'}); add a cameras entry with that feature")
        for key, shape in wanted.items():
            if len(shape) != 3 or shape[0] != 3 or min(shape) <= 0:
                raise ValueError(f"the checkpoint's {key} has shape {list(shape)}; expected [3, H, W]")
        self.shapes = wanted

    def start_episode(self, index: int, seed: int, loop: LoopHandle) -> str:
        r = self.robot
        if index > 0 and r.reset_wait_s > 0:
            loop.log(f"reset the scene; next episode in {r.reset_wait_s:g} s")
            loop.pause(r.reset_wait_s)
        if r.home is not None:
            loop.log(f"homing to {r.home}")
            if not loop.move_to(np.asarray(r.home), np.asarray(r.home_tolerance), r.home_timeout_s):
                raise SensorFault(f"the arm did not reach home {r.home} within {r.home_timeout_s:g} s "
                                  f"(tolerance {r.home_tolerance})")
        return self.instruction

    def frame(self, state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
        q = state["q_meas"]
        if not np.isfinite(q).all():
            raise SensorFault(f"joint state not finite (bus read failed?): {q.tolist()}")
        obs = {OBS_STATE: q.astype(np.float32)}
        for name, cam in self.cameras.items():
            key = self.feature_of[name]
            try:
                img = np.asarray(cam.async_read(timeout_ms=self.read_timeout_ms))
            except Exception as e:
                raise SensorFault(f"camera {name!r} read failed: {type(e).__name__}: {e}") from None
            _, h, w = self.shapes[key]
            obs[key] = resize_frame(img, h, w, f"camera {name!r}")
        return obs, False

    def close(self) -> None:
        for cam in self._connected:
            try:
                cam.disconnect()
            except Exception as e:  # closing must go on for the other cameras
                print(f"[daemon] camera {type(cam).__name__} did not disconnect cleanly: {e}", file=sys.stderr)
        self._connected = []


def make_scene(robot: RobotConfig, task: str, cameras: tuple[str, ...], image_size: int, env_state: bool) -> Scene:
    """The scene for ``robot``'s driver: sim -> SimScene (task = suite task), else RobotScene (task = text)."""
    if robot.driver == "sim":
        return SimScene(task, robot.rate_hz, robot.policy_hz, cameras, image_size, env_state)
    return RobotScene(robot, task)


def read_loop_info(path: str) -> dict[str, Any]:
    """What the loop's driver reported at start (``loop.py`` writes it); {} if absent."""
    try:
        with open(path) as fh:
            info = json.load(fh)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
