"""TabletopEnv: the Gymnasium environment every task of the tabletop suite derives from.

A task subclass adds its objects to the scene (``build``), randomises them per episode
(``randomize``, returning the language instruction) and judges the state (``evaluate``,
returning success and reward terms). Everything else -- robot, actions, observations,
cameras, seeding -- lives here once.

## Action Space
``action_mode="ee_delta"`` (default): ``Box(-1, 1, (7,), float32)``
  ``[dx, dy, dz, drx, dry, drz, gripper]``. Position deltas are scaled by ``POS_SCALE`` (0.05 m
  per step at |a| = 1) and added to the measured pinch-site position; the rotation delta
  (axis-angle in the world frame, scaled by ``ROT_SCALE`` = 0.25 rad) is applied on the left of
  the measured orientation. The target is clipped to the workspace box ``WORKSPACE`` and turned
  into joint targets by differential IK (``mink``).
``action_mode="joint"``: ``Box(joint lower, joint upper, (8,), float32)``
  ``[q1..q7, gripper]``: absolute arm joint position targets in rad (the Panda's joint limits) --
  the control daemon's mode.
In both modes ``gripper`` is in [-1, 1]: -1 fully open, +1 fully closed (linear in between).
Invalid actions: a wrong shape raises ValueError naming the expected shape; NaN/inf raises
ValueError and the simulation is not stepped; values outside the bounds are clipped to them.

## Observation Space
``Dict`` with
- ``observation.state``: float32 [15] = 7 arm joint positions (rad), gripper closure in [0, 1],
  end-effector (pinch site) position (m, 3) and orientation quaternion (w, x, y, z; w >= 0);
- ``observation.environment_state`` (only with ``env_state=True``): float32 [E], the poses of the
  objects the instruction names, in the order it names them (MetaWorld-style privileged state;
  ``type(env).ENV_STATE_NAMES`` names the entries). For state-based policies and fast baselines;
  a real robot has no such sensor, so image policies should be trained without it;
- ``observation.images.<camera>`` for each camera in ``cameras`` (``front``, ``wrist``): uint8
  [3, H, W], rendered once per step (``image_size``, default 96x96). ``cameras=()`` renders
  nothing (fast state-only runs).
The instruction is ``info["task"]`` and ``env.unwrapped.task``.

## Rewards
``reward = sum of info["reward_<term>"]``; each task defines dense shaping terms (negative
distances) plus ``reward_success`` (1.0 on success steps).

## Episode End
``terminated`` is True when the task succeeds (``terminate_on_success=True``, default).
Truncation after each task's ``max_episode_steps`` is done by Gymnasium's ``TimeLimit``
(registered ids in ``policystack.envs``). ``info["is_success"]`` holds the success predicate.

``instructions="paraphrases"`` words every instruction from the task's ``paraphrases`` instead of its
``templates`` (three each, the same colour slots, drawn by the same random call: a seed gives the same
scene and goal): wordings that ``policystack collect`` never records, to test a policy on instructions it
was not trained on.

``target_color="purple"`` (Reach, PressButton): after the seed's scene is built, the goal object is
purple (it swaps colours with a purple distractor, or is repainted), so every episode asks for that
colour: with demos collected with ``exclude=purple``, an evaluation of the held-out colour alone.

``reset(options={"swap_instruction": True})`` builds the seed's scene, then names another of its objects
in the instruction (``swap_instruction``; Reach, PressButton, PickPlace, Stack, PlaceObject: the other bowl) and judges success on
that object: the same scene with another goal, to test that a policy follows the words.

## Starting State
``start_pose="random"`` (default): the objects are placed first (so a seed's layout is the same either
way), then the arm starts with the pinch site at a uniform point of ``START_BOX`` (x 0.3-0.55, y
-0.2-0.2, z 0.2-0.4 m), gripper open and pointing down with a yaw uniform in +-0.5 rad. Varied starts
keep the arm's own state from predicting the expert's path (from one fixed home pose, the direction
travelled so far points at the target). ``start_pose="home"``: every episode starts at ``HOME_QPOS``
(the suite's behaviour before 2026-12; datasets recorded either way have the same features).

Timing: the policy acts at ``fps`` (10 Hz default); physics runs at ``physics_hz`` (500 Hz default),
so one step is ``physics_hz // fps`` ``mj_step`` calls.

## Robot handle
What drives the arm outside ``step`` (the control daemon's simulated robot, ``policystack.robot``,
steps physics one ``mj_step`` at a time itself, and renders observations at states it sets):
``joint_positions(out)`` reads the arm in joint-mode units ([8]: 7 joints in rad, gripper in [-1, 1]),
``set_joint_targets(command)`` sets the servo targets of a joint-mode command exactly as ``step``
does (without stepping), ``observation()`` is the observation of the current state (what ``reset``
and ``step`` return). ``model`` and ``data`` are MuJoCo's, public as well.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from policystack.envs import robot as rb
from policystack.envs.scene import COLORS, add_table_and_lights
from policystack.types import ACTION, OBS_ENV_STATE, OBS_STATE, Feature, FeatureSpec, camera_key

POS_SCALE = 0.05  # m per step at |a| = 1
ROT_SCALE = 0.25  # rad per step at |a| = 1
WORKSPACE = np.array([[0.2, -0.45, 0.005], [0.85, 0.45, 0.55]])  # pinch-site target box (low, high), m
# start_pose="random": the episode starts with the pinch site at a uniform point of this box (m), the
# gripper pointing down with a yaw uniform in +-START_YAW rad (reached by IK from the home pose)
START_BOX = np.array([[0.3, -0.2, 0.2], [0.55, 0.2, 0.4]])
START_YAW = 0.5
START_POSES = ("random", "home")
INSTRUCTION_SETS = ("templates", "paraphrases")
CAMERAS = ("front", "wrist")
DOWN_QUAT = np.array([0.0, 1.0, 0.0, 0.0])  # gripper pointing down, fingers closing along world y
STATE_NAMES = [f"joint{i}" for i in range(1, 8)] + ["gripper", "ee_x", "ee_y", "ee_z", "ee_qw", "ee_qx",
                                                    "ee_qy", "ee_qz"]
EE_ACTION_NAMES = ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]
JOINT_ACTION_NAMES = [f"joint{i}" for i in range(1, 8)] + ["gripper"]

_MODEL_CACHE: dict[tuple, mujoco.MjModel] = {}


def quat_canonical(q: np.ndarray) -> np.ndarray:
    return -q if q[0] < 0 else q


def ee_delta_pose(pos: np.ndarray, quat: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pinch-site target (pos [3] m, quat [4] wxyz) that an ee_delta ``action`` [7] asks for from the
    pose (pos, quat): ``pos + POS_SCALE * a[:3]``, and the axis-angle ``ROT_SCALE * a[3:6]`` applied on
    the left of ``quat`` (world frame). Not yet clipped to ``WORKSPACE`` (the IK step does that)."""
    target = np.asarray(pos, dtype=np.float64) + action[:3] * POS_SCALE
    quat = np.array(quat, dtype=np.float64)
    rot = np.asarray(action[3:6], dtype=np.float64) * ROT_SCALE
    angle = float(np.linalg.norm(rot))
    if angle > 0.0:
        dq = np.empty(4)
        mujoco.mju_axisAngle2Quat(dq, rot / angle, angle)
        mujoco.mju_mulQuat(quat, dq, quat.copy())
    return target, quat


class EEDeltaFollower:
    """ee_delta action chunks -> joint-mode targets, for a robot that takes joint targets (the control
    daemon): ``follow(state [15], actions [H, 7]) -> [H, 8]``.

    Action k's pose target is ``ee_delta_pose`` of the previous target (action 0's: of the pinch-site
    pose in ``state``, as ``step`` does from the measured pose), clipped to ``WORKSPACE``, through the
    env's differential IK seeded with the previous joint targets (action 0: the joints in ``state``).
    The gripper passes through (the same [-1, 1] in both modes). For one action this is exactly the
    joint target ``step`` sets; for a chunk it is the open-loop plan ``step`` would follow if the arm
    tracked each target. ``dt``: the policy period (s), the IK's integration step."""

    def __init__(self, dt: float):
        self.ik = rb.DiffIK(dt=dt)

    def follow(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        state = np.asarray(state, dtype=np.float64)
        actions = np.asarray(actions, dtype=np.float64)
        if state.shape != (len(STATE_NAMES),):
            raise ValueError(f"state has shape {state.shape}; expected ({len(STATE_NAMES)},) = {STATE_NAMES}")
        if actions.ndim != 2 or actions.shape[1] != len(EE_ACTION_NAMES):
            raise ValueError(f"actions have shape {actions.shape}; expected [H, {len(EE_ACTION_NAMES)}] = {EE_ACTION_NAMES}")
        q, pos, quat = state[:7], state[8:11], state[11:15]
        out = np.empty((len(actions), len(JOINT_ACTION_NAMES)))
        for k, a in enumerate(np.clip(actions, -1.0, 1.0)):
            pos, quat = ee_delta_pose(pos, quat, a)
            pos = np.clip(pos, WORKSPACE[0], WORKSPACE[1])
            q = self.ik.solve(q, pos, quat)
            out[k, :7], out[k, 7] = q, a[6]
        return out


class TabletopEnv(gym.Env):
    """Base of every tabletop task; see the module docstring for spaces, rewards and episode end."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}
    name: ClassVar[str] = ""  # registered as policystack/<name>-v0
    max_episode_steps: ClassVar[int] = 100
    ENV_STATE_NAMES: ClassVar[tuple[str, ...]] = ()  # entries of object_state()
    templates: ClassVar[tuple[str, ...]] = ()  # instruction wordings (str.format slots per task)
    paraphrases: ClassVar[tuple[str, ...]] = ()  # other wordings of the same slots, never in demonstrations

    def __init__(self, action_mode: str = "ee_delta", cameras: tuple[str, ...] | list[str] | str = CAMERAS,
                 image_size: int | tuple[int, int] = 96, fps: int = 10, physics_hz: int = 500,
                 render_mode: str | None = None, terminate_on_success: bool = True, env_state: bool = False,
                 start_pose: str = "random", instructions: str = "templates", target_color: str | None = None):
        if action_mode not in ("ee_delta", "joint"):
            raise ValueError(f"action_mode={action_mode!r}: expected 'ee_delta' or 'joint'")
        if isinstance(cameras, str):
            cameras = tuple(c for c in cameras.split(",") if c)
        bad = [c for c in cameras if c not in CAMERAS]
        if bad:
            raise ValueError(f"cameras={list(cameras)!r}: unknown {bad}; valid cameras: {list(CAMERAS)}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"image_size={image_size!r}: expected positive ints")
        if fps <= 0 or physics_hz <= 0 or physics_hz % fps:
            raise ValueError(f"physics_hz={physics_hz} must be a positive multiple of fps={fps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")
        if start_pose not in START_POSES:
            raise ValueError(f"start_pose={start_pose!r}: expected one of {START_POSES}")
        self.start_pose = start_pose
        if instructions not in INSTRUCTION_SETS:
            raise ValueError(f"instructions={instructions!r}: expected one of {INSTRUCTION_SETS}")
        self.instructions = instructions
        if target_color is not None and target_color not in COLORS:
            raise ValueError(f"target_color={target_color!r}: expected one of {sorted(COLORS)} or None")
        self.target_color = target_color
        self.action_mode = action_mode
        self.cameras = tuple(cameras)
        self.image_hw = (int(h), int(w))
        self.fps = int(fps)
        self.physics_hz = int(physics_hz)
        self.n_substeps = physics_hz // fps
        self.render_mode = render_mode
        self.terminate_on_success = terminate_on_success
        self.env_state = bool(env_state)
        self.metadata = {**self.metadata, "render_fps": self.fps}

        self.model = self._compiled_model()
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._arm_qadr = np.array([m.joint(j).qposadr[0] for j in rb.ARM_JOINTS])
        self._arm_act = np.array([m.actuator(f"actuator{i}").id for i in range(1, 8)])
        self._grip_act = m.actuator(rb.GRIPPER_ACTUATOR).id
        self._grip_qadr = m.joint(rb.GRIPPER_JOINT).qposadr[0]
        self._ee_site = m.site(rb.EE_SITE).id
        self._pad_geoms = {m.geom(g).id for g in rb.PAD_GEOMS}
        self.joint_low = m.jnt_range[[m.joint(j).id for j in rb.ARM_JOINTS], 0].astype(np.float32)
        self.joint_high = m.jnt_range[[m.joint(j).id for j in rb.ARM_JOINTS], 1].astype(np.float32)
        self._ik: rb.DiffIK | None = None
        self._start_ik: rb.DiffIK | None = None
        self._renderer: mujoco.Renderer | None = None
        self.task = ""

        if action_mode == "ee_delta":
            self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        else:
            self.action_space = spaces.Box(np.append(self.joint_low, -1.0).astype(np.float32),
                                           np.append(self.joint_high, 1.0).astype(np.float32), dtype=np.float32)
        # state bounds: joint limits (+ a margin for soft limits), closure, a 1.5 m box, unit quaternion
        state_low = np.concatenate([self.joint_low - 0.2, [0.0], [-1.5] * 3, [-1.0] * 4]).astype(np.float32)
        state_high = np.concatenate([self.joint_high + 0.2, [1.0], [1.5] * 3, [1.0] * 4]).astype(np.float32)
        obs_spaces: dict[str, spaces.Space] = {OBS_STATE: spaces.Box(state_low, state_high, dtype=np.float32)}
        if self.env_state:
            obs_spaces[OBS_ENV_STATE] = spaces.Box(-np.inf, np.inf, (len(self.ENV_STATE_NAMES),), np.float32)
        for cam in self.cameras:
            obs_spaces[camera_key(cam)] = spaces.Box(0, 255, (3, *self.image_hw), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)

    # --- task hooks ------------------------------------------------------------------------
    @classmethod
    def build(cls, spec: mujoco.MjSpec) -> None:
        """Add the task's objects to the scene spec."""
        raise NotImplementedError

    def randomize(self) -> str:
        """Place and colour the objects with self.np_random; return the instruction."""
        raise NotImplementedError

    def pick_template(self, rng: np.random.Generator) -> str:
        """One instruction wording (``templates``, or ``paraphrases`` with ``instructions="paraphrases"``),
        one random draw either way."""
        words = self.paraphrases if self.instructions == "paraphrases" else self.templates
        return words[int(rng.integers(len(words)))]

    def evaluate(self) -> tuple[bool, dict[str, float]]:
        """(success, reward terms without the 'reward_' prefix) for the current state."""
        raise NotImplementedError

    def swap_instruction(self) -> str:
        """After ``randomize``: make the goal another object of the same scene (deterministically, no
        random draw) and return the instruction naming it, worded with the same template; success is
        then judged on that object. Used by ``reset(options={"swap_instruction": True})`` to test that
        a policy follows the words rather than the scene."""
        raise ValueError(f"{type(self).__name__}: the scene has no other object an instruction could name instead")

    def name_target_color(self, color: str) -> str:
        """After ``randomize``: give the goal object ``color`` (swapping colours with the distractor that
        has it, if one does; nothing else of the seed's scene changes) and return the instruction naming it.
        Used by ``target_color=``: every episode's goal has one colour, e.g. the colour held out of the
        demonstrations (``policystack collect ... exclude=purple``)."""
        raise ValueError(f"{type(self).__name__}: target_color needs a task whose instruction names the goal by "
                         f"its colour (Reach, PressButton)")

    def object_state(self) -> np.ndarray:
        """Poses of the objects the instruction names, laid out as ``ENV_STATE_NAMES``."""
        raise NotImplementedError

    # --- model -------------------------------------------------------------------------------
    def _compiled_model(self) -> mujoco.MjModel:
        """Compile the scene once per process and task (mesh hulls are the slow part); copy it."""
        key = (type(self), self.physics_hz, max(640, *self.image_hw))
        if key not in _MODEL_CACHE:
            spec = rb.load_robot_spec()
            add_table_and_lights(spec, offscreen=key[2])
            self.build(spec)
            spec.option.timestep = 1.0 / self.physics_hz
            _MODEL_CACHE[key] = spec.compile()
        return copy.deepcopy(_MODEL_CACHE[key])

    @property
    def features(self) -> FeatureSpec:
        """The dataset features this env produces (images as LeRobot's (H, W, 3) video)."""
        h, w = self.image_hw
        feats: FeatureSpec = {OBS_STATE: Feature("float32", (len(STATE_NAMES),), names=list(STATE_NAMES))}
        if self.env_state:
            feats[OBS_ENV_STATE] = Feature("float32", (len(self.ENV_STATE_NAMES),), names=list(self.ENV_STATE_NAMES))
        for cam in self.cameras:
            feats[camera_key(cam)] = Feature("video", (h, w, 3), names=["height", "width", "channels"])
        names = EE_ACTION_NAMES if self.action_mode == "ee_delta" else JOINT_ACTION_NAMES
        feats[ACTION] = Feature("float32", (len(names),), names=list(names))
        return feats

    # --- state helpers (also used by the scripted experts) ------------------------------------
    @property
    def ee_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._ee_site].copy()

    @property
    def ee_quat(self) -> np.ndarray:
        q = np.empty(4)
        mujoco.mju_mat2Quat(q, self.data.site_xmat[self._ee_site])
        return quat_canonical(q)

    @property
    def arm_qpos(self) -> np.ndarray:
        return self.data.qpos[self._arm_qadr].copy()

    @property
    def gripper_closure(self) -> float:
        return float(np.clip(self.data.qpos[self._grip_qadr] / rb.GRIPPER_JOINT_MAX, 0.0, 1.0))

    def body_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.model.body(name).id].copy()

    def body_pose(self, name: str) -> np.ndarray:
        """[7]: position and orientation quaternion (w, x, y, z; w >= 0) of body ``name``."""
        bid = self.model.body(name).id
        return np.concatenate([self.data.xpos[bid], quat_canonical(self.data.xquat[bid].copy())])

    def touching_gripper(self, geom_ids: set[int]) -> bool:
        """True if any of geom_ids is in contact with a gripper pad."""
        for c in self.data.contact[: self.data.ncon]:
            g1, g2 = int(c.geom1), int(c.geom2)
            if (g1 in self._pad_geoms and g2 in geom_ids) or (g2 in self._pad_geoms and g1 in geom_ids):
                return True
        return False

    def set_free_body(self, name: str, pos: np.ndarray, yaw: float = 0.0) -> None:
        adr = self.model.joint(name).qposadr[0]
        self.data.qpos[adr:adr + 3] = pos
        self.data.qpos[adr + 3:adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def ik_joint_targets(self, pos: np.ndarray, quat: np.ndarray) -> np.ndarray:
        """Arm joint targets [7] that bring the pinch site to (pos [3], quat [4] wxyz)."""
        if self._ik is None:
            self._ik = rb.DiffIK(dt=1.0 / self.fps)
        return self._ik.solve(self.arm_qpos, np.clip(pos, WORKSPACE[0], WORKSPACE[1]), quat)

    # --- robot handle (module docstring, "Robot handle") -----------------------------------------
    def joint_positions(self, out: np.ndarray | None = None) -> np.ndarray:
        """[8]: the arm's 7 joint positions (rad) and the gripper in [-1, 1] (-1 open, +1 closed), the
        units of a joint-mode action; written into ``out`` when given."""
        out = np.empty(8) if out is None else out
        out[:7] = self.data.qpos[self._arm_qadr]
        out[7] = 2.0 * self.gripper_closure - 1.0
        return out

    def set_joint_targets(self, command: np.ndarray) -> None:
        """Servo targets of a joint-mode command [8] (q1..q7 in rad, gripper in [-1, 1]), set exactly as
        ``step`` sets them in ``action_mode="joint"``; nothing is stepped and nothing clipped."""
        self.data.ctrl[self._arm_act] = command[:7]
        self.data.ctrl[self._grip_act] = (command[7] + 1.0) / 2.0 * rb.GRIPPER_CTRL_MAX

    def observation(self) -> dict[str, np.ndarray]:
        """The observation of the current state (the dict ``reset`` and ``step`` return)."""
        return self._observation()

    # --- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qadr] = rb.HOME_QPOS
        self.data.ctrl[self._arm_act] = rb.HOME_QPOS
        self.data.ctrl[self._grip_act] = 0.0
        self.task = self.randomize()  # before the start pose: a seed's layout does not depend on start_pose
        if self.target_color is not None:
            self.task = self.name_target_color(self.target_color)
        if (options or {}).get("swap_instruction"):
            self.task = self.swap_instruction()
        if self.start_pose == "random":
            q = self._random_start_qpos()
            self.data.qpos[self._arm_qadr] = q
            self.data.ctrl[self._arm_act] = q
        mujoco.mj_forward(self.model, self.data)
        # let objects settle on the table before the first observation
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        success, terms = self.evaluate()
        return self._observation(), self._info(success, terms)

    def _random_start_qpos(self) -> np.ndarray:
        """Arm joints [7] putting the pinch site at a random point of START_BOX, pointing down with a
        random yaw: IK iterated from the home pose (kinematics only; nothing is simulated)."""
        rng = self.np_random
        pos = rng.uniform(START_BOX[0], START_BOX[1])
        yaw = rng.uniform(-START_YAW, START_YAW)
        quat = np.empty(4)
        mujoco.mju_mulQuat(quat, np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]), DOWN_QUAT)
        if self._start_ik is None:
            self._start_ik = rb.DiffIK(dt=1.0 / self.fps, iterations=40)
        return self._start_ik.solve(rb.HOME_QPOS, pos, quat)

    def _validate_action(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action has shape {a.shape}; expected {self.action_space.shape} "
                             f"({'ee_delta: [dx,dy,dz,drx,dry,drz,gripper]' if self.action_mode == 'ee_delta' else 'joint: [q1..q7,gripper]'})")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a.tolist()}; the simulation was not stepped")
        return np.clip(a, self.action_space.low, self.action_space.high)

    def step(self, action):
        a = self._validate_action(action)
        if self.action_mode == "ee_delta":
            q_target = self.ik_joint_targets(*ee_delta_pose(self.ee_pos, self.ee_quat, a))
        else:
            q_target = a[:7]
        self.data.ctrl[self._arm_act] = q_target
        self.data.ctrl[self._grip_act] = (a[-1] + 1.0) / 2.0 * rb.GRIPPER_CTRL_MAX
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        success, terms = self.evaluate()
        reward = float(sum(terms.values())) + float(success)
        terminated = bool(success and self.terminate_on_success)
        return self._observation(), reward, terminated, False, self._info(success, terms)

    def _info(self, success: bool, terms: dict[str, float]) -> dict[str, Any]:
        info: dict[str, Any] = {"task": self.task, "is_success": bool(success)}
        info.update({f"reward_{k}": float(v) for k, v in terms.items()})
        info["reward_success"] = float(success)
        return info

    def _state(self) -> np.ndarray:
        return np.concatenate([self.arm_qpos, [self.gripper_closure], self.ee_pos, self.ee_quat]).astype(np.float32)

    def _render_camera(self, camera: str) -> np.ndarray:
        """HWC uint8 image of one camera; one renderer per env, created on first use."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, *self.image_hw)
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                         mujoco.mjtRndFlag.mjRND_SKYBOX):
                self._renderer.scene.flags[flag] = False
        self._renderer.update_scene(self.data, camera=camera)
        return self._renderer.render()

    def _observation(self) -> dict[str, np.ndarray]:
        obs = {OBS_STATE: self._state()}
        if self.env_state:
            obs[OBS_ENV_STATE] = self.object_state().astype(np.float32)
        for cam in self.cameras:
            obs[camera_key(cam)] = np.ascontiguousarray(self._render_camera(cam).transpose(2, 0, 1))
        return obs

    def render(self):
        if self.render_mode == "rgb_array":
            return self._render_camera("front").copy()
        return None

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
