"""``EEDeltaFollower`` turns ee_delta actions into the joint targets the control daemon drives: for one
action it is exactly the target the env's ``step`` sets, and a chunk of them, executed as joint targets
in a joint-mode env, moves the arm as the same actions do in the ee_delta env."""

from __future__ import annotations

import numpy as np
import pytest

from policystack import envs
from policystack.envs.base import EEDeltaFollower
from policystack.types import OBS_STATE


def make(mode: str, seed: int = 3):
    env = envs.make("Reach", action_mode=mode, cameras=())
    obs, _ = env.reset(seed=seed)
    return env, obs[OBS_STATE]


def test_one_action_gives_the_joint_target_step_sets():
    env, state = make("ee_delta")
    follower = EEDeltaFollower(dt=1.0 / env.unwrapped.fps)
    a = np.array([0.6, -0.4, -0.5, 0.1, -0.2, 0.3, 0.5])
    plan = follower.follow(state, a[None])
    env.step(a)
    u = env.unwrapped
    np.testing.assert_allclose(plan[0, :7], u.data.ctrl[u._arm_act], atol=1e-4)
    assert plan[0, 7] == 0.5
    env.close()


def test_a_chunk_as_joint_targets_moves_the_arm_as_the_ee_delta_steps_do():
    """Two actions (the presets' n_action_steps): within 1 cm. Not exact: the env takes each step from the
    *measured* pose, and the arm's momentum carries it past a target (3.7 cm per step for a 3 cm command
    here), while the chunk's targets chain from the previous target; over 4 steps the gap grows to 2 cm,
    which the daemon's replanning from measured observations closes, as eval's does."""
    ee_env, state = make("ee_delta")
    joint_env, joint_state = make("joint")
    np.testing.assert_array_equal(state, joint_state)
    actions = np.tile([0.8, 0.5, -0.6, 0.0, 0.0, 0.0, -1.0], (2, 1))  # 8 cm towards +x, 5 cm +y, 6 cm down
    plan = EEDeltaFollower(dt=1.0 / ee_env.unwrapped.fps).follow(state, actions)
    assert plan.shape == (2, 8)
    for a, q in zip(actions, plan):
        ee_env.step(a)
        joint_env.step(q)
    moved = ee_env.unwrapped.ee_pos - state[8:11]
    assert np.linalg.norm(moved) > 0.08  # the check can fail: the arm went somewhere
    np.testing.assert_allclose(joint_env.unwrapped.ee_pos, ee_env.unwrapped.ee_pos, atol=0.01)
    ee_env.close()
    joint_env.close()


def test_bad_shapes_are_named():
    follower = EEDeltaFollower(dt=0.1)
    with pytest.raises(ValueError, match=r"state has shape \(8,\)"):
        follower.follow(np.zeros(8), np.zeros((1, 7)))
    with pytest.raises(ValueError, match=r"actions have shape \(1, 8\)"):
        follower.follow(np.zeros(15), np.zeros((1, 8)))
