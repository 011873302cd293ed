"""Short real training runs: what a run directory holds, that its checkpoint acts on its own, EMA,
keep-last-k, wandb offline, periodic evaluation, and the up-front checks on bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import load_file

from policystack.policies.base import Policy, PolicyConfig
from policystack.policies.bc import BCPolicy
from policystack.training import checkpoint
from policystack.training.config import load_config
from policystack.training.loop import train
from policystack.types import DataError, Feature

from .conftest import ACTION_DIM, SIZE, STATE_DIM, tiny_overrides


def _act(policy: Policy, camera: bool) -> torch.Tensor:
    obs = {"observation.state": torch.randn(2, STATE_DIM), "task": ["reach the red ball"] * 2}
    if camera:
        obs["observation.images.front"] = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    policy.reset()
    return torch.stack([policy.select_action(obs) for _ in range(3)], 1)  # [B, 3, A]


@pytest.mark.parametrize("camera", [False, True], ids=["state", "camera"])
def test_run_directory_and_checkpoint_that_acts(state_ds, camera_ds, tmp_path, camera):
    ds = camera_ds if camera else state_ds
    run = train(load_config(tiny_overrides(ds, tmp_path / "run")))
    assert (run / "config.yaml").is_file() and "path: " + str(ds) in (run / "config.yaml").read_text()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 and r["steps_per_s"] > 0 for r in records)
    # the rate of each record's last step: warm-up (step 1 of 2), then cosine over the 4 steps after it
    assert records[0]["lr"] == pytest.approx(1e-3 * 2 / 3)
    assert records[1]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 1 / 4)))
    assert (run / "checkpoints" / "latest").is_symlink()
    assert checkpoint.latest_checkpoint(run).name == "000006"
    assert [p.name for p in checkpoint.step_dirs(run)] == ["000003", "000006"]

    policy = Policy.from_pretrained(run)  # the run directory alone is enough
    assert policy.name == "bc" and ("observation.images.front" in policy.features) == camera
    assert policy.data_provenance == {"dataset": str(ds)}  # no sim_seeds: the dataset was not collected in sim
    actions = _act(policy, camera)
    assert actions.shape == (2, 3, ACTION_DIM) and torch.isfinite(actions).all()
    # the weights trained: the step-3 and step-6 checkpoints differ
    a = load_file(run / "checkpoints" / "000003" / "pretrained" / "model.safetensors")
    b = load_file(run / "checkpoints" / "000006" / "pretrained" / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_keep_last_k_and_latest(state_ds, tmp_path):
    run = train(load_config(tiny_overrides(state_ds, tmp_path / "run", "steps=7", "checkpoint.every=1",
                                           "checkpoint.keep_last=2")))
    assert [p.name for p in checkpoint.step_dirs(run)] == ["000006", "000007"]
    assert checkpoint.latest_checkpoint(run).name == "000007"
    assert not list((run / "checkpoints").glob(".*"))  # no temporary directories left


def test_ema_weights_are_what_pretrained_holds(state_ds, tmp_path):
    """With EMA on, pretrained/ (what from_pretrained loads) holds the average and the raw weights
    are kept in training_state.safetensors; without EMA there is no second copy."""
    run = train(load_config(tiny_overrides(state_ds, tmp_path / "ema", "ema.enabled=true", "ema.decay=0.5")))
    ckpt = checkpoint.latest_checkpoint(run)
    pretrained = load_file(ckpt / "pretrained" / "model.safetensors")
    raw = {k.removeprefix("model."): v for k, v in load_file(ckpt / checkpoint.STATE_TENSORS).items()
           if k.startswith("model.")}
    assert raw.keys() == pretrained.keys()
    weights = [k for k in raw if k.endswith("weight")]
    assert any(not torch.equal(raw[k], pretrained[k]) for k in weights)
    loaded = Policy.from_pretrained(run).state_dict()
    assert all(torch.equal(loaded[k], pretrained[k]) for k in pretrained)

    plain = train(load_config(tiny_overrides(state_ds, tmp_path / "plain")))
    state = load_file(checkpoint.latest_checkpoint(plain) / checkpoint.STATE_TENSORS)
    assert not any(k.startswith("model.") for k in state)
    # same seed and data: the raw EMA-run weights are the plain run's weights (EMA does not steer training)
    plain_w = load_file(checkpoint.latest_checkpoint(plain) / "pretrained" / "model.safetensors")
    assert all(torch.equal(raw[k], plain_w[k]) for k in raw)


def test_ema_update_math():
    from policystack.training.ema import EMA

    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=100)  # decay = min(0.9, 101/110) = 0.9
    torch.testing.assert_close(ema.shadow["weight"], 0.9 * w0 + 0.1 * (w0 + 1))
    with ema.applied(model):
        assert torch.equal(model.weight, ema.shadow["weight"])
    assert torch.equal(model.weight, w0 + 1)  # raw weights back after the block


def test_wandb_offline_inside_the_run_dir(state_ds, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default, not the environment's doing
    run = train(load_config(tiny_overrides(state_ds, tmp_path / "run", "log.wandb.enabled=true", "steps=2")))
    assert (run / "wandb_id").is_file()
    assert list((run / "wandb").glob("offline-run-*")), list((run / "wandb").iterdir())


# --- bad input: clear errors before training, nothing written -------------------------------------
def test_missing_camera_is_named(camera_ds, tmp_path):
    with pytest.raises(DataError, match=r"dataset.cameras names \['wrist'\].*its cameras: \['front'\]"):
        train(load_config(tiny_overrides(camera_ds, tmp_path / "run", "dataset.cameras=[wrist]")))
    assert not (tmp_path / "run").exists()


def test_dataset_without_stats(state_ds, tmp_path):
    ds = tmp_path / "nostats"
    shutil.copytree(state_ds, ds)
    (ds / "meta" / "stats.json").unlink()
    with pytest.raises(DataError, match="stats.json: missing.*policystack dataset stats"):
        train(load_config(tiny_overrides(ds, tmp_path / "run")))


def test_env_that_does_not_fit_the_dataset(state_ds, tmp_path):
    with pytest.raises(ValueError, match=r"env=Reach cannot evaluate.*'observation.state'.*shape \[4\], the env gives \[15\]"):
        train(load_config(tiny_overrides(state_ds, tmp_path / "run", "env=reach")))
    assert not (tmp_path / "run").exists()


def test_init_from_checkpoint_of_another_policy_or_config(state_ds, tmp_path):
    run = train(load_config(tiny_overrides(state_ds, tmp_path / "src", "steps=2", "checkpoint.every=2")))
    with pytest.raises(ValueError, match="policy config differs.*hidden_dim"):
        train(load_config(tiny_overrides(state_ds, tmp_path / "a", f"init_from={run}", "policy.hidden_dim=16")))
    other = tmp_path / "other"
    shutil.copytree(checkpoint.latest_checkpoint(run) / "pretrained", other)
    meta = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**meta, "policy": "diffusion"}))
    with pytest.raises(ValueError, match="checkpoint of policy 'diffusion', but this run trains 'bc'"):
        train(load_config(tiny_overrides(state_ds, tmp_path / "b", f"init_from={other}")))
    # a checkpoint saved before a config key existed (the key absent: its default) is still this config
    import dataclasses

    from policystack.policies.bc import BCConfig

    older = tmp_path / "older"
    shutil.copytree(checkpoint.latest_checkpoint(run) / "pretrained", older)
    saved = json.loads((older / "config.json").read_text())
    defaults = {f.name: f.default for f in dataclasses.fields(BCConfig) if f.default is not dataclasses.MISSING}
    key = next(k for k, v in saved["config"].items() if k in defaults and defaults[k] == v)
    del saved["config"][key]
    (older / "config.json").write_text(json.dumps(saved))
    checkpoint.check_compatible(older, Policy.from_pretrained(checkpoint.latest_checkpoint(run) / "pretrained"))
    # a compatible one starts from its weights
    fine = train(load_config(tiny_overrides(state_ds, tmp_path / "c", f"init_from={run}", "steps=1",
                                            "optim.lr=1e-12", "optim.warmup_steps=0")))
    a = load_file(checkpoint.latest_checkpoint(run) / "pretrained" / "model.safetensors")
    b = load_file(checkpoint.latest_checkpoint(fine) / "pretrained" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


class ExternalWeightsBC(BCPolicy):
    """bc with a stand-in for a pretrained part: a buffer that ``load_external_weights`` sets to 1."""

    name = "test_external_bc"

    def __init__(self, config, features, stats):
        super().__init__(config, features, stats)
        self.register_buffer("external", torch.zeros(1))

    def load_external_weights(self):
        self.external.fill_(1.0)


def test_external_weights_load_only_for_a_policy_from_scratch(state_ds, tmp_path):
    fresh = train(load_config(tiny_overrides(state_ds, tmp_path / "fresh", "policy.name=test_external_bc", "steps=2")))
    assert Policy.from_pretrained(fresh).external.item() == 1.0  # a new policy loaded them
    start = Policy.from_pretrained(fresh)
    start.external.zero_()
    start.save_pretrained(tmp_path / "start")
    tuned = train(load_config(tiny_overrides(state_ds, tmp_path / "tuned", "policy.name=test_external_bc", "steps=2",
                                             f"init_from={tmp_path / 'start'}")))
    assert Policy.from_pretrained(tuned).external.item() == 0.0  # the checkpoint's weights, not the outside ones


@dataclass
class NextStateConfig(PolicyConfig):
    """A tiny world model: trains on observations alone (no action) and asks for future frames."""

    actions_optional = True
    future_steps: int = 2

    @property
    def observation_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1 + self.future_steps))


SEEN: list[tuple] = []  # (state window shape, padded future frames, batch keys) of every loss computed


class NextStatePolicy(Policy):
    """Predicts the state of the next ``future_steps`` frames from the current one (padded frames masked)."""

    name = "test_next_state"
    config_class = NextStateConfig

    def __init__(self, config, features, stats):
        super().__init__(config, features, stats)
        d = features["observation.state"].shape[0]
        self.net = torch.nn.Linear(d, d * config.future_steps)

    def compute_loss(self, batch):
        state = self.normalizer.normalize("observation.state", batch["observation.state"])  # [B, T + F, D]
        now, future = state[:, self.config.n_obs_steps - 1], state[:, self.config.n_obs_steps:]
        valid = ~batch["observation.state_is_pad"][:, self.config.n_obs_steps:]  # [B, F]
        SEEN.append((tuple(state.shape), int((~valid).sum()), sorted(batch)))
        err = ((self.net(now).view_as(future) - future) ** 2).mean(-1)
        loss = (err * valid).sum() / valid.sum().clamp(min=1)
        return loss, {"mse": loss.item()}


def test_action_free_data_with_future_frames(tmp_path):
    from policystack.datasets.writer import DatasetWriter

    root = tmp_path / "video"
    features = {"observation.state": Feature("float32", (STATE_DIM,))}
    with DatasetWriter.create(root, fps=10, features=features, robot_type="test", vcodec="h264") as w:
        for ep in range(2):
            for i in range(8):
                w.add_frame({"observation.state": np.full(STATE_DIM, ep + 0.1 * i, np.float32), "task": "watch"})
            w.save_episode()
    cfg = load_config(tiny_overrides(root, tmp_path / "run", "steps=3", "batch_size=16"))
    cfg.policy = {"name": "test_next_state", "n_obs_steps": 1, "future_steps": 2}
    SEEN.clear()
    run = train(cfg)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert all(shape == (16, 3, STATE_DIM) for shape, _, _ in SEEN)  # the current frame and 2 future ones
    assert any(n_pad > 0 for _, n_pad, _ in SEEN)  # frames past an episode's end are marked
    assert SEEN[0][2] == ["observation.state", "observation.state_is_pad", "task"]
    policy = Policy.from_pretrained(run)
    assert isinstance(policy, NextStatePolicy) and "action" not in policy.features
    assert list(policy.normalizer.modes) == ["observation.state"]  # the config's action mode: no action to use it
    # a family that needs actions refuses the dataset, saying why
    with pytest.raises(DataError, match="no 'action' feature to train on.*actions_optional"):
        train(load_config(tiny_overrides(root, tmp_path / "bc")))
    cfg = load_config(tiny_overrides(root, tmp_path / "env", "env=reach"))
    cfg.policy = {"name": "test_next_state"}
    with pytest.raises(ValueError, match="this dataset has no 'action'; train without an env"):
        train(cfg)


def test_non_finite_first_batch_fails_before_training(state_ds, tmp_path):
    ds = tmp_path / "inf"
    shutil.copytree(state_ds, ds)
    stats = json.loads((ds / "meta" / "stats.json").read_text())
    stats["action"]["mean"] = [float("inf")] * ACTION_DIM  # every normalised action is -inf
    (ds / "meta" / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(FloatingPointError, match="first batch gives a non-finite loss"):
        train(load_config(tiny_overrides(ds, tmp_path / "run")))
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def reach_ds(tmp_path_factory):
    from policystack.envs.collect import main as collect

    root = tmp_path_factory.mktemp("reach") / "ds"
    assert collect(["env=Reach", "episodes=2", f"out={root}", "cameras="]) == 0
    return root


def test_periodic_evaluation_in_the_env(reach_ds, tmp_path):
    run = train(load_config(tiny_overrides(reach_ds, tmp_path / "run", "env=reach", "eval.every=2", "steps=4",
                                           "eval.episodes=2", "eval.n_envs=1", "env.max_episode_steps=5")))
    assert sorted(p.name for p in (run / "eval").glob("*.json")) == ["000002.json", "000004.json"]
    result = json.loads((run / "eval" / "000004.json").read_text())
    assert result["n_episodes"] == 2 and 0 <= result["success_rate"] <= 1
    assert all(e["length"] <= 5 for e in result["episodes"])
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if "eval/success_rate" in line]
    assert [r["step"] for r in evals] == [2, 4]


# --- selecting data, the frame cache, LeRobot-written MetaWorld data ----------------------------
def test_episodes_and_tasks_select_what_trains(state_ds, tmp_path, capsys):
    train(load_config(tiny_overrides(state_ds, tmp_path / "a", "steps=1", "dataset.episodes=[1,3]")))
    assert "(32 frames)" in capsys.readouterr().err  # 2 of the 4 episodes of 16 frames
    train(load_config(tiny_overrides(state_ds, tmp_path / "b", "steps=1", "dataset.tasks=[reach the red ball]",
                                     "dataset.episodes=0-2")))
    assert "(16 frames)" in capsys.readouterr().err  # red: episodes 1 and 3; of 0-2 only 1
    with pytest.raises(DataError, match=r"dataset.tasks names 'reach the green ball'.*its tasks: \[\(0, 'reach the"):
        train(load_config(tiny_overrides(state_ds, tmp_path / "c", "dataset.tasks=[reach the green ball]")))
    with pytest.raises(DataError, match=r"dataset.episodes names episodes \[9\]"):
        train(load_config(tiny_overrides(state_ds, tmp_path / "d", "dataset.episodes=[1,9]")))
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_first_epoch_decoding_is_announced_and_the_cache_can_live_in_the_run(camera_ds, tmp_path, capsys):
    overrides = [o for o in tiny_overrides(camera_ds, tmp_path / "run", "steps=1") if "cache_dir" not in o]
    run = train(load_config([*overrides, "dataset.cache_dir=run"]))
    err = capsys.readouterr().err
    assert f"decodes 64 camera frames (4 camera segments, 0 MB) into the frame cache {run / 'cache'}" in err
    assert list((run / "cache").glob("*/frames/*.npy"))
    state_only = train(load_config(tiny_overrides(camera_ds, tmp_path / "state", "steps=1", "dataset.cameras=[]")))
    assert "frame cache" not in capsys.readouterr().err
    assert not any(f.is_visual for f in Policy.from_pretrained(state_only).features.values())


@pytest.fixture(scope="module")
def lerobot_metaworld_ds(tmp_path_factory):
    """A tiny dataset shaped like LeRobot's MetaWorld data: observation.image (32x32), a 4-value
    state, 4-value actions, and no camera record (LeRobot's writer writes none)."""
    from policystack.datasets.writer import DatasetWriter
    from policystack.types import Feature

    root = tmp_path_factory.mktemp("lerobot_mw") / "ds"
    features = {"observation.state": Feature("float32", (4,)), "action": Feature("float32", (4,)),
                "observation.image": Feature("video", (32, 32, 3))}
    rng = np.random.default_rng(0)
    with DatasetWriter.create(root, fps=80, features=features, robot_type="metaworld", vcodec="h264") as w:
        for _ in range(2):
            for _ in range(8):
                w.add_frame({"observation.state": rng.normal(size=4).astype(np.float32),
                             "action": rng.uniform(-1, 1, 4).astype(np.float32), "task": "open the drawer",
                             "observation.image": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)})
            w.save_episode()
    return root


def test_metaworld_data_that_records_no_camera_convention(lerobot_metaworld_ds, tmp_path):
    pytest.importorskip("metaworld")
    from policystack.types import camera_record

    env = ["env=metaworld/drawer-open-v3"]
    with pytest.raises(ValueError, match=r"env=metaworld/drawer-open-v3 cannot evaluate.*dataset.camera_convention="
                                         r".*observation.image: the checkpoint does not record"):
        train(load_config(tiny_overrides(lerobot_metaworld_ds, tmp_path / "a", *env)))
    run = train(load_config(tiny_overrides(lerobot_metaworld_ds, tmp_path / "b", "steps=1",
                                           "dataset.camera_convention=lerobot", *env)))
    record = camera_record(Policy.from_pretrained(run).features["observation.image"])
    assert record == {"camera.name": "metaworld/corner2", "camera.convention": "lerobot", "camera.shadows": True,
                      "camera.reflections": True}  # the checkpoint now says which images it expects


@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_stops_after_the_step_with_a_checkpoint_and_resumes(state_ds, tmp_path, capsys, monkeypatch, workers):
    """As `kill PID`, and (workers=1) as a kill of the process group or Ctrl-C: the loader's workers get the
    signal too and must leave it to the main process."""
    calls = []
    loss_of = BCPolicy.compute_loss

    def compute_loss(self, batch):  # the 1st call is the loop's check step; the 3rd is step 2
        calls.append(1)
        if len(calls) == 3:
            children = [c for c in psutil.Process().children() if c.pid not in others]  # the loader's workers
            assert len(children) == workers
            if children:  # sent by another process, as pkill / Slurm / systemd do (torch's workers quietly exit
                subprocess.run(["kill", "-TERM", *(str(c.pid) for c in children)], check=True)  # for their parent)
            time.sleep(0.5 if workers else 0)  # let a worker die (it must not) before the main process is told
            os.kill(os.getpid(), signal.SIGTERM)
        return loss_of(self, batch)

    monkeypatch.setattr(BCPolicy, "compute_loss", compute_loss)
    before = signal.getsignal(signal.SIGTERM)
    others = {c.pid for c in psutil.Process().children()}  # earlier tests' processes
    run = train(load_config(tiny_overrides(state_ds, tmp_path / "run", "steps=50", "checkpoint.every=20",
                                           f"dataset.num_workers={workers}")))
    assert checkpoint.latest_checkpoint(run).name == "000002"  # the step in progress finished and was saved
    assert "SIGTERM received: stopped at step 2 of 50; checkpoint 2 written" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is gone with the run
    resumed = train(load_config(tiny_overrides(state_ds, tmp_path / "run", "steps=4", "resume=true")))
    assert checkpoint.latest_checkpoint(resumed).name == "000004"


def test_time_limit_stops_with_a_checkpoint(state_ds, tmp_path, capsys):
    run = train(load_config(tiny_overrides(state_ds, tmp_path / "run", "steps=50", "time_limit_min=1e-9")))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]  # the first step is past the limit: logged, saved, stopped
    assert checkpoint.latest_checkpoint(run).name == "000001"
    assert "time_limit_min=1e-09 (wall) reached at step 1 of 50" in capsys.readouterr().err
    cpu = train(load_config(tiny_overrides(state_ds, tmp_path / "cpu", "steps=50", "time_limit_min=1e-9",
                                           "time_limit_clock=cpu")))
    assert checkpoint.latest_checkpoint(cpu).name == "000001"
    with pytest.raises(ValueError, match="time_limit_min=0.0: expected > 0"):
        load_config(tiny_overrides(state_ds, tmp_path / "x", "time_limit_min=0"))
    with pytest.raises(ValueError, match="time_limit_clock='sun': expected wall or cpu"):
        load_config(tiny_overrides(state_ds, tmp_path / "x", "time_limit_clock=sun"))
