"""Drop tests: is an asset a stable simulator object?

Two kinds of trial, in the tabletop's physics (implicitfast, the suite's table; ``physics_hz``
1000 by default, the rate of the PlaceObject task):

- **poses**: the object is released with its lowest point ``height`` (10 cm) above the table,
  upright, upside down and on each of its four sides, each tilted by 0.2 rad (``random_poses``
  adds random orientations: those can land an object balanced on an edge, from where it topples
  slowly -- physically right, but not at rest within 1 s, so they are not part of the default);
- **seams**: the object stands upright on the table and a probe ball (2 cm diameter) is released
  ``height`` above a point where two collision hulls meet on an upward-facing part of the surface
  (found by casting rays down at the hulls; up to ``seams`` such points, spread out). Seams are
  where convex decompositions leak: a small ball can slip between hulls whose contacts each push
  it sideways. A single-hull asset has no seams.

A trial passes when, with every body released at rest:
- everything is at rest within ``rest_within`` (1 s): linear speed below 5 mm/s and angular speed
  below 0.1 rad/s (averaged over 50 ms) from then to the end of the trial (1.5 s);
- no contact of the tested bodies ever penetrates deeper than ``max_penetration`` (2 mm);
- the total mechanical energy (gravity + kinetic) never exceeds its value at release by more than
  ``energy_tol`` (1%) of the drop energy: contacts may absorb energy, never add it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import mujoco
import numpy as np

from policystack.envs.scene import add_table_and_lights
from policystack.envs.scenegen.asset import COLLISION_GROUP, CONTACT, Asset, add_asset

REST_LINEAR, REST_ANGULAR = 0.005, 0.1  # m/s, rad/s
REST_WINDOW = 0.05  # s: speeds are averaged over this window before the rest thresholds apply
PROBE_RADIUS = 0.01
OBJ = "obj/"


@dataclass
class DropTrial:
    kind: str  # "pose" or "seam"
    label: str  # e.g. "upright", "random-2", "seam-1 at (x, y, z)"
    rest_time: float | None  # s after release from which everything stayed at rest (None: never)
    max_penetration: float  # m
    energy_gain: float  # J above the energy at release (<= 0 when none)
    drop_energy: float  # J, m g h of the dropped body
    passed: bool = False
    reasons: list[str] = field(default_factory=list)


@dataclass
class DropReport:
    asset: str
    trials: list[DropTrial]
    seams_found: int  # flat seam points found (probes were dropped on up to ``seams`` of them)

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.trials)

    def summary(self) -> str:
        """One line per failure, or a one-line pass."""
        worst = max(t.max_penetration for t in self.trials)
        rest = max((t.rest_time or np.inf) for t in self.trials)
        head = (f"{self.asset}: {'PASS' if self.passed else 'FAIL'} {sum(t.passed for t in self.trials)}/"
                f"{len(self.trials)} trials ({sum(t.kind == 'seam' for t in self.trials)} on seams), at rest "
                f"by {rest:.2f} s, max penetration {worst * 1000:.2f} mm")
        fails = [f"  {t.label}: {'; '.join(t.reasons)}" for t in self.trials if not t.passed]
        return "\n".join([head, *fails])

    def as_dict(self) -> dict:
        return {"asset": self.asset, "passed": self.passed, "seams_found": self.seams_found,
                "trials": [asdict(t) for t in self.trials]}


def _scene(asset: Asset, probe: bool, free: bool = True, physics_hz: int = 1000) -> mujoco.MjModel:
    spec = mujoco.MjSpec()
    add_table_and_lights(spec, offscreen=64)
    spec.option.timestep = 1.0 / physics_hz
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.enableflags |= mujoco.mjtEnableBit.mjENBL_ENERGY
    body = add_asset(spec, asset, OBJ, pos=(0.4, 0.0, 0.0))
    if not free:
        spec.delete(body.joints[0])
    if probe:
        b = spec.worldbody.add_body(name="probe", pos=[0.4, 0.0, 0.5])
        b.add_freejoint(name="probe")
        b.add_geom(name="probe", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=[PROBE_RADIUS, 0, 0], density=1000.0,
                   friction=[1.0, 0.02, 0.02], **CONTACT)
    return spec.compile()


def _quat_from_rotvec(v: np.ndarray) -> np.ndarray:
    q = np.array([1.0, 0.0, 0.0, 0.0])
    angle = float(np.linalg.norm(v))
    if angle > 0:
        mujoco.mju_axisAngle2Quat(q, v / angle, angle)
    return q


def _poses(random_poses: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """The six canonical poses (upright, upside down, on each side), each tilted by 0.2 rad about
    an oblique axis so that nothing lands balanced on an edge, then ``random_poses`` random
    orientations."""
    tilt = _quat_from_rotvec(0.2 * np.array([1.0, 2.0, 0.0]) / np.sqrt(5.0))
    fixed = [("upright", np.zeros(3)), ("upside-down", np.array([np.pi, 0, 0])),
             ("side+x", np.array([0, np.pi / 2, 0])), ("side-x", np.array([0, -np.pi / 2, 0])),
             ("side+y", np.array([np.pi / 2, 0, 0])), ("side-y", np.array([-np.pi / 2, 0, 0]))]
    out = []
    for label, v in fixed:
        q = np.empty(4)
        mujoco.mju_mulQuat(q, tilt, _quat_from_rotvec(v))
        out.append((label, q))
    for i in range(random_poses):
        q = rng.normal(size=4)
        out.append((f"random-{i}", q / np.linalg.norm(q)))
    return out


def _lowest_z(model: mujoco.MjModel, data: mujoco.MjData, body: int) -> float:
    """Lowest vertex height of the body's collision meshes at the current pose."""
    low = np.inf
    for g in range(model.ngeom):
        if model.geom_bodyid[g] != body or model.geom_group[g] != COLLISION_GROUP:
            continue
        m = model.geom_dataid[g]
        v = model.mesh_vert[model.mesh_vertadr[m]:model.mesh_vertadr[m] + model.mesh_vertnum[m]]
        world = v @ data.geom_xmat[g].reshape(3, 3).T + data.geom_xpos[g]
        low = min(low, float(world[:, 2].min()))
    return low


def _run(model: mujoco.MjModel, data: mujoco.MjData, bodies: list[int], duration: float, rest_within: float,
         drop_energy: float, kind: str, label: str, max_penetration: float, energy_tol: float) -> DropTrial:
    """Step from rest for ``duration`` s and judge the trial (see the module docstring)."""
    geoms = {g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies}
    jnt = [model.body_jntadr[b] for b in bodies]
    dofs = [model.jnt_dofadr[j] for j in jnt if j >= 0]
    mujoco.mj_forward(model, data)
    e0 = float(data.energy.sum())
    steps = int(round(duration / model.opt.timestep))
    pen, gain = 0.0, -np.inf
    speeds = np.zeros((steps, 2))  # the fastest tested body's linear and angular speed per step
    for i in range(steps):
        mujoco.mj_step(model, data)
        for c in data.contact[: data.ncon]:
            if c.geom1 in geoms or c.geom2 in geoms:
                pen = max(pen, -float(c.dist))
        gain = max(gain, float(data.energy.sum()) - e0)
        for d in dofs:
            speeds[i, 0] = max(speeds[i, 0], np.linalg.norm(data.qvel[d:d + 3]))
            speeds[i, 1] = max(speeds[i, 1], np.linalg.norm(data.qvel[d + 3:d + 6]))
    # at rest: the speeds averaged over REST_WINDOW stay below the thresholds from then to the end
    # (a single step's spike when a contact point switches between hull facets is not motion)
    w = max(1, int(round(REST_WINDOW / model.opt.timestep)))
    kernel = np.ones(w) / w
    smooth = np.stack([np.convolve(speeds[:, k], kernel, mode="same") for k in range(2)], axis=1)
    moving = np.flatnonzero((smooth[:, 0] > REST_LINEAR) | (smooth[:, 1] > REST_ANGULAR))
    moving_until = (moving[-1] + 1) * model.opt.timestep if len(moving) else 0.0
    rest = None if moving_until >= duration - 0.1 else moving_until
    trial = DropTrial(kind, label, rest, pen, gain, drop_energy)
    if rest is None or rest > rest_within:
        trial.reasons.append(f"not at rest within {rest_within} s" + ("" if rest is None else f" (at {rest:.2f} s)"))
    if pen > max_penetration:
        trial.reasons.append(f"penetration {pen * 1000:.2f} mm > {max_penetration * 1000:.1f} mm")
    if gain > energy_tol * drop_energy:
        trial.reasons.append(f"energy gain {gain:.2e} J > {energy_tol:.0%} of the drop energy {drop_energy:.2e} J")
    trial.passed = not trial.reasons
    return trial


def find_seams(asset: Asset, grid: int = 48, min_normal_z: float = 0.7, on_seam: float = 5e-4,
               physics_hz: int = 1000) -> np.ndarray:
    """Points [K, 3] (body frame of the upright object) where two collision hulls meet on a surface
    seen from above that faces upwards (normal z >= ``min_normal_z``, slopes up to 45 degrees)."""
    model = _scene(asset, probe=False, free=False, physics_hz=physics_hz)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    body = model.body(f"{OBJ}object").id
    hulls = [g for g in range(model.ngeom) if model.geom_bodyid[g] == body and model.geom_group[g] == COLLISION_GROUP]
    if len(hulls) < 2:
        return np.zeros((0, 3))
    planes = {g: _hull_planes(model, data, g) for g in hulls}
    groups = np.zeros(6, np.uint8)
    groups[COLLISION_GROUP] = 1
    origin = data.xpos[body]
    half = asset.extents[:2] / 2
    top = float(origin[2] + asset.extents[2] + 0.05)
    gid, normal = np.zeros(1, np.int32), np.zeros(3)
    out = []
    for x in np.linspace(-half[0], half[0], grid) + origin[0]:
        for y in np.linspace(-half[1], half[1], grid) + origin[1]:
            d = mujoco.mj_ray(model, data, np.array([x, y, top]), np.array([0.0, 0.0, -1.0]), groups, 1, -1, gid, normal)
            g = int(gid[0])
            if d < 0 or g not in planes or normal[2] < min_normal_z:
                continue
            p = np.array([x, y, top - d])
            if any(abs(_signed_distance(planes[h], p)) < on_seam for h in hulls if h != g):
                out.append(p - origin)
    return np.array(out).reshape(-1, 3)


def _hull_planes(model: mujoco.MjModel, data: mujoco.MjData, g: int) -> np.ndarray:
    """Outward face planes [F, 4] (n, d with n.x + d <= 0 inside) of mesh geom g in world frame."""
    from scipy.spatial import ConvexHull

    m = model.geom_dataid[g]
    v = model.mesh_vert[model.mesh_vertadr[m]:model.mesh_vertadr[m] + model.mesh_vertnum[m]]
    world = v @ data.geom_xmat[g].reshape(3, 3).T + data.geom_xpos[g]
    return ConvexHull(world).equations


def _signed_distance(planes: np.ndarray, p: np.ndarray) -> float:
    return float(np.max(planes[:, :3] @ p + planes[:, 3]))


def drop_test(asset: Asset, height: float = 0.10, random_poses: int = 0, seams: int = 4, seed: int = 0,
              duration: float = 1.5, rest_within: float = 1.0, max_penetration: float = 0.002,
              energy_tol: float = 0.01, physics_hz: int = 1000) -> DropReport:
    """Run the pose and seam trials of the module docstring; see DropReport.summary()."""
    rng = np.random.default_rng(seed)
    g = 9.81
    trials = []
    model = _scene(asset, probe=False, physics_hz=physics_hz)
    data = mujoco.MjData(model)
    body = model.body(f"{OBJ}object").id
    adr = model.jnt_qposadr[model.body_jntadr[body]]
    mass = float(model.body_subtreemass[body])
    for label, quat in _poses(random_poses, rng):
        mujoco.mj_resetData(model, data)
        data.qpos[adr:adr + 3] = [0.4, 0.0, 1.0]
        data.qpos[adr + 3:adr + 7] = quat
        mujoco.mj_forward(model, data)
        data.qpos[adr + 2] += height - _lowest_z(model, data, body)
        trials.append(_run(model, data, [body], duration, rest_within, mass * g * height, "pose", label,
                           max_penetration, energy_tol))

    points = find_seams(asset, physics_hz=physics_hz)
    if len(points):
        model = _scene(asset, probe=True, physics_hz=physics_hz)
        data = mujoco.MjData(model)
        probe = model.body("probe").id
        padr = model.jnt_qposadr[model.body_jntadr[probe]]
        pmass = float(model.body_subtreemass[probe])
        for i in _spread(points, seams, rng):
            mujoco.mj_resetData(model, data)
            target = points[i] + [0.4, 0.0, 0.0]
            data.qpos[padr:padr + 3] = target + [0.0, 0.0, PROBE_RADIUS + height]
            label = f"seam-{sum(t.kind == 'seam' for t in trials)} at ({', '.join(f'{x * 100:.1f}' for x in points[i])}) cm"
            trials.append(_run(model, data, [body, probe], duration, rest_within, pmass * g * height, "seam", label,
                               max_penetration, energy_tol))
    return DropReport(asset.name, trials, len(points))


def _spread(points: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """Indices of up to k points far apart (farthest-point sampling from a random start)."""
    chosen = [int(rng.integers(len(points)))]
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    while len(chosen) < min(k, len(points)):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return chosen
