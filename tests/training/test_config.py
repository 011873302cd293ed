"""Config composition, overrides and their errors (no training)."""

from __future__ import annotations

import pytest

from policystack.policies.bc import BCConfig
from policystack.training.commands import main as train_main
from policystack.training.config import (
    TrainConfig,
    compose_config,
    load_config,
    load_preset,
    load_run_config,
    policy_config,
    presets,
    save_config_yaml,
)


def test_defaults_compose_to_bc_without_env():
    cfg = load_config([])
    assert isinstance(cfg, TrainConfig)
    assert cfg.policy["name"] == "bc" and cfg.env.task is None and cfg.dataset.path is None
    klass, pcfg = policy_config(cfg)
    assert klass.name == "bc" and isinstance(pcfg, BCConfig) and pcfg.conv_channels == (32, 64, 64)


def test_overrides_reach_every_level():
    cfg = load_config(["steps=123", "batch_size=7", "policy.horizon=5", "policy.n_action_steps=2",
                       "dataset.path=/data/x", "env=PickPlace", "eval.every=50", "optim.lr=3e-4",
                       "ema.enabled=true", "dataset.cameras=[front]"])
    assert (cfg.steps, cfg.batch_size, cfg.optim.lr, cfg.ema.enabled) == (123, 7, 3e-4, True)
    assert cfg.env.task == "PickPlace" and cfg.eval.every == 50 and cfg.dataset.cameras == ["front"]
    assert policy_config(cfg)[1].horizon == 5


def test_every_suite_task_has_an_env_preset():
    from policystack.envs import task_names

    assert {t.lower() for t in task_names()} | {"none"} == set(presets("env"))
    for t in task_names():
        assert load_config([f"env={t.lower()}"]).env.task == t


def test_unknown_policy_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"policy='nope'.*valid: \[.*'bc'.*registered policies"):
        compose_config(["policy=nope"])
    cfg = load_config(["policy.name=nope"])  # a preset naming an unregistered family
    with pytest.raises(KeyError, match=r"unknown policy 'nope'; available: \[.*'bc'"):
        policy_config(cfg)


def test_unknown_env_lists_tasks():
    with pytest.raises(ValueError, match="env='Fly'.*PickPlace"):
        compose_config(["env=Fly"])
    with pytest.raises(ValueError, match="env.task='Fly'.*valid: the tabletop tasks Reach"):
        load_config(["env.task=Fly"])


def test_env_takes_metaworld_tasks_as_eval_does():
    cfg = load_config(["env=metaworld/drawer-open-v3", "env.variations=30-32"])
    assert cfg.env.task == "metaworld/drawer-open-v3" and cfg.env.variations == [30, 31, 32]
    assert load_config(["env=MetaWorld-reach-v3"]).env.task == "MetaWorld-reach-v3"
    with pytest.raises(ValueError, match="env='metaworld/Fly'.*MetaWorld: env=metaworld/<task>"):
        compose_config(["env=metaworld/Fly"])
    with pytest.raises(ValueError, match="env.variations: MetaWorld tasks only"):
        load_config(["env=reach", "env.variations=1"])


def test_dataset_episode_and_task_selection_parse():
    assert load_config(["dataset.episodes=[0,2,5]"]).dataset.episodes == [0, 2, 5]
    assert load_config(["dataset.episodes=0-2"]).dataset.episodes == [0, 1, 2]
    assert load_config(["dataset.episodes='0-2,7'"]).dataset.episodes == [0, 1, 2, 7]  # Hydra: quote a comma
    assert load_config(["dataset.episodes=4"]).dataset.episodes == [4]
    assert load_config(["dataset.tasks=[open the drawer,1]"]).dataset.tasks == ["open the drawer", "1"]
    with pytest.raises(ValueError, match="dataset.episodes='a-b'"):
        load_config(["dataset.episodes=a-b"])
    with pytest.raises(ValueError, match=r"dataset.episodes=\[-1\]: expected episode indices"):
        load_config(["dataset.episodes=[-1]"])


def test_unknown_keys_and_bad_values_name_the_key():
    with pytest.raises(ValueError, match="Could not override 'stepz'"):
        compose_config(["stepz=3"])
    with pytest.raises(ValueError, match="policy.hidden_dimz"):
        compose_config(["policy.hidden_dimz=3"])
    with pytest.raises(ValueError, match="steps"):
        compose_config(["steps=abc"])
    with pytest.raises(ValueError, match=r"unknown BCConfig fields \['bogus'\]"):
        policy_config(load_config(["+policy.bogus=1"]))
    with pytest.raises(ValueError, match="steps=0"):
        load_config(["steps=0"])
    with pytest.raises(ValueError, match="eval.every=10 needs an env"):
        load_config(["eval.every=10"])
    with pytest.raises(ValueError, match="n_action_steps"):
        policy_config(load_config(["policy.horizon=2", "policy.n_action_steps=4"]))


def test_missing_dataset_path_is_a_clear_cli_error(capsys, tmp_path):
    assert train_main([f"out={tmp_path / 'run'}", "log.wandb.enabled=false"]) == 2
    assert "dataset.path is required" in capsys.readouterr().err
    assert train_main([f"dataset.path={tmp_path / 'nothing'}", f"out={tmp_path / 'run'}"]) == 2
    assert "dataset directory not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written before the checks pass


def test_cli_prints_the_composed_config(capsys):
    assert train_main(["--cfg", "steps=77", "env=reach"]) == 0
    out = capsys.readouterr().out
    assert "steps: 77" in out and "task: Reach" in out and "name: bc" in out


def test_a_preset_recipe_applies_unless_the_command_line_sets_the_key(capsys):
    cfg = load_config(["policy=rt1"])  # RT-1 tiny's known-good recipe comes with its preset
    assert cfg.optim.lr == 1e-3 and cfg.policy["n_obs_steps"] == 1 and cfg.steps == 6500 and "recipe" not in cfg.policy
    assert cfg.recipe["optim"]["lr"] == 1e-3 and cfg.recipe["batch_size"] == 128
    cfg = load_config(["policy=rt1", "optim.lr=3e-4", "batch_size=8"])  # the command line wins
    assert cfg.optim.lr == 3e-4 and cfg.batch_size == 8
    assert "lr" not in cfg.recipe["optim"] and "batch_size" not in cfg.recipe
    assert cfg.optim.warmup_steps == cfg.recipe["optim"]["warmup_steps"] == 200
    assert load_config(["policy=rt1", "policy.recipe.optim.lr=5e-4"]).optim.lr == 5e-4  # a changed recipe
    assert load_config(["policy=act_paper"]).optim.lr == 1e-5  # LeRobot's ACT preset
    assert load_config(["policy=rt2_smollm2"]).amp is True  # bf16 on CPU too: 2.2x faster steps (rt2.md)
    assert load_config(["policy=rt2_smollm2", "amp=false"]).amp is False
    assert load_config(["policy=rt2"]).amp is None  # the loop's default: on for CUDA only
    paper = load_config(["policy=diffusion_paper"])
    assert paper.optim.betas == [0.95, 0.999] and paper.optim.weight_decay == 1e-6
    with pytest.raises(ValueError, match=r"policy.recipe.dataset.path: not a training setting a recipe can set"):
        load_config(["policy=rt1", "+policy.recipe.dataset.path=/x"])
    with pytest.raises(ValueError, match=r"policy.recipe.optim.lrr: not a training setting"):
        load_config(["policy=rt1", "+policy.recipe.optim.lrr=1"])
    with pytest.raises(ValueError, match=r"policy.recipe.steps='many'"):
        load_config(["policy=rt1", "policy.recipe.steps=many"])
    assert train_main(["--cfg", "policy=rt1", "optim.warmup_steps=7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# preset recipe: optim.lr=0.001, optim.weight_decay=0.0001, steps=6500, batch_size=128")
    assert "warmup_steps: 7" in out and "recipe:\n  optim:\n    lr: 0.001" in out


def test_every_preset_composes_and_builds_its_config():
    for preset in presets("policy"):
        cfg = load_config([f"policy={preset}"])
        klass, pcfg = policy_config(cfg)
        assert isinstance(pcfg, klass.config_class) and cfg.recipe, preset  # every preset carries a recipe
        assert load_preset(preset)[1] == pcfg


def test_saved_config_reloads_with_overrides(tmp_path):
    cfg = load_config(["steps=10", "policy.hidden_dim=16", "dataset.path=/d"])
    save_config_yaml(cfg, tmp_path / "config.yaml")
    again = load_run_config(tmp_path, ["steps=20", "optim.lr=0.01"])
    assert again.steps == 20 and again.optim.lr == 0.01 and again.policy["hidden_dim"] == 16
    with pytest.raises(ValueError, match="keeps its policy"):
        load_run_config(tmp_path, ["policy=bc"])
    with pytest.raises(ValueError, match="nosuchkey"):
        load_run_config(tmp_path, ["nosuchkey=1"])
