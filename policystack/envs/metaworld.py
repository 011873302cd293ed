"""MetaWorld (v3 tasks) in policystack's conventions: data-contract observations, language, experts.

MetaWorld (Farama's ``metaworld`` 3.1.1) is a benchmark of 50 single-arm Sawyer tasks. This adapter
wraps one task as a gymnasium env whose observations and info use the policystack data contract,
so our policies, eval harness and dataset writer work on it unchanged; its images are LeRobot's.

Observation (a dict)
    ``observation.state``           float32 [39] (``state="full"``, default): MetaWorld's own state
                                    vector, in its order: hand xyz, gripper opening, two object slots
                                    (xyz + quaternion xyzw each, zero-padded), the previous frame's 18
                                    values, goal xyz (zeroed when ``goal_observable=False``, MetaWorld's
                                    "goal hidden"); or float32 [4] (``state="agent_pos"``): hand xyz and
                                    gripper opening, LeRobot's MetaworldEnv ``agent_pos``.
    ``observation.environment_state`` float32 [39], with ``env_state=True``: the full vector, as
                                    LeRobot's ``lerobot/metaworld_mt50`` dataset stores it beside a
                                    4-value state.
    ``observation.images.<camera>`` uint8 [3, H, W] per configured camera (``cameras``: MetaWorld
                                    camera names, the image key is the name, e.g. ``corner2`` ->
                                    ``observation.images.corner2``; or a mapping key -> camera, where
                                    the key may also be LeRobot's single-camera ``observation.image``;
                                    default ``("corner2",)``, LeRobot's camera; ``image_size``, default 96).

Camera conventions (``camera_convention``; docs/envs.md)
    ``lerobot`` (default) renders each camera as LeRobot 0.4.4's ``MetaworldEnv`` does: ``corner2``
    moved to (0.75, 0.075, 0.7) and rotated by 180 degrees, every other camera as MetaWorld renders it
    (``corner``, ``corner3`` and ``corner4`` upside down). ``upright`` is what this adapter did before:
    every camera whose image "up" axis points down rotated by 180 degrees, ``corner2`` where MetaWorld
    puts it. ``vflip`` is MetaWorld's render flipped top to bottom (rows reversed), every camera.
    Every camera feature records how it was made (``camera.*`` entries of its info: camera, convention,
    shadows, reflections; ``types.camera_record``), so datasets written from this env and the
    checkpoints trained on them say which images they expect, and eval renders those
    (:func:`with_camera_records`, :func:`env_kwargs_for_features`).

Action Space
    float32 [4] in [-1, 1]: end-effector [dx, dy, dz] (times 1 cm per step) and gripper effort
    (-1 open, +1 close). Out-of-range values are clipped to [-1, 1]; a NaN/inf or a wrong shape
    raises ValueError.

Rewards
    MetaWorld's v2 reward (0..10); its terms (``near_object``, ``grasp_success``, ...) are in info.

Episode End
    ``terminated`` when the task succeeds (if ``terminate_on_success``, the default); ``truncated``
    after ``max_episode_steps`` steps (MetaWorld's horizon, 500, by default).

Task variations
    By default every ``reset(seed=s)`` draws a new object/goal placement from the env's seeded
    generator. ``variations=(30, ..., 49)`` pins MetaWorld's MT1 variations instead (the 50 placements
    of ``metaworld.MT1(task, seed=variation_seed)``, seed 42 as LeRobot): the episode reset with seed
    ``s`` uses ``variations[s % len(variations)]``, so consecutive seeds cycle through them all, and a
    policy can be evaluated on variations held out of its demos, as MetaWorld's protocol does.

Info
    ``is_success`` (bool), ``task`` (the language instruction), ``task_name`` (e.g. "reach-v3"),
    ``variation`` (with ``variations``) and MetaWorld's reward terms as floats.

Version History
    v0: first version, on metaworld 3.1.1 v3 tasks. Image keys, the default camera and the camera
    orientation changed to LeRobot's in place (issue 14); data made before says so by recording no
    camera convention (docs/envs.md, "Telling old data apart").

MuJoCo 4 compatibility: metaworld 3.1.1 declares ``mujoco==3.3.0``; installed with ``--no-deps``
beside mujoco 4.0.0 it fails at construction only because ``mjNEQDATA`` (the width of
``model.eq_data``) grew from 11 to 12 and MetaWorld writes 11 values into its mocap weld. The
12th slot flags a weld whose relative pose is derived from ``qpos0``; MetaWorld sets the pose
explicitly, so :func:`_patch_mocap_welds` writes MetaWorld's 11 values plus a 0 there.
With it, trajectories match mujoco 3.3.0 to within about 1 mm and the scripted experts solve
the 50 tasks at the same rate (docs/envs.md).

Nothing here imports metaworld (or mujoco) at import time: :func:`register_metaworld_envs` is cheap
and the package works without metaworld installed; using an env then raises an ImportError that
names the install command.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from policystack.types import (
    ACTION,
    CAMERA_INFO_PREFIX,
    OBS_ENV_STATE,
    OBS_IMAGE,
    OBS_IMAGES,
    OBS_STATE,
    TASK,
    Feature,
    FeatureSpec,
    camera_key,
    camera_record,
    is_image_key,
)

if TYPE_CHECKING:
    import mujoco

INSTALL_HINT = (
    "pip install --no-deps metaworld==3.1.1 scipy  (--no-deps: metaworld pins mujoco==3.3.0, "
    "policystack runs it on mujoco 4; scripts/setup.sh does this)"
)

MAX_PATH_LENGTH = 500  # MetaWorld's task horizon (SawyerXYZEnv.max_path_length)
ACTION_DIM = 4
STATE_DIM = 39
ROBOT_TYPE = "sawyer"

# The MT10 tasks, registered as policystack/MetaWorld-<task>-v0 (any other v3 task: make_metaworld_env
# or gym.make("policystack/MetaWorld-v0", task=...)).
MT10_TASKS = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)

# Language instruction per task. Tasks not listed get one derived from the name (task_instruction).
TASK_INSTRUCTIONS: dict[str, str] = {
    "reach-v3": "reach the red target",
    "reach-wall-v3": "reach the red target behind the wall",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck back to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "door-open-v3": "open the door",
    "door-close-v3": "close the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-v3": "press the button",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
    "faucet-open-v3": "turn the faucet counter-clockwise",
    "faucet-close-v3": "turn the faucet clockwise",
    "assembly-v3": "put the ring onto the peg",
    "basketball-v3": "dunk the ball into the basket",
    "hammer-v3": "hammer the nail into the wall",
    "sweep-into-v3": "sweep the puck into the hole",
    "coffee-push-v3": "push the mug under the coffee machine",
    "coffee-pull-v3": "pull the mug out of the coffee machine",
    "shelf-place-v3": "place the puck on the shelf",
}

# MetaWorld 3.1.1's cameras (every task's model has them; metaworld/assets/objects/assets/xyz_base.xml).
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
DEFAULT_CAMERA = "corner2"  # LeRobot 0.4.4's MetaworldEnv camera (its camera_name default)
LEROBOT_CORNER2_POS = (0.75, 0.075, 0.7)  # where LeRobot moves corner2 (model.cam_pos[2]); corner4 sits there too

# How each camera's picture is oriented (and posed) in each convention; see the module docstring.
CAMERA_CONVENTIONS: dict[str, str] = {
    "lerobot": "LeRobot 0.4.4's MetaworldEnv: corner2 moved to (0.75, 0.075, 0.7) and rotated by 180 degrees, "
               "every other camera as MetaWorld renders it (corner, corner3, corner4 upside down)",
    "upright": "policystack's adapter before issue 14: every camera whose image up axis points down rotated by "
               "180 degrees, corner2 where MetaWorld puts it",
    "vflip": "MetaWorld's render flipped top to bottom (rows reversed), every camera; the corner cameras then "
             "show a left-right mirror of the upright view",
}
DEFAULT_CONVENTION = "lerobot"
# The look (shadows, reflections) of data made in a convention that does not record it: LeRobot's
# MetaworldEnv renders MetaWorld's own look (MuJoCo's defaults: both on); this adapter rendered with
# both off before it recorded anything.
CONVENTION_LOOK: dict[str, tuple[bool, bool]] = {"lerobot": (True, True), "upright": (False, False),
                                                  "vflip": (True, True)}
# Image keys of data that records no camera: policystack collect before issue 14 named these cameras
# differently (front, top, behind_gripper, gripper_pov); LeRobot's MetaworldEnv and its
# lerobot/metaworld_* datasets call their one camera (corner2) observation.image.
UNRECORDED_KEYS: dict[str, str] = {OBS_IMAGE: DEFAULT_CAMERA, camera_key("front"): "corner",
                                   camera_key("top"): "topview", camera_key("behind_gripper"): "behindGripper",
                                   camera_key("gripper_pov"): "gripperPOV"}
STATE_LAYOUTS = {"full": 39, "agent_pos": 4}  # observation.state: MetaWorld's vector / LeRobot's agent_pos
MT1_VARIATIONS = 50  # placements per task in metaworld.MT1 (metaworld._N_GOALS)
DEFAULT_VARIATION_SEED = 42  # LeRobot's MT1 seed

_OBJ_SLOT = ("x", "y", "z", "qx", "qy", "qz", "qw")
_FRAME_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_opening"] + [
    f"obj{i}_{c}" for i in (0, 1) for c in _OBJ_SLOT
]
STATE_NAMES: list[str] = _FRAME_NAMES + [f"prev_{n}" for n in _FRAME_NAMES] + ["goal_x", "goal_y", "goal_z"]
ACTION_NAMES: list[str] = ["dx", "dy", "dz", "gripper"]
assert len(STATE_NAMES) == STATE_DIM


def task_instruction(task: str) -> str:
    """The language instruction of a MetaWorld task name, e.g. "reach-v3" -> "reach the red target".

    From TASK_INSTRUCTIONS; otherwise the name without its version, hyphens as spaces
    ("handle-pull-side-v3" -> "handle pull side").
    """
    if task in TASK_INSTRUCTIONS:
        return TASK_INSTRUCTIONS[task]
    return re.sub(r"-v\d+$", "", task).replace("-", " ").strip()


# --- the lazy metaworld import and the mujoco 4 shim ------------------------------------------------
def _patch_mocap_welds(sawyer_mocap_base: type) -> None:
    """Make MetaWorld's ``reset_mocap_welds`` write a weld row of any ``eq_data`` width (mujoco 4: 12)."""
    import mujoco

    if mujoco.mjNEQDATA == 11 or getattr(sawyer_mocap_base, "_policystack_patched", False):
        return
    # MetaWorld's values: anchor 0, relative pose (pos 0, quat -1 0 0 0), torquescale 5. The rest
    # (mujoco 4's "relpose from qpos0" flag) is 0: the relative pose is given explicitly.
    weld = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0])

    def reset_mocap_welds(self: Any) -> None:
        if self.model.nmocap > 0 and self.model.eq_data is not None:
            row = np.zeros(self.model.eq_data.shape[1])
            row[: len(weld)] = weld
            for i in range(self.model.eq_data.shape[0]):
                if self.model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
                    self.model.eq_data[i] = row

    sawyer_mocap_base.reset_mocap_welds = reset_mocap_welds
    sawyer_mocap_base._policystack_patched = True


def import_metaworld() -> Any:
    """Import ``metaworld`` (with the mujoco 4 shim applied) or raise an ImportError naming the fix."""
    try:
        import metaworld
        import metaworld.policies  # noqa: F401
        from metaworld.sawyer_xyz_env import SawyerMocapBase
    except ImportError as e:
        raise ImportError(f"MetaWorld envs need the metaworld package ({e}); install it with: {INSTALL_HINT}") from e
    _patch_mocap_welds(SawyerMocapBase)
    return metaworld


def metaworld_tasks() -> list[str]:
    """Names of all MetaWorld v3 tasks (needs metaworld)."""
    return list(import_metaworld().env_dict.ALL_V3_ENVIRONMENTS)


# --- config -------------------------------------------------------------------------------------
@dataclass
class MetaWorldConfig:
    """How one MetaWorld task is presented. ``make_metaworld_env(task, **fields)`` builds it."""

    task: str = "reach-v3"  # a MetaWorld v3 task name
    # Cameras: MetaWorld names (CAMERAS; image key observation.images.<name>) or a mapping image key ->
    # camera (a key is a name after observation.images., or a whole key, e.g. LeRobot's observation.image).
    # () renders nothing (state only, fast). After __post_init__: {whole image key: camera}.
    cameras: Sequence[str] | Mapping[str, str] = (DEFAULT_CAMERA,)
    image_size: int | tuple[int, int] = 96  # rendered image size: side, or (height, width); LeRobot's: 480
    camera_convention: str = DEFAULT_CONVENTION  # orientation / pose of the cameras: CAMERA_CONVENTIONS
    max_episode_steps: int = MAX_PATH_LENGTH  # truncate after this many steps
    terminate_on_success: bool = True  # terminated=True on the first successful step
    goal_observable: bool = True  # False: goal xyz in the state is zeroed (MetaWorld "goal hidden")
    state: str = "full"  # observation.state: "full" (39 values) or "agent_pos" (4, LeRobot's MetaworldEnv)
    env_state: bool = False  # also observation.environment_state: the 39 values (lerobot/metaworld_mt50)
    variations: Sequence[int] | None = None  # pinned MT1 variations (0..49); None: a new placement per seed
    variation_seed: int = DEFAULT_VARIATION_SEED  # the seed of metaworld.MT1 that makes the 50 variations
    shadows: bool = False  # off: ~5x faster software rendering (MetaWorld's and LeRobot's look: on)
    reflections: bool = False

    def __post_init__(self):
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"MetaWorldConfig.task: expected a task name like 'reach-v3', got {self.task!r}")
        if isinstance(self.cameras, str) or not isinstance(self.cameras, (Mapping, Sequence)):
            raise ValueError(
                f"MetaWorldConfig.cameras: expected a tuple of camera names or a mapping key -> camera, "
                f"got {self.cameras!r}"
            )
        pairs = self.cameras.items() if isinstance(self.cameras, Mapping) else ((c, c) for c in self.cameras)
        self.cameras = {}
        for key, cam in pairs:
            whole = key if isinstance(key, str) and is_image_key(key) else camera_key(str(key))
            if not re.fullmatch(re.escape(OBS_IMAGE) + r"|" + re.escape(OBS_IMAGES) + r"\.[A-Za-z0-9_]+", whole):
                raise ValueError(f"MetaWorldConfig.cameras: {key!r}: expected an identifier-like image key "
                                 f"(e.g. 'corner2', 'observation.images.side' or {OBS_IMAGE!r})")
            if cam not in CAMERAS:
                raise ValueError(f"MetaWorldConfig.cameras: {cam!r} is not a MetaWorld camera; valid cameras: "
                                 f"{', '.join(CAMERAS)}")
            self.cameras[whole] = cam
        size = (self.image_size, self.image_size) if isinstance(self.image_size, int) else tuple(self.image_size)
        if len(size) != 2 or not all(_positive_int(v) for v in size):
            raise ValueError(f"MetaWorldConfig.image_size: expected a positive int or (height, width), "
                             f"got {self.image_size!r}")
        self.image_size = size
        if self.camera_convention not in CAMERA_CONVENTIONS:
            raise ValueError(f"MetaWorldConfig.camera_convention: {self.camera_convention!r}; expected one of "
                             f"{', '.join(CAMERA_CONVENTIONS)} (docs/envs.md)")
        if not _positive_int(self.max_episode_steps):
            raise ValueError(f"MetaWorldConfig.max_episode_steps: expected a positive int, got {self.max_episode_steps!r}")
        if self.state not in STATE_LAYOUTS:
            raise ValueError(f"MetaWorldConfig.state: {self.state!r}; expected 'full' (MetaWorld's 39 values) or "
                             "'agent_pos' (hand xyz + gripper, LeRobot's MetaworldEnv)")
        if self.variations is not None:
            v = tuple(self.variations) if isinstance(self.variations, Sequence) else None
            if not v or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MT1_VARIATIONS for i in v):
                raise ValueError(f"MetaWorldConfig.variations: expected a non-empty list of MT1 variation numbers "
                                 f"0..{MT1_VARIATIONS - 1} (e.g. 30-49 on the command line), got {self.variations!r}")
            self.variations = v

    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size[1]

    def camera_info(self, camera: str) -> dict[str, Any]:
        """The ``camera.*`` record of a camera's images (types.camera_record): equal records, same picture."""
        return {"camera.name": f"metaworld/{camera}", "camera.convention": self.camera_convention,
                "camera.shadows": self.shadows, "camera.reflections": self.reflections}


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def metaworld_features(config: MetaWorldConfig | None = None, use_videos: bool = True) -> FeatureSpec:
    """The FeatureSpec of a MetaWorld env's frames: state [39] or [4] (+ environment_state [39]), one
    image [H, W, 3] per camera with its ``camera.*`` record in ``info``, action [4].

    Matches what :func:`collect_metaworld` writes (images as LeRobot stores them: (H, W, 3)).
    """
    config = config or MetaWorldConfig()
    dim = STATE_LAYOUTS[config.state]
    spec: FeatureSpec = {OBS_STATE: Feature("float32", (dim,), names=list(STATE_NAMES[:dim]))}
    if config.env_state:
        spec[OBS_ENV_STATE] = Feature("float32", (STATE_DIM,), names=list(STATE_NAMES))
    for key, cam in config.cameras.items():
        spec[key] = Feature("video" if use_videos else "image", (config.height, config.width, 3),
                            names=["height", "width", "channels"], info=config.camera_info(cam))
    spec[ACTION] = Feature("float32", (ACTION_DIM,), names=list(ACTION_NAMES))
    return spec


# --- features <-> env settings (what eval and training use) ----------------------------------
def with_camera_records(features: FeatureSpec, convention: str | None = None) -> FeatureSpec:
    """``features`` with a ``camera.*`` record on every camera, so a MetaWorld env can be set up to
    make exactly those images (:func:`env_kwargs_for_features`).

    A recorded camera stays as it is (``convention``, when given, must agree with its record). A
    camera without a record (data written by LeRobot's tools, or by policystack before issue 14)
    gets one from ``convention`` -- the user's word for how those images were made, with that
    convention's look (CONVENTION_LOOK) -- and from its key (``observation.images.<camera>``, or
    UNRECORDED_KEYS: LeRobot's ``observation.image`` is corner2, ``front`` was corner). Without a
    ``convention`` such a camera is refused: guessing could mirror every image the policy sees.
    """
    if convention is not None and convention not in CAMERA_CONVENTIONS:
        raise ValueError(f"camera_convention={convention!r}: expected one of {', '.join(CAMERA_CONVENTIONS)} "
                         f"(docs/envs.md)")
    out, unrecorded = dict(features), []
    for key, f in features.items():
        if not f.is_visual:
            continue
        record = camera_record(f)
        if record:
            have = record.get("camera.convention")
            if convention is not None and have != convention:
                raise ValueError(f"{key}: the checkpoint records camera convention {have!r}; camera_convention="
                                 f"{convention} contradicts it (the images it was trained on were made as {record})")
            continue
        name = key.removeprefix(OBS_IMAGES + ".")
        cam = name if name in CAMERAS else UNRECORDED_KEYS.get(key)
        if cam is None:
            raise ValueError(f"{key}: records no MetaWorld camera and its name is not one (cameras: "
                             f"{', '.join(CAMERAS)}; or {', '.join(UNRECORDED_KEYS)})")
        if convention is None:
            unrecorded.append(key)
            continue
        shadows, reflections = CONVENTION_LOOK[convention]
        cfg = MetaWorldConfig(cameras={key: cam}, camera_convention=convention, shadows=shadows,
                              reflections=reflections)
        out[key] = Feature(f.dtype, f.shape, names=f.names, info={**(f.info or {}), **cfg.camera_info(cam)})
    if unrecorded:
        raise ValueError(
            f"{', '.join(unrecorded)}: the checkpoint does not record how its MetaWorld images were made (data "
            "written by LeRobot's tools, or by policystack collect before issue 14). Say which with "
            "camera_convention=: " + "; ".join(f"{k}: {v}" for k, v in CAMERA_CONVENTIONS.items())
            + " (docs/envs.md, 'Camera conventions')")
    return out


def env_kwargs_for_features(features: FeatureSpec) -> dict[str, Any]:
    """MetaWorldConfig fields that make the env produce ``features`` (cameras recorded, see
    :func:`with_camera_records`): cameras, camera_convention, shadows, reflections, image_size, state,
    env_state."""
    kwargs: dict[str, Any] = {}
    if OBS_STATE in features:
        dim = features[OBS_STATE].shape
        layout = [k for k, n in STATE_LAYOUTS.items() if (n,) == tuple(dim)]
        if layout:
            kwargs["state"] = layout[0]
    kwargs["env_state"] = OBS_ENV_STATE in features
    records = {k: camera_record(f) for k, f in features.items() if f.is_visual}
    kwargs["cameras"] = {k: r["camera.name"].removeprefix("metaworld/") for k, r in records.items()}
    looks = {tuple(r.get(CAMERA_INFO_PREFIX + s) for s in ("convention", "shadows", "reflections"))
             for r in records.values()}
    if len(looks) > 1:
        raise ValueError(f"the cameras {sorted(records)} were made with different conventions or looks "
                         f"({sorted(looks, key=str)}); one MetaWorld env renders all its cameras alike")
    if looks:
        kwargs["camera_convention"], kwargs["shadows"], kwargs["reflections"] = looks.pop()
    return kwargs


# --- the env ------------------------------------------------------------------------------------
class MetaWorldEnv(gym.Env):
    """One MetaWorld v3 task with policystack observations (see the module docstring).

    ``env.task`` is the language instruction, ``env.task_name`` the MetaWorld name, ``env.fps`` the
    control rate (80 Hz), ``env.features`` the FeatureSpec (with each camera's record),
    ``env.expert_action()`` MetaWorld's scripted policy's action for the current state and
    ``env.camera_images()`` the configured cameras' images of the current state.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, task: str = "reach-v3", render_mode: str | None = None, **config: Any):
        self.config = MetaWorldConfig(task=task, **config)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        mw = import_metaworld()
        classes = mw.env_dict.ALL_V3_ENVIRONMENTS
        if task not in classes:
            raise KeyError(f"unknown MetaWorld task {task!r}; valid tasks: {', '.join(classes)}")
        self.task_name = task
        self.task = task_instruction(task)
        self._mw = self._build_inner(classes[task])
        self._expert = mw.policies.ENV_POLICY_MAP[task]()
        self._variations = None
        if self.config.variations is not None:
            train_tasks = mw.MT1(task, seed=self.config.variation_seed).train_tasks
            self._variations = [train_tasks[i] for i in self.config.variations]
        self._variation: int | None = None
        self.fps = round(1.0 / self._mw.dt)
        self.metadata = {**self.metadata, "render_fps": self.fps}
        self.features = metaworld_features(self.config)

        import mujoco

        model = self._mw.model
        if self.config.camera_convention == "lerobot":
            model.cam_pos[model.camera("corner2").id] = LEROBOT_CORNER2_POS
        mujoco.mj_forward(model, self._mw.data)
        self._cameras = {key: self._camera(cam) for key, cam in self.config.cameras.items()}
        self._renderer: mujoco.Renderer | None = None
        self._raw_obs: np.ndarray | None = None
        self._steps = 0

        h, w = self.config.height, self.config.width
        bounds = self._mw.sawyer_observation_space  # MetaWorld clips its state to these
        low, high = bounds.low.astype(np.float32), bounds.high.astype(np.float32)
        if not self.config.goal_observable:
            low[-3:] = high[-3:] = 0.0
        dim = STATE_LAYOUTS[self.config.state]
        spaces: dict[str, gym.Space] = {OBS_STATE: gym.spaces.Box(low[:dim], high[:dim], (dim,), np.float32)}
        if self.config.env_state:
            spaces[OBS_ENV_STATE] = gym.spaces.Box(low, high, (STATE_DIM,), np.float32)
        for key in self.config.cameras:
            spaces[key] = gym.spaces.Box(0, 255, (3, h, w), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

    def _build_inner(self, cls: type) -> Any:
        """MetaWorld's env, set up as its goal-observable variant with seeded random resets."""
        env = cls()
        env._partially_observable = False  # the experts read the goal from the raw state
        env.__dict__.pop("sawyer_observation_space", None)  # cached bounds of the other observability
        env._set_task_called = True
        env._freeze_rand_vec = False  # a new random object/goal placement at every reset ...
        env.seeded_rand_vec = True  # ... drawn from env.np_random, which we share (see reset)
        env.max_path_length = self.config.max_episode_steps
        return env

    def _camera(self, name: str) -> tuple[int, str]:
        """(camera id, what turns MuJoCo's picture into this convention's: "" / "rot180" / "vflip")."""
        import mujoco

        model, data = self._mw.model, self._mw.data
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
        if cam_id < 0:
            valid = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
            raise KeyError(f"MetaWorld task {self.task_name!r} has no camera {name!r}; valid cameras: {valid}")
        convention = self.config.camera_convention
        if convention == "vflip":
            return cam_id, "vflip"
        if convention == "lerobot":
            return cam_id, "rot180" if name == "corner2" else ""
        # upright: column 1 of the camera frame is the image's up direction; pointing down -> upside down
        return cam_id, "rot180" if data.cam_xmat[cam_id].reshape(3, 3)[2, 1] < 0 else ""

    # --- rendering ---
    def _render_camera(self, cam_id: int, turn: str) -> np.ndarray:
        """uint8 [H, W, 3] in the configured convention."""
        import mujoco

        if self._renderer is None:
            h, w = self.config.height, self.config.width
            vis = self._mw.model.vis.global_
            vis.offheight, vis.offwidth = max(vis.offheight, h), max(vis.offwidth, w)
            self._renderer = mujoco.Renderer(self._mw.model, h, w)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(self.config.shadows)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(self.config.reflections)
        self._renderer.update_scene(self._mw.data, camera=cam_id)
        img = self._renderer.render()
        return img[::-1, ::-1] if turn == "rot180" else img[::-1] if turn == "vflip" else img

    def camera_images(self) -> dict[str, np.ndarray]:
        """uint8 [3, H, W] per configured camera (its image key), of the simulator's current state."""
        return {key: np.ascontiguousarray(self._render_camera(*cam).transpose(2, 0, 1))
                for key, cam in self._cameras.items()}

    def render(self) -> np.ndarray | None:
        """uint8 [H, W, 3] from the first configured camera (corner2 if none), in the configured convention."""
        if self.render_mode is None:
            return None
        cam = next(iter(self._cameras.values()), None) or self._camera(DEFAULT_CAMERA)
        return np.ascontiguousarray(self._render_camera(*cam))

    # --- observations ---
    def _observation(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        state = np.asarray(raw, dtype=np.float32).copy()
        if not self.config.goal_observable:
            state[-3:] = 0.0
        obs = {OBS_STATE: state[:STATE_LAYOUTS[self.config.state]].copy()}
        if self.config.env_state:
            obs[OBS_ENV_STATE] = state
        obs.update(self.camera_images())
        return obs

    def _info(self, mw_info: Mapping[str, Any], success: bool) -> dict[str, Any]:
        info: dict[str, Any] = {
            k: float(v) for k, v in mw_info.items() if k != "success" and np.isscalar(v)
        }
        info.update(is_success=success, task=self.task, task_name=self.task_name)
        if self._variation is not None:
            info["variation"] = self._variation
        return info

    # --- gymnasium API ---
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # MetaWorld draws the object/goal placement from its own np_random: share ours.
        self._mw.np_random = self.np_random
        if self._variations is not None:
            n = len(self._variations)
            i = seed % n if seed is not None else int(self.np_random.integers(n))
            self._mw.set_task(self._variations[i])  # freezes MetaWorld's placement to that variation's
            self._variation = self.config.variations[i]
        raw, _ = self._mw.reset()
        self._raw_obs = raw
        self._steps = 0
        return self._observation(raw), self._info({}, False)

    def check_action(self, action: Any) -> np.ndarray:
        """float32 [4] clipped to [-1, 1]; ValueError on a wrong shape or a NaN/inf."""
        try:
            a = np.asarray(action, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"MetaWorld action: expected a float array of shape ({ACTION_DIM},), got {action!r}") from e
        if a.shape != (ACTION_DIM,):
            raise ValueError(
                f"MetaWorld action: expected shape ({ACTION_DIM},) = [dx, dy, dz, gripper], got shape {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"MetaWorld action: expected finite values, got {a.tolist()}")
        return np.clip(a, -1.0, 1.0)

    def step(self, action: Any):
        if self._raw_obs is None:
            raise RuntimeError("MetaWorldEnv.step called before reset()")
        if self._steps >= self.config.max_episode_steps:
            raise RuntimeError(
                f"MetaWorldEnv.step called after the episode was truncated at {self._steps} steps; call reset()"
            )
        a = self.check_action(action)
        raw, reward, _, truncated, mw_info = self._mw.step(a)
        self._raw_obs = raw
        self._steps += 1
        success = bool(mw_info.get("success", False))
        terminated = success and self.config.terminate_on_success
        truncated = bool(truncated) or self._steps >= self.config.max_episode_steps
        return self._observation(raw), float(reward), terminated, truncated, self._info(mw_info, success)

    def expert_action(self) -> np.ndarray:
        """float32 [4]: MetaWorld's scripted policy (``metaworld.policies``) for the current state."""
        if self._raw_obs is None:
            raise RuntimeError("MetaWorldEnv.expert_action called before reset()")
        with warnings.catch_warnings():  # "Constant(s) may be too high": the env clips, as documented
            warnings.filterwarnings("ignore", message="Constant", category=UserWarning)
            return np.clip(np.asarray(self._expert.get_action(self._raw_obs), dtype=np.float32), -1.0, 1.0)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if getattr(self, "_mw", None) is not None:
            self._mw.close()
            self._mw = None


def make_metaworld_env(task: str, render_mode: str | None = None, **config: Any) -> MetaWorldEnv:
    """A MetaWorld v3 task as a policystack env; ``config`` holds MetaWorldConfig fields."""
    return MetaWorldEnv(task, render_mode=render_mode, **config)


def env_id(task: str) -> str:
    """The gymnasium id of a registered MetaWorld task: "reach-v3" -> "policystack/MetaWorld-reach-v3-v0"."""
    return f"policystack/MetaWorld-{task}-v0"


GENERIC_ID = "policystack/MetaWorld-v0"  # gym.make(GENERIC_ID, task="hammer-v3", ...)


def register_metaworld_envs() -> None:
    """Register GENERIC_ID and one id per MT10 task (idempotent; imports neither metaworld nor mujoco)."""
    entry = "policystack.envs.metaworld:MetaWorldEnv"
    ids = {GENERIC_ID: {}} | {env_id(t): {"task": t} for t in MT10_TASKS}
    for id_, kwargs in ids.items():
        if id_ not in gym.registry:
            gym.register(id_, entry_point=entry, kwargs=kwargs, max_episode_steps=MAX_PATH_LENGTH)


register_metaworld_envs()


# --- demonstrations -----------------------------------------------------------------------------
@dataclass
class CollectResult:
    """What :func:`collect_metaworld` wrote."""

    root: Path
    episodes: int  # episodes saved
    frames: int  # frames saved
    attempts: int  # episodes rolled out (saved + discarded)
    successes: int  # rolled-out episodes that succeeded


def collect_metaworld(
    task: str,
    episodes: int,
    out_dir: str | Path,
    *,
    seed: int = 0,
    only_successful: bool = True,
    max_attempts: int | None = None,
    use_videos: bool = True,
    progress: bool = True,
    **config: Any,
) -> CollectResult:
    """Roll out MetaWorld's scripted policy and write the episodes as a LeRobot v3 dataset.

    Episode i is reset with seed ``seed + i`` (i counts attempts), so a collection is reproducible.
    Each frame is the observation before a step, the expert's action and the task instruction; an
    episode ends at success or after ``max_episode_steps``. With ``only_successful`` (default),
    failed episodes are discarded and more are tried, up to ``max_attempts`` (default
    ``2 * episodes + 10``); a warning says so if fewer than ``episodes`` succeeded. ``config``
    holds MetaWorldConfig fields (cameras, image_size, ...). Episodes saved before an error or an
    interrupt are kept (DatasetWriter's context drops only the unfinished one).
    """
    from tqdm.auto import tqdm

    from policystack.datasets.writer import DatasetWriter

    if not isinstance(episodes, int) or episodes <= 0:
        raise ValueError(f"collect_metaworld: episodes must be a positive int, got {episodes!r}")
    max_attempts = 2 * episodes + 10 if max_attempts is None else max_attempts
    if max_attempts < episodes:
        raise ValueError(f"collect_metaworld: max_attempts={max_attempts} is below episodes={episodes}")
    config.setdefault("terminate_on_success", True)
    root = Path(out_dir)
    env = MetaWorldEnv(task, **config)
    saved = frames = attempts = successes = 0
    bar = tqdm(total=episodes, desc=f"collect {task}", unit="ep", disable=not progress)
    try:
        # The writer as a context: on an error or an interrupt the saved episodes stay, the open one goes.
        with DatasetWriter.create(root, fps=env.fps, features=metaworld_features(env.config, use_videos),
                                  robot_type=ROBOT_TYPE, use_videos=use_videos) as writer:
            while saved < episodes and attempts < max_attempts:
                obs, _ = env.reset(seed=seed + attempts)
                attempts += 1
                n, success, done = 0, False, False
                while not done:
                    action = env.expert_action()
                    writer.add_frame({**obs, ACTION: action, TASK: env.task})
                    n += 1
                    obs, _, terminated, truncated, info = env.step(action)
                    success, done = info["is_success"], terminated or truncated
                successes += success
                if success or not only_successful:
                    writer.save_episode()
                    saved += 1
                    frames += n
                    bar.update(1)
                else:
                    writer.discard_episode()
                bar.set_postfix(attempts=attempts, success=f"{successes / attempts:.0%}")
    finally:
        bar.close()
        env.close()
    if saved < episodes:
        warnings.warn(
            f"collect_metaworld({task!r}): only {saved} of {episodes} episodes saved after {attempts} attempts "
            f"({successes} successful) in {root}",
            stacklevel=2,
        )
    return CollectResult(root=root, episodes=saved, frames=frames, attempts=attempts, successes=successes)
