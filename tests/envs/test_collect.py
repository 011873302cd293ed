"""`policystack collect`: argument handling and the dataset it writes."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from policystack import envs
from policystack.cli import main as cli_main
from policystack.datasets.meta import DatasetMeta
from policystack.envs.collect import CollectConfig, Episode, _in_order, collect, parse_args
from policystack.envs.experts import make_expert, run_episode
from policystack.types import ACTION, OBS_ENV_STATE, OBS_STATE, camera_key


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
    (["env=Reach,Juggle", "episodes=1", "out=x"], "unknown task(s) 'Juggle'; valid tasks: Reach, PressButton"),
    (["env=Reach,policystack/Reach-v0", "episodes=1", "out=x"], "Reach given more than once"),
    (["env=Reach,metaworld/reach-v3", "episodes=1", "out=x"], "MetaWorld tasks are collected one per dataset"),
    (["env=,", "episodes=1", "out=x"], "expected a task name"),
    (["env=metaworld/reach-v3", "episodes=1", "out=x", "actions=false"], "actions=false applies to tabletop tasks"),
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
    # the recorded episode is exactly the expert rollout with the same seed (and DART noise)
    frames, success = run_episode(env, make_expert(env), seed=3, noise=cfg.noise)
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


def test_exclude_keeps_no_episode_naming_the_word(tmp_path):
    # held-out study demos: no kept instruction names the excluded colour; the other seeds are kept in order
    cfg = CollectConfig(env="Reach", episodes=3, out=tmp_path / "ds", cameras=(), seed=0, exclude=("Red", "blue"))
    summary = collect(cfg, progress=False)
    names = list(DatasetMeta.load(tmp_path / "ds").tasks)
    assert summary["episodes"] == 3 and names
    assert not any(w in t.split() for t in names for w in ("red", "blue")), names
    env = envs.make("Reach", cameras=())
    named = [env.reset(seed=s)[1]["task"] for s in range(summary["attempts"])]
    assert sum(not ({"red", "blue"} & set(t.split())) for t in named) == 3  # every other seed was kept
    assert parse_args(["env=Reach", "episodes=1", "out=x", "exclude=purple,red"]).exclude == ("purple", "red")


def test_env_state_is_recorded(tmp_path):
    out = tmp_path / "push"
    collect(CollectConfig(env="Push", episodes=1, out=out, cameras=(), env_state=True, seed=5), progress=False)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"][OBS_ENV_STATE]["shape"] == [10]
    assert not any(k.startswith("observation.images") for k in info["features"])
    env = envs.make("Push", cameras=(), env_state=True)
    frames, _ = run_episode(env, make_expert(env), seed=5, noise=CollectConfig.noise)
    table = pq.read_table(out / "data").to_pydict()
    np.testing.assert_allclose(np.array(table[OBS_ENV_STATE]), np.stack([o[OBS_ENV_STATE] for o, _ in frames]),
                               atol=1e-6)
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert len(stats[OBS_ENV_STATE]["mean"]) == 10


def test_actions_false_writes_the_same_episodes_as_action_free_video(tmp_path):
    base = dict(env="Reach", episodes=1, cameras=(), seed=7)
    collect(CollectConfig(**base, out=tmp_path / "demo"), progress=False)
    collect(CollectConfig(**base, out=tmp_path / "video", actions=False), progress=False)
    info = json.loads((tmp_path / "video" / "meta" / "info.json").read_text())
    assert ACTION not in info["features"] and OBS_STATE in info["features"]
    assert ACTION not in json.loads((tmp_path / "video" / "meta" / "stats.json").read_text())
    demo, video = (pq.read_table(tmp_path / d / "data").to_pydict() for d in ("demo", "video"))
    assert ACTION not in video and video[OBS_STATE] == demo[OBS_STATE] and video["task_index"] == demo["task_index"]


# --- multi-task datasets -------------------------------------------------------------------------
def _episodes(root) -> list[dict[str, list]]:
    """The dataset's data rows split per episode (in episode order)."""
    t = pq.read_table(root / "data").to_pydict()
    n = max(t["episode_index"]) + 1
    return [{k: [v for v, e in zip(col, t["episode_index"], strict=True) if e == i] for k, col in t.items()
             if k in (ACTION, OBS_STATE, "task_index", "frame_index")} for i in range(n)]


def _task_names(root) -> list[str]:
    return pq.read_table(root / "meta" / "tasks.parquet").to_pandas().index.tolist()


def test_parse_args_multitask_normalises_names():
    cfg = parse_args(["env=policystack/Reach-v0, PressButton,OpenDrawer-v0", "episodes=2", "out=x"])
    assert cfg.env == "Reach,PressButton,OpenDrawer" and cfg.tasks == ["Reach", "PressButton", "OpenDrawer"]
    assert cfg.max_attempts == 2 * 2 + 10  # per task


def test_multitask_dataset_is_the_single_task_datasets_in_order(tmp_path):
    tasks = ["Reach", "PressButton", "OpenDrawer"]
    base = dict(episodes=2, cameras=(), seed=3)
    summary = collect(CollectConfig(env=",".join(tasks), out=tmp_path / "all", **base), progress=False)
    assert summary["episodes"] == 6 and summary["attempts"] == 6
    assert [(t, c["episodes"]) for t, c in summary["tasks"].items()] == [(t, 2) for t in tasks]
    combined = _episodes(tmp_path / "all")
    combined_tasks = _task_names(tmp_path / "all")
    assert len(combined) == 6
    singles_tasks = []
    for i, task in enumerate(tasks):
        single = tmp_path / task
        s = collect(CollectConfig(env=task, out=single, **base), progress=False)
        assert summary["tasks"][task] == s["tasks"][task]
        single_tasks = _task_names(single)
        singles_tasks += single_tasks
        for j, ep in enumerate(_episodes(single)):  # task by task, each from seed 3 on
            got = combined[2 * i + j]
            assert got[ACTION] == ep[ACTION] and got[OBS_STATE] == ep[OBS_STATE]
            # each frame carries its own task's instruction
            assert {combined_tasks[k] for k in got["task_index"]} == {single_tasks[k] for k in ep["task_index"]}
    # the tasks table holds the instructions of every task, in first-use order
    assert combined_tasks == list(dict.fromkeys(singles_tasks))
    info = json.loads((tmp_path / "all" / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 6 and info["total_tasks"] == len(combined_tasks)
    # every task's simulator seeds are recorded (first, last attempted), so eval can tell training scenes
    assert info["sim_seeds"] == {t: [3, 4] for t in tasks}


def test_multitask_workers_agree_and_summary_names_each_task(tmp_path, capsys):
    argv = ["env=PressButton,Reach", "episodes=2", "cameras=front", "image_size=32", "seed=11"]
    assert cli_main(["collect", *argv, f"out={tmp_path / 'w1'}"]) == 0
    assert cli_main(["collect", *argv, f"out={tmp_path / 'w2'}", "workers=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("wrote 4 episodes (") and "PressButton 2 (2 attempts), Reach 2 (2 attempts)" in lines[-1]
    t1 = pq.read_table(tmp_path / "w1" / "data").to_pydict()
    t2 = pq.read_table(tmp_path / "w2" / "data").to_pydict()
    for key in (ACTION, OBS_STATE, "episode_index", "task_index"):
        assert t1[key] == t2[key]
    assert _task_names(tmp_path / "w1") == _task_names(tmp_path / "w2")


def test_multitask_env_state_with_different_layouts_is_refused_before_writing(tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli_main(["collect", "env=Reach,OpenDrawer", "episodes=1", f"out={out}", "cameras=none",
                     "env_state=true"]) == 1
    err = capsys.readouterr().err
    assert "observation.environment_state" in err and "env_state=true" in err
    assert "Reach float32 [3]" in err and "OpenDrawer float32 [4]" in err
    assert not out.exists()


def _scripted_submit(outcomes: dict[tuple[str, int], bool], log: list, in_flight: list[int]):
    """A submit() for _in_order over precomputed outcomes: records each start and how many
    attempts were in flight; results are produced when waited for."""
    def submit(task: str, seed: int):
        log.append((task, seed))
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])

        def wait() -> Episode:
            in_flight[0] -= 1
            frames = {ACTION: np.zeros((1, 7), np.float32)}
            return Episode(env=task, seed=seed, success=outcomes[task, seed], task=task, frames=frames)
        return wait
    return submit


@pytest.mark.parametrize("window", [1, 2, 5])
def test_attempt_order_with_failures_does_not_depend_on_look_ahead(window):
    cfg = CollectConfig(env="Reach,Push,Stack", episodes=3, out="x", max_attempts=5)
    failing = {("Reach", 1), ("Push", 0), ("Push", 2), ("Push", 3), ("Stack", 4)}
    outcomes = {(t, s): (t, s) not in failing for t in cfg.tasks for s in range(5)}
    log, in_flight = [], [0, 0]
    got = [(ep.env, ep.seed) for ep in _in_order(cfg, _scripted_submit(outcomes, log, in_flight), window)]
    # task by task, seeds in order, until 3 successes or 5 attempts (Push gets only 2 successes)
    assert got == [("Reach", 0), ("Reach", 1), ("Reach", 2), ("Reach", 3),
                   ("Push", 0), ("Push", 1), ("Push", 2), ("Push", 3), ("Push", 4),
                   ("Stack", 0), ("Stack", 1), ("Stack", 2)]
    assert sorted(log) == sorted(got)  # no attempt started that was not needed
    assert in_flight[1] == window  # the look-ahead is used (across tasks), never exceeded


def test_privileged_columns_name_the_scene_and_the_expert_phase(tmp_path):
    """collect privileged=true: every coloured object with its true position and the expert's phase in
    words, per frame; the training loop hands them to a family that reads them (emma) and to no other."""
    from policystack.envs.experts import DECISIONS
    from policystack.envs.scene import COLORS
    from policystack.envs.vqa import KINDS
    from policystack.policies.emma import EmmaConfig
    from policystack.policies.rt2 import RT2Config
    from policystack.training.config import DatasetConfig, TrainConfig
    from policystack.training.loop import dataset_features
    from policystack.types import PRIVILEGED_DECISION, PRIVILEGED_OBJECTS

    env = envs.make("PressButton", cameras=())
    frames, success = run_episode(env, make_expert(env), seed=4, privileged=True)
    assert success
    phases = [DECISIONS[int(obs[PRIVILEGED_DECISION][0])] for obs, _ in frames]
    assert phases[0] == "move above the button" and phases[-1] == "press the button"
    objects = frames[0][0][PRIVILEGED_OBJECTS].reshape(-1, 5)
    named = {f"{list(COLORS)[int(c)]} {KINDS[int(k)]}": xyz for c, k, *xyz in objects if c >= 0}
    target = env.unwrapped.target
    color = env.unwrapped.task.split()[-2]  # "press the <colour> button"
    # the first frame's position of the named button; it has been pressed down since, so compare x and y
    np.testing.assert_allclose(named[f"{color} button"][:2], env.unwrapped.body_pos(target)[:2], atol=1e-6)
    assert len(named) == 3 and np.all(objects[3:, :2] == -1)
    env.close()

    out = tmp_path / "priv"
    collect(CollectConfig(env="Reach", episodes=1, out=out, cameras=(), seed=3, privileged=True), progress=False)
    meta = DatasetMeta.load(out)
    assert meta.features[PRIVILEGED_OBJECTS].info["colors"] == list(COLORS)
    assert meta.features[PRIVILEGED_DECISION].info["decisions"] == list(DECISIONS)
    cfg = TrainConfig(policy={"name": "x"}, dataset=DatasetConfig(path=str(out)))
    assert PRIVILEGED_OBJECTS in dataset_features(cfg, EmmaConfig())[1]
    assert not any(k.startswith("privileged.") for k in dataset_features(cfg, RT2Config())[1])
