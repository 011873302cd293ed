"""Simulator assets and their cache: a watertight solid becomes a directory holding an MJCF body
(``asset.xml``: a free joint, the visual mesh, the collision hulls, mass and inertia from a density,
friction), its meshes as OBJ files, and ``asset.json`` (sizes, hull count, mass, a grasp hint, how
it was made, timings).

The cache directory of an asset is named by a hash of its input (file bytes or generator
parameters) and every setting, so the same request is computed once. An entry is assembled in a
temporary directory beside the cache and renamed into place in one step: a crash or an error
leaves no half-written entry.

Geom groups: visual meshes are group 2 (drawn, no contacts), collision hulls group 3 (not drawn
by default, collide). The body's frame has its origin at the centre of the footprint on the
table plane (z = 0 at the bottom of the object).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import trimesh

from policystack.envs.scene import COLORS
from policystack.envs.scenegen.hulls import HullConfig, decompose
from policystack.envs.scenegen.mesh import WATERTIGHT_MODES, MeshError, Solid, placement

PIPELINE_VERSION = 5  # part of every cache key: bump when the pipeline's output changes
DEFAULT_CACHE = Path(os.environ.get("POLICYSTACK_CACHE", Path.home() / ".cache" / "policystack")) / "scenegen"
VISUAL_GROUP, COLLISION_GROUP = 2, 3
MAX_COLOURS = 4  # visual sub-meshes per asset when faces carry colours
# Contacts of the collision hulls (priority 1: these win over the other geom's settings). solref's
# time constant 2 ms is below MuJoCo's floor of 2 timesteps at 500 Hz, so the floor applies there
# (4 ms); at 1 kHz it is used as is. condim 6 adds torsional and rolling friction (the defaults of
# AssetConfig.friction): with less than about 2 cm of rolling and torsional resistance, round
# objects (a can on its side, fruit, a mug landing on its rim) keep rocking on the facets of their
# hulls for over a second, as MuJoCo's soft contacts lose little energy rolling over an edge.
CONTACT = {"condim": 6, "solref": [0.002, 1.0], "solimp": [0.95, 0.99, 0.001, 0.5, 2.0], "priority": 1}

# Colour words understood by the generator and the colour= settings -> RGBA: the tabletop suite's
# six colours (policystack.envs.scene.COLORS, which instructions name), then more.
COLOURS: dict[str, tuple[float, float, float, float]] = {
    **COLORS,
    "white": (0.92, 0.92, 0.9, 1.0),
    "black": (0.08, 0.08, 0.08, 1.0),
    "grey": (0.5, 0.5, 0.52, 1.0),
    "gray": (0.5, 0.5, 0.52, 1.0),
    "brown": (0.45, 0.28, 0.12, 1.0),
    "pink": (0.95, 0.5, 0.7, 1.0),
    "cyan": (0.1, 0.75, 0.8, 1.0),
}


def parse_colour(value: str | tuple[float, ...] | list[float]) -> tuple[float, float, float, float]:
    """A colour name from COLOURS, "r,g,b[,a]" in [0, 1], or a 3/4-sequence -> RGBA."""
    if isinstance(value, str):
        if value.lower() in COLOURS:
            return COLOURS[value.lower()]
        try:
            value = [float(x) for x in value.split(",")]
        except ValueError:
            raise ValueError(f"colour={value!r}: expected a name ({', '.join(COLOURS)}) or r,g,b[,a] in [0, 1]") from None
    rgba = [float(x) for x in value]
    if len(rgba) == 3:
        rgba.append(1.0)
    if len(rgba) != 4 or not all(0.0 <= x <= 1.0 for x in rgba):
        raise ValueError(f"colour={value!r}: expected 3 or 4 numbers in [0, 1]")
    return (rgba[0], rgba[1], rgba[2], rgba[3])


@dataclass(frozen=True)
class AssetConfig:
    """How a mesh becomes a simulator object. Every field is part of the cache key."""

    size: float | None = None  # longest side after import (m); None: the input's own units x scale
    scale: float | None = None  # multiply the input's coordinates (e.g. 0.001 for a file in mm)
    density: float = 500.0  # kg/m^3 -> mass and inertia from the solid's volume
    friction: tuple[float, float, float] = (1.0, 0.02, 0.02)  # sliding, torsional (m), rolling (m)
    colour: tuple[float, float, float, float] = (0.7, 0.7, 0.7, 1.0)  # RGBA when faces carry no colour
    watertight: str = "repair"  # "repair" | "hull" | "voxel": see mesh.make_solid
    up: str | None = None  # the input's up axis ("z" | "y"); None: "y" for glTF, "z" otherwise
    max_faces: int = 1_000_000  # inputs with more faces are refused
    visual_faces: int = 20_000  # visual meshes with more faces are simplified (rendering cost)
    hulls: HullConfig = field(default_factory=HullConfig)

    def __post_init__(self):
        if self.size is not None and not 0.0 < self.size:
            raise ValueError(f"size={self.size}: expected a positive length in metres (e.g. 0.08)")
        if self.scale is not None and not 0.0 < self.scale:
            raise ValueError(f"scale={self.scale}: expected a positive factor")
        if self.size is not None and self.scale is not None:
            raise ValueError("give size= (target length of the longest side) or scale=, not both")
        if not 10.0 <= self.density <= 25_000.0:
            raise ValueError(f"density={self.density}: expected kg/m^3 between 10 (foam) and 25000; water is 1000")
        if len(self.friction) != 3 or not all(f >= 0 for f in self.friction) or self.friction[0] <= 0:
            raise ValueError(f"friction={self.friction}: expected (sliding > 0, torsional >= 0, rolling >= 0)")
        object.__setattr__(self, "colour", parse_colour(self.colour))
        if self.watertight not in WATERTIGHT_MODES:
            raise ValueError(f"watertight={self.watertight!r}: expected one of {', '.join(WATERTIGHT_MODES)}")
        if self.up not in (None, "y", "z"):
            raise ValueError(f"up={self.up!r}: expected 'z' or 'y'")
        if self.max_faces < 4 or self.visual_faces < 100:
            raise ValueError(f"max_faces={self.max_faces} / visual_faces={self.visual_faces}: too small")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GraspHint:
    """Where a parallel gripper pointing down can hold the object, in the body frame: the pinch
    point ``pos`` [3] and the closing direction's angle ``axis`` (rad, about z, from body x)."""

    pos: tuple[float, float, float]
    axis: float


@dataclass(frozen=True)
class Asset:
    """A finished cache entry. ``meta`` is asset.json: name, key, source, config, sizes
    (``extents`` [3], m), ``hulls`` (count), ``mass`` (kg), ``com`` [3], ``grasp`` (pos, axis,
    width), ``colour`` RGBA of the visual parts, ``timings`` (s per pipeline stage)."""

    path: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def xml_path(self) -> Path:
        return self.path / "asset.xml"

    @property
    def hull_count(self) -> int:
        return int(self.meta["hulls"])

    @property
    def mass(self) -> float:
        return float(self.meta["mass"])

    @property
    def extents(self) -> np.ndarray:
        return np.asarray(self.meta["extents"], np.float64)

    @property
    def grasp(self) -> dict[str, Any]:
        return self.meta["grasp"]

    @classmethod
    def load(cls, path: str | Path) -> Asset:
        """Open a cache entry (a directory with asset.json and asset.xml)."""
        path = Path(path)
        meta_path = path / "asset.json"
        if not meta_path.is_file() or not (path / "asset.xml").is_file():
            raise MeshError(f"{path}: not a scenegen asset (asset.json and asset.xml expected)")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MeshError(f"{meta_path}: corrupt asset metadata ({e}); delete {path} to rebuild it") from None
        if meta.get("pipeline_version") != PIPELINE_VERSION:
            raise MeshError(f"{path}: made by pipeline version {meta.get('pipeline_version')}, this is "
                            f"{PIPELINE_VERSION}; delete it to rebuild")
        return cls(path, meta)

    def spec(self) -> mujoco.MjSpec:
        """The asset's MJCF as an MjSpec (mesh files resolve relative to the asset directory)."""
        return mujoco.MjSpec.from_file(str(self.xml_path))


# --- the pipeline ----------------------------------------------------------------------------------
def cache_key(source: dict[str, Any], cfg: AssetConfig) -> str:
    """sha256 of the input description, the settings and the pipeline version."""
    blob = json.dumps({"source": source, "config": cfg.as_dict(), "version": PIPELINE_VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def slug(text: str) -> str:
    """A file-name-safe short name: "a Red mug!" -> "a_red_mug"."""
    s = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return "_".join(p for p in s.split("_") if p)[:48] or "object"


def build_asset(name: str, source: dict[str, Any], cfg: AssetConfig, make: Callable[[], tuple[Solid, GraspHint | None]],
                cache_dir: str | Path | None = None, what: str | None = None) -> Asset:
    """The asset for ``source`` + ``cfg`` from the cache, or made now: ``make()`` returns the
    solid (any scale; placed by cfg.size / cfg.scale) and an optional grasp hint in the solid's
    frame. ``what`` names the input in errors (default: the name and the source's kind). Errors
    leave nothing in the cache."""
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    key = cache_key(source, cfg)
    final = cache / f"{slug(name)}-{key[:16]}"
    if final.is_dir():
        return Asset.load(final)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    solid, hint = make()
    timings["mesh"] = time.perf_counter() - t0
    what = what or f"{name} ({source.get('kind', 'mesh')})"
    t = placement(solid.solid, cfg.size, cfg.scale, what)
    solid = solid.transformed(t)
    if hint is not None:
        pos = t @ np.append(hint.pos, 1.0)
        hint = GraspHint(tuple(float(x) for x in pos[:3]), hint.axis)
    t0 = time.perf_counter()
    hulls = decompose(solid.solid, cfg.hulls, what)
    timings["hulls"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta = _write_entry(tmp, name, key, source, cfg, solid, hulls, hint)
        mujoco.MjSpec.from_file(str(tmp / "asset.xml")).compile()  # the entry must load before it is published
        timings["write"] = time.perf_counter() - t0
        meta["timings"] = {k: round(v, 4) for k, v in timings.items()}
        _publish(tmp, final, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Asset.load(final)


def _publish(tmp: Path, final: Path, meta: dict) -> None:
    """Write asset.json last, then rename the directory into place (another process that built
    the same key first wins; its entry is identical)."""
    from policystack.io import atomic_write_json, fsync_dir

    atomic_write_json(tmp / "asset.json", meta)
    fsync_dir(tmp)
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "asset.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(final.parent)


def _obj_bytes(mesh: trimesh.Trimesh) -> bytes:
    return trimesh.exchange.obj.export_obj(mesh, include_normals=False, include_color=False,
                                           include_texture=False, write_texture=False).encode()


def _visual_parts(solid: Solid, cfg: AssetConfig) -> list[tuple[trimesh.Trimesh, tuple[float, ...]]]:
    """The visual mesh, simplified when large, split into at most MAX_COLOURS single-colour
    parts when its faces carry colours (MuJoCo colours a geom, not a face)."""
    visual, face_rgb = solid.visual, solid.face_rgb
    if face_rgb is None:
        return [(_simplified(visual, cfg.visual_faces), cfg.colour)]
    labels, palette = colour_groups(face_rgb, MAX_COLOURS, seed=0)
    parts = []
    for k, rgb in enumerate(palette):
        sub = visual.submesh([np.flatnonzero(labels == k)], append=True)
        if len(sub.faces):
            parts.append((sub, (*[float(c) for c in rgb], 1.0)))
    return parts


def _simplified(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """``mesh`` with at most about ``max_faces`` faces (manifold3d's simplify, only for closed
    meshes; others are kept as they are)."""
    if len(mesh.faces) <= max_faces:
        return mesh
    import manifold3d

    m = manifold3d.Manifold(manifold3d.Mesh(vert_properties=np.ascontiguousarray(mesh.vertices, np.float32),
                                            tri_verts=np.ascontiguousarray(mesh.faces, np.uint32)))
    if m.status() != manifold3d.Error.NoError:
        return mesh
    tol = float(mesh.extents.max()) * 1e-3
    while m.num_tri() > max_faces and tol < mesh.extents.max():
        m = m.simplify(tol)
        tol *= 2
    out = m.to_mesh()
    return trimesh.Trimesh(np.asarray(out.vert_properties)[:, :3], np.asarray(out.tri_verts), process=False)


def colour_groups(rgb: np.ndarray, k: int, seed: int = 0, iters: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """k-means of colours [N, 3] into at most k groups: (labels [N], palette [K, 3]); empty
    groups are dropped and labels renumbered."""
    rgb = np.asarray(rgb, np.float64)
    uniq = np.unique(np.round(rgb, 3), axis=0)
    k = min(k, len(uniq))
    rng = np.random.default_rng(seed)
    centres = uniq[rng.choice(len(uniq), size=k, replace=False)]
    for _ in range(iters):
        labels = np.argmin(((rgb[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        centres = np.array([rgb[labels == j].mean(0) if np.any(labels == j) else centres[j] for j in range(k)])
    used = np.unique(labels)
    remap = np.full(k, -1)
    remap[used] = np.arange(len(used))
    return remap[labels], centres[used]


def default_grasp(solid: trimesh.Trimesh) -> GraspHint:
    """A top-down grasp for any solid: the footprint's centre at half height (at least 2 cm up, so
    the fingertips clear the table), fingers closing across the footprint's short axis."""
    xy = solid.vertices[:, :2] - solid.vertices[:, :2].mean(0)
    evals, evecs = np.linalg.eigh(xy.T @ xy)
    short = evecs[:, 0]  # eigenvector of the smallest eigenvalue
    height = float(solid.bounds[1, 2])
    z = float(np.clip(height / 2, min(0.02, height), max(height - 0.01, 0.0)))
    return GraspHint((0.0, 0.0, z), float(np.arctan2(short[1], short[0])))


def grasp_chord(solid: trimesh.Trimesh, pos: np.ndarray, axis: float) -> float:
    """Length (m) of the solid's cross-section at height pos[2] along the line through ``pos`` in the
    closing direction ``axis``: how wide the fingers must open there (0 when the line misses)."""
    segs = trimesh.intersections.mesh_plane(solid, [0.0, 0.0, 1.0], [0.0, 0.0, float(pos[2])])
    if len(segs) == 0:
        return 0.0
    d, n = np.array([np.cos(axis), np.sin(axis)]), np.array([-np.sin(axis), np.cos(axis)])
    p, q = segs[:, 0, :2] - pos[:2], segs[:, 1, :2] - pos[:2]
    a, b = p @ n, q @ n
    cross = (a * b <= 0) & (a != b)
    if not cross.any():
        return 0.0
    s = (a[cross] / (a[cross] - b[cross]))[:, None]
    t = (p[cross] + s * (q[cross] - p[cross])) @ d
    return float(t.max() - t.min())


def refine_grasp(solid: trimesh.Trimesh, hint: GraspHint, clearance: float = 0.02, step: float = 0.005) -> GraspHint:
    """Lower the hint to the widest section below it when the object narrows above the hint (the
    upper half of a ball or a pear: squeezed there, it is pushed down out of the fingers; where it
    widens upwards, like a cup, the squeeze pushes it into them). Never below ``clearance`` (the
    fingertips stay off the table)."""
    pos = np.asarray(hint.pos, np.float64)

    def chord(z: float) -> float:
        return grasp_chord(solid, np.array([pos[0], pos[1], z]), hint.axis)

    if pos[2] + step > solid.bounds[1, 2] or chord(pos[2] + step) >= chord(pos[2]) - 0.001:
        return hint
    zs = np.arange(pos[2], min(clearance, pos[2]) - 1e-9, -step / 5)
    z = float(zs[int(np.argmax([chord(z) for z in zs]))])
    return GraspHint((float(pos[0]), float(pos[1]), z), hint.axis)


def _write_entry(tmp: Path, name: str, key: str, source: dict[str, Any], cfg: AssetConfig, solid: Solid,
                 hulls: list[trimesh.Trimesh], hint: GraspHint | None) -> dict:
    """Mesh files + asset.xml into ``tmp``; returns asset.json's content (written by _publish)."""
    from policystack.io import atomic_write_bytes

    props = solid.solid.mass_properties  # density 1: scale below
    mass = float(props["volume"]) * cfg.density
    com = np.asarray(props["center_mass"], np.float64)
    inertia = np.asarray(props["inertia"], np.float64) * cfg.density  # about the COM, body axes
    spec = mujoco.MjSpec()
    spec.modelname = slug(name)
    spec.modelfiledir = str(tmp) + os.sep  # mesh files resolve here; the XML keeps relative names
    body = spec.worldbody.add_body(name="object")
    body.add_freejoint(name="object")
    body.explicitinertial = True
    body.mass = mass
    body.ipos = com
    body.fullinertia = [inertia[0, 0], inertia[1, 1], inertia[2, 2], inertia[0, 1], inertia[0, 2], inertia[1, 2]]
    visuals = _visual_parts(solid, cfg)
    for i, (mesh, rgba) in enumerate(visuals):
        atomic_write_bytes(tmp / f"visual_{i}.obj", _obj_bytes(mesh))
        spec.add_mesh(name=f"visual_{i}", file=f"visual_{i}.obj")
        body.add_geom(name=f"visual_{i}", type=mujoco.mjtGeom.mjGEOM_MESH, meshname=f"visual_{i}", rgba=list(rgba),
                      contype=0, conaffinity=0, group=VISUAL_GROUP, mass=0.0)
    for i, hull in enumerate(hulls):
        atomic_write_bytes(tmp / f"hull_{i:03d}.obj", _obj_bytes(hull))
        spec.add_mesh(name=f"hull_{i:03d}", file=f"hull_{i:03d}.obj")
        body.add_geom(name=f"hull_{i:03d}", type=mujoco.mjtGeom.mjGEOM_MESH, meshname=f"hull_{i:03d}",
                      group=COLLISION_GROUP, friction=list(cfg.friction), mass=0.0, rgba=[0.4, 0.8, 0.4, 0.5],
                      **CONTACT)
    atomic_write_bytes(tmp / "asset.xml", spec.to_xml().encode())
    hint = refine_grasp(solid.solid, hint or default_grasp(solid.solid))
    return {
        "name": name, "key": key, "pipeline_version": PIPELINE_VERSION, "source": source,
        "config": json.loads(json.dumps(cfg.as_dict(), default=str)),
        "extents": [float(x) for x in solid.solid.extents], "volume": float(props["volume"]),
        "hulls": len(hulls), "hull_vertices": [len(h.vertices) for h in hulls],
        "visual_faces": [len(m.faces) for m, _ in visuals], "mass": mass, "com": com.tolist(),
        "colour": [list(rgba) for _, rgba in visuals],
        "grasp": {"pos": list(hint.pos), "axis": hint.axis,
                  "width": grasp_chord(solid.solid, np.asarray(hint.pos), hint.axis)},
    }


def add_asset(spec: mujoco.MjSpec, asset: Asset, prefix: str, pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
              ) -> mujoco.MjsBody:
    """Attach the asset's body (free joint included) to ``spec``'s world at ``pos``; its body,
    joint, geoms and meshes are named ``{prefix}object``, ``{prefix}hull_000``, ... """
    frame = spec.worldbody.add_frame(pos=list(pos))
    return frame.attach_body(asset.spec().body("object"), prefix, "")
