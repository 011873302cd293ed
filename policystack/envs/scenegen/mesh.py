"""Triangle meshes in, checked solids out: loading (OBJ / GLB / glTF / STL / PLY through trimesh),
validation with errors that say what is wrong, repair, watertight solids (repaired, convex hull or
voxel remesh), scaling and placing on the table plane, and marching cubes on occupancy grids
(shared by the voxel remesh and SLAT import).

Frame convention of every mesh leaving this module: metres, z up, the bottom at z = 0 and the
centre of the footprint's bounding box on the z axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".stl", ".ply")
WATERTIGHT_MODES = ("repair", "hull", "voxel")
MIN_EXTENT = 0.005  # m: smaller objects are refused (the gripper cannot hold them; contacts get unstable)
MAX_EXTENT = 1.0  # m: larger objects do not fit the tabletop


class MeshError(ValueError):
    """A mesh (or SLAT file) that cannot become a simulator object; the message names the input,
    the problem and what to do about it."""


@dataclass(frozen=True)
class Solid:
    """A mesh ready for decomposition: ``solid`` is watertight (its volume and inertia are the
    object's), ``visual`` is what is drawn (the repaired input; equal to ``solid`` when the input
    was already closed). ``face_rgb`` (optional) is float [F_visual, 3] in [0, 1]."""

    solid: trimesh.Trimesh
    visual: trimesh.Trimesh
    face_rgb: np.ndarray | None = None

    def transformed(self, matrix: np.ndarray) -> Solid:
        s, v = self.solid.copy(), self.visual.copy()
        s.apply_transform(matrix)
        v.apply_transform(matrix)
        return Solid(s, v, self.face_rgb)


# --- loading and validation --------------------------------------------------------------------
def load_mesh(path: str | Path, up: str | None = None, max_faces: int = 1_000_000) -> trimesh.Trimesh:
    """Read a mesh file into one Trimesh (a glTF scene's meshes are merged with their transforms)
    and turn it z-up. ``up``: the file's up axis, "z" or "y"; None: "y" for glTF (the format says
    so), "z" otherwise. Raises MeshError for unreadable, empty, non-finite or oversized meshes."""
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise MeshError(f"{path}: unsupported mesh format {suffix!r}; expected one of {', '.join(MESH_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise MeshError(f"{path}: the file is empty (0 bytes)")
    up = up or ("y" if suffix in (".glb", ".gltf") else "z")
    if up not in ("y", "z"):
        raise MeshError(f"up={up!r}: expected 'z' or 'y' (the axis that points up in {path.name})")
    try:
        loaded = trimesh.load(str(path), force="mesh", process=False)
    except Exception as e:  # trimesh raises many types for malformed files
        raise MeshError(f"{path}: could not read the mesh ({type(e).__name__}: {e})") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise MeshError(f"{path}: the file holds no triangles (an empty mesh or only points/lines)")
    mesh = trimesh.Trimesh(np.asarray(loaded.vertices, np.float64), np.asarray(loaded.faces, np.int64),
                           process=False)
    check_mesh(mesh, str(path), max_faces)
    if up == "y":  # y-up -> z-up: rotate +90 degrees about x
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    return mesh


def check_mesh(mesh: trimesh.Trimesh, what: str, max_faces: int = 1_000_000) -> None:
    """Refuse meshes no pipeline step can use: empty, NaN/inf vertices, too many faces, or
    degenerate (no thickness along some axis, no triangle with area)."""
    nv, nf = len(mesh.vertices), len(mesh.faces)
    if nv < 4 or nf < 4:
        raise MeshError(f"{what}: empty mesh ({nv} vertices, {nf} faces); a solid needs at least 4 of each")
    if nf > max_faces:
        raise MeshError(f"{what}: {nf:,} faces is more than max_faces={max_faces:,}; decimate the mesh first "
                        "(e.g. Blender's Decimate modifier) or raise max_faces")
    if not np.all(np.isfinite(mesh.vertices)):
        bad = int((~np.isfinite(mesh.vertices)).any(axis=1).sum())
        raise MeshError(f"{what}: {bad} vertices have NaN or inf coordinates")
    if mesh.faces.min() < 0 or mesh.faces.max() >= nv:
        raise MeshError(f"{what}: face indices outside 0..{nv - 1}")
    extents = mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)
    largest = float(extents.max())
    flat = [ax for ax, e in zip("xyz", extents) if e <= 1e-6 * max(largest, 1e-12)]
    if largest <= 0 or flat:
        raise MeshError(f"{what}: degenerate mesh, no thickness along {', '.join(flat) or 'any axis'} "
                        f"(extents {np.round(extents, 6).tolist()}); a simulator object needs a volume")
    if float(mesh.area_faces.sum()) <= 1e-12 * largest**2:
        raise MeshError(f"{what}: degenerate mesh, every triangle has zero area")


def non_manifold_edges(mesh: trimesh.Trimesh) -> int:
    """Number of edges shared by more than two faces."""
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return int((counts > 2).sum())


def boundary_edges(mesh: trimesh.Trimesh) -> int:
    """Number of edges with only one face (the rims of holes)."""
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return int((counts == 1).sum())


def is_manifold_solid(mesh: trimesh.Trimesh) -> bool:
    """Closed, oriented 2-manifold with a positive volume (manifold3d's check, then the volume)."""
    import manifold3d

    m = manifold3d.Manifold(manifold3d.Mesh(vert_properties=np.ascontiguousarray(mesh.vertices, np.float32),
                                            tri_verts=np.ascontiguousarray(mesh.faces, np.uint32)))
    return m.status() == manifold3d.Error.NoError and not m.is_empty() and m.volume() > 0


def repaired(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Merge duplicate vertices, drop degenerate / duplicate faces, make the winding consistent and
    outward, fill small holes. The input is not changed."""
    m = mesh.copy()
    m.merge_vertices()
    m.update_faces(m.nondegenerate_faces())
    m.update_faces(m.unique_faces())
    m.remove_unreferenced_vertices()
    trimesh.repair.fix_winding(m)
    trimesh.repair.fill_holes(m)
    trimesh.repair.fix_inversion(m)
    return m


def make_solid(mesh: trimesh.Trimesh, mode: str, what: str, voxels: int = 64) -> Solid:
    """The watertight solid of ``mesh`` and its visual mesh.

    mode: "repair" -- the repaired mesh itself, which must then be a closed 2-manifold (else
    MeshError naming the open and non-manifold edges); "hull" -- its convex hull (always closed; the
    visual keeps the input's shape); "voxel" -- voxelise at ``voxels`` cells along the longest side,
    fill the inside and remesh with marching cubes (closes holes, fixes non-manifold input).
    """
    if mode not in WATERTIGHT_MODES:
        raise MeshError(f"watertight={mode!r}: expected one of {', '.join(WATERTIGHT_MODES)}")
    fixed = repaired(mesh)
    if len(fixed.faces) < 4:
        raise MeshError(f"{what}: nothing left after removing degenerate faces ({len(mesh.faces)} faces in)")
    if mode == "hull":
        return Solid(convex_hull(fixed.vertices, what), fixed)
    if mode == "voxel":
        pitch = float(fixed.extents.max()) / voxels
        grid = fixed.voxelized(pitch).fill()
        origin = np.asarray(grid.transform)[:3, 3]
        solid = mesh_from_occupancy(np.asarray(grid.matrix, bool), pitch, origin, what)
        return Solid(solid, fixed)
    if is_manifold_solid(fixed):
        return Solid(fixed, fixed)
    nm, open_ = non_manifold_edges(fixed), boundary_edges(fixed)
    problem = (f"{nm} non-manifold edges (shared by more than two faces)" if nm else
               f"{open_} open edges (holes trimesh could not fill)" if open_ else
               "inconsistent face winding or zero volume")
    raise MeshError(f"{what}: not a closed solid after repair: {problem}. Use watertight=hull (its convex "
                    "hull becomes the solid) or watertight=voxel (voxelise and remesh) to import it anyway")


def convex_hull(points: np.ndarray, what: str) -> trimesh.Trimesh:
    """Convex hull of a point set [N, 3]; MeshError when the points span no volume."""
    from scipy.spatial import QhullError

    try:
        hull = trimesh.convex.convex_hull(np.asarray(points, np.float64))
    except QhullError as e:
        raise MeshError(f"{what}: the points span no volume (qhull: {str(e).splitlines()[0]})") from None
    if hull.volume <= 0:
        raise MeshError(f"{what}: the convex hull has no volume")
    return hull


def mesh_from_occupancy(occ: np.ndarray, pitch: float, origin: np.ndarray, what: str,
                        smooth: float = 0.0) -> trimesh.Trimesh:
    """Surface of a boolean occupancy grid [X, Y, Z] by marching cubes: cell (i, j, k) is centred at
    ``origin + pitch * (i, j, k)``. The grid is padded first, so the surface is always closed.
    ``smooth`` > 0 blurs the occupancy (Gaussian sigma in cells) for a rounder surface."""
    from scipy import ndimage
    from skimage import measure

    if occ.ndim != 3 or not occ.any():
        raise MeshError(f"{what}: the occupancy grid is empty; no surface to extract")
    field = np.pad(occ.astype(np.float32), 2)
    if smooth > 0:
        field = ndimage.gaussian_filter(field, smooth)
    verts, faces, _, _ = measure.marching_cubes(field, level=0.5, spacing=(pitch, pitch, pitch))
    verts = verts - 2 * pitch + np.asarray(origin, np.float64)
    mesh = trimesh.Trimesh(verts, faces[:, ::-1], process=True)  # skimage winds inward for this field
    trimesh.repair.fix_inversion(mesh)
    if mesh.volume <= 0:
        raise MeshError(f"{what}: the surface extracted from the occupancy has no volume")
    return mesh


# --- placement -----------------------------------------------------------------------------------
def placement(mesh: trimesh.Trimesh, size: float | None, scale: float | None, what: str) -> np.ndarray:
    """4x4 transform that scales ``mesh`` (to ``size`` m along its longest side, or by ``scale``;
    neither: as it is) and puts its bottom on z = 0 with the footprint centred on the z axis.
    MeshError when the result is smaller than MIN_EXTENT or larger than MAX_EXTENT."""
    if size is not None and scale is not None:
        raise MeshError(f"{what}: give size= or scale=, not both")
    lo, hi = mesh.bounds
    longest = float((hi - lo).max())
    s = size / longest if size is not None else (scale if scale is not None else 1.0)
    if not np.isfinite(s) or s <= 0:
        raise MeshError(f"{what}: scale {s} is not a positive number")
    final = longest * s
    if final > MAX_EXTENT:
        raise MeshError(f"{what}: {final:.3g} m along its longest side is huge for a tabletop object (limit "
                        f"{MAX_EXTENT} m); the file is probably in millimetres or centimetres: pass size=<metres> "
                        "or scale=0.001 / scale=0.01")
    if final < MIN_EXTENT:
        raise MeshError(f"{what}: {final:.3g} m along its longest side is below {MIN_EXTENT} m; pass size=<metres> "
                        "or a larger scale=")
    t = np.eye(4)
    t[:3, :3] *= s
    centre = (lo + hi) / 2 * s
    t[:3, 3] = [-centre[0], -centre[1], -lo[2] * s]
    return t
