"""`policystack endframes`: end-of-episode frames labelled by the simulator's is_success."""

from __future__ import annotations

import numpy as np
import pytest

from policystack import envs
from policystack.cli import main as cli_main
from policystack.datasets.meta import DatasetMeta
from policystack.datasets.vqa import split_vl_task
from policystack.envs.endframes import EndFramesConfig, end_of_episode, generate
from policystack.envs.experts import make_expert
from policystack.envs.vqa import question_kind


def test_each_mode_ends_where_it_says_and_the_label_is_the_last_state_judged():
    env = envs.make("Reach", cameras=())
    expert = make_expert(env)
    try:
        seen = {}
        for seed in range(500000, 500040):
            mode, steps, success = end_of_episode(env, expert, seed, noise=1.0)
            base = env.unwrapped
            assert success == base.evaluate()[0]  # the label is the success predicate of the frame written
            assert end_of_episode(env, expert, seed, noise=1.0) == (mode, steps, success)  # seeded
            if mode == "truncated":
                assert steps <= base.max_episode_steps // 3
            seen.setdefault(mode, []).append(success)
        assert set(seen) == {"expert", "noisy", "truncated"}
        assert all(seen["expert"])  # the plain expert succeeds on Reach
        assert not all(seen["truncated"])  # stopping it early gives failures
    finally:
        env.close()


def test_the_dataset_holds_success_and_caption_examples_of_each_end_frame(tmp_path):
    summary = generate(EndFramesConfig(env="Reach,OpenDrawer", episodes=3, out=tmp_path / "ef", image_size=32,
                                       group=2, seed=500000), progress=False)
    assert summary["episodes"] == 6
    meta = DatasetMeta.load(tmp_path / "ef")
    assert meta.total_frames == 12 and meta.total_episodes == 4  # groups of 2 rollouts per task: 2 + 1
    kinds = {}
    for task in meta.tasks:
        q, a = split_vl_task(task)
        kinds.setdefault(question_kind(q), set()).add(a)
    assert kinds["success"] <= {"yes", "no"} and "caption" in kinds
    questions = {split_vl_task(x)[0] for x in meta.tasks}
    assert any("drawer" in q for q in questions) and any("ball" in q for q in questions)
    stats = meta.stats
    assert np.asarray(stats["observation.images.front"]["mean"]).shape[0] == 3


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert cli_main(["endframes", "env=Nope", "episodes=2", f"out={tmp_path / 'x'}"]) == 2
    assert "unknown task(s) ['Nope']" in capsys.readouterr().err
    for bad, message in (("noise=0", "noise=0.0: expected > 0"), ("cameras=wrist", "include front or pass captions=false"),
                         ("group=0", "group=0: expected >= 1")):
        assert cli_main(["endframes", "env=Reach", "episodes=2", f"out={tmp_path / 'x'}", bad]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one camera"):
        EndFramesConfig(env="Reach", episodes=1, out=tmp_path / "y", cameras=())
