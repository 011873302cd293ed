"""Mesh import: every format becomes a loadable MJCF asset with hulls, mass from density, the base on
z = 0 and the requested size; the cache returns the same entry for the same input and settings."""

import json

import mujoco
import numpy as np
import pytest
from _scenegen_fixtures import MUG_RATIO, cache_entries, mug_mesh, write_mesh
from conftest import IMPORT_SIZE

from policystack.envs import scenegen
from policystack.envs.scenegen import AssetConfig, MeshError, import_mesh


@pytest.fixture(scope="module")
def assets(imported):
    return imported


@pytest.mark.parametrize("fmt", ["obj", "glb", "stl", "ply"])
def test_every_format_becomes_a_loadable_asset(assets, fmt):
    asset = assets[0][fmt]
    model = mujoco.MjModel.from_xml_path(str(asset.xml_path))
    body = model.body("object")
    hulls = [g for g in range(model.ngeom) if model.geom_group[g] == 3]
    visuals = [g for g in range(model.ngeom) if model.geom_group[g] == 2]
    assert len(hulls) == asset.hull_count >= 2  # a mug is concave: more than one hull
    assert visuals and all(model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0 for g in visuals)
    assert model.body_mass[body.id] == pytest.approx(asset.mass)
    assert asset.mass == pytest.approx(asset.meta["volume"] * 500.0)  # density 500 kg/m^3
    # the longest side scaled to IMPORT_SIZE, upright (z is the height)
    assert asset.extents.max() == pytest.approx(IMPORT_SIZE, rel=1e-6)
    assert asset.extents[2] == pytest.approx(IMPORT_SIZE * MUG_RATIO, rel=1e-4)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    low = min(data.geom_xpos[g][2] + (model.mesh_vert[model.mesh_vertadr[model.geom_dataid[g]]:
              model.mesh_vertadr[model.geom_dataid[g]] + model.mesh_vertnum[model.geom_dataid[g]]]
              @ data.geom_xmat[g].reshape(3, 3).T)[:, 2].min() for g in hulls)
    assert low == pytest.approx(0.0, abs=1e-6)  # base on z = 0


def test_formats_agree(assets):
    sizes = {fmt: a.extents for fmt, a in assets[0].items() if fmt != "slat"}
    for fmt, ext in sizes.items():
        np.testing.assert_allclose(ext, sizes["obj"], atol=1e-4, err_msg=fmt)


def test_cache_hit_returns_the_entry_without_recomputing(assets, mesh_files, monkeypatch):
    asset, cache = assets[0]["obj"], assets[1]
    monkeypatch.setattr(scenegen.asset, "decompose", lambda *a: pytest.fail("recomputed a cached asset"))
    again = import_mesh(mesh_files["obj"], AssetConfig(size=IMPORT_SIZE), cache)
    assert again.path == asset.path and again.meta == asset.meta


def test_other_settings_are_another_entry(assets, mesh_files):
    asset, cache = assets[0]["obj"], assets[1]
    heavier = import_mesh(mesh_files["obj"], AssetConfig(size=IMPORT_SIZE, density=1000.0), cache)
    assert heavier.path != asset.path
    assert heavier.mass == pytest.approx(2 * asset.mass)
    assert json.loads((heavier.path / "asset.json").read_text())["config"]["density"] == 1000.0


def test_add_asset_attaches_a_free_body(assets):
    spec = mujoco.MjSpec()
    scenegen.add_asset(spec, assets[0]["obj"], "mug/", pos=(0.5, 0.1, 0.0))
    scenegen.add_asset(spec, assets[0]["stl"], "mug2/", pos=(0.5, -0.1, 0.0))
    model = spec.compile()
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    assert model.nq == 14
    np.testing.assert_allclose(data.xpos[model.body("mug/object").id], [0.5, 0.1, 0.0])


def test_non_manifold_input_imports_with_hull_or_voxel(tmp_path):
    mug = mug_mesh()
    e = mug.edges_unique[0]  # a third face on an edge of the mug: non-manifold
    broken = type(mug)(np.vstack([mug.vertices, [[0.0, 0.0, 0.2]]]),
                       np.vstack([mug.faces, [[e[0], e[1], len(mug.vertices)]]]), process=False)
    path = write_mesh(broken, tmp_path / "broken.obj")
    cache = tmp_path / "cache"
    with pytest.raises(MeshError, match="not a closed solid after repair.*watertight=hull"):
        import_mesh(path, AssetConfig(size=0.1), cache)
    assert cache_entries(cache) == []
    hull = import_mesh(path, AssetConfig(size=0.1, watertight="hull"), cache)
    voxel = import_mesh(path, AssetConfig(size=0.1, watertight="voxel"), cache)
    assert hull.hull_count == 1  # the convex hull is convex
    assert voxel.hull_count >= 1 and voxel.meta["volume"] < hull.meta["volume"]
