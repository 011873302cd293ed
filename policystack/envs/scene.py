"""Scene pieces of the tabletop suite, added to an ``mujoco.MjSpec``: table, light, front camera,
cubes, bowls, goal zones, target balls, a drawer cabinet and push buttons.

Frame: the robot base is at the origin, the table top is the plane z = 0, +x points away from
the robot (the front camera looks back at it from +x). Sizes are in metres.
"""

from __future__ import annotations

import mujoco
import numpy as np

BOX = mujoco.mjtGeom.mjGEOM_BOX
SPHERE = mujoco.mjtGeom.mjGEOM_SPHERE
CYLINDER = mujoco.mjtGeom.mjGEOM_CYLINDER
CAPSULE = mujoco.mjtGeom.mjGEOM_CAPSULE

# Colour names used in instructions -> RGBA. Tasks draw distinct colours from here per episode.
COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.7, 0.15, 1.0),
    "blue": (0.1, 0.25, 0.85, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.55, 0.15, 0.7, 1.0),
    "orange": (0.95, 0.5, 0.05, 1.0),
}

CUBE_HALF = 0.02  # cube half size: a 4 cm cube
TABLE_TOP = 0.0


def add_table_and_lights(spec: mujoco.MjSpec, offscreen: int) -> None:
    """Table, one light without shadows, the front camera; light rendering settings."""
    spec.option.timestep = 0.002
    spec.visual.quality.shadowsize = 0  # no shadow maps: software rendering
    spec.visual.global_.offwidth = offscreen
    spec.visual.global_.offheight = offscreen
    spec.visual.headlight.ambient = [0.45, 0.45, 0.45]
    spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]
    wb = spec.worldbody
    wb.add_geom(name="table", type=BOX, size=[0.6, 0.6, 0.02], pos=[0.4, 0.0, TABLE_TOP - 0.02],
                rgba=[0.62, 0.5, 0.38, 1.0], friction=[1.0, 0.005, 0.0001])
    wb.add_light(name="top", pos=[0.5, 0.0, 1.5], dir=[0.0, 0.0, -1.0], diffuse=[0.6, 0.6, 0.6],
                 castshadow=False)
    # 0.95 m in front of the base, 0.6 m up, looking back at the workspace centre (0.45, 0, 0.05).
    wb.add_camera(name="front", pos=[0.95, 0.0, 0.6], xyaxes=[0, 1, 0, -0.740, 0, 0.673], fovy=58.0)


def add_cube(spec: mujoco.MjSpec, name: str, half: float = CUBE_HALF, mass: float = 0.05) -> None:
    body = spec.worldbody.add_body(name=name, pos=[0.5, 0.0, half])
    body.add_freejoint(name=name)
    body.add_geom(name=name, type=BOX, size=[half] * 3, mass=mass, rgba=COLORS["red"],
                  friction=[1.0, 0.005, 0.0001], condim=4)


def add_marker(spec: mujoco.MjSpec, name: str, kind: str, size: list[float]) -> None:
    """A visual-only body (no collision): a ball target or a flat goal zone. Move it via body_pos."""
    body = spec.worldbody.add_body(name=name, pos=[0.5, 0.0, 0.1])
    gtype = SPHERE if kind == "ball" else CYLINDER
    body.add_geom(name=name, type=gtype, size=size, rgba=COLORS["red"], contype=0, conaffinity=0)


def add_bowl(spec: mujoco.MjSpec, name: str, radius: float = 0.075, height: float = 0.04,
             walls: int = 16) -> None:
    """A static bowl: a thin base disc and a ring of wall boxes. Move it via body_pos."""
    body = spec.worldbody.add_body(name=name, pos=[0.5, 0.0, 0.0])
    body.add_geom(name=f"{name}_base", type=CYLINDER, size=[radius, 0.003], pos=[0, 0, 0.003],
                  rgba=COLORS["blue"])
    half_w = radius * np.tan(np.pi / walls) + 0.004
    for i in range(walls):
        a = 2 * np.pi * i / walls
        quat = [np.cos(a / 2), 0.0, 0.0, np.sin(a / 2)]
        body.add_geom(name=f"{name}_wall{i}", type=BOX, size=[0.004, half_w, height / 2],
                      pos=[radius * np.cos(a), radius * np.sin(a), height / 2], quat=quat,
                      rgba=COLORS["blue"])


def add_drawer(spec: mujoco.MjSpec, name: str = "drawer") -> None:
    """A cabinet (static) with one drawer on a slide joint that opens towards the robot (-x).

    The cabinet body's origin is the middle of its front face at table height; the drawer's
    joint ``{name}`` is 0 when closed and 0.2 m fully open; its handle is a bar along y, 5 cm in
    front of the drawer face (x = -0.06 m), 10 cm above the table.
    """
    cab = spec.worldbody.add_body(name=f"{name}_cabinet", pos=[0.72, 0.0, 0.0])
    grey = [0.55, 0.55, 0.6, 1.0]
    depth, half_y, h = 0.24, 0.16, 0.2
    for gname, size, pos in (
        ("bottom", [depth / 2, half_y, 0.01], [depth / 2, 0, 0.01]),
        ("top", [depth / 2, half_y, 0.01], [depth / 2, 0, h - 0.01]),
        ("left", [depth / 2, 0.01, h / 2], [depth / 2, half_y - 0.01, h / 2]),
        ("right", [depth / 2, 0.01, h / 2], [depth / 2, -half_y + 0.01, h / 2]),
        ("back", [0.01, half_y, h / 2], [depth - 0.01, 0, h / 2]),
    ):
        cab.add_geom(name=f"{name}_cab_{gname}", type=BOX, size=size, pos=pos, rgba=grey)
    dr = cab.add_body(name=name, pos=[0.0, 0.0, 0.0])
    dr.add_joint(name=name, type=mujoco.mjtJoint.mjJNT_SLIDE, axis=[-1, 0, 0], range=[0.0, 0.2],
                 damping=5.0, armature=0.01)
    dx, dy, dz = 0.1, half_y - 0.025, 0.07
    color = COLORS["red"]
    for gname, size, pos in (
        ("front", [0.01, half_y - 0.025, dz], [0.0, 0, 0.025 + dz]),
        ("floor", [dx, dy, 0.005], [dx, 0, 0.03]),
        ("back", [0.005, dy, 0.03], [2 * dx, 0, 0.06]),
        ("left", [dx, 0.005, 0.03], [dx, dy, 0.06]),
        ("right", [dx, 0.005, 0.03], [dx, -dy, 0.06]),
    ):
        dr.add_geom(name=f"{name}_{gname}", type=BOX, size=size, pos=pos, rgba=color, mass=0.2)
    for side in (-1, 1):
        dr.add_geom(name=f"{name}_post{side + 1}", type=BOX, size=[0.027, 0.006, 0.006],
                    pos=[-0.037, side * 0.055, 0.1], rgba=grey, mass=0.01)
    # The cabinet is welded to the world, so parent-child filtering does not apply: exclude it.
    spec.add_exclude(bodyname1=f"{name}_cabinet", bodyname2=name)
    dr.add_geom(name=f"{name}_handle", type=CAPSULE, size=[0.008, 0.06], pos=[-0.06, 0, 0.1],
                quat=[np.sqrt(0.5), np.sqrt(0.5), 0, 0], rgba=grey, mass=0.02)


def add_button(spec: mujoco.MjSpec, name: str) -> None:
    """A push button: a static housing and a spring-loaded cap; joint ``{name}`` is 0 when up,
    -0.012 fully pressed."""
    base = spec.worldbody.add_body(name=f"{name}_housing", pos=[0.5, 0.0, 0.0])
    base.add_geom(name=f"{name}_housing", type=BOX, size=[0.035, 0.035, 0.012], pos=[0, 0, 0.012],
                  rgba=[0.3, 0.3, 0.3, 1.0])
    cap = base.add_body(name=name, pos=[0.0, 0.0, 0.024])
    cap.add_joint(name=name, type=mujoco.mjtJoint.mjJNT_SLIDE, axis=[0, 0, 1], range=[-0.012, 0.0],
                  stiffness=60.0, springref=0.0, damping=2.0)
    cap.add_geom(name=name, type=CYLINDER, size=[0.024, 0.008], pos=[0, 0, 0.008], rgba=COLORS["red"],
                 mass=0.02)


def sample_positions(rng: np.random.Generator, n: int, low: tuple[float, float], high: tuple[float, float],
                     min_dist: float, tries: int = 1000) -> np.ndarray:
    """n xy positions uniform in [low, high] at least min_dist apart (rejection sampling): [n, 2]."""
    out: list[np.ndarray] = []
    for _ in range(tries):
        p = rng.uniform(low, high)
        if all(np.linalg.norm(p - q) >= min_dist for q in out):
            out.append(p)
            if len(out) == n:
                return np.array(out)
    raise ValueError(f"could not place {n} objects {min_dist} m apart in {low}..{high}")
