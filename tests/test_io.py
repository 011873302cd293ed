"""policystack.io: atomic writes keep the old file on failure; write_video pads odd sizes and leaves
nothing behind when a frame is bad."""

import json

import numpy as np
import pytest

from policystack.datasets.video import probe_video
from policystack.io import atomic_directory, atomic_write_bytes, atomic_write_json, write_video


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(p, {"a": object()})
    assert json.loads(p.read_text()) == {"a": 1}
    atomic_write_bytes(tmp_path / "sub" / "y.bin", b"xyz")  # parent directories are created
    assert (tmp_path / "sub" / "y.bin").read_bytes() == b"xyz"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["sub", "x.json"]  # no temp files left


def test_write_video_pads_odd_sizes_and_aborts_cleanly(tmp_path):
    frames = [np.full((15, 21, 3), 10 * i, dtype=np.uint8) for i in range(5)]
    info = probe_video(write_video(tmp_path / "v.mp4", frames, fps=10))
    assert (info.height, info.width, info.num_frames, info.codec) == (16, 22, 5, "h264")
    with pytest.raises(ValueError, match=r"frames must all be uint8 \[15, 21, 3\]"):
        write_video(tmp_path / "bad.mp4", [frames[0], frames[1][:, :20]], fps=10)
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [], fps=10)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["v.mp4"]


def test_atomic_directory_is_absent_or_complete(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_directory(target) as tmp:
            (tmp / "a.bin").write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no target, no temporary left
    with atomic_directory(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"one")
    assert (target / "sub" / "a.bin").read_bytes() == b"one"
    with pytest.raises(FileExistsError, match="already exists; not replaced"):
        with atomic_directory(target) as tmp:
            (tmp / "b.bin").write_bytes(b"two")
    assert sorted(p.name for p in target.rglob("*")) == ["a.bin", "sub"]
    with atomic_directory(target, replace=True) as tmp:
        (tmp / "b.bin").write_bytes(b"two")
    assert sorted(p.name for p in target.iterdir()) == ["b.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
