"""Files in, assets out: mesh files (OBJ / GLB / glTF / STL / PLY) and SLAT ``.npz`` files, each
through the one asset pipeline (``asset.build_asset``) and its cache."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from policystack.envs.scenegen.asset import Asset, AssetConfig, build_asset
from policystack.envs.scenegen.mesh import MeshError, Solid, load_mesh, make_solid
from policystack.envs.scenegen.slat import check_rgb_map, load_slat, slat_to_solid

SLAT_SIZE = 0.1  # m: longest side of a SLAT object when the config gives neither size nor scale


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_mesh(path: str | Path, cfg: AssetConfig | None = None, cache_dir: str | Path | None = None,
                name: str | None = None) -> Asset:
    """A mesh file -> simulator asset (cached by the file's bytes and ``cfg``): loaded z-up,
    checked, repaired or made watertight (``cfg.watertight``), scaled (``cfg.size`` / ``cfg.scale``),
    decomposed into hulls. Raises MeshError with the reason on bad input; nothing is cached then.
    (A .gltf file's external buffers are not part of the cache key: prefer .glb.)"""
    path = Path(path)
    cfg = cfg or AssetConfig()
    if not path.is_file():
        raise MeshError(f"{path}: file not found")
    source = {"kind": "file", "file": path.name, "sha256": file_sha256(path)}

    def make() -> tuple[Solid, None]:
        mesh = load_mesh(path, cfg.up, cfg.max_faces)
        return make_solid(mesh, cfg.watertight, str(path)), None

    return build_asset(name or path.stem, source, cfg, make, cache_dir, what=str(path))


def import_slat(path: str | Path, cfg: AssetConfig | None = None, cache_dir: str | Path | None = None,
                rgb_map: np.ndarray | None = None, name: str | None = None) -> Asset:
    """A SLAT ``.npz`` (format in ``scenegen.slat``) -> simulator asset. Its longest side becomes
    ``cfg.size`` (default SLAT_SIZE = 0.1 m); faces are coloured by ``rgb_map`` (or the file's),
    else ``cfg.colour``. The file is validated before anything is computed."""
    path = Path(path)
    cfg = cfg or AssetConfig()
    if cfg.size is None and cfg.scale is None:
        cfg = replace(cfg, size=SLAT_SIZE)
    slat = load_slat(path)
    if rgb_map is not None:
        rgb_map = check_rgb_map(rgb_map, str(path))
    source = {"kind": "slat", "file": path.name, "sha256": file_sha256(path),
              "rgb_map": None if rgb_map is None else np.round(rgb_map, 6).tolist()}
    return build_asset(name or path.stem, source, cfg, lambda: (slat_to_solid(slat, str(path), rgb_map), None),
                       cache_dir, what=str(path))
