"""`policystack scene`: the commands users run, their output and their exit codes."""

import json

import numpy as np
import pytest
import trimesh
from _scenegen_fixtures import cache_entries, slat_arrays, write_mesh, write_slat

from policystack.cli import main as cli_main


def test_generate_prints_the_asset_and_its_drop_test(tmp_path, capsys):
    assert cli_main(["scene", "generate", "a small red block", f"cache={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "small red block: 1 hulls, 32 g, 4.0 x 4.0 x 4.0 cm" in out and str(tmp_path) in out
    assert "PASS" in out
    assert len(cache_entries(tmp_path)) == 1


def test_generate_json(tmp_path, capsys):
    assert cli_main(["scene", "generate", "a small blue bottle", f"cache={tmp_path}", "check=false", "json=true"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["asset"]["name"] == "small blue bottle" and rec["drop_test"] is None
    assert rec["asset"]["colour"] == [[0.1, 0.25, 0.85, 1.0]]


def test_bad_prompt_exits_2_and_writes_nothing(tmp_path, capsys):
    assert cli_main(["scene", "generate", "a wooden mug", f"cache={tmp_path}"]) == 2
    assert "unknown word 'wooden'" in capsys.readouterr().err
    assert cache_entries(tmp_path) == []


def test_import_and_check(tmp_path, capsys):
    path = write_mesh(trimesh.creation.box((0.05, 0.03, 0.02)), tmp_path / "box.stl")
    assert cli_main(["scene", "import", str(path), "size=0.08", "colour=orange", f"cache={tmp_path / 'c'}",
                     "check=false"]) == 0
    entry = tmp_path / "c" / cache_entries(tmp_path / "c")[0]
    meta = json.loads((entry / "asset.json").read_text())
    assert meta["extents"] == pytest.approx([0.08, 0.048, 0.032]) and meta["colour"] == [[0.95, 0.5, 0.05, 1.0]]
    capsys.readouterr()
    assert cli_main(["scene", "check", str(entry)]) == 0
    assert "PASS" in capsys.readouterr().out


def test_import_errors_exit_2(tmp_path, capsys):
    (tmp_path / "empty.obj").write_bytes(b"")
    assert cli_main(["scene", "import", str(tmp_path / "empty.obj"), f"cache={tmp_path / 'c'}"]) == 2
    assert "empty.obj: the file is empty" in capsys.readouterr().err
    assert cli_main(["scene", "import", str(tmp_path / "empty.obj"), "size=big"]) == 2
    assert "size='big': expected a number" in capsys.readouterr().err
    assert cli_main(["scene", "melt", "x"]) == 2
    assert "unknown scene command 'melt'" in capsys.readouterr().err
    assert cache_entries(tmp_path / "c") == []


def test_slat_command(tmp_path, capsys):
    path = write_slat(tmp_path / "box.npz", slat_arrays(trimesh.creation.box((0.05, 0.04, 0.03))))
    rgb = tmp_path / "rgb.npy"
    np.save(rgb, np.eye(8, 3, dtype=np.float32))
    assert cli_main(["scene", "slat", str(path), f"rgb_map={rgb}", "size=0.09", f"cache={tmp_path / 'c'}",
                     "check=false"]) == 0
    assert "box: 1 hulls" in capsys.readouterr().out


def test_gallery_writes_a_png(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "gallery.png"
    assert cli_main(["scene", "gallery", f"out={out}", "prompts=a red block;a green banana", "width=320", "height=180",
                     f"cache={tmp_path / 'c'}"]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (180, 320, 3) and img.std() > 10  # a picture, not a blank frame
    assert "2 objects" in capsys.readouterr().out


def test_help_lists_the_subcommands(capsys):
    assert cli_main(["scene", "--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("generate", "import", "slat", "trellis", "check", "objects", "gallery"):
        assert f"policystack scene {cmd}" in out
    assert cli_main(["--help"]) == 0
    assert "scene" in capsys.readouterr().out
