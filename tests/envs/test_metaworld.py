"""The MetaWorld adapter: spaces, observations, the upside-down camera fix, bad actions, seeding,
registration, the mujoco 4 shim, scripted experts and demo collection.

Tests that need metaworld skip with the install command when it is missing.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

from policystack.envs import metaworld as mwa
from policystack.types import ACTION, OBS_STATE, TASK, camera_key

FRONT = camera_key("front")


def _have_metaworld() -> bool:
    try:
        mwa.import_metaworld()
    except ImportError:
        return False
    return True


needs_metaworld = pytest.mark.skipif(not _have_metaworld(), reason=f"metaworld not installed: {mwa.INSTALL_HINT}")


@pytest.fixture
def env():
    e = mwa.make_metaworld_env("reach-v3", render_mode="rgb_array", image_size=32)
    yield e
    e.close()


# --- no metaworld needed -------------------------------------------------------------------------
def test_registration_does_not_import_metaworld():
    code = (
        "import sys, gymnasium as gym, policystack.envs.metaworld as m\n"
        "assert 'metaworld' not in sys.modules\n"
        "assert m.env_id('reach-v3') in gym.registry and m.GENERIC_ID in gym.registry\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_missing_metaworld_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # makes `import metaworld` fail
    with pytest.raises(ImportError, match="pip install --no-deps metaworld==3.1.1"):
        mwa.import_metaworld()
    with pytest.raises(ImportError, match="metaworld"):
        mwa.MetaWorldEnv("reach-v3")


def test_task_instruction_table_and_fallback():
    assert mwa.task_instruction("reach-v3") == "reach the red target"
    assert mwa.task_instruction("handle-pull-side-v3") == "handle pull side"
    assert all(t in mwa.TASK_INSTRUCTIONS for t in mwa.MT10_TASKS)


def test_config_validation_and_camera_names():
    assert mwa.MetaWorldConfig(cameras=("corner",)).cameras == {"front": "corner"}
    assert mwa.MetaWorldConfig(cameras=("front", "gripperPOV")).cameras == {
        "front": "corner", "gripper_pov": "gripperPOV"}
    assert mwa.MetaWorldConfig(cameras={"side": "corner3"}).cameras == {"side": "corner3"}
    assert mwa.MetaWorldConfig(image_size=(48, 64)).image_size == (48, 64)
    for bad in ({"image_size": 0}, {"image_size": (1, 2, 3)}, {"cameras": "corner"},
                {"cameras": {"bad key": "corner"}}, {"max_episode_steps": 0}, {"task": ""}):
        with pytest.raises(ValueError, match="MetaWorldConfig"):
            mwa.MetaWorldConfig(**bad)


def test_features_match_the_data_contract():
    spec = mwa.metaworld_features(mwa.MetaWorldConfig(cameras=("corner", "topview"), image_size=(40, 56)))
    assert list(spec) == [OBS_STATE, FRONT, camera_key("top"), ACTION]
    assert spec[OBS_STATE].dtype == "float32" and spec[OBS_STATE].shape == (39,)
    assert len(spec[OBS_STATE].names) == 39 and spec[ACTION].names == ["dx", "dy", "dz", "gripper"]
    assert spec[FRONT].dtype == "video" and spec[FRONT].shape == (40, 56, 3) and spec[FRONT].chw == (3, 40, 56)
    assert mwa.metaworld_features(use_videos=False)[FRONT].dtype == "image"


# --- with metaworld ------------------------------------------------------------------------------
@needs_metaworld
def test_check_env(env):
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # check_env's advice about unbounded object coordinates
        check_env(env, skip_render_check=False)


@needs_metaworld
def test_observation_keys_dtypes_shapes_and_info(env):
    obs, info = env.reset(seed=0)
    assert set(obs) == {OBS_STATE, FRONT}
    assert obs[OBS_STATE].dtype == np.float32 and obs[OBS_STATE].shape == (39,)
    assert obs[FRONT].dtype == np.uint8 and obs[FRONT].shape == (3, 32, 32)
    assert obs in env.observation_space
    assert info == {"is_success": False, "task": "reach the red target", "task_name": "reach-v3"}
    assert env.task == "reach the red target" and env.fps == 80 and env.metadata["render_fps"] == 80
    for key, feature in env.features.items():
        if key != ACTION:
            assert feature.chw == obs[key].shape if feature.is_visual else feature.shape == obs[key].shape
    obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert isinstance(reward, float) and info["is_success"] is False and info["task"] == env.task
    assert {"near_object", "unscaled_reward"} <= set(info) and not terminated and not truncated
    assert obs[FRONT].std() > 5  # a real picture, not a blank frame
    assert env.render().shape == (32, 32, 3)


@needs_metaworld
def test_corner_camera_is_turned_upright():
    import mujoco

    e = mwa.make_metaworld_env("pick-place-v3", cameras=("corner", "topview"), image_size=48)
    obs, _ = e.reset(seed=3)
    raw = {}
    with mujoco.Renderer(e._mw.model, 48, 48) as r:
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        for cam in ("corner", "topview"):
            r.update_scene(e._mw.data, camera=cam)
            raw[cam] = r.render().transpose(2, 0, 1)  # CHW as MetaWorld draws it
    e.close()
    assert not np.array_equal(obs[FRONT], raw["corner"])
    np.testing.assert_array_equal(obs[FRONT], raw["corner"][:, ::-1, ::-1])  # rotated by 180 degrees
    np.testing.assert_array_equal(obs[camera_key("top")], raw["topview"])  # already upright: untouched
    # Upright corner view: the wooden table top (R > G > B) is in the lower half, none in the upper.
    r, g, b = obs[FRONT].astype(int)
    wood = (r > g) & (g > b) & (g - b > 12) & (r - g < 70)
    assert wood[24:].mean() > 0.2 and wood[:24].mean() < 0.02


@needs_metaworld
def test_bad_actions(env):
    env.reset(seed=0)
    for bad in ([0.0, 0.0, 0.0], np.zeros((1, 4)), np.zeros(5)):
        with pytest.raises(ValueError, match=r"expected shape \(4,\)"):
            env.step(bad)
    for bad in ([np.nan, 0, 0, 0], [0, 0, np.inf, 0]):
        with pytest.raises(ValueError, match="finite"):
            env.step(bad)
    with pytest.raises(ValueError, match="float array"):
        env.step(["a", "b", "c", "d"])
    # Out of range is clipped: same result as the bound itself.
    e2 = mwa.make_metaworld_env("reach-v3", cameras=())
    env.reset(seed=5)
    e2.reset(seed=5)
    o1 = env.step([5.0, -3.0, 1.0, 9.0])[0]
    o2 = e2.step([1.0, -1.0, 1.0, 1.0])[0]
    e2.close()
    np.testing.assert_array_equal(o1[OBS_STATE], o2[OBS_STATE])


@needs_metaworld
def test_seeding_and_goal_observability():
    e = mwa.make_metaworld_env("push-v3", cameras=())
    a, _ = e.reset(seed=7)
    b, _ = e.reset(seed=7)
    c, _ = e.reset(seed=8)
    e.close()
    np.testing.assert_array_equal(a[OBS_STATE], b[OBS_STATE])
    assert not np.allclose(a[OBS_STATE][-3:], c[OBS_STATE][-3:])  # another goal
    assert np.abs(a[OBS_STATE][-3:]).sum() > 0
    hidden = mwa.make_metaworld_env("push-v3", cameras=(), goal_observable=False)
    h, _ = hidden.reset(seed=7)
    hidden.close()
    np.testing.assert_array_equal(h[OBS_STATE][:-3], a[OBS_STATE][:-3])
    assert not h[OBS_STATE][-3:].any()


@needs_metaworld
def test_truncation_and_step_before_reset():
    e = mwa.make_metaworld_env("reach-v3", cameras=(), max_episode_steps=3)
    with pytest.raises(RuntimeError, match="before reset"):
        e.step(np.zeros(4))
    e.reset(seed=0)
    flags = [e.step(np.zeros(4))[3] for _ in range(3)]
    assert flags == [False, False, True]
    with pytest.raises(RuntimeError, match="reset"):
        e.step(np.zeros(4))
    e.reset(seed=0)  # a new episode runs again
    assert e.step(np.zeros(4))[3] is False
    e.close()


@needs_metaworld
def test_registered_ids():
    e = gym.make(mwa.env_id("drawer-open-v3"), cameras=(), disable_env_checker=True)
    assert e.spec.max_episode_steps == mwa.MAX_PATH_LENGTH
    assert e.unwrapped.task == "open the drawer"
    e.close()
    e = gym.make(mwa.GENERIC_ID, task="hammer-v3", cameras=())
    obs, info = e.reset(seed=0)
    assert info["task"] == "hammer the nail into the wall" and obs[OBS_STATE].shape == (39,)
    e.close()
    with pytest.raises(KeyError, match="unknown MetaWorld task 'reahc-v3'"):
        mwa.make_metaworld_env("reahc-v3")
    with pytest.raises(KeyError, match="no camera 'nocam'"):
        mwa.make_metaworld_env("reach-v3", cameras=("nocam",))


@needs_metaworld
def test_mujoco_weld_shim():
    import mujoco

    e = mwa.make_metaworld_env("reach-v3", cameras=())
    m = e._mw.model
    welds = [i for i in range(m.neq) if m.eq_type[i] == mujoco.mjtEq.mjEQ_WELD]
    assert welds
    for i in welds:
        np.testing.assert_array_equal(m.eq_data[i][:11], [0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 5])
        assert not m.eq_data[i][11:].any()
    e.close()


@needs_metaworld
@pytest.mark.parametrize(("task", "seed"), [("reach-v3", 0), ("reach-v3", 1), ("push-v3", 0), ("drawer-open-v3", 2)])
def test_scripted_expert_succeeds(task, seed):
    e = mwa.make_metaworld_env(task, cameras=())
    e.reset(seed=seed)
    for _ in range(mwa.MAX_PATH_LENGTH):
        action = e.expert_action()
        assert action.dtype == np.float32 and action.shape == (4,) and np.all(np.abs(action) <= 1)
        _, _, terminated, truncated, info = e.step(action)
        if terminated or truncated:
            break
    e.close()
    assert terminated and info["is_success"]


# --- demo collection (needs the dataset writer) -----------------------------------------------
@pytest.fixture
def writer_module():
    return pytest.importorskip("policystack.datasets.writer", reason="policystack.datasets.writer not written yet")


@needs_metaworld
def test_collect_writes_a_dataset(tmp_path, writer_module):
    from policystack.datasets.meta import DatasetMeta

    res = mwa.collect_metaworld("reach-v3", 2, tmp_path / "ds", image_size=32, progress=False)
    assert res.episodes == 2 and res.successes >= 2 and res.frames > 0
    meta = DatasetMeta.load(tmp_path / "ds")
    assert meta.total_episodes == 2 and meta.total_frames == res.frames and meta.fps == 80
    assert meta.tasks == ["reach the red target"]
    assert meta.info["robot_type"] == "sawyer"
    want = mwa.metaworld_features(mwa.MetaWorldConfig(image_size=32))
    for key, feature in want.items():
        assert meta.features[key].dtype == feature.dtype and meta.features[key].shape == feature.shape
    assert TASK not in meta.features or meta.features[TASK].dtype == "string"


@needs_metaworld
def test_collect_keeps_only_successful_episodes(tmp_path, writer_module):
    with pytest.warns(UserWarning, match="only 0 of 1 episodes"):
        res = mwa.collect_metaworld("reach-v3", 1, tmp_path / "ds", cameras=(), max_episode_steps=3,
                                    max_attempts=2, progress=False)
    assert res.episodes == 0 and res.attempts == 2 and res.successes == 0
    res = mwa.collect_metaworld("reach-v3", 2, tmp_path / "ds2", cameras=(), max_episode_steps=3,
                                only_successful=False, progress=False)
    assert res.episodes == 2 and res.frames == 6


@needs_metaworld
def test_policystack_collect_accepts_metaworld_tasks(tmp_path, writer_module):
    from policystack.datasets.meta import DatasetMeta
    from policystack.envs.collect import main

    assert main(["env=metaworld/reach-v3", "episodes=1", f"out={tmp_path / 'ds'}", "image_size=32"]) == 0
    meta = DatasetMeta.load(tmp_path / "ds")
    assert meta.total_episodes == 1 and meta.info["robot_type"] == "sawyer"
    assert "observation.images.front" in meta.features
    assert main(["env=metaworld/no-such-v3", "episodes=1", f"out={tmp_path / 'x'}"]) == 2
