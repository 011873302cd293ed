"""The robot of the tabletop suite: a Franka Emika Panda arm with a Robotiq 2F-85 gripper.

Both models are MuJoCo Menagerie's (Apache-2.0). The ``mujoco-menagerie`` PyPI package ships only
a registry and downloads its models from GitHub at first use, which machines without internet
cannot reach; the assembled Panda + 2F-85 model with Menagerie's meshes ships inside the
``gym-hil`` wheel (Hugging Face's LeRobot env, installed ``--no-deps``: only its data files are
read, its Python code is never imported). :func:`panda_xml_path` finds that file.

What :func:`load_robot_spec` changes, and why:
- visual meshes (~30 MB of OBJ) are dropped and the collision meshes are drawn instead, each
  replaced by its convex hull (the gripper's STL meshes have up to 34k faces, which made software
  rendering 10x slower). MuJoCo collides meshes through their convex hulls anyway, so contacts
  are unchanged; only the inferred inertia of the gripper's mount body changes slightly;
- the arm's torque motors become joint position servos (Menagerie's Panda gains) with gravity
  compensation, so a joint target is a meaningful action (``action_mode="joint"``);
- the wrist camera is renamed ``wrist``.

:class:`DiffIK` turns an end-effector pose target into joint targets with ``mink``'s
differential IK on an arm-only copy of the model.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
from functools import lru_cache

import mujoco
import numpy as np
from scipy.spatial import ConvexHull

ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))
GRIPPER_JOINT = "right_driver_joint"  # 0 (open) .. 0.8 rad (closed)
GRIPPER_ACTUATOR = "fingers_actuator"  # ctrl 0 (open) .. 255 (closed)
GRIPPER_CTRL_MAX = 255.0
GRIPPER_JOINT_MAX = 0.8
EE_SITE = "pinch"  # between the fingertips
WRIST_CAMERA = "wrist"
PAD_GEOMS = ("left_pad1", "left_pad2", "right_pad1", "right_pad2")
# Home posture: gripper pointing straight down ~0.45 m in front of the base, 0.3 m above the table.
HOME_QPOS = np.array([0.0, -0.3067, 0.0, -2.3557, 0.0, 2.049, 0.7854], dtype=np.float64)
# Position-servo gains per joint: Menagerie's Panda stiffness kp with a 4x lighter damping
# (kv = kp * 0.025 s instead of 0.1 s) so a joint target is tracked within one 10 Hz control period;
# the implicitfast integrator keeps it stable at 500 Hz. Torque limits are the Panda's.
_KP = (4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 2000.0, 2000.0)
_KV = tuple(kp * 0.025 for kp in _KP)
_FORCE = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)


def panda_xml_path() -> pathlib.Path:
    """Path of the Panda + 2F-85 MJCF (Menagerie meshes) shipped in the gym-hil wheel."""
    try:
        dist = importlib.metadata.distribution("gym-hil")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "the Panda robot model was not found: it ships in the 'gym-hil' wheel; install it with "
            "`pip install --no-deps gym-hil==0.1.14` (scripts/setup.sh does)"
        ) from None
    path = pathlib.Path(str(dist.locate_file("gym_hil/assets/panda.xml")))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected the Panda MJCF inside the gym-hil package")
    return path


def _read_mesh_vertices(path: pathlib.Path) -> np.ndarray:
    """Vertices [N, 3] of a binary/ASCII STL or an OBJ file."""
    if path.suffix.lower() == ".obj":
        rows = [ln.split()[1:4] for ln in path.read_text().splitlines() if ln.startswith("v ")]
        return np.array(rows, dtype=np.float64)
    raw = path.read_bytes()
    if raw[:5] == b"solid" and b"facet" in raw[:1000]:
        rows = [ln.split()[1:4] for ln in raw.decode().splitlines() if ln.strip().startswith("vertex")]
        return np.array(rows, dtype=np.float64)
    n = int(np.frombuffer(raw, dtype="<u4", count=1, offset=80)[0])
    rec = np.dtype([("normal", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    if len(raw) != 84 + n * rec.itemsize:
        raise ValueError(f"{path}: not a valid binary STL ({len(raw)} bytes for {n} triangles)")
    return np.frombuffer(raw, dtype=rec, count=n, offset=84)["v"].reshape(-1, 3).astype(np.float64)


@lru_cache(maxsize=64)
def convex_hull_mesh(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [V, 3], faces [F, 3] wound outwards) of the convex hull of a mesh file."""
    pts = np.unique(_read_mesh_vertices(pathlib.Path(path)), axis=0)
    hull = ConvexHull(pts)
    verts = pts[hull.vertices]
    remap = np.full(len(pts), -1)
    remap[hull.vertices] = np.arange(len(hull.vertices))
    faces = remap[hull.simplices]
    centre = verts.mean(axis=0)
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    inward = np.einsum("ij,ij->i", np.cross(b - a, c - a), a - centre) < 0
    faces[inward] = faces[inward][:, [0, 2, 1]]
    return verts, faces


def load_robot_spec() -> mujoco.MjSpec:
    """The Panda + 2F-85 as an editable MjSpec (light meshes, position servos, gravity comp)."""
    spec = mujoco.MjSpec.from_file(str(panda_xml_path()))
    used: set[str] = set()
    for geom in list(spec.geoms):
        if geom.classname.name.endswith("/visual") and geom.meshname:
            spec.delete(geom)
        elif geom.type == mujoco.mjtGeom.mjGEOM_MESH:
            used.add(geom.meshname)
            geom.group = 0  # collision hulls are drawn too (group 3 is hidden by default)
            if geom.meshname == "base_mount":
                geom.mass = 0.15  # what the original mesh's volume gives; its hull would give 0.06
            geom.rgba = [0.92, 0.92, 0.92, 1.0] if geom.meshname.startswith("link") else [0.2, 0.2, 0.2, 1.0]
    meshdir = panda_xml_path().parent / (spec.meshdir or "")
    for mesh in list(spec.meshes):
        if mesh.name not in used:
            spec.delete(mesh)
            continue
        verts, faces = convex_hull_mesh(str(meshdir / mesh.file))
        mesh.file = ""
        mesh.uservert = verts.ravel().tolist()  # mesh.scale still applies
        mesh.userface = faces.ravel().tolist()
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    for i, name in enumerate(ARM_JOINTS):
        act = spec.actuator(f"actuator{i + 1}")
        joint = spec.joint(name)
        act.gaintype = mujoco.mjtGain.mjGAIN_FIXED
        act.biastype = mujoco.mjtBias.mjBIAS_AFFINE
        act.gainprm[0] = _KP[i]
        act.biasprm[:3] = [0.0, -_KP[i], -_KV[i]]
        act.ctrlrange = joint.range
        act.forcerange = [-_FORCE[i], _FORCE[i]]
        act.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
    for body in spec.bodies:
        if body.name != "world":
            body.gravcomp = 1.0
    cams = [c for c in spec.cameras if c.name == "handcam_rgb"]
    if not cams:
        raise ValueError(f"{panda_xml_path()}: expected a camera named 'handcam_rgb' for the wrist view")
    cams[0].name = WRIST_CAMERA
    cams[0].fovy = 70.0
    for cam in list(spec.cameras):
        if cam.name == "handcam_depth":
            spec.delete(cam)
    for key in list(spec.keys):
        spec.delete(key)
    return spec


@lru_cache(maxsize=1)
def _ik_model() -> mujoco.MjModel:
    return load_robot_spec().compile()


class DiffIK:
    """Differential IK with ``mink``: end-effector pose target -> arm joint targets.

    Runs on an arm-only model (same kinematics as the env's robot). Each call solves a few
    damped QP steps (frame task on the pinch site + a light posture task towards HOME_QPOS,
    within joint limits) starting from the current arm joints.
    """

    def __init__(self, dt: float, iterations: int = 2, orientation_cost: float = 0.5):
        import mink

        self._mink = mink
        self.model = _ik_model()
        self.config = mink.Configuration(self.model)
        self.dt = dt
        self.iterations = iterations
        self.frame = mink.FrameTask(EE_SITE, "site", position_cost=1.0, orientation_cost=orientation_cost)
        self.posture = mink.PostureTask(self.model, cost=1e-2)
        q0 = self.config.q.copy()
        q0[:7] = HOME_QPOS
        self.posture.set_target(q0)
        self.limits = [mink.ConfigurationLimit(self.model)]
        self._arm_qadr = [self.model.joint(j).qposadr[0] for j in ARM_JOINTS]

    def solve(self, q_arm: np.ndarray, target_pos: np.ndarray, target_quat: np.ndarray) -> np.ndarray:
        """q_arm: [7] current joints; target_pos: [3] world m; target_quat: [4] wxyz -> [7] joints."""
        q = self.config.q.copy()
        q[self._arm_qadr] = q_arm
        self.config.update(q)
        wxyz_xyz = np.concatenate([target_quat, target_pos])
        self.frame.set_target(self._mink.SE3(wxyz_xyz))
        for _ in range(self.iterations):
            vel = self._mink.solve_ik(
                self.config, [self.frame, self.posture], self.dt, solver="daqp", damping=1e-3, limits=self.limits
            )
            self.config.integrate_inplace(vel, self.dt)
        return self.config.q[self._arm_qadr].copy()
