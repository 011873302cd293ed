"""Shared helpers of the scene-generation tests: meshes in every import format and SLAT files in the
documented format (coords int32 [N, 4] on a 64^3 grid, feats float32 [N, 8])."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from policystack.envs.scenegen.procedural import parse_prompt, shape_solid
from policystack.envs.scenegen.slat import mesh_to_slat

# feature 0 carries "redness", feature 1 "blueness": this map turns them into RGB
RGB_MAP = np.zeros((8, 3), np.float32)
RGB_MAP[0] = [1.0, 0.0, 0.0]
RGB_MAP[1] = [0.0, 0.0, 1.0]


def mug_mesh() -> trimesh.Trimesh:
    """A closed, concave test mesh (the generator's mug), z up, metres."""
    return shape_solid(parse_prompt("a mug"))[0].solid.copy()


MUG_RATIO = 0.085 / 0.0925  # the mug's height over its longest side (body 6.4 cm + handle)


def write_mesh(mesh: trimesh.Trimesh, path: Path, up: str = "z") -> Path:
    """Export in the format of ``path``'s suffix; ``up="y"`` writes it y-up (as glTF expects)."""
    m = mesh.copy()
    if up == "y":
        m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    m.export(str(path))
    return path


def slat_arrays(mesh: trimesh.Trimesh, resolution: int = 64, two_tone: bool = True) -> dict[str, np.ndarray]:
    """``mesh_to_slat`` with features: small noise, and feature 0 ("red") set on the lower half of
    the voxels, feature 1 ("blue") on the upper half (RGB_MAP turns them into colours)."""
    arrays = mesh_to_slat(mesh, resolution)
    coords = arrays["coords"]
    feats = np.random.default_rng(0).normal(0.0, 0.1, (len(coords), 8)).astype(np.float32)
    feats[:, :2] = 0.0
    if two_tone:
        upper = coords[:, 3] >= np.median(coords[:, 3])
        feats[~upper, 0] = 1.0
        feats[upper, 1] = 1.0
    return {"coords": coords, "feats": feats}


def write_slat(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def cache_entries(cache: Path) -> list[str]:
    """Everything in a cache directory (entries, and any temporary directory left behind)."""
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []
