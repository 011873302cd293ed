"""The tasks of the tabletop suite, easiest first. Each randomises object colours and
positions per seed, words its instruction from templates, and defines success and reward terms.

| id (policystack/...) | goal                                      | success                                        |
|----------------------|-------------------------------------------|------------------------------------------------|
| Reach-v0             | put the gripper on one of 3 coloured balls | pinch site within 3 cm of the named ball       |
| PressButton-v0       | press one of 3 coloured buttons           | the named button pressed >= 8 mm               |
| OpenDrawer-v0        | pull a drawer open                        | drawer open >= 12 cm                           |
| Push-v0              | push a cube into a coloured goal zone     | cube centre within 4 cm of the zone centre     |
| PickPlace-v0         | put the named cube into the bowl          | cube inside the bowl, released                 |
| Stack-v0             | stack one cube on another                 | top cube resting on the bottom one, released   |
| PlaceObject-v0       | put a generated object in the named bowl  | object inside that bowl, released              |
| PlaceObjectHeldOut-v0| the same with objects no demo shows       | object inside that bowl, released              |
"""

from __future__ import annotations

from typing import ClassVar

import mujoco
import numpy as np

from policystack.envs.base import TabletopEnv
from policystack.envs.scene import (
    COLORS,
    CUBE_HALF,
    add_bowl,
    add_button,
    add_cube,
    add_drawer,
    add_marker,
    sample_positions,
)

# Object placement area on the table (xy, metres), reachable with the gripper pointing down.
AREA_LOW, AREA_HIGH = (0.35, -0.22), (0.62, 0.22)


def _pick_colors(rng: np.random.Generator, n: int) -> list[str]:
    names = list(COLORS)
    return [names[i] for i in rng.choice(len(names), size=n, replace=False)]


class _NamedOneOfThree(TabletopEnv):
    """Three coloured copies of one object (``part``0..2) at random places; the instruction names the
    target by its colour (the other two are distractors). A task adds ``add_object``, ``place`` and
    ``evaluate``."""

    part: ClassVar[str]  # object names are f"{part}{i}" (their geoms carry the colour)
    n_objects = 3

    @staticmethod
    def add_object(spec: mujoco.MjSpec, name: str) -> None:
        """Add one object named ``name`` to the scene."""
        raise NotImplementedError

    @classmethod
    def build(cls, spec: mujoco.MjSpec) -> None:
        for i in range(cls.n_objects):
            cls.add_object(spec, f"{cls.part}{i}")

    def place(self, i: int, xy: np.ndarray, rng: np.random.Generator) -> None:
        """Put object i at table position ``xy``."""
        raise NotImplementedError

    def randomize(self) -> str:
        rng = self.np_random
        colors = _pick_colors(rng, self.n_objects)
        xy = sample_positions(rng, self.n_objects, AREA_LOW, AREA_HIGH, 0.12)
        for i in range(self.n_objects):
            self.place(i, xy[i], rng)
        self.target = f"{self.part}{int(rng.integers(self.n_objects))}"
        self.colors, self.template = colors, self.pick_template(rng)
        self._paint()
        return self.template.format(c=colors[int(self.target[-1])])

    def _paint(self) -> None:
        """Give object i the colour ``self.colors[i]``."""
        for i, c in enumerate(self.colors):
            self.model.geom_rgba[self.model.geom(f"{self.part}{i}").id] = COLORS[c]

    def swap_instruction(self) -> str:
        i = (int(self.target[-1]) + 1) % self.n_objects
        self.target = f"{self.part}{i}"
        return self.template.format(c=self.colors[i])

    def name_target_color(self, color: str) -> str:
        i = int(self.target[-1])
        if color in self.colors:  # a distractor has it: the two swap colours
            j = self.colors.index(color)
            self.colors[i], self.colors[j] = self.colors[j], self.colors[i]
        else:
            self.colors[i] = color
        self._paint()
        return self.template.format(c=color)

    def object_state(self) -> np.ndarray:
        return self.body_pos(self.target)


class ReachEnv(_NamedOneOfThree):
    """Reach a coloured ball (3 balls float above the table; distractors are the other two)."""

    name = "Reach"
    ENV_STATE_NAMES = ('target_x', 'target_y', 'target_z')
    max_episode_steps = 50
    templates: ClassVar[tuple[str, ...]] = ("reach the {c} ball", "move the gripper to the {c} ball",
                                            "touch the {c} sphere")
    paraphrases: ClassVar[tuple[str, ...]] = ("go to the {c} ball", "bring your gripper to the {c} sphere",
                                              "approach the {c} ball")
    part = "ball"
    success_dist = 0.03

    @staticmethod
    def add_object(spec: mujoco.MjSpec, name: str) -> None:
        add_marker(spec, name, "ball", [0.025])

    def place(self, i: int, xy: np.ndarray, rng: np.random.Generator) -> None:
        self.model.body_pos[self.model.body(f"ball{i}").id] = [*xy, rng.uniform(0.06, 0.3)]  # floating

    def evaluate(self) -> tuple[bool, dict[str, float]]:
        dist = float(np.linalg.norm(self.ee_pos - self.body_pos(self.target)))
        return dist < self.success_dist, {"dist": -dist}


class PressButtonEnv(_NamedOneOfThree):
    """Press the named one of three coloured push buttons."""

    name = "PressButton"
    ENV_STATE_NAMES = ('button_x', 'button_y', 'button_z')
    max_episode_steps = 60
    templates: ClassVar[tuple[str, ...]] = ("press the {c} button", "push the {c} button down",
                                            "hit the {c} button")
    paraphrases: ClassVar[tuple[str, ...]] = ("push down on the {c} button", "activate the {c} button",
                                              "press down the {c} switch")
    part = "button"
    press_depth = 0.008
    add_object = staticmethod(add_button)

    def place(self, i: int, xy: np.ndarray, rng: np.random.Generator) -> None:
        self.model.body_pos[self.model.body(f"button{i}_housing").id] = [*xy, 0.0]

    def depth(self, button: str) -> float:
        return float(-self.data.qpos[self.model.joint(button).qposadr[0]])

    def evaluate(self) -> tuple[bool, dict[str, float]]:
        top = self.body_pos(self.target) + [0.0, 0.0, 0.016]
        dist = float(np.linalg.norm(self.ee_pos - top))
        depth = self.depth(self.target)
        return depth >= self.press_depth, {"dist": -dist, "press": depth / self.press_depth}


class OpenDrawerEnv(TabletopEnv):
    """Pull a drawer open by its handle (the cabinet stands at the far side of the table)."""

    name = "OpenDrawer"
    ENV_STATE_NAMES = ('handle_x', 'handle_y', 'handle_z', 'opening')
    max_episode_steps = 80
    templates: ClassVar[tuple[str, ...]] = ("open the {c} drawer", "pull the {c} drawer open",
                                            "slide the {c} drawer out")
    paraphrases: ClassVar[tuple[str, ...]] = ("pull out the {c} drawer", "open up the {c} drawer",
                                              "slide open the {c} drawer")
    open_dist = 0.12

    @classmethod
    def build(cls, spec: mujoco.MjSpec) -> None:
        add_drawer(spec, "drawer")

    def randomize(self) -> str:
        rng = self.np_random
        self.model.body_pos[self.model.body("drawer_cabinet").id] = [rng.uniform(0.68, 0.74),
                                                                     rng.uniform(-0.15, 0.15), 0.0]
        color = _pick_colors(rng, 1)[0]
        for part in ("front", "floor", "back", "left", "right"):
            self.model.geom_rgba[self.model.geom(f"drawer_{part}").id] = COLORS[color]
        return self.pick_template(rng).format(c=color)

    @property
    def opening(self) -> float:
        return float(self.data.qpos[self.model.joint("drawer").qposadr[0]])

    def handle_pos(self) -> np.ndarray:
        return self.data.geom_xpos[self.model.geom("drawer_handle").id].copy()

    def object_state(self) -> np.ndarray:
        return np.append(self.handle_pos(), self.opening)

    def evaluate(self) -> tuple[bool, dict[str, float]]:
        dist = float(np.linalg.norm(self.ee_pos - self.handle_pos()))
        return self.opening >= self.open_dist, {"dist": -dist, "open": self.opening / self.open_dist}


class PushEnv(TabletopEnv):
    """Push a cube into a coloured goal zone on the table."""

    name = "Push"
    ENV_STATE_NAMES = ('cube_x', 'cube_y', 'cube_z', 'cube_qw', 'cube_qx', 'cube_qy', 'cube_qz', 'zone_x', 'zone_y', 'zone_z')
    max_episode_steps = 120
    templates: ClassVar[tuple[str, ...]] = ("push the {c} cube to the {z} zone",
                                            "slide the {c} cube onto the {z} target",
                                            "move the {c} cube into the {z} area")
    paraphrases: ClassVar[tuple[str, ...]] = ("shove the {c} cube into the {z} zone",
                                              "push the {c} block to the {z} region",
                                              "nudge the {c} block onto the {z} area")
    zone_radius = 0.06
    success_dist = 0.04

    @classmethod
    def build(cls, spec: mujoco.MjSpec) -> None:
        add_cube(spec, "cube")
        add_marker(spec, "zone", "zone", [cls.zone_radius, 0.001])

    def randomize(self) -> str:
        rng = self.np_random
        cube_c, zone_c = _pick_colors(rng, 2)
        for _ in range(100):
            xy = sample_positions(rng, 2, (0.38, -0.2), (0.6, 0.2), 0.14)
            if np.linalg.norm(xy[0] - xy[1]) <= 0.24:
                break
        self.set_free_body("cube", [*xy[0], CUBE_HALF], rng.uniform(-0.4, 0.4))
        self.model.body_pos[self.model.body("zone").id] = [*xy[1], 0.001]
        self.model.geom_rgba[self.model.geom("cube").id] = COLORS[cube_c]
        self.model.geom_rgba[self.model.geom("zone").id] = COLORS[zone_c][:3] + (0.6,)
        return self.pick_template(rng).format(c=cube_c, z=zone_c)

    def object_state(self) -> np.ndarray:
        return np.concatenate([self.body_pose("cube"), self.body_pos("zone")])

    def evaluate(self) -> tuple[bool, dict[str, float]]:
        cube = self.body_pos("cube")
        goal = self.body_pos("zone")
        d_goal = float(np.linalg.norm(cube[:2] - goal[:2]))
        d_reach = float(np.linalg.norm(self.ee_pos - cube))
        return d_goal < self.success_dist, {"reach": -d_reach, "goal": -d_goal}


class PickPlaceEnv(TabletopEnv):
    """Pick the named one of two cubes and place it in the bowl."""

    name = "PickPlace"
    ENV_STATE_NAMES = ('cube_x', 'cube_y', 'cube_z', 'cube_qw', 'cube_qx', 'cube_qy', 'cube_qz', 'bowl_x', 'bowl_y', 'bowl_z')
    max_episode_steps = 120
    templates: ClassVar[tuple[str, ...]] = ("put the {c} cube in the {b} bowl",
                                            "place the {c} cube into the {b} bowl",
                                            "pick up the {c} cube and drop it in the {b} bowl")
    paraphrases: ClassVar[tuple[str, ...]] = ("drop the {c} cube into the {b} bowl",
                                              "move the {c} block into the {b} bowl",
                                              "grab the {c} cube and put it in the {b} bowl")
    bowl_radius = 0.075

    @classmethod
    def build(cls, spec: mujoco.MjSpec) -> None:
        add_cube(spec, "cube0")
        add_cube(spec, "cube1")
        add_bowl(spec, "bowl", radius=cls.bowl_radius)

    def randomize(self) -> str:
        rng = self.np_random
        c0, c1, cb = _pick_colors(rng, 3)
        xy = sample_positions(rng, 3, AREA_LOW, AREA_HIGH, 0.15)
        self.set_free_body("cube0", [*xy[0], CUBE_HALF], rng.uniform(-0.4, 0.4))
        self.set_free_body("cube1", [*xy[1], CUBE_HALF], rng.uniform(-0.4, 0.4))
        self.model.body_pos[self.model.body("bowl").id] = [*xy[2], 0.0]
        self.model.geom_rgba[self.model.geom("cube0").id] = COLORS[c0]
        self.model.geom_rgba[self.model.geom("cube1").id] = COLORS[c1]
        for gid in range(self.model.ngeom):
            if self.model.geom(gid).name.startswith("bowl"):
                self.model.geom_rgba[gid] = COLORS[cb]
        self.target = f"cube{int(rng.integers(2))}"
        color = c0 if self.target == "cube0" else c1
        self.colors, self.template = (c0, c1, cb), self.pick_template(rng)
        return self.template.format(c=color, b=cb)

    def swap_instruction(self) -> str:
        self.target = "cube1" if self.target == "cube0" else "cube0"
        return self.template.format(c=self.colors[int(self.target[-1])], b=self.colors[2])

    def object_state(self) -> np.ndarray:
        return np.concatenate([self.body_pose(self.target), self.body_pos("bowl")])

    def evaluate(self) -> tuple[bool, dict[str, float]]:
        cube = self.body_pos(self.target)
        bowl = self.body_pos("bowl")
        d_xy = float(np.linalg.norm(cube[:2] - bowl[:2]))
        inside = d_xy < self.bowl_radius - CUBE_HALF and cube[2] < 0.05
        released = not self.touching_gripper({self.model.geom(self.target).id})
        d_reach = float(np.linalg.norm(self.ee_pos - cube))
        return bool(inside and released), {"reach": -d_reach, "place": -d_xy}


class StackEnv(TabletopEnv):
    """Stack the named cube on the other named cube (a third cube is a distractor)."""

    name = "Stack"
    ENV_STATE_NAMES = ('top_x', 'top_y', 'top_z', 'top_qw', 'top_qx', 'top_qy', 'top_qz', 'bottom_x', 'bottom_y', 'bottom_z', 'bottom_qw', 'bottom_qx', 'bottom_qy', 'bottom_qz')
    max_episode_steps = 120
    templates: ClassVar[tuple[str, ...]] = ("stack the {a} cube on the {b} cube",
                                            "put the {a} cube on top of the {b} cube",
                                            "place the {a} cube onto the {b} cube")
    paraphrases: ClassVar[tuple[str, ...]] = ("set the {a} cube on the {b} cube",
                                              "put the {a} block on top of the {b} block",
                                              "place the {a} block on the {b} block")

    @classmethod
    def build(cls, spec: mujoco.MjSpec) -> None:
        for i in range(3):
            add_cube(spec, f"cube{i}")

    def randomize(self) -> str:
        rng = self.np_random
        colors = _pick_colors(rng, 3)
        xy = sample_positions(rng, 3, AREA_LOW, AREA_HIGH, 0.1)
        for i in range(3):
            self.set_free_body(f"cube{i}", [*xy[i], CUBE_HALF], rng.uniform(-0.4, 0.4))
            self.model.geom_rgba[self.model.geom(f"cube{i}").id] = COLORS[colors[i]]
        top, bottom = (int(i) for i in rng.choice(3, size=2, replace=False))
        self.top, self.bottom = f"cube{top}", f"cube{bottom}"
        self.colors, self.template = colors, self.pick_template(rng)
        return self.template.format(a=colors[top], b=colors[bottom])

    def swap_instruction(self) -> str:
        """The same two cubes, the other way up."""
        self.top, self.bottom = self.bottom, self.top
        return self.template.format(a=self.colors[int(self.top[-1])], b=self.colors[int(self.bottom[-1])])

    def object_state(self) -> np.ndarray:
        return np.concatenate([self.body_pose(self.top), self.body_pose(self.bottom)])

    def evaluate(self) -> tuple[bool, dict[str, float]]:
        a, b = self.body_pos(self.top), self.body_pos(self.bottom)
        d_xy = float(np.linalg.norm(a[:2] - b[:2]))
        dz = float(a[2] - b[2])
        on_top = d_xy < 0.025 and abs(dz - 2 * CUBE_HALF) < 0.01
        released = not self.touching_gripper({self.model.geom(self.top).id})
        d_reach = float(np.linalg.norm(self.ee_pos - a))
        return bool(on_top and released), {"reach": -d_reach, "stack": -float(np.linalg.norm(a - b - [0, 0, 2 * CUBE_HALF]))}


class PlaceObjectEnv(TabletopEnv):
    """Put a generated object (``policystack.envs.scenegen``) into the named one of two coloured
    bowls. Every object of the split is in the model; the episode's object is on the table, the
    others are parked under it (no contacts, gravity compensated). PlaceObject draws from the
    ``seen`` objects (demos), PlaceObjectHeldOut from objects no demo shows."""

    name = "PlaceObject"
    split: ClassVar[str] = "seen"
    ENV_STATE_NAMES = ('grasp_x', 'grasp_y', 'grasp_z', 'grasp_qw', 'grasp_qx', 'grasp_qy', 'grasp_qz', 'bowl_x',
                       'bowl_y', 'bowl_z')
    max_episode_steps = 120
    templates: ClassVar[tuple[str, ...]] = ("put the {o} in the {b} bowl", "place the {o} into the {b} bowl",
                                            "pick up the {o} and drop it in the {b} bowl")
    paraphrases: ClassVar[tuple[str, ...]] = ("drop the {o} into the {b} bowl", "move the {o} over to the {b} bowl",
                                              "grab the {o} and put it in the {b} bowl")
    bowl_radius = 0.08
    # the suite's area, 2 cm wider in y: three things 18 cm apart fit for every seed (0 failures of
    # rejection sampling in 5000 seeds; AREA_LOW..AREA_HIGH failed 2)
    area: ClassVar[tuple[tuple[float, float], tuple[float, float]]] = ((AREA_LOW[0], -0.24), (AREA_HIGH[0], 0.24))
    park_z = -0.5  # under the table top, out of every camera's view
    palm_depth = 0.05  # m: object tops stay this far above the pinch point at most (see grasp_height)

    def __init__(self, physics_hz: int = 1000, **kwargs):
        # 1 kHz: mesh objects dropped from 10 cm sink <= 2 mm only with the stiffer contacts this
        # rate allows (scenegen.droptest); the other tasks' cubes are fine at 500 Hz.
        super().__init__(physics_hz=physics_hz, **kwargs)

    @classmethod
    def objects(cls):
        from policystack.envs.scenegen.objects import object_set

        return object_set(cls.split)

    @classmethod
    def build(cls, spec: mujoco.MjSpec) -> None:
        from policystack.envs.scenegen import add_asset

        for i, obj in enumerate(cls.objects()):
            add_asset(spec, obj.asset, f"obj{i}/", pos=(0.0, 0.3 * i, cls.park_z)).gravcomp = 1.0
        add_bowl(spec, "bowl0", radius=cls.bowl_radius)
        add_bowl(spec, "bowl1", radius=cls.bowl_radius)

    def _object_geoms(self, i: int) -> list[int]:
        bid = self.model.body(f"obj{i}/object").id
        return [g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] == bid]

    def randomize(self) -> str:
        from policystack.envs.scenegen.asset import COLLISION_GROUP

        rng = self.np_random
        objects = self.objects()
        k = int(rng.integers(len(objects)))
        c_obj, *c_bowls = _pick_colors(rng, 3)
        xy = sample_positions(rng, 3, *self.area, 0.18)  # bowls' outer walls 1 cm apart at least
        for i in range(len(objects)):
            m, active = self.model, i == k
            m.body_gravcomp[m.body(f"obj{i}/object").id] = 0.0 if active else 1.0
            for g in self._object_geoms(i):
                if m.geom_group[g] == COLLISION_GROUP:
                    m.geom_contype[g] = m.geom_conaffinity[g] = int(active)
                else:
                    m.geom_rgba[g] = COLORS[c_obj]
            pos = [*xy[0], 0.0] if active else [0.0, 0.3 * i, self.park_z]
            self.set_free_body(f"obj{i}/object", np.array(pos), rng.uniform(-np.pi, np.pi) if active else 0.0)
        for j, c in enumerate(c_bowls):
            self.model.body_pos[self.model.body(f"bowl{j}").id] = [*xy[1 + j], 0.0]
            for gid in range(self.model.ngeom):
                if self.model.geom(gid).name.startswith(f"bowl{j}_"):
                    self.model.geom_rgba[gid] = COLORS[c]
        b = int(rng.integers(2))
        self.target, self.target_object, self.bowl = f"obj{k}/object", objects[k], f"bowl{b}"
        self._target_geoms = set(self._object_geoms(k))
        self.colors, self.template = tuple(c_bowls), self.pick_template(rng)
        return self.template.format(o=objects[k].noun, b=c_bowls[b])

    def swap_instruction(self) -> str:
        b = 1 - int(self.bowl[-1])  # the other bowl
        self.bowl = f"bowl{b}"
        return self.template.format(o=self.target_object.noun, b=self.colors[b])

    def grasp_height(self) -> float:
        """Pinch height above the object's bottom: its grasp hint's, raised so that the top of a tall
        object stays below the open gripper's palm (5.5 cm above the pinch point on the 2F-85)."""
        asset = self.target_object.asset
        return max(float(asset.grasp["pos"][2]), float(asset.extents[2]) - self.palm_depth)

    def grasp_pose(self) -> tuple[np.ndarray, float]:
        """World pinch point [3] and gripper yaw (in [-pi/2, pi/2): the gripper is symmetric) from
        the target object's grasp hint (``asset.json``: body-frame point and closing direction)."""
        grasp = self.target_object.asset.grasp
        bid = self.model.body(self.target).id
        rot = self.data.xmat[bid].reshape(3, 3)
        pos = self.data.xpos[bid] + rot @ np.array([grasp["pos"][0], grasp["pos"][1], self.grasp_height()])
        closing = rot @ np.array([np.cos(grasp["axis"]), np.sin(grasp["axis"]), 0.0])
        yaw = np.arctan2(closing[1], closing[0]) - np.pi / 2  # yaw 0 closes along world y
        return pos, float((yaw + np.pi / 2) % np.pi - np.pi / 2)

    def object_state(self) -> np.ndarray:
        pos, yaw = self.grasp_pose()
        quat = np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])
        return np.concatenate([pos, quat, self.body_pos(self.bowl)])

    def evaluate(self) -> tuple[bool, dict[str, float]]:
        com = self.data.xipos[self.model.body(self.target).id]
        bowl = self.body_pos(self.bowl)
        d_xy = float(np.linalg.norm(com[:2] - bowl[:2]))
        resting = com[2] < self.target_object.asset.meta["com"][2] + 0.03  # not held above the bowl
        inside = d_xy < self.bowl_radius - 0.015 and resting
        released = not self.touching_gripper(self._target_geoms)
        d_reach = float(np.linalg.norm(self.ee_pos - self.grasp_pose()[0]))
        return bool(inside and released), {"reach": -d_reach, "place": -d_xy}


class PlaceObjectHeldOutEnv(PlaceObjectEnv):
    """PlaceObject with the generated objects held out of the demos (evaluation only)."""

    name = "PlaceObjectHeldOut"
    split = "heldout"


TASKS: dict[str, type[TabletopEnv]] = {
    cls.name: cls for cls in (ReachEnv, PressButtonEnv, OpenDrawerEnv, PushEnv, PickPlaceEnv, StackEnv,
                              PlaceObjectEnv, PlaceObjectHeldOutEnv)
}
