"""Bad input: empty, non-manifold, huge, degenerate meshes and malformed SLAT files are refused with an
error naming the file and the problem, and nothing (not even a temporary directory) stays in the cache."""

import numpy as np
import pytest
import trimesh
from _scenegen_fixtures import cache_entries, mug_mesh, slat_arrays, write_mesh, write_slat

from policystack.envs import scenegen
from policystack.envs.scenegen import AssetConfig, MeshError, import_mesh, import_slat


def _box(**kw) -> trimesh.Trimesh:
    return trimesh.creation.box((0.05, 0.04, 0.03), **kw)


def test_empty_file(tmp_path):
    (tmp_path / "empty.obj").write_bytes(b"")
    with pytest.raises(MeshError, match=r"empty\.obj: the file is empty"):
        import_mesh(tmp_path / "empty.obj", cache_dir=tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


def test_file_without_triangles(tmp_path):
    (tmp_path / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(MeshError, match="points.obj: the file holds no triangles"):
        import_mesh(tmp_path / "points.obj", cache_dir=tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


def test_unsupported_format_and_missing_file(tmp_path):
    (tmp_path / "x.fbx").write_text("nothing")
    with pytest.raises(MeshError, match="unsupported mesh format '.fbx'"):
        import_mesh(tmp_path / "x.fbx", cache_dir=tmp_path / "cache")
    with pytest.raises(MeshError, match="missing.obj: file not found"):
        import_mesh(tmp_path / "missing.obj", cache_dir=tmp_path / "cache")


def test_non_manifold_mesh(tmp_path):
    box = _box()
    # a third face on one edge of the box: that edge is shared by three faces
    v = np.vstack([box.vertices, [[0.2, 0.2, 0.2]]])
    e = box.edges_unique[0]
    f = np.vstack([box.faces, [[e[0], e[1], len(box.vertices)]]])
    path = write_mesh(trimesh.Trimesh(v, f, process=False), tmp_path / "fin.ply")
    with pytest.raises(MeshError, match=r"fin.ply: not a closed solid after repair: 1 non-manifold edges"):
        import_mesh(path, cache_dir=tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


def test_open_mesh(tmp_path):
    box = trimesh.creation.box((0.05, 0.04, 0.03)).subdivide().subdivide()
    top = box.face_normals[:, 2] > 0.9
    path = write_mesh(trimesh.Trimesh(box.vertices, box.faces[~top], process=False), tmp_path / "open.stl")
    with pytest.raises(MeshError, match=r"open.stl: not a closed solid after repair: \d+ open edges"):
        import_mesh(path, cache_dir=tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


def test_huge_mesh_names_the_units(tmp_path):
    big = _box()
    big.apply_scale(1000.0)  # a file in millimetres
    path = write_mesh(big, tmp_path / "mm.obj")
    with pytest.raises(MeshError, match=r"mm.obj.*50 m .*huge.*scale=0.001"):
        import_mesh(path, cache_dir=tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []
    assert import_mesh(path, AssetConfig(scale=0.001), tmp_path / "cache").extents.max() == pytest.approx(0.05)


def test_too_many_faces(tmp_path):
    path = write_mesh(mug_mesh(), tmp_path / "dense.obj")
    with pytest.raises(MeshError, match=r"dense.obj: .* faces is more than max_faces=100"):
        import_mesh(path, AssetConfig(max_faces=100), tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


@pytest.mark.parametrize("name, vertices", [
    ("flat", [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0.5, 0.5, 0]]),  # a plane: no thickness along z
    ("line", [[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0]]),
])
def test_degenerate_mesh(tmp_path, name, vertices):
    faces = [[0, 1, 2], [1, 3, 2], [0, 4, 1], [2, 4, 3]]
    path = tmp_path / f"{name}.obj"
    path.write_text("".join(f"v {x} {y} {z}\n" for x, y, z in vertices) + "".join(f"f {a+1} {b+1} {c+1}\n" for a, b, c in faces))
    with pytest.raises(MeshError, match=rf"{name}.obj: degenerate mesh, no thickness along"):
        import_mesh(path, AssetConfig(watertight="hull"), tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


def test_nan_vertices(tmp_path):
    path = tmp_path / "nan.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 nan\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n")
    with pytest.raises(MeshError, match="nan.obj: 1 vertices have NaN or inf"):
        import_mesh(path, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("change, message", [
    (lambda a: {"feats": a["feats"]}, "missing key 'coords'"),
    (lambda a: {"coords": a["coords"][:, 1:], "feats": a["feats"]}, r"coords has shape \[\d+, 3\]; expected \[N, 4\]"),
    (lambda a: {"coords": a["coords"].astype(np.float32), "feats": a["feats"]}, "coords has dtype float32"),
    (lambda a: {"coords": a["coords"], "feats": a["feats"][:, :7]}, r"feats has shape \[\d+, 7\]; expected \[\d+, 8\]"),
    (lambda a: {"coords": a["coords"], "feats": a["feats"][:-1]}, r"feats has shape \[\d+, 8\]; expected"),
    (lambda a: {"coords": a["coords"][:0], "feats": a["feats"][:0]}, "coords is empty"),
    (lambda a: {"coords": a["coords"] + [0, 0, 0, 64], "feats": a["feats"]}, r"voxel indices span .*expected 0..63"),
    (lambda a: {"coords": np.vstack([a["coords"], a["coords"][:1] + [1, 0, 0, 0]]),
                "feats": np.vstack([a["feats"], a["feats"][:1]])}, "coords holds 2 batch indices"),
    (lambda a: {"coords": np.vstack([a["coords"], a["coords"][:1]]), "feats": np.vstack([a["feats"], a["feats"][:1]])},
     "1 duplicate voxel coordinates"),
    (lambda a: {**a, "feats": np.where(np.arange(8) == 3, np.nan, a["feats"]).astype(np.float32)}, "feats must be finite"),
    (lambda a: {**a, "rgb_map": np.zeros((3, 8), np.float32)}, r"rgb_map has shape \[3, 8\]"),
])
def test_slat_with_wrong_shapes(tmp_path, change, message):
    path = write_slat(tmp_path / "bad.npz", change(slat_arrays(mug_mesh())))
    with pytest.raises(MeshError, match=rf"bad.npz: {message}"):
        import_slat(path, cache_dir=tmp_path / "cache")
    assert cache_entries(tmp_path / "cache") == []


def test_slat_not_an_npz(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(MeshError, match="junk.npz: not a readable .npz file"):
        import_slat(tmp_path / "junk.npz", cache_dir=tmp_path / "cache")


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    """An error after some files of the entry were written (here: the MJCF fails to compile) removes the
    temporary directory; the cache holds no entry, and a later run builds it in full."""
    path = write_mesh(_box(), tmp_path / "box.obj")
    cache = tmp_path / "cache"
    real = scenegen.asset.mujoco.MjSpec.from_file

    def broken(*a, **kw):
        raise RuntimeError("simulated crash after the meshes were written")

    monkeypatch.setattr(scenegen.asset.mujoco.MjSpec, "from_file", broken)
    with pytest.raises(RuntimeError, match="simulated crash"):
        import_mesh(path, AssetConfig(size=0.1), cache)
    assert cache_entries(cache) == []
    monkeypatch.setattr(scenegen.asset.mujoco.MjSpec, "from_file", real)
    asset = import_mesh(path, AssetConfig(size=0.1), cache)
    assert cache_entries(cache) == [asset.path.name]
    assert {p.name for p in asset.path.iterdir()} >= {"asset.xml", "asset.json", "visual_0.obj", "hull_000.obj"}


def test_corrupt_entry_is_reported(tmp_path):
    asset = import_mesh(write_mesh(_box(), tmp_path / "box.obj"), cache_dir=tmp_path / "cache")
    (asset.path / "asset.json").write_text("{ not json")
    with pytest.raises(MeshError, match=r"asset.json: corrupt asset metadata .* delete .* to rebuild"):
        import_mesh(tmp_path / "box.obj", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("kw, message", [
    ({"density": 0.0}, "density=0.0: expected kg/m"),
    ({"size": -1.0}, "size=-1.0: expected a positive length"),
    ({"size": 0.1, "scale": 2.0}, "give size= .* or scale=, not both"),
    ({"watertight": "glue"}, "watertight='glue': expected one of repair, hull, voxel"),
    ({"colour": "mauve"}, "colour='mauve': expected a name"),
    ({"friction": (0.0, 0.0, 0.0)}, "friction=.*expected"),
])
def test_config_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        AssetConfig(**kw)
