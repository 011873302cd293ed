"""The MuJoCo tabletop suite: registration, Gymnasium compliance, spaces, seeding, actions."""

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from policystack import envs
from policystack.types import ACTION, OBS_ENV_STATE, OBS_STATE, camera_key

TASKS = envs.task_names()


def test_six_tasks_registered():
    assert len(TASKS) >= 6
    for name in TASKS:
        assert envs.env_id(name) in gym.registry


def test_unknown_task_lists_valid_ones():
    with pytest.raises(KeyError, match="valid tasks: Reach"):
        envs.make("FoldLaundry")


@pytest.mark.parametrize("task", TASKS)
def test_check_env_state_only(task):
    env = envs.make(task, cameras=())
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_check_env_with_cameras_and_render():
    env = envs.make("PickPlace", image_size=32, render_mode="rgb_array")
    check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_episode(task):
    runs = []
    for _ in range(2):
        env = envs.make(task, cameras=())
        obs, info = env.reset(seed=7)
        rng = np.random.default_rng(0)
        states = [obs[OBS_STATE]]
        for _ in range(5):
            obs, *_ = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
            states.append(obs[OBS_STATE])
        runs.append((info["task"], env.unwrapped.task, np.stack(states)))
        env.close()
    assert runs[0][0] == runs[1][0] == runs[0][1]
    np.testing.assert_array_equal(runs[0][2], runs[1][2])


def test_seeds_vary_scene_and_instruction():
    env = envs.make("PickPlace", cameras=())
    tasks, cubes = set(), []
    for seed in range(8):
        env.reset(seed=seed)
        tasks.add(env.unwrapped.task)
        cubes.append(env.unwrapped.body_pos("cube0"))
    assert len(tasks) >= 4
    assert np.std(np.stack(cubes)[:, :2], axis=0).min() > 0.02
    assert all("bowl" in t and "cube" in t for t in tasks)


def test_observation_layout_and_images():
    env = envs.make("Stack", cameras=("front", "wrist"), image_size=(40, 56))
    obs, info = env.reset(seed=0)
    assert set(obs) == {OBS_STATE, camera_key("front"), camera_key("wrist")}
    assert obs[OBS_STATE].dtype == np.float32 and obs[OBS_STATE].shape == (15,)
    for cam in ("front", "wrist"):
        img = obs[camera_key(cam)]
        assert img.dtype == np.uint8 and img.shape == (3, 40, 56)
        assert img.std() > 5  # a real picture, not a blank frame
    assert not np.array_equal(obs[camera_key("front")], obs[camera_key("wrist")])
    u = env.unwrapped
    state = obs[OBS_STATE]
    np.testing.assert_allclose(state[:7], u.arm_qpos, atol=1e-6)
    np.testing.assert_allclose(state[8:11], u.ee_pos, atol=1e-6)
    assert abs(np.linalg.norm(state[11:15]) - 1) < 1e-5
    assert info["task"] == u.task and isinstance(u.task, str) and u.task
    env.close()


def test_state_only_has_no_images():
    env = envs.make("Reach", cameras=())
    obs, _ = env.reset(seed=0)
    assert list(obs) == [OBS_STATE]
    assert env.unwrapped._renderer is None


@pytest.mark.parametrize("task", TASKS)
def test_env_state_holds_the_named_objects_poses(task):
    env = envs.make(task, cameras=(), env_state=True)
    u = env.unwrapped
    obs, _ = env.reset(seed=3)
    es = obs[OBS_ENV_STATE]
    assert es.dtype == np.float32 and es.shape == (len(u.ENV_STATE_NAMES),) == u.features[OBS_ENV_STATE].shape
    assert env.observation_space.contains(obs)
    named = dict(zip(u.ENV_STATE_NAMES, es, strict=True))
    # the first entries are the position of the object the instruction names
    first = {"Reach": "target", "PressButton": "target", "Push": None, "PickPlace": "target", "Stack": "top"}
    if task in first:
        want = u.body_pos(getattr(u, first[task]) if first[task] else "cube")
        got = [v for k, v in named.items() if k.endswith(("_x", "_y", "_z"))][:3]
        np.testing.assert_allclose(got, want, atol=1e-6)
    elif task.startswith("PlaceObject"):  # the named object's grasp point and gripper yaw, the named bowl
        np.testing.assert_allclose(es[:3], u.grasp_pose()[0], atol=1e-6)
        np.testing.assert_allclose(es[7:], u.body_pos(u.bowl), atol=1e-6)
    else:  # OpenDrawer: the handle and how far the drawer is open
        np.testing.assert_allclose(es[:3], u.handle_pos(), atol=1e-6)
        assert named["opening"] == pytest.approx(u.opening, abs=1e-6)
    # it follows the scene: a different seed moves the objects
    obs2, _ = env.reset(seed=4)
    assert not np.allclose(obs2[OBS_ENV_STATE], es)
    env.close()
    assert OBS_ENV_STATE not in envs.make(task, cameras=()).reset(seed=3)[0]  # off by default


def test_features_match_spaces():
    for mode, a_dim in (("ee_delta", 7), ("joint", 8)):
        env = envs.make("Push", cameras=("wrist",), image_size=24, action_mode=mode)
        u = env.unwrapped
        feats = u.features
        assert feats[ACTION].shape == env.action_space.shape == (a_dim,)
        assert feats[OBS_STATE].shape == env.observation_space[OBS_STATE].shape
        assert feats[camera_key("wrist")].dtype == "video"
        assert feats[camera_key("wrist")].shape == (24, 24, 3)
        assert set(feats) == set(env.observation_space.spaces) | {ACTION}
        assert u.fps == 10 and u.n_substeps == 50
        env.close()


def test_rates_configurable_and_validated():
    env = envs.make("Reach", cameras=(), fps=20, physics_hz=1000)
    u = env.unwrapped
    assert u.n_substeps == 50 and u.model.opt.timestep == pytest.approx(1e-3)
    env.reset(seed=0)
    env.step(np.zeros(7, np.float32))
    assert u.data.time == pytest.approx(0.05 + 0.05)  # settle step at reset + one step
    with pytest.raises(ValueError, match="multiple of fps"):
        envs.make("Reach", fps=30, physics_hz=500)
    with pytest.raises(ValueError, match="unknown"):
        envs.make("Reach", cameras=("top",))
    with pytest.raises(ValueError, match="action_mode"):
        envs.make("Reach", action_mode="torque")


def test_invalid_actions():
    env = envs.make("Reach", cameras=())
    env.reset(seed=0)
    u = env.unwrapped
    with pytest.raises(ValueError, match=r"expected \(7,\)"):
        env.step(np.zeros(8, np.float32))
    t0, q0 = u.data.time, u.data.qpos.copy()
    for bad in (np.nan, np.inf):
        a = np.zeros(7, np.float32)
        a[2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            env.step(a)
    assert u.data.time == t0
    np.testing.assert_array_equal(u.data.qpos, q0)


def test_out_of_range_actions_are_clipped():
    results = []
    for scale in (1.0, 5.0):
        env = envs.make("Reach", cameras=())
        env.reset(seed=3)
        obs, *_ = env.step(np.array([1, -1, 1, 0, 0, 0, 1], np.float32) * scale)
        results.append(obs[OBS_STATE])
    np.testing.assert_array_equal(results[0], results[1])


def test_ee_delta_moves_end_effector():
    env = envs.make("Reach", cameras=())
    env.reset(seed=0)
    u = env.unwrapped
    p0 = u.ee_pos
    for _ in range(3):
        env.step(np.array([0, 0.6, -0.6, 0, 0, 0, -1], np.float32))
    d = u.ee_pos - p0
    assert 0.06 < d[1] < 0.12 and -0.12 < d[2] < -0.06 and abs(d[0]) < 0.02
    # rotation about world z turns the gripper
    q0 = u.ee_quat
    env.step(np.array([0, 0, 0, 0, 0, 1, -1], np.float32))
    angle = 2 * np.arccos(min(1.0, abs(float(np.dot(q0, u.ee_quat)))))
    assert 0.15 < angle < 0.35


def test_joint_mode_tracks_targets_and_gripper():
    env = envs.make("Reach", cameras=(), action_mode="joint")
    env.reset(seed=0)
    u = env.unwrapped
    low, high = env.action_space.low, env.action_space.high
    np.testing.assert_allclose(low[:7], [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973], atol=1e-4)
    assert low[7] == -1 and high[7] == 1
    target = u.arm_qpos + np.array([0.2, 0.1, -0.1, 0.1, 0.0, -0.1, 0.3])
    for _ in range(5):
        env.step(np.append(target, 1.0).astype(np.float32))
    np.testing.assert_allclose(u.arm_qpos, target, atol=0.02)
    assert u.gripper_closure > 0.9
    for _ in range(4):
        env.step(np.append(target, -1.0).astype(np.float32))
    assert u.gripper_closure < 0.1


def test_info_reward_terms_sum_to_reward():
    env = envs.make("Push", cameras=())
    _, info = env.reset(seed=0)
    assert info["is_success"] is False
    _, reward, terminated, truncated, info = env.step(env.action_space.sample())
    terms = {k: v for k, v in info.items() if k.startswith("reward_")}
    assert {"reward_reach", "reward_goal", "reward_success"} <= set(terms)
    assert reward == pytest.approx(sum(terms.values()))
    assert not terminated and not truncated


def test_success_terminates_and_time_limit_truncates():
    env = envs.make("Reach", cameras=())
    env.reset(seed=0)
    u = env.unwrapped
    # put the gripper on the target ball with the joint-space IK and check the predicate
    target = u.body_pos(u.target)
    for _ in range(6):
        step = np.clip((target - u.ee_pos) / 0.05, -1, 1)
        _, _, terminated, _, info = env.step(np.array([*step, 0, 0, 0, -1], np.float32))
        if terminated:
            break
    assert terminated and info["is_success"]
    env.reset(seed=0)
    for _ in range(u.max_episode_steps):
        _, _, terminated, truncated, _ = env.step(np.array([0, 0, 1, 0, 0, 0, -1], np.float32))
        assert not terminated
    assert truncated


def test_model_uses_menagerie_panda_with_light_meshes():
    env = envs.make("Stack", cameras=())
    m = env.unwrapped.model
    names = {m.joint(i).name for i in range(m.njnt)}
    assert {f"joint{i}" for i in range(1, 8)} <= names and "right_driver_joint" in names
    assert m.nmeshvert < 5000  # convex hulls only; the raw gripper STLs alone have 28k vertices
    assert m.vis.quality.shadowsize == 0
    assert m.opt.timestep == pytest.approx(0.002)
    assert all(m.actuator(i).biastype == mujoco.mjtBias.mjBIAS_AFFINE for i in range(7))


def test_async_vector_env():
    fns = [lambda: envs.make("Reach", cameras=("front",), image_size=16) for _ in range(2)]
    # spawn: an EGL context made by an earlier test in this process does not survive fork
    vec = gym.vector.AsyncVectorEnv(fns, context="spawn")
    try:
        obs, info = vec.reset(seed=[1, 2])
        assert obs[OBS_STATE].shape == (2, 15)
        assert obs[camera_key("front")].shape == (2, 3, 16, 16)
        obs, reward, term, trunc, info = vec.step(np.zeros((2, 7), np.float32))
        assert reward.shape == (2,) and len(info["task"]) == 2
    finally:
        vec.close()
