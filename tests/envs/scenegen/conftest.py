"""Session fixtures of the scene-generation tests: the imported assets are built once (CoACD runs
take seconds each on two shared cores) and shared by the import and drop-test files."""

import pytest
from _scenegen_fixtures import RGB_MAP, mug_mesh, slat_arrays, write_mesh, write_slat

from policystack.envs.scenegen import AssetConfig, import_mesh, import_slat

IMPORT_SIZE = 0.09  # m, the imported mugs' longest side


@pytest.fixture(scope="session")
def mesh_files(tmp_path_factory):
    """The generator's mug written as OBJ, GLB (y-up, as glTF expects), STL and PLY."""
    d = tmp_path_factory.mktemp("meshes")
    mug = mug_mesh()
    return {fmt: write_mesh(mug, d / f"mug.{fmt}", up="y" if fmt == "glb" else "z") for fmt in ("obj", "glb", "stl", "ply")}


@pytest.fixture(scope="session")
def imported(mesh_files, tmp_path_factory):
    """(assets by kind: obj, glb, stl, ply, slat; their cache directory), default settings, size 0.09 m."""
    d = tmp_path_factory.mktemp("imported")
    cache = d / "cache"
    assets = {fmt: import_mesh(path, AssetConfig(size=IMPORT_SIZE), cache) for fmt, path in mesh_files.items()}
    assets["slat"] = import_slat(write_slat(d / "mug.npz", slat_arrays(mug_mesh())), AssetConfig(size=IMPORT_SIZE),
                                 cache, rgb_map=RGB_MAP)
    return assets, cache
