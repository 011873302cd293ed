"""DatasetMeta on a dataset written by LeRobot itself, and on broken copies of it."""

import json
import shutil

import numpy as np
import pytest

from policystack.datasets.meta import DatasetMeta
from policystack.types import DataError


@pytest.fixture(scope="module")
def lerobot_ds(tmp_path_factory):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("lr") / "ds"
    feats = {
        "observation.state": {"dtype": "float32", "shape": (3,), "names": ["a", "b", "c"]},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
    }
    ds = LeRobotDataset.create("local/meta_test", root=root, fps=10, features=feats, use_videos=False)
    for ep in range(3):
        for i in range(4 + ep):
            ds.add_frame({"observation.state": np.full(3, ep * 10 + i, np.float32),
                          "action": np.zeros(2, np.float32), "task": f"task {ep % 2}"})
        ds.save_episode()
    ds.finalize()
    return root


def test_reads_lerobot_written_metadata(lerobot_ds):
    m = DatasetMeta.load(lerobot_ds)
    assert m.fps == 10 and m.total_episodes == 3 and m.total_frames == 4 + 5 + 6
    assert m.tasks == ["task 0", "task 1"]
    assert m.episodes["length"].tolist() == [4, 5, 6]
    assert m.episodes["dataset_from_index"].tolist() == [0, 4, 9]
    assert [list(t) for t in m.episodes["tasks"]] == [["task 0"], ["task 1"], ["task 0"]]
    assert m.features["observation.state"].shape == (3,)
    assert m.stats is not None and np.allclose(m.stats["observation.state"]["max"], 25)
    assert all(p.is_file() for p in m.data_files())
    assert "episodes    3" in m.summary()


def _broken_copy(src, tmp_path, mutate):
    dst = tmp_path / "ds"
    shutil.copytree(src, dst)
    mutate(dst)
    return dst


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: (d / "meta/info.json").unlink(), "meta/info.json: file not found"),
        (lambda d: (d / "meta/info.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "meta/tasks.parquet").write_bytes(b"PAR1garbage"), "tasks.parquet: cannot read parquet"),
        (lambda d: [f.unlink() for f in (d / "meta/episodes").rglob("*.parquet")], "no chunk-XXX/file-XXX.parquet"),
    ],
)
def test_broken_datasets_name_the_file(lerobot_ds, tmp_path, mutate, expect):
    with pytest.raises(DataError, match=expect.replace("[", r"\[").replace(".", r"\.")):
        DatasetMeta.load(_broken_copy(lerobot_ds, tmp_path, mutate))


def _edit_info(key, value):
    def mutate(d):
        info = json.loads((d / "meta/info.json").read_text())
        node = info
        *path, last = key
        for k in path:
            node = node[k]
        node[last] = value
        (d / "meta/info.json").write_text(json.dumps(info))

    return mutate


@pytest.mark.parametrize(
    "key, value, expect",
    [
        (("features", "observation.state", "dtype"), "complex64", "features['observation.state'].dtype"),
        (("features", "observation.state", "shape"), [2.5], "features['observation.state'].shape"),
        (("codebase_version",), "v2.1", "codebase_version 'v2.1'"),
        (("fps",), 0, "'fps' must be a positive number"),
        (("total_frames",), 99, "total_frames=99"),
    ],
)
def test_bad_info_json_names_the_key(lerobot_ds, tmp_path, key, value, expect):
    with pytest.raises(DataError) as e:
        DatasetMeta.load(_broken_copy(lerobot_ds, tmp_path, _edit_info(key, value)))
    assert expect in str(e.value) and "info.json" in str(e.value)


def test_missing_directory():
    with pytest.raises(DataError, match="dataset directory not found"):
        DatasetMeta.load("/nonexistent/policystack/ds")

