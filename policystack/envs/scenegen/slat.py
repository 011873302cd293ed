"""SLAT files: TRELLIS's structured latent, saved as ``.npz``, to a watertight surface mesh.

TRELLIS (Xiang et al. 2024) describes a 3D asset as a sparse set of active voxels on a 64^3 grid
with a feature vector per voxel; its decoders turn that into Gaussians, radiance fields or meshes.
The decoders need TRELLIS's weights and a GPU; the voxel structure alone already says where the
object is, which is what a simulator object needs. The format read here:

| key | dtype, shape | meaning |
|---|---|---|
| ``coords`` | int32 [N, 4] | (batch, x, y, z) of each active voxel, x, y, z in [0, resolution); one batch index |
| ``feats`` | float32 [N, 8] | the voxel's latent features |
| ``resolution`` | int, optional | grid size (default 64) |
| ``rgb_map`` | float32 [8, 3] or [9, 3], optional | features -> RGB: ``clip(feats @ W[:8] (+ W[8]), 0, 1)`` |

The grid spans the cube [-0.5, 0.5]^3 with z up (TRELLIS's own frame; its GLB export turns it
y-up). ``coords`` and ``feats`` are what ``slat.coords`` and ``slat.feats`` of a TRELLIS
``SparseTensor`` hold (``np.savez(path, coords=slat.coords.cpu().numpy().astype("int32"),
feats=slat.feats.cpu().numpy())``).

Conversion: occupancy grid -> holes inside filled (active voxels are mostly the shell) ->
components under ``min_voxels`` dropped -> lightly smoothed -> marching cubes. With an RGB map,
each face takes the colour of the nearest active voxel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from policystack.envs.scenegen.mesh import MeshError, Solid, mesh_from_occupancy

FEATURES = 8
RESOLUTION = 64


def load_slat(path: str | Path) -> dict[str, np.ndarray]:
    """Read and validate a SLAT ``.npz``: {"coords" [N, 4] int32, "feats" [N, 8] float32,
    "resolution" int, "rgb_map" [9, 3] float32 or absent}. Raises MeshError naming the key."""
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as e:  # zipfile / format errors
        raise MeshError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    return validate_slat(data, str(path))


def validate_slat(data: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """The checks of load_slat on arrays already in memory."""
    for key in ("coords", "feats"):
        if key not in data:
            raise MeshError(f"{what}: missing key {key!r}; a SLAT file holds coords (N x 4 int32) and feats "
                            f"(N x {FEATURES} float32), found keys {sorted(data)}")
    coords, feats = np.asarray(data["coords"]), np.asarray(data["feats"])
    res = int(data["resolution"]) if "resolution" in data else RESOLUTION
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise MeshError(f"{what}: coords has shape {list(coords.shape)}; expected [N, 4] (batch, x, y, z)")
    if not np.issubdtype(coords.dtype, np.integer):
        raise MeshError(f"{what}: coords has dtype {coords.dtype}; expected int32 voxel indices")
    if len(coords) == 0:
        raise MeshError(f"{what}: coords is empty (0 active voxels); nothing to build")
    if feats.ndim != 2 or feats.shape != (len(coords), FEATURES):
        raise MeshError(f"{what}: feats has shape {list(feats.shape)}; expected [{len(coords)}, {FEATURES}] "
                        "(one row of 8 features per voxel in coords)")
    if not np.issubdtype(feats.dtype, np.floating) or not np.all(np.isfinite(feats)):
        raise MeshError(f"{what}: feats must be finite floats (dtype {feats.dtype})")
    if res < 4:
        raise MeshError(f"{what}: resolution={res}; expected a grid of at least 4 (TRELLIS: 64)")
    xyz = coords[:, 1:]
    if xyz.min() < 0 or xyz.max() >= res:
        raise MeshError(f"{what}: voxel indices span {int(xyz.min())}..{int(xyz.max())}; expected 0..{res - 1} "
                        f"on a {res}^3 grid")
    batches = np.unique(coords[:, 0])
    if len(batches) != 1:
        raise MeshError(f"{what}: coords holds {len(batches)} batch indices {batches[:5].tolist()}; save one "
                        "object per file")
    uniq = np.unique(xyz, axis=0)
    if len(uniq) != len(xyz):
        raise MeshError(f"{what}: {len(xyz) - len(uniq)} duplicate voxel coordinates; each voxel may appear once")
    out = {"coords": coords.astype(np.int32), "feats": feats.astype(np.float32), "resolution": np.int64(res)}
    if "rgb_map" in data:
        out["rgb_map"] = check_rgb_map(data["rgb_map"], what)
    return out


def check_rgb_map(w: np.ndarray, what: str) -> np.ndarray:
    """A features -> RGB map as [9, 3] (the last row a bias): from [8, 3] or [9, 3]."""
    w = np.asarray(w, np.float32)
    if w.shape == (FEATURES, 3):
        w = np.vstack([w, np.zeros((1, 3), np.float32)])
    if w.shape != (FEATURES + 1, 3) or not np.all(np.isfinite(w)):
        raise MeshError(f"{what}: rgb_map has shape {list(w.shape)}; expected [{FEATURES}, 3] or "
                        f"[{FEATURES + 1}, 3] (weights, then an optional bias row), finite")
    return w


def slat_to_solid(slat: dict[str, np.ndarray], what: str, rgb_map: np.ndarray | None = None,
                  min_voxels: int = 8, smooth: float = 0.7) -> Solid:
    """Surface of a validated SLAT (see the module docstring), in the unit cube's metres (scale it
    with AssetConfig.size). ``rgb_map`` overrides the file's."""
    from scipy import ndimage

    res = int(slat["resolution"])
    xyz = slat["coords"][:, 1:].astype(np.int64)
    occ = np.zeros((res, res, res), bool)
    occ[tuple(xyz.T)] = True
    occ = ndimage.binary_fill_holes(occ)
    labels, n = ndimage.label(occ)
    sizes = ndimage.sum(occ, labels, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= min_voxels) + 1
    if len(keep) == 0:
        raise MeshError(f"{what}: no connected group of at least {min_voxels} voxels ({len(xyz)} active voxels "
                        f"in {n} groups); nothing solid to build")
    occ = np.isin(labels, keep)
    pitch = 1.0 / res
    mesh = mesh_from_occupancy(occ, pitch, np.full(3, -0.5 + pitch / 2), what, smooth=smooth)
    w = check_rgb_map(rgb_map, what) if rgb_map is not None else slat.get("rgb_map")
    if w is None:
        return Solid(mesh, mesh)
    from scipy.spatial import cKDTree

    voxel_rgb = np.clip(slat["feats"] @ w[:FEATURES] + w[FEATURES], 0.0, 1.0)
    centres = (xyz + 0.5) * pitch - 0.5
    _, nearest = cKDTree(centres).query(mesh.triangles_center)
    return Solid(mesh, mesh, voxel_rgb[nearest])


def mesh_to_slat(mesh, resolution: int = RESOLUTION) -> dict[str, np.ndarray]:
    """The SLAT structure of a mesh (what TRELLIS's sparse-structure stage produces): the mesh fitted
    into the unit cube (longest side 0.9, centred), its surface voxels on a ``resolution``^3 grid as
    ``coords`` int32 [N, 4] (batch 0), ``feats`` float32 [N, 8] zeros (no latent: only TRELLIS's
    encoder makes those). Writes a file ``np.savez`` can store and :func:`load_slat` reads."""
    m = mesh.copy()
    m.apply_translation(-m.bounds.mean(axis=0))
    m.apply_scale(0.9 / m.extents.max())
    pitch = 1.0 / resolution
    idx = np.floor((m.voxelized(pitch).points + 0.5) / pitch).astype(np.int64)
    idx = np.unique(np.clip(idx, 0, resolution - 1), axis=0)
    coords = np.concatenate([np.zeros((len(idx), 1), np.int64), idx], axis=1).astype(np.int32)
    return {"coords": coords, "feats": np.zeros((len(idx), FEATURES), np.float32)}
