"""The MetaWorld adapter: spaces, observations, LeRobot's camera conventions (compared with LeRobot's
own MetaworldEnv), camera records, MT1 variations, bad actions, seeding, registration, the mujoco 4
shim, scripted experts and demo collection.

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
from policystack.types import (
    ACTION,
    OBS_ENV_STATE,
    OBS_IMAGE,
    OBS_STATE,
    TASK,
    Feature,
    camera_key,
    camera_record,
)

CORNER2 = camera_key("corner2")


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
    assert mwa.MetaWorldConfig().cameras == {CORNER2: "corner2"}  # LeRobot's camera, named as MetaWorld names it
    assert mwa.MetaWorldConfig(cameras=("corner", "gripperPOV")).cameras == {
        camera_key("corner"): "corner", camera_key("gripperPOV"): "gripperPOV"}
    assert mwa.MetaWorldConfig(cameras={"side": "corner3", OBS_IMAGE: "corner2"}).cameras == {
        camera_key("side"): "corner3", OBS_IMAGE: "corner2"}
    assert mwa.MetaWorldConfig(image_size=(48, 64)).image_size == (48, 64)
    assert mwa.MetaWorldConfig(variations=range(30, 50)).variations == tuple(range(30, 50))
    for bad in ({"image_size": 0}, {"image_size": (1, 2, 3)}, {"cameras": "corner"},
                {"cameras": {"bad key": "corner"}}, {"cameras": ("front",)}, {"max_episode_steps": 0}, {"task": ""},
                {"camera_convention": "mirror"}, {"state": "joints"}, {"variations": ()}, {"variations": (50,)},
                {"variations": ("3",)}):
        with pytest.raises(ValueError, match="MetaWorldConfig"):
            mwa.MetaWorldConfig(**bad)


def test_features_match_the_data_contract_and_record_the_cameras():
    spec = mwa.metaworld_features(mwa.MetaWorldConfig(cameras=("corner", "topview"), image_size=(40, 56)))
    corner = camera_key("corner")
    assert list(spec) == [OBS_STATE, corner, camera_key("topview"), ACTION]
    assert spec[OBS_STATE].dtype == "float32" and spec[OBS_STATE].shape == (39,)
    assert len(spec[OBS_STATE].names) == 39 and spec[ACTION].names == ["dx", "dy", "dz", "gripper"]
    assert spec[corner].dtype == "video" and spec[corner].shape == (40, 56, 3) and spec[corner].chw == (3, 40, 56)
    assert camera_record(spec[corner]) == {"camera.name": "metaworld/corner", "camera.convention": "lerobot",
                                           "camera.shadows": False, "camera.reflections": False}
    assert mwa.metaworld_features(use_videos=False)[CORNER2].dtype == "image"
    lerobot_like = mwa.metaworld_features(mwa.MetaWorldConfig(cameras={OBS_IMAGE: "corner2"}, state="agent_pos",
                                                              env_state=True, camera_convention="upright"))
    assert list(lerobot_like) == [OBS_STATE, OBS_ENV_STATE, OBS_IMAGE, ACTION]
    assert lerobot_like[OBS_STATE].shape == (4,) and lerobot_like[OBS_STATE].names == mwa.STATE_NAMES[:4]
    assert lerobot_like[OBS_ENV_STATE].shape == (39,)
    assert camera_record(lerobot_like[OBS_IMAGE])["camera.convention"] == "upright"


def _unrecorded(spec):
    return {k: Feature(f.dtype, f.shape, names=f.names) for k, f in spec.items()}


def test_records_decide_the_env_and_unrecorded_cameras_need_the_users_word():
    made = mwa.metaworld_features(mwa.MetaWorldConfig(cameras=("corner", "corner3"), image_size=32,
                                                      camera_convention="vflip", shadows=True))
    kwargs = mwa.env_kwargs_for_features(mwa.with_camera_records(made))
    assert kwargs == {"state": "full", "env_state": False, "cameras": {camera_key("corner"): "corner",
                      camera_key("corner3"): "corner3"}, "camera_convention": "vflip", "shadows": True,
                      "reflections": False}
    remade = mwa.metaworld_features(mwa.MetaWorldConfig(image_size=32, **kwargs))
    assert all(camera_record(remade[k]) == camera_record(made[k]) for k in made if made[k].is_visual)
    with pytest.raises(ValueError, match="camera convention 'vflip'; camera_convention=lerobot contradicts it"):
        mwa.with_camera_records(made, "lerobot")
    # data that records nothing: refused without the user's word, with the choices named
    old = _unrecorded(mwa.metaworld_features(mwa.MetaWorldConfig(cameras={"front": "corner"})))
    with pytest.raises(ValueError, match=r"observation.images.front: the checkpoint does not record.*"
                                         r"camera_convention=: lerobot: .*upright: .*vflip: "):
        mwa.with_camera_records(old)
    filled = mwa.with_camera_records(old, "upright")  # policystack's data before issue 14
    assert camera_record(filled[camera_key("front")]) == {"camera.name": "metaworld/corner",
                                                          "camera.convention": "upright", "camera.shadows": False,
                                                          "camera.reflections": False}
    lerobot = _unrecorded(mwa.metaworld_features(mwa.MetaWorldConfig(cameras={OBS_IMAGE: "corner2"},
                                                                     state="agent_pos")))
    kwargs = mwa.env_kwargs_for_features(mwa.with_camera_records(lerobot, "lerobot"))
    assert kwargs["cameras"] == {OBS_IMAGE: "corner2"} and kwargs["state"] == "agent_pos"
    assert (kwargs["shadows"], kwargs["reflections"]) == (True, True)  # LeRobot renders MetaWorld's own look
    with pytest.raises(ValueError, match="records no MetaWorld camera and its name is not one"):
        mwa.with_camera_records(_unrecorded({"observation.images.wrist": Feature("video", (8, 8, 3))}), "lerobot")
    with pytest.raises(ValueError, match="camera_convention='sideways'"):
        mwa.with_camera_records(made, "sideways")


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
    assert set(obs) == {OBS_STATE, CORNER2}
    assert obs[OBS_STATE].dtype == np.float32 and obs[OBS_STATE].shape == (39,)
    assert obs[CORNER2].dtype == np.uint8 and obs[CORNER2].shape == (3, 32, 32)
    assert obs in env.observation_space
    assert info == {"is_success": False, "task": "reach the red target", "task_name": "reach-v3"}
    assert env.task == "reach the red target" and env.fps == 80 and env.metadata["render_fps"] == 80
    for key, feature in env.features.items():
        if key != ACTION:
            assert feature.chw == obs[key].shape if feature.is_visual else feature.shape == obs[key].shape
    obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert isinstance(reward, float) and info["is_success"] is False and info["task"] == env.task
    assert {"near_object", "unscaled_reward"} <= set(info) and not terminated and not truncated
    assert obs[CORNER2].std() > 5  # a real picture, not a blank frame
    np.testing.assert_array_equal(env.render(), obs[CORNER2].transpose(1, 2, 0))


@needs_metaworld
def test_lerobot_state_layout():
    full = mwa.make_metaworld_env("push-v3", cameras=())
    lr = mwa.make_metaworld_env("push-v3", cameras=(), state="agent_pos", env_state=True)
    a, _ = full.reset(seed=4)
    b, _ = lr.reset(seed=4)
    assert b[OBS_STATE].shape == (4,) and b in lr.observation_space
    np.testing.assert_array_equal(b[OBS_STATE], a[OBS_STATE][:4])  # LeRobot's agent_pos: hand xyz + gripper
    np.testing.assert_array_equal(b[OBS_ENV_STATE], a[OBS_STATE])
    full.close()
    lr.close()


def _copy_sim_state(src, dst) -> None:
    """Make MetaWorld env ``dst`` hold ``src``'s simulator state: the joints and mocap, and what
    MetaWorld's resets write into the model (object bodies, goal sites)."""
    import mujoco

    for name in ("body_pos", "body_quat", "site_pos"):
        getattr(dst.model, name)[:] = getattr(src.model, name)
    for name in ("qpos", "qvel", "mocap_pos", "mocap_quat"):
        getattr(dst.data, name)[:] = getattr(src.data, name)
    mujoco.mj_forward(dst.model, dst.data)


@needs_metaworld
@pytest.mark.parametrize("camera", [c if c in ("corner", "corner2") else pytest.param(c, marks=pytest.mark.slow)
                                    for c in mwa.CAMERAS])  # ~5 s each: two by default, all with -m slow
def test_same_image_as_lerobots_metaworld_env(camera):
    """The same simulator state through LeRobot 0.4.4's MetaworldEnv and through the adapter (LeRobot's
    convention and look) gives the same picture, pixel for pixel, for every camera the adapter offers.
    LeRobot's env always renders 480x480 (MetaWorld's default); its renderer is built lazily at the
    first render, so it is made smaller before that (LeRobot's own orientation code still runs)."""
    pytest.importorskip("lerobot.envs.metaworld", reason="needs lerobot's MetaWorld env")
    from lerobot.envs.metaworld import MetaworldEnv

    size = 48
    ours = mwa.make_metaworld_env("drawer-open-v3", cameras=(camera,), image_size=size, shadows=True,
                                  reflections=True)
    ours.reset(seed=0)
    theirs = MetaworldEnv("drawer-open-v3", camera_name=camera, obs_type="pixels_agent_pos")
    theirs._env.mujoco_renderer.width = theirs._env.mujoco_renderer.height = size
    try:
        obs, _ = theirs.reset(seed=0)
        for _ in range(2):  # the arm moves and closes its gripper: not just the initial pose
            obs, *_ = theirs.step(np.array([0.8, -0.5, -0.6, 1.0], np.float32))
        _copy_sim_state(theirs._env, ours._mw)
        image = ours.camera_images()[camera_key(camera)]
    finally:
        theirs.close()
        ours.close()
    assert obs["pixels"].shape == (size, size, 3) and obs["pixels"].std() > 5
    np.testing.assert_array_equal(image.transpose(1, 2, 0), obs["pixels"])


@needs_metaworld
def test_conventions_turn_the_same_render():
    """lerobot: corner2 moved and turned, other cameras as rendered; upright: every upside-down camera
    turned; vflip: rows reversed. Against MuJoCo's raw render of the same state."""
    import mujoco

    cams = ("corner", "corner2", "topview")
    envs = {c: mwa.make_metaworld_env("pick-place-v3", cameras=cams, image_size=48, camera_convention=c)
            for c in mwa.CAMERA_CONVENTIONS}
    images = {c: e.reset(seed=3)[0] for c, e in envs.items()}
    raw = {}  # convention -> camera -> CHW as MuJoCo draws it, from that env's own scene
    with mujoco.Renderer(envs["upright"]._mw.model, 48, 48) as r:
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        for c, e in envs.items():
            raw[c] = {}
            for cam in cams:
                r.update_scene(e._mw.data, camera=cam)
                raw[c][cam] = r.render().transpose(2, 0, 1)
    corner2 = {c: e._mw.data.cam_xpos[e._mw.model.camera("corner2").id].copy() for c, e in envs.items()}
    for e in envs.values():
        e.close()
    np.testing.assert_allclose(corner2["lerobot"], mwa.LEROBOT_CORNER2_POS)  # moved as LeRobot moves it
    np.testing.assert_allclose(corner2["upright"], [1.3, -0.2, 1.1])  # where MetaWorld puts it
    up, lr, vf = images["upright"], images["lerobot"], images["vflip"]
    np.testing.assert_array_equal(up[camera_key("corner")], raw["upright"]["corner"][:, ::-1, ::-1])
    np.testing.assert_array_equal(up[camera_key("corner2")], raw["upright"]["corner2"][:, ::-1, ::-1])
    np.testing.assert_array_equal(up[camera_key("topview")], raw["upright"]["topview"])  # upright already
    np.testing.assert_array_equal(lr[camera_key("corner")], raw["lerobot"]["corner"])
    np.testing.assert_array_equal(lr[camera_key("corner2")], raw["lerobot"]["corner2"][:, ::-1, ::-1])
    np.testing.assert_array_equal(lr[camera_key("topview")], raw["lerobot"]["topview"])
    np.testing.assert_array_equal(raw["lerobot"]["corner"], raw["upright"]["corner"])  # the same scene
    for cam in cams:
        np.testing.assert_array_equal(vf[camera_key(cam)], raw["vflip"][cam][:, ::-1])
    # the upright corner view: the wooden table top (R > G > B) in the lower half, none in the upper
    r, g, b = up[camera_key("corner")].astype(int)
    wood = (r > g) & (g > b) & (g - b > 12) & (r - g < 70)
    assert wood[24:].mean() > 0.2 and wood[:24].mean() < 0.02


@needs_metaworld
def test_pinned_mt1_variations():
    mw = mwa.import_metaworld()
    e = mwa.make_metaworld_env("reach-v3", cameras=(), variations=(30, 31, 32))
    first = [e.reset(seed=s) for s in (0, 1, 2, 3)]
    assert [info["variation"] for _, info in first] == [30, 31, 32, 30]  # seed s -> variations[s % 3]
    again, _ = e.reset(seed=6)  # 6 % 3 == 0: variation 30 again, the same scene
    np.testing.assert_array_equal(again[OBS_STATE], first[0][0][OBS_STATE])
    assert not np.allclose(first[0][0][OBS_STATE][-3:], first[1][0][OBS_STATE][-3:])  # another goal
    e.reset(seed=1)
    assert e.step(np.zeros(4))[-1]["variation"] == 31  # info keeps the variation during the episode
    e.close()
    # the goal is MetaWorld's MT1 variation 31 (seed 42, as LeRobot builds it)
    ref = mw.MT1("reach-v3", seed=42)
    inner = ref.train_classes["reach-v3"]()
    inner.set_task(ref.train_tasks[31])
    raw, _ = inner.reset()
    inner.close()
    np.testing.assert_allclose(first[1][0][OBS_STATE][-3:], raw[-3:], atol=1e-6)


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
    with pytest.raises(ValueError, match="'nocam' is not a MetaWorld camera; valid cameras: corner, corner2"):
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
        assert camera_record(meta.features[key]) == camera_record(feature)  # how the images were made
    assert camera_record(meta.features[CORNER2])["camera.convention"] == "lerobot"
    assert meta.features[CORNER2].info["video.codec"] == "av1"  # LeRobot's own entries beside ours
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

    assert main(["env=metaworld/reach-v3", "episodes=2", f"out={tmp_path / 'ds'}", "image_size=32",
                 "variations=7-8", "max_steps=150", "camera_convention=upright"]) == 0
    meta = DatasetMeta.load(tmp_path / "ds")
    assert meta.total_episodes == 2 and meta.info["robot_type"] == "sawyer"
    assert list(meta.camera_keys) == [CORNER2]  # the camera's own name, as LeRobot's tools would write it
    assert camera_record(meta.features[CORNER2])["camera.convention"] == "upright"
    assert "metaworld/corner2, upright convention" in meta.summary()  # policystack dataset info shows it
    # seeds 0 and 1 ran variations 7 and 8: their goals are in the first frames' state
    goals = {tuple(np.round(g, 6)) for g in _first_states(meta)[:, -3:]}
    env = mwa.make_metaworld_env("reach-v3", cameras=(), variations=(7, 8))
    assert goals == {tuple(np.round(env.reset(seed=s)[0][OBS_STATE][-3:], 6)) for s in (0, 1)}
    env.close()
    assert main(["env=metaworld/no-such-v3", "episodes=1", f"out={tmp_path / 'x'}"]) == 2
    assert main(["env=metaworld/reach-v3", "episodes=1", f"out={tmp_path / 'x'}", "cameras=front"]) == 2
    assert main(["env=metaworld/reach-v3", "episodes=1", f"out={tmp_path / 'x'}", "variations=60"]) == 2
    assert main(["env=Reach", "episodes=1", f"out={tmp_path / 'x'}", "variations=1"]) == 2


def _first_states(meta) -> np.ndarray:
    import pyarrow.parquet as pq

    out = []
    for path in meta.data_files():
        table = pq.read_table(path, columns=[OBS_STATE, "frame_index"])
        first = np.asarray(table.column("frame_index").to_pylist()) == 0
        out.append(np.asarray(table.column(OBS_STATE).to_pylist(), dtype=np.float32)[first])
    return np.concatenate(out)
