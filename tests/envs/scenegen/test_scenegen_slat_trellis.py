"""SLAT import (the documented .npz format) and the TRELLIS adapter: a clear message where TRELLIS is
missing, and the whole text -> SLAT + GLB -> asset path through a stand-in at TRELLIS's API boundary."""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from _scenegen_fixtures import MUG_RATIO, RGB_MAP, cache_entries, mug_mesh, slat_arrays, write_slat

from policystack.cli import main as cli_main
from policystack.envs import scenegen
from policystack.envs.scenegen import AssetConfig, TrellisUnavailable, import_slat
from policystack.envs.scenegen.slat import load_slat

FAKE_TRELLIS = Path(__file__).parent / "fake_trellis"


@pytest.fixture(scope="module")
def slat_file(tmp_path_factory):
    return write_slat(tmp_path_factory.mktemp("slat") / "mug_slat.npz", slat_arrays(mug_mesh()))


def test_slat_becomes_a_coloured_object_of_the_requested_size(slat_file, tmp_path):
    arrays = load_slat(slat_file)
    assert arrays["coords"].dtype == np.int32 and arrays["coords"].shape[1] == 4
    assert arrays["feats"].dtype == np.float32 and arrays["feats"].shape == (len(arrays["coords"]), 8)
    asset = import_slat(slat_file, AssetConfig(size=0.09), tmp_path / "cache", rgb_map=RGB_MAP)
    assert asset.extents.max() == pytest.approx(0.09)
    # the voxelised mug is as tall relative to its width as the mug, and still concave (the inside
    # of the mug survives voxelisation: several hulls)
    assert asset.extents[2] / asset.extents.max() == pytest.approx(MUG_RATIO, rel=0.04)
    assert asset.hull_count >= 2
    assert asset.meta["source"]["kind"] == "slat"
    colours = np.array(asset.meta["colour"])[:, :3]
    # lower half red (feature 0), upper half blue (feature 1): two visual parts, one of each colour
    assert len(colours) == 2 and len(asset.meta["visual_faces"]) == 2
    assert any(np.allclose(c, [1, 0, 0], atol=0.15) for c in colours)
    assert any(np.allclose(c, [0, 0, 1], atol=0.15) for c in colours)


def test_slat_without_colours_takes_the_chosen_colour(tmp_path):
    box = write_slat(tmp_path / "box.npz", slat_arrays(trimesh.creation.box((0.05, 0.04, 0.03))))
    asset = import_slat(box, AssetConfig(size=0.05, colour="green"), tmp_path / "cache")
    assert asset.meta["colour"] == [[0.1, 0.7, 0.15, 1.0]]
    np.testing.assert_allclose(asset.extents, [0.05, 0.04, 0.03], atol=0.003)  # within a voxel


def test_rgb_map_inside_the_file_is_used(tmp_path):
    box = trimesh.creation.box((0.05, 0.04, 0.03))
    path = write_slat(tmp_path / "coloured.npz", {**slat_arrays(box), "rgb_map": RGB_MAP})
    asset = import_slat(path, AssetConfig(size=0.05), tmp_path / "cache")
    assert len(asset.meta["colour"]) == 2


def test_trellis_missing_says_what_to_install(tmp_path, capsys):
    assert not scenegen.trellis_available()
    with pytest.raises(TrellisUnavailable, match="TRELLIS is not importable here.*CUDA GPU.*scene slat"):
        scenegen.generate_trellis("a red mug", tmp_path, cache_dir=tmp_path / "cache")
    assert cli_main(["scene", "trellis", "a red mug", f"model={tmp_path}", f"cache={tmp_path / 'cache'}"]) == 2
    assert "TRELLIS is not importable here" in capsys.readouterr().err
    assert cache_entries(tmp_path / "cache") == []


@pytest.fixture
def fake_trellis(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE_TRELLIS))
    for name in [m for m in sys.modules if m == "trellis" or m.startswith("trellis.")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    pipelines = importlib.import_module("trellis.pipelines")
    pipelines.CALLS.clear()
    yield pipelines
    for name in [m for m in sys.modules if m == "trellis" or m.startswith("trellis.")]:
        sys.modules.pop(name, None)


def test_trellis_text_to_asset_through_slat_and_glb(fake_trellis, slat_file, tmp_path):
    model = tmp_path / "TRELLIS-text-large"
    model.mkdir()
    (model / "pipeline.json").write_text(json.dumps({"name": "TrellisTextTo3DPipeline"}))
    (model / "slat.npz").write_bytes(slat_file.read_bytes())
    out = tmp_path / "out"
    asset = scenegen.generate_trellis("a red mug", model, AssetConfig(watertight="voxel"), tmp_path / "cache", seed=3,
                                      out_dir=out)
    calls = [c[0] for c in fake_trellis.CALLS]
    assert calls == ["from_pretrained", "cuda", "get_cond", "sample_sparse_structure", "sample_slat", "decode_slat",
                     "to_glb"]
    assert fake_trellis.CALLS[2] == ("get_cond", "a red mug")
    # the SLAT it kept is in the documented format, equal to what the pipeline sampled
    kept = load_slat(out / "slat.npz")
    np.testing.assert_array_equal(kept["coords"], load_slat(slat_file)["coords"])
    assert (out / "object.glb").is_file()
    # the GLB is y-up; imported z-up it stands as tall as the mug (not lying on its side)
    assert asset.extents.max() == pytest.approx(0.1)
    assert asset.extents[2] / asset.extents.max() == pytest.approx(MUG_RATIO, rel=0.04)
    assert asset.meta["source"] == {**asset.meta["source"], "kind": "trellis", "prompt": "a red mug", "seed": 3}
    # the same request again is a cache hit: TRELLIS does not run again
    fake_trellis.CALLS.clear()
    assert scenegen.generate_trellis("a red mug", model, AssetConfig(watertight="voxel"), tmp_path / "cache", seed=3,
                                     out_dir=out).path == asset.path
    assert fake_trellis.CALLS == []


def test_trellis_image_prompt(fake_trellis, slat_file, tmp_path):
    from PIL import Image

    model = tmp_path / "TRELLIS-image-large"
    model.mkdir()
    (model / "pipeline.json").write_text("{}")
    (model / "slat.npz").write_bytes(slat_file.read_bytes())
    Image.new("RGB", (32, 24), (200, 20, 20)).save(tmp_path / "mug.png")
    asset = scenegen.generate_trellis(tmp_path / "mug.png", model, AssetConfig(watertight="voxel"), tmp_path / "cache",
                                      out_dir=tmp_path / "out")
    assert ("preprocess_image", (32, 24)) in fake_trellis.CALLS
    assert asset.name == "mug" and "image_sha256" in asset.meta["source"]
