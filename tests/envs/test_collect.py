"""`policystack collect`: argument handling and the dataset it writes."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from policystack import envs
from policystack.cli import main as cli_main
from policystack.envs.collect import CollectConfig, collect, parse_args
from policystack.envs.experts import make_expert, run_episode
from policystack.types import ACTION, OBS_STATE, camera_key


def test_parse_args_types_and_defaults(tmp_path):
    cfg = parse_args(["env=policystack/Push-v0", "episodes=3", f"out={tmp_path / 'd'}", "workers=2",
                      "cameras=wrist", "image_size=64", "seed=5", "only_success=false"])
    assert cfg.env == "Push" and cfg.episodes == 3 and cfg.workers == 2
    assert cfg.cameras == ("wrist",) and cfg.image_size == 64 and cfg.seed == 5
    assert cfg.only_success is False and cfg.max_attempts == 3
    assert parse_args(["env=Reach", "episodes=2", "out=x"]).cameras == ("front", "wrist")
    assert parse_args(["env=Reach", "episodes=2", "out=x", "cameras=none"]).cameras == ()


@pytest.mark.parametrize("argv,message", [
    (["env=Juggle", "episodes=1", "out=x"], "valid tasks: Reach, PressButton"),
    (["env=Reach", "episodes=1", "out=x", "speed=3"], "unknown argument 'speed'"),
    (["env=Reach", "episodes=1"], "missing required argument"),
    (["env=Reach", "episodes=two", "out=x"], "episodes='two'"),
    (["env=Reach", "episodes=1", "out=x", "only_success=maybe"], "expected true or false"),
    (["env=Reach", "episodes", "out=x"], "expected key=value"),
    (["env=Reach", "episodes=1", "out=x", "cameras=top"], "valid: front, wrist or none"),
    (["env=Reach", "episodes=1", "out=x", "action_mode=torque"], "expected ee_delta or joint"),
])
def test_bad_arguments_exit_2_with_message(argv, message, capsys):
    assert cli_main(["collect", *argv]) == 2
    assert message in capsys.readouterr().err


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_main(["collect", "env=Reach", "episodes=1", f"out={out}", "cameras=none"]) == 1
    assert "exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_collect_writes_lerobot_dataset_matching_the_env(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = tmp_path / "reach"
    cfg = CollectConfig(env="Reach", episodes=2, out=out, cameras=("front",), image_size=32, seed=3)
    summary = collect(cfg, progress=False)
    assert summary["episodes"] == 2
    info = json.loads((out / "meta" / "info.json").read_text())
    env = envs.make("Reach", cameras=("front",), image_size=32)
    feats = env.unwrapped.features
    assert info["fps"] == env.unwrapped.fps == 10
    for key, f in feats.items():
        assert info["features"][key]["dtype"] == f.dtype
        assert tuple(info["features"][key]["shape"]) == f.shape
    ds = LeRobotDataset("local/reach", root=out)
    assert ds.num_episodes == 2 and ds.num_frames == summary["frames"]
    # the recorded episode is exactly the expert rollout with the same seed
    frames, success = run_episode(env, make_expert(env), seed=3)
    assert success
    n0 = len(frames)
    table = pq.read_table(out / "data").to_pydict()
    np.testing.assert_allclose(np.array(table[OBS_STATE][:n0]), np.stack([o[OBS_STATE] for o, _ in frames]), atol=1e-6)
    np.testing.assert_allclose(np.array(table[ACTION][:n0]), np.stack([a for _, a in frames]), atol=1e-6)
    assert table["episode_index"][n0 - 1] == 0 and table["episode_index"][n0] == 1
    assert ds[0]["task"] == env.unwrapped.task
    img = ds[0][camera_key("front")]  # float [3, H, W] in [0, 1] from LeRobot's decoder
    assert tuple(img.shape) == (3, 32, 32)
    raw = frames[0][0][camera_key("front")].astype(np.float32) / 255
    assert np.abs(img.numpy() - raw).mean() < 0.06  # lossy video, same picture


def test_only_success_false_keeps_failures_and_workers_agree(tmp_path):
    # only_success=false writes exactly the first `episodes` attempts, whatever their outcome
    base = dict(env="Push", episodes=2, cameras=(), only_success=False, seed=0)
    s1 = collect(CollectConfig(**base, out=tmp_path / "w1"), progress=False)
    s2 = collect(CollectConfig(**base, out=tmp_path / "w2", workers=2), progress=False)
    assert s1["episodes"] == s2["episodes"] == 2 and s1["attempts"] == 2
    t1 = pq.read_table(tmp_path / "w1" / "data").to_pydict()
    t2 = pq.read_table(tmp_path / "w2" / "data").to_pydict()
    assert t1[ACTION] == t2[ACTION] and t1[OBS_STATE] == t2[OBS_STATE]
