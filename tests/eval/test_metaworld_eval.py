"""Evaluating on MetaWorld: cameras rendered as the checkpoint's images were made (recorded, or the
user's word for data that records nothing), refusals instead of silent mismatches, LeRobot's keys and
state layout, pinned MT1 variations."""

from __future__ import annotations

import json

import pytest
import torch
from _eval_fixtures import simple_stats

from policystack.envs import metaworld as mwa
from policystack.eval.commands import main, parse_args
from policystack.eval.runner import EvalRunner
from policystack.policies.bc import BCConfig, BCPolicy
from policystack.types import OBS_IMAGE, Feature, camera_key

try:
    mwa.import_metaworld()
except ImportError:
    pytest.skip(f"metaworld not installed: {mwa.INSTALL_HINT}", allow_module_level=True)

TASK = "metaworld/drawer-open-v3"


def bc_for(features) -> BCPolicy:
    torch.manual_seed(0)
    config = BCConfig(horizon=2, n_action_steps=1, conv_channels=(4,), keypoints=2, hidden_dim=16, n_layers=1,
                      text_encoder="none")
    return BCPolicy(config, features, simple_stats(features)).eval()


def mw_features(**config):
    return mwa.metaworld_features(mwa.MetaWorldConfig(image_size=32, **config))


def unrecorded(features):
    return {k: Feature(f.dtype, f.shape, names=f.names) for k, f in features.items()}


def test_env_follows_the_checkpoints_record(capsys):
    policy = bc_for(mw_features(cameras=("corner",), camera_convention="upright"))
    r = EvalRunner(task=TASK, episodes=1, max_steps=2, progress=True).run(policy)
    assert r.env_kwargs["camera_convention"] == "upright" and r.env_kwargs["cameras"] == {
        camera_key("corner"): "corner"}
    assert r.episodes[0].length == 2
    assert "rendering the cameras in the 'upright' convention" in capsys.readouterr().err  # converted, and said


def test_a_contradicting_setting_is_refused_before_any_rollout():
    policy = bc_for(mw_features(cameras=("corner2",)))  # lerobot, no shadows
    with pytest.raises(ValueError, match=r"observation.images.corner2: the checkpoint's images were made with "
                                         r"camera.shadows=False; env 'metaworld/drawer-open-v3' makes them with "
                                         r"camera.shadows=True"):
        EvalRunner(task=TASK, episodes=1, max_steps=1, env_kwargs={"shadows": True}, progress=False).run(policy)
    with pytest.raises(ValueError, match="camera.convention='lerobot'.*camera.convention='vflip'"):
        EvalRunner(task=TASK, episodes=1, max_steps=1, env_kwargs={"camera_convention": "vflip"},
                   progress=False).run(policy)
    with pytest.raises(ValueError, match="records camera convention 'lerobot'; camera_convention=upright contradicts"):
        EvalRunner(task=TASK, episodes=1, camera_convention="upright", progress=False).run(policy)


def test_unrecorded_checkpoint_needs_the_users_word():
    """A checkpoint trained on data from LeRobot's tools: observation.image (corner2), a 4-value state;
    it records nothing, so eval refuses until told, then renders LeRobot's pictures and look."""
    made = mw_features(cameras={OBS_IMAGE: "corner2"}, state="agent_pos")
    policy = bc_for(unrecorded(made))
    with pytest.raises(ValueError, match=r"observation.image: the checkpoint does not record how its MetaWorld "
                                         r"images were made.*camera_convention=: lerobot"):
        EvalRunner(task=TASK, episodes=1, max_steps=1, progress=False).run(policy)
    r = EvalRunner(task=TASK, episodes=1, max_steps=2, camera_convention="lerobot", progress=False).run(policy)
    assert r.env_kwargs["cameras"] == {OBS_IMAGE: "corner2"} and r.env_kwargs["state"] == "agent_pos"
    assert (r.env_kwargs["shadows"], r.env_kwargs["reflections"]) == (True, True)
    assert r.episodes[0].length == 2
    legacy = bc_for(unrecorded(mw_features(cameras={"front": "corner"})))  # policystack collect before issue 14
    r = EvalRunner(task=TASK, episodes=1, max_steps=1, camera_convention="upright", progress=False).run(legacy)
    assert r.env_kwargs["cameras"] == {camera_key("front"): "corner"} and r.env_kwargs["shadows"] is False


def test_eval_command_pins_variations(tmp_path):
    policy = bc_for(mw_features(cameras=(), env_state=False))
    policy.save_pretrained(tmp_path / "ckpt")
    args = ["checkpoint=" + str(tmp_path / "ckpt"), f"env={TASK}", "episodes=2", "seed=1000", "max_steps=3",
            "variations=30-49", "videos=0", f"out={tmp_path / 'eval'}"]
    assert main(args) == 0
    run = json.loads((tmp_path / "eval" / "eval_info.json").read_text())["per_task"][0]
    assert run["env_kwargs"]["variations"] == list(range(30, 50)) and run["env_kwargs"]["max_episode_steps"] == 3
    assert [(e["seed"], e["variation"]) for e in run["episodes"]] == [(1000, 30), (1001, 31)]  # seed % 20
    assert parse_args(["checkpoint=x", "env=Reach", "episodes=1"]).variations == ""
    with pytest.raises(ValueError, match="MetaWorld tasks only"):
        parse_args(["checkpoint=x", "env=Reach", "variations=1-3"])
    with pytest.raises(ValueError, match="variations='3-1'"):
        parse_args(["checkpoint=x", f"env={TASK}", "variations=3-1"])


def test_a_slot_left_without_an_episode_is_reset_not_stepped_past_its_end():
    """n_envs=2, 3 episodes truncated at 3 steps: when one slot has no episode left, its ended env is
    reset (MetaWorld refuses a step after an episode's end) and the other slot's episode finishes."""
    from policystack.eval.expert import ScriptedExpert

    r = EvalRunner(task=TASK, episodes=3, n_envs=2, max_steps=3, seed=11, progress=False).run(ScriptedExpert())
    assert [e.seed for e in r.episodes] == [11, 12, 13] and all(e.length == 3 for e in r.episodes)
