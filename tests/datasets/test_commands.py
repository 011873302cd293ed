"""`policystack dataset info|validate|stats|convert-rlds`, in a subprocess and on broken copies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _writer_data import length, state

from policystack.datasets.commands import validate_dataset
from policystack.datasets.meta import DatasetMeta

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "policystack.cli", "dataset", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_info(ours_ds):
    r = cli("info", ours_ds)
    assert r.returncode == 0, r.stderr
    assert "episodes    3   frames 15" in r.stdout and "observation.images.front" in r.stdout
    r = cli("info", ours_ds, "--json")
    info = json.loads(r.stdout)
    assert info["total_frames"] == 15 and info["episode_lengths"] == [4, 5, 6]
    assert info["features"]["observation.images.front"]["info"]["video.codec"] == "av1"


def test_validate_ok_on_ours_and_lerobot_written(ours_ds, lerobot_written):
    r = cli("validate", ours_ds, "-q")
    assert r.returncode == 0, r.stderr
    assert "OK (3 episodes, 15 frames" in r.stdout
    assert validate_dataset(lerobot_written, progress=False) == ([], [])


def test_stats_write(ours_ds, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(ours_ds, root)
    (root / "meta/stats.json").unlink()
    assert DatasetMeta.load(root).stats is None
    r = cli("stats", root, "--write")
    assert r.returncode == 0, r.stderr
    assert "observation.state" in r.stdout and "q99" in r.stdout
    assert "stats: 100%" in r.stderr  # the progress bar
    stats = DatasetMeta.load(root).stats
    states = np.stack([state(ep, i) for ep in range(3) for i in range(length(ep))])
    np.testing.assert_array_equal(stats["observation.state"]["max"], states.max(0))
    assert stats["observation.images.top"]["mean"].shape == (3, 1, 1)


def test_errors_are_one_line_without_traceback(tmp_path):
    r = cli("info", tmp_path / "missing")
    assert r.returncode == 1
    assert r.stderr.strip() == f"policystack dataset info: error: {tmp_path / 'missing'}: dataset directory not found"
    r = cli("stats", tmp_path)
    assert r.returncode == 1 and "meta/info.json: file not found" in r.stderr and "Traceback" not in r.stderr


# --- validate on broken copies ----------------------------------------------------------------
def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(src, dst)
    return dst


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _edit_info(root: Path, key: str, field: str, value) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    info["features"][key][field] = value
    (root / "meta/info.json").write_text(json.dumps(info))


VIDEO = "videos/observation.images.front/chunk-000/file-001.mp4"
BROKEN = {
    "truncated data parquet": (lambda d: _truncate(d / "data/chunk-000/file-001.parquet"),
                               ["data/chunk-000/file-001.parquet: cannot read parquet"]),
    "missing info.json": (lambda d: (d / "meta/info.json").unlink(), ["meta/info.json: file not found"]),
    "missing tasks": (lambda d: (d / "meta/tasks.parquet").unlink(), ["meta/tasks.parquet: file not found"]),
    "wrong dtype in info.json": (lambda d: _edit_info(d, "observation.state", "dtype", "float16"),
                                 ["features['observation.state'].dtype: 'float16'"]),
    "wrong shape in info.json": (lambda d: _edit_info(d, "observation.state", "shape", [5]),
                                 ["file-000.parquet: column 'observation.state' holds 4 values per row, "
                                  "info.json shape is [5]"]),
    "truncated video": (lambda d: _truncate(d / VIDEO, 0.6), [VIDEO, "'observation.images.front'"]),
    "missing video": (lambda d: (d / VIDEO).unlink(), [f"{VIDEO}: video file not found"]),
    "corrupt png": (lambda d: _corrupt_png(d), ["observation.images.top", "cannot decode image"]),
    "frame_index": (lambda d: _rewrite_column(d, "frame_index", lambda a: a[::-1].copy()),
                    ["file-000.parquet: episode 0: frame_index is not 0..3"]),
}


def _rewrite_column(root: Path, col: str, fn) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / "data/chunk-000/file-000.parquet"
    t = pq.read_table(path)
    i = t.column_names.index(col)
    t = t.set_column(i, col, pa.array(fn(t.column(col).to_numpy()), t.schema.field(col).type))
    pq.write_table(t, path)


def _corrupt_png(root: Path) -> None:
    _rewrite_png = root / "data/chunk-000/file-002.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(_rewrite_png)
    cells = t.column("observation.images.top").to_pylist()
    cells[3]["bytes"] = cells[3]["bytes"][:40]
    i = t.column_names.index("observation.images.top")
    t = t.set_column(i, "observation.images.top", pa.array(cells, t.schema.field("observation.images.top").type))
    pq.write_table(t, _rewrite_png)


@pytest.mark.parametrize("case", list(BROKEN))
def test_validate_reports_file_and_key(ours_ds, tmp_path, case):
    mutate, expect = BROKEN[case]
    root = _copy(ours_ds, tmp_path)
    mutate(root)
    problems, _ = validate_dataset(root, progress=False)
    assert problems, case
    text = "\n".join(problems)
    for e in expect:
        assert e in text, (case, text)


def test_validate_cli_exit_status_and_fix(ours_ds, tmp_path):
    root = _copy(ours_ds, tmp_path)
    # leftovers of a killed writer: a temp data file and a renamed but uncommitted episode file
    (root / "data/chunk-000/.file-003.parquet.x1y2.tmp").write_bytes(b"partial")
    shutil.copy(root / "data/chunk-000/file-002.parquet", root / "data/chunk-000/file-003.parquet")
    r = cli("validate", root, "-q")
    assert r.returncode == 1
    assert "temp file of an unfinished write" in r.stderr and "file-003.parquet" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("validate", root, "-q", "--fix")
    assert r.returncode == 0, r.stderr
    assert "fixed: " in r.stdout and not (root / "data/chunk-000/file-003.parquet").exists()
    _truncate(root / VIDEO, 0.5)
    r = cli("validate", root, "-q")
    assert r.returncode == 1 and VIDEO in r.stderr and "1 problem(s)" in r.stderr


def test_convert_rlds_command(tmp_path):
    pytest.importorskip("policystack.datasets.rlds")
    src = REPO / "tests/fixtures/rlds/standard_style/0.1.0"
    if not src.is_dir():
        pytest.skip("RLDS fixture not present")
    dst = tmp_path / "converted"
    r = cli("convert-rlds", src, dst, "--max-episodes", "1", "--no-videos")
    assert r.returncode == 0, r.stderr
    m = DatasetMeta.load(dst)
    assert m.total_episodes == 1 and not m.video_keys
    assert validate_dataset(dst, progress=False)[0] == []
    r = cli("convert-rlds", src, dst, "--max-episodes", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr  # exists, no --overwrite


def test_cache_lists_and_prunes_stale_old_and_least_recently_used_entries(ours_ds, tmp_path):
    """`dataset cache`: each entry with its size, last use, dataset and state; --prune --stale removes the
    entry of a dataset that changed since (a new entry replaced it), --older-than the unused, --keep-gb the
    least recently used; --dry-run removes nothing; bad options are one line, exit 1."""
    from policystack.datasets.loader import WindowedDataset, cache_entries, entries_to_prune

    cache = tmp_path / "cache"
    a, b = _copy(ours_ds, tmp_path / "a"), _copy(ours_ds, tmp_path / "b")
    WindowedDataset(a, cache_dir=cache).get_batch([0, 5])  # columns and decoded frames
    old = WindowedDataset(b, cache_dir=cache).cache_dir
    WindowedDataset(b, cache_dir=cache).get_batch([1])
    os.utime(next((b / "data").rglob("*.parquet")), (1, 1))  # b's files changed: a new entry next time
    new = WindowedDataset(b, cache_dir=cache).cache_dir
    assert new != old
    entries = cache_entries(cache)
    assert {e.path: e.state for e in entries} == {WindowedDataset(a, cache_dir=cache).cache_dir: "current",
                                                  old: "stale", new: "current"}
    assert all(e.nbytes > 0 for e in entries) and {e.source for e in entries} == {a.resolve(), b.resolve()}
    r = cli("cache", "--dir", cache)
    assert r.returncode == 0, r.stderr
    assert "stale" in r.stdout and "3 entries" in r.stdout
    r = cli("cache", "--dir", cache, "--prune", "--stale", "--dry-run")
    assert r.returncode == 0 and "would remove" in r.stdout and old.is_dir()
    r = cli("cache", "--dir", cache, "--prune", "--stale")
    assert r.returncode == 0, r.stderr
    assert not old.exists() and new.is_dir() and len(cache_entries(cache)) == 2
    # the least recently used first: keep_bytes 0 removes everything, in last-use order
    entries = cache_entries(cache)
    assert entries_to_prune(entries, keep_bytes=entries[-1].nbytes) == entries[:-1]
    assert entries_to_prune(entries, older_than_days=1.0, now=entries[-1].last_used + 86400 * 2) == entries
    assert entries_to_prune(entries, older_than_days=1.0) == []
    for bad, said in [(["--prune"], "needs --stale"), (["--prune", "--keep-gb", "-1"], "must be >= 0")]:
        r = cli("cache", "--dir", cache, *bad)
        assert r.returncode == 1 and said in r.stderr and "Traceback" not in r.stderr
