"""RLDS import, tested on fixtures written by TensorFlow Datasets itself (tests/fixtures/
make_rlds_fixture.py) against the values TFDS read back from them (expected.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from policystack.datasets.rlds import (
    RLDSMapping,
    convert_rlds,
    crc32c,
    iter_tfrecord,
    load_schema,
    masked_crc32c,
    read_rlds_episodes,
)
from policystack.types import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rlds"
NAMES = ["fractal_style", "standard_style"]


def expected(name: str) -> dict:
    return json.loads((FIXTURES / name / "expected.json").read_text())


def src(name: str) -> Path:
    return FIXTURES / name / expected(name)["version"]


@pytest.fixture
def copy(tmp_path):
    """A writable copy of a fixture's builder directory."""

    def make(name: str) -> Path:
        out = tmp_path / "rlds" / name / "0.1.0"
        shutil.copytree(src(name), out)
        return out

    return make


def shard(root: Path, i: int) -> Path:
    return sorted(root.glob("*.tfrecord-*"))[i]


# --- TFRecord framing ------------------------------------------------------------------------
def test_crc32c_known_values():
    # RFC 3720 (iSCSI) B.4 test vectors and the common check value
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    # the vectorised path (long inputs) agrees with byte-at-a-time on odd lengths
    data = np.random.default_rng(0).integers(0, 256, 70_001, dtype=np.uint8).tobytes()
    for n in (4095, 4096, 4097, 70_001):
        assert crc32c(data[:n]) == crc32c_bytewise(data[:n])


def crc32c_bytewise(data: bytes) -> int:
    """A textbook bit-by-bit CRC-32C, independent of the module's table code."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_tfrecord_checksums_written_by_tensorflow_verify():
    for name in NAMES:
        for path in sorted(src(name).glob("*.tfrecord-*")):
            records = list(iter_tfrecord(path, verify_crc=True))
            assert records and records[0][0] == 0
            raw = path.read_bytes()
            off, rec = records[-1]
            assert off + 12 + len(rec) + 4 == len(raw)
            assert int.from_bytes(raw[off + 12 + len(rec) :], "little") == masked_crc32c(rec)


# --- reading, against TFDS's own reading -----------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_read_matches_tfds(name):
    exp = expected(name)
    episodes = list(read_rlds_episodes(src(name)))
    assert [len(ep["is_first"]) for ep in episodes] == [e["length"] for e in exp["episodes"]]
    assert len(exp["episodes"]) == sum(exp["shard_lengths"])
    for ep, e in zip(episodes, exp["episodes"]):
        state = np.concatenate([ep[k].reshape(e["length"], -1) for k in exp["state_keys"]], axis=1)
        action = np.concatenate([ep[k].reshape(e["length"], -1) for k in exp["action_keys"]], axis=1)
        np.testing.assert_array_equal(state, np.asarray(e["state"], dtype=np.float32))
        np.testing.assert_array_equal(action, np.asarray(e["action"], dtype=np.float32))
        assert list(ep[exp["language_key"]]) == e["instruction"]
        for flag in ("is_first", "is_last", "is_terminal"):
            assert ep[flag].dtype == np.bool_ and ep[flag].tolist() == e[flag]
        np.testing.assert_array_equal(ep["reward"], np.asarray(e["reward"], dtype=np.float32))
        for key, means in e["image_mean"].items():
            img = ep[key]
            assert img.dtype == np.uint8 and img.shape[0] == e["length"] and img.shape[-1] == 3
            # TensorFlow's JPEG decoder reads red and blue ~1.2-1.4 levels below the encoded
            # picture, OpenCV's within 0.1 (checked against the source pixels); consecutive
            # frames differ by ~5 levels in red, so a wrong frame or channel order still fails.
            np.testing.assert_allclose(img.reshape(e["length"], -1, 3).mean(1), means, atol=2.0)
        first = ep[exp["image_keys"][0]].astype(np.float64)
        t, h, w, _ = first.shape
        thumbs = first.reshape(t, 8, h // 8, 8, w // 8, 3).mean(axis=(2, 4))
        np.testing.assert_allclose(thumbs, e["image_thumb"], atol=4.0)
        if "file_path" in e:
            assert ep["episode_metadata/file_path"] == e["file_path"]


def test_schema_shapes_and_kinds():
    leaves = load_schema(src("fractal_style")).by_name()
    assert leaves["observation/image"].kind == "image" and leaves["observation/image"].shape == (64, 80, 3)
    assert leaves["observation/natural_language_instruction"].dtype == "string"
    assert leaves["observation/workspace_bounds"].shape == (3, 3)
    assert leaves["action/terminate_episode"].dtype == "int32"
    ep = next(read_rlds_episodes(src("fractal_style")))
    assert ep["observation/workspace_bounds"].shape == (11, 3, 3)
    assert ep["action/terminate_episode"].dtype == np.int32
    std = load_schema(src("standard_style")).by_name()
    assert std["language_instruction"].kind == "text" and not std["episode_metadata/file_path"].per_step


def test_max_episodes_and_encoded_images():
    eps = list(read_rlds_episodes(src("standard_style"), max_episodes=3, decode_images=False))
    assert len(eps) == 3  # across the shard boundary (2 + 1)
    assert eps[0]["observation/image"].dtype == object
    assert eps[0]["observation/image"][0][:2] == b"\xff\xd8"  # JPEG start-of-image


# --- bad input -------------------------------------------------------------------------------
def test_truncated_shard_names_file_and_offset(copy):
    root = copy("standard_style")
    path = shard(root, 1)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(DataError, match=rf"{path.name}.*truncated.*byte offset \d+"):
        list(read_rlds_episodes(root))


def test_shard_cut_at_record_boundary_is_detected(copy):
    root = copy("standard_style")
    path = shard(root, 0)
    off = list(iter_tfrecord(path))[1][0]
    path.write_bytes(path.read_bytes()[:off])  # drop the shard's last episode entirely
    with pytest.raises(DataError, match=rf"{path.name}: holds 1 episodes but .*dataset_info.json lists 2"):
        list(read_rlds_episodes(root))


def test_corrupt_byte_fails_checksum(copy):
    root = copy("fractal_style")
    path = shard(root, 0)
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"{path.name}: corrupt TFRecord shard: data checksum .*byte offset 0"):
        list(read_rlds_episodes(root))


def test_missing_features_json(copy):
    root = copy("standard_style")
    (root / "features.json").unlink()
    with pytest.raises(DataError, match=r"features.json: file not found"):
        list(read_rlds_episodes(root))
    with pytest.raises(DataError, match=r"features.json: file not found"):
        convert_rlds(root, root.parent / "out")


def test_missing_shard_file(copy):
    root = copy("fractal_style")
    gone = shard(root, 1)
    gone.unlink()
    with pytest.raises(DataError, match=rf"{gone.name}: shard file not found"):
        list(read_rlds_episodes(root))


def test_shard_key_missing_from_features_json(copy):
    root = copy("standard_style")
    doc = json.loads((root / "features.json").read_text())
    del doc["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]["discount"]
    (root / "features.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"key 'steps/discount' is not in .*features.json"):
        list(read_rlds_episodes(root))


def test_unsupported_feature_type(copy):
    root = copy("standard_style")
    doc = json.loads((root / "features.json").read_text())
    feats = doc["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]
    feats["discount"] = {"pythonClassName": "tensorflow_datasets.core.features.audio_feature.Audio", "audio": {}}
    (root / "features.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"features.json at steps/discount: unsupported feature type .*Audio"):
        load_schema(root)


def test_unmapped_feature_is_named(tmp_path):
    # a mapping that leaves the wrist camera out: the error names it and says how to fix it
    with pytest.raises(DataError, match=r"features.json: RLDS step feature 'observation/wrist_image' .*add it to 'ignore'"):
        convert_rlds(src("standard_style"), tmp_path / "out", mapping={"cameras": {"observation/image": "front"}})
    assert not (tmp_path / "out").exists()
    # with defaults minus the RT-1 extras, fractal's extras are reported
    ignore = ["is_first", "is_last", "discount", "observation/natural_language_embedding"]
    with pytest.raises(DataError, match=r"'action/base_displacement_vector'"):
        convert_rlds(src("fractal_style"), tmp_path / "out", mapping={"ignore": ignore})


def test_mapping_validation(tmp_path):
    with pytest.raises(ValueError, match=r"unknown field 'camera'"):
        RLDSMapping.load({"camera": {}})
    with pytest.raises(ValueError, match=r"'fps' must be a positive integer"):
        RLDSMapping.load({"fps": 0})
    with pytest.raises(ValueError, match=r"camera name 'front.left'"):
        RLDSMapping.load({"cameras": {"observation/image": "front.left"}})
    path = tmp_path / "m.yaml"
    path.write_text("cameras: {observation/image: top}\nstate: [observation/state]\nfps: 15\n")
    m = RLDSMapping.load(path)
    assert m.cameras == {"observation/image": "top"} and m.fps == 15 and m.action == RLDSMapping().action
    path.write_text("cameras: [unclosed\n")
    with pytest.raises(ValueError, match=r"m.yaml: cannot parse"):
        RLDSMapping.load(path)
    with pytest.raises(DataError, match=r"observation/state is mapped to a camera but is a tensor float32 feature"):
        convert_rlds(src("standard_style"), tmp_path / "o",
                     mapping={"cameras": {"observation/image": "front", "observation/state": "s"}})


def test_dst_not_empty_is_refused(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"out: directory exists and is not empty; pass overwrite=True"):
        convert_rlds(src("standard_style"), dst)
    assert (dst / "keep.txt").read_text() == "mine"


def test_dst_overlapping_src_is_refused(copy):
    root = copy("standard_style")
    with pytest.raises(ValueError, match="overlaps the RLDS source"):
        convert_rlds(root, root.parent, overwrite=True)
    assert (root / "features.json").is_file()


# --- conversion to LeRobot v3 ----------------------------------------------------------------
@pytest.fixture
def writer_module():
    return pytest.importorskip("policystack.datasets.writer", reason="DatasetWriter not there yet")


def read_back(root: Path) -> tuple:
    """(DatasetMeta, {column: array} of all frames in index order) of a converted dataset."""
    import pyarrow as pa

    from policystack.datasets.meta import DatasetMeta, read_parquet

    meta = DatasetMeta.load(root)
    table = pa.concat_tables([read_parquet(p) for p in meta.data_files()])
    cols = {}
    for name in table.column_names:
        col = table.column(name).to_pylist()
        cols[name] = np.asarray(col)
    order = np.argsort(cols["index"])
    return meta, {k: v[order] for k, v in cols.items()}


def test_convert_standard_matches_tfds(writer_module, tmp_path):
    from policystack.datasets.video import decode_segment

    exp = expected("standard_style")
    dst = convert_rlds(src("standard_style"), tmp_path / "out")
    meta, cols = read_back(dst)
    assert meta.fps == 10 and meta.total_episodes == 4
    assert meta.episodes["length"].tolist() == [e["length"] for e in exp["episodes"]]
    f = meta.features
    assert f["observation.images.front"].dtype == "video" and f["observation.images.front"].shape == (64, 64, 3)
    assert f["observation.images.wrist"].shape == (64, 64, 3)
    assert f["observation.state"].shape == (8,) and f["action"].shape == (7,)
    assert f["action"].names == [f"action_{i}" for i in range(7)]
    np.testing.assert_array_equal(
        cols["observation.state"], np.concatenate([e["state"] for e in exp["episodes"]]).astype(np.float32))
    np.testing.assert_array_equal(
        cols["action"], np.concatenate([e["action"] for e in exp["episodes"]]).astype(np.float32))
    tasks = [meta.tasks[i] for i in cols["task_index"]]
    # an empty instruction becomes the default task: the dataset name unless the mapping sets one
    assert any("" in e["instruction"] for e in exp["episodes"])
    assert tasks == [t or "standard_style" for e in exp["episodes"] for t in e["instruction"]]
    assert cols["next.done"].reshape(-1).tolist() == [d for e in exp["episodes"] for d in e["is_terminal"]]
    np.testing.assert_array_equal(cols["next.reward"].reshape(-1), [r for e in exp["episodes"] for r in e["reward"]])
    assert cols["frame_index"].tolist() == [t for e in exp["episodes"] for t in range(e["length"])]
    for ep, e in enumerate(exp["episodes"]):
        for rlds_key, cam in (("observation/image", "front"), ("observation/wrist_image", "wrist")):
            path, t0, t1 = meta.episode_video(f"observation.images.{cam}", ep)
            frames, _ = decode_segment(path, t0, t1)
            assert frames.shape == (e["length"], 3, 64, 64)
            # JPEG (TF's decoder is ~1.3 levels off in red/blue) then yuv420p video: a few levels
            np.testing.assert_allclose(frames.mean(axis=(2, 3)), e["image_mean"][rlds_key], atol=4.0)


def test_convert_fractal_with_yaml_mapping(writer_module, tmp_path):
    exp = expected("fractal_style")
    mapping = tmp_path / "fractal.yaml"
    mapping.write_text("fps: 3\ndefault_task: do the task\n")
    dst = convert_rlds(src("fractal_style"), tmp_path / "out", mapping=mapping, max_episodes=3)
    meta, cols = read_back(dst)
    assert meta.fps == 3 and meta.total_episodes == 3
    assert meta.features["observation.state"].names == [f"base_pose_tool_reached_{i}" for i in range(7)] + [
        "gripper_closed"]
    assert meta.features["action"].shape == (7,) and meta.features["observation.images.front"].shape == (64, 80, 3)
    np.testing.assert_array_equal(
        cols["action"], np.concatenate([e["action"] for e in exp["episodes"]]).astype(np.float32))
    np.testing.assert_array_equal(
        cols["observation.state"], np.concatenate([e["state"] for e in exp["episodes"]]).astype(np.float32))
    tasks = [meta.tasks[i] for i in cols["task_index"]]
    assert tasks == [t or "do the task" for e in exp["episodes"] for t in e["instruction"]]
    np.testing.assert_allclose(cols["timestamp"][: exp["episodes"][0]["length"]],
                               np.arange(exp["episodes"][0]["length"]) / 3, atol=1e-6)


def test_convert_images_loads_in_lerobot(writer_module, tmp_path):
    pytest.importorskip("lerobot")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    exp = expected("standard_style")
    dst = convert_rlds(src("standard_style"), tmp_path / "out", max_episodes=1, use_videos=False)
    ds = LeRobotDataset("local/rlds_standard", root=dst)
    e = exp["episodes"][0]
    assert len(ds) == e["length"]
    item = ds[2]
    np.testing.assert_allclose(item["observation.state"].numpy(), e["state"][2], rtol=0, atol=0)
    assert item["task"] == e["instruction"][2]
    img = item["observation.images.wrist"].numpy()  # float [3, H, W] in [0, 1]
    np.testing.assert_allclose((img * 255).mean(axis=(1, 2)), e["image_mean"]["observation/wrist_image"][2], atol=2.0)


def test_overwrite_replaces_only_after_success(writer_module, copy, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    root = copy("standard_style")
    path = shard(root, 1)
    path.write_bytes(path.read_bytes()[:-50])  # the failure comes after episodes were written
    with pytest.raises(DataError, match="truncated"):
        convert_rlds(root, dst, overwrite=True)
    assert (dst / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "rlds"]  # no temporary left
    convert_rlds(src("standard_style"), dst, overwrite=True, max_episodes=2)
    assert not (dst / "old.txt").exists()
    assert read_back(dst)[0].total_episodes == 2
