"""Random start poses, swapped instructions and DART demonstrations (the data levers of issue 15)."""

import numpy as np
import pytest

from policystack import envs
from policystack.envs.base import START_BOX, START_YAW
from policystack.envs.experts import make_expert, perturb, run_episode
from policystack.envs.robot import HOME_QPOS


def _yaw(quat):
    """Yaw of a down-pointing gripper quaternion (wxyz) relative to DOWN_QUAT."""
    w, x, y, z = quat if quat[1] >= 0 else -np.asarray(quat)  # q and -q are the same rotation
    # DOWN_QUAT = (0, 1, 0, 0); q = (cos(y/2), 0, 0, sin(y/2)) * DOWN_QUAT = (0, cos, sin, 0)
    return 2 * np.arctan2(y, x)


def test_random_start_poses_cover_the_box_and_repeat_per_seed():
    env = envs.make("Reach", cameras=())
    starts = []
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        u = env.unwrapped
        assert np.all(u.ee_pos >= START_BOX[0] - 0.01) and np.all(u.ee_pos <= START_BOX[1] + 0.01), u.ee_pos
        assert abs(_yaw(u.ee_quat)) <= START_YAW + 0.05
        assert u.ee_quat[2] ** 2 + u.ee_quat[1] ** 2 > 0.99  # pointing down
        starts.append(obs["observation.state"].copy())
    starts = np.stack(starts)
    assert starts[:, 8:11].std(0).min() > 0.03  # positions really vary
    again, _ = env.reset(seed=3)
    np.testing.assert_array_equal(again["observation.state"], starts[3])


def test_home_start_and_layout_independent_of_start_pose():
    home = envs.make("PickPlace", cameras=(), start_pose="home", env_state=True)
    rand = envs.make("PickPlace", cameras=(), env_state=True)
    a, ia = home.reset(seed=7)
    b, ib = rand.reset(seed=7)
    np.testing.assert_allclose(a["observation.state"][:7], HOME_QPOS, atol=1e-3)
    assert ia["task"] == ib["task"]
    np.testing.assert_allclose(a["observation.environment_state"], b["observation.environment_state"], atol=1e-6)
    assert np.linalg.norm(a["observation.state"][8:11] - b["observation.state"][8:11]) > 0.01
    with pytest.raises(ValueError, match="start_pose='sideways'"):
        envs.make("Reach", cameras=(), start_pose="sideways")


@pytest.mark.parametrize("task", ["Reach", "PressButton", "PickPlace", "Stack", "PlaceObject"])
def test_swapped_instruction_names_another_object_of_the_same_scene(task):
    env = envs.make(task, cameras=(), env_state=True)
    obs, info = env.reset(seed=21)
    swapped_obs, swapped = env.reset(seed=21, options={"swap_instruction": True})
    assert swapped["task"] != info["task"]
    assert len(swapped["task"].split()) == len(info["task"].split())  # same template, another colour
    # same scene and start; the named object's pose (environment_state) is now another object's
    np.testing.assert_array_equal(obs["observation.state"], swapped_obs["observation.state"])
    assert not np.allclose(obs["observation.environment_state"], swapped_obs["observation.environment_state"])
    # the expert, which reads the goal from the env, solves the swapped goal: success is judged on it
    expert = make_expert(env)
    assert run_episode_with_options(env, expert, 21, {"swap_instruction": True})


def run_episode_with_options(env, expert, seed, options):
    env.reset(seed=seed, options=options)
    expert.reset(seed=seed)
    for _ in range(env.spec.max_episode_steps):
        _, _, term, trunc, info = env.step(expert.act())
        if term or trunc:
            break
    return info["is_success"]


@pytest.mark.parametrize("task", ["Reach", "PressButton"])
def test_target_color_gives_every_goal_that_colour_and_keeps_the_scene(task):
    plain = envs.make(task, cameras=(), env_state=True)
    purple = envs.make(task, cameras=(), env_state=True, target_color="purple")
    had_purple_distractor = repainted = 0
    for seed in range(12):
        obs, info = plain.reset(seed=seed)
        colors = list(plain.unwrapped.colors)
        p_obs, p_info = purple.reset(seed=seed)
        u = purple.unwrapped
        assert "purple" in p_info["task"].split() and u.colors[int(u.target[-1])] == "purple"
        assert len(set(u.colors)) == 3  # still three colours
        # the same scene, start and goal object: only colours moved
        np.testing.assert_array_equal(obs["observation.state"], p_obs["observation.state"])
        np.testing.assert_array_equal(obs["observation.environment_state"], p_obs["observation.environment_state"])
        if "purple" in colors and colors[int(u.target[-1])] != "purple":
            had_purple_distractor += 1
            j = colors.index("purple")  # it took the goal's old colour
            assert u.colors[j] == colors[int(u.target[-1])]
        repainted += "purple" not in colors
        rgba = u.model.geom_rgba[u.model.geom(f"{u.part}{int(u.target[-1])}").id]
        np.testing.assert_allclose(rgba, envs.scene.COLORS["purple"])
    assert had_purple_distractor and repainted  # both cases seen in these seeds
    assert run_episode_with_options(purple, make_expert(purple), 5, None)  # success is judged on the goal
    with pytest.raises(ValueError, match="target_color='violet': expected one of"):
        envs.make(task, cameras=(), target_color="violet")


def test_target_color_refused_where_the_goal_has_no_colour():
    env = envs.make("OpenDrawer", cameras=(), target_color="red")
    with pytest.raises(ValueError, match="names the goal by its colour"):
        env.reset(seed=0)


def test_swap_refused_where_the_scene_has_no_other_object():
    env = envs.make("Push", cameras=())
    with pytest.raises(ValueError, match="no other object"):
        env.reset(seed=0, options={"swap_instruction": True})


def test_dart_records_the_experts_action_and_executes_a_perturbed_one():
    env = envs.make("Reach", cameras=())
    expert = make_expert(env)
    executed = []
    step = env.step

    def spy(action):
        executed.append(np.array(action))
        return step(action)

    env.step = spy
    frames, _ = run_episode(env, expert, seed=4, noise=0.5)
    recorded = np.stack([a for _, a in frames])
    executed = np.stack(executed)
    assert not np.allclose(recorded[:, :3], executed[:, :3])
    np.testing.assert_array_equal(recorded[:, 3:], executed[:, 3:])  # rotation and gripper untouched
    # the expert caps its speed at max_speed (+ its own small noise); the perturbed actions exceed it
    assert np.linalg.norm(recorded[:, :3], axis=1).max() < expert.max_speed + 0.25
    assert np.linalg.norm(executed[:, :3], axis=1).max() > expert.max_speed + 0.25
    # noise=0 is exactly the plain expert
    env.step = step
    plain, _ = run_episode(env, expert, seed=4)
    again, _ = run_episode(env, expert, seed=4, noise=0.0)
    np.testing.assert_array_equal(np.stack([a for _, a in plain]), np.stack([a for _, a in again]))


def test_perturb_clips_to_the_action_space_and_keeps_the_gripper():
    env = envs.make("Reach", cameras=(), action_mode="joint")
    a = np.append(env.unwrapped.joint_high, 1.0).astype(np.float32)
    out = perturb(env, a, 5.0, np.random.default_rng(0))
    assert env.action_space.contains(out) and out[-1] == 1.0


def test_paraphrased_instructions_keep_the_scene_and_the_goal():
    """instructions="paraphrases": each seed's scene, goal and colour words are those of the templates,
    worded by the task's paraphrases (which demonstrations never use)."""
    import re

    from policystack.envs.tasks import TASKS

    for task, cls in TASKS.items():
        assert len(cls.paraphrases) == len(cls.templates) and not set(cls.paraphrases) & set(cls.templates)
        plain, para = envs.make(task, cameras=()), envs.make(task, cameras=(), instructions="paraphrases")
        for seed in (0, 1, 2):
            o1, i1 = plain.reset(seed=seed)
            o2, i2 = para.reset(seed=seed)
            np.testing.assert_array_equal(o1["observation.state"], o2["observation.state"])
            np.testing.assert_array_equal(plain.unwrapped.object_state(), para.unwrapped.object_state())
            slots = [re.fullmatch(re.sub(r"\\{\w\\}", r"(\\w+)", re.escape(t)), i1["task"]) for t in cls.templates]
            k, m1 = next((k, m) for k, m in enumerate(slots) if m)  # the template used, and its colour words
            m2 = re.fullmatch(re.sub(r"\\{\w\\}", r"(\\w+)", re.escape(cls.paraphrases[k])), i2["task"])
            assert m2 is not None and m2.groups() == m1.groups(), (i1["task"], i2["task"])
    with pytest.raises(ValueError, match="instructions='slang'"):
        envs.make("Reach", cameras=(), instructions="slang")
