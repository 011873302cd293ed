"""Tiny datasets for the training tests, written with DatasetWriter: state-only, and with one 32x32
camera. Actions are a smooth function of the state so a policy has something to learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policystack.types import Feature

FPS = 10
STATE_DIM, ACTION_DIM, SIZE = 4, 3, 32


def _frame(ep: int, i: int, camera: bool) -> dict:
    t = 0.1 * i + ep
    state = np.array([np.sin(t), np.cos(t), 0.1 * i, ep % 2], dtype=np.float32)
    frame = {"observation.state": state, "action": np.array([np.cos(t), -np.sin(t), 0.1], dtype=np.float32),
             "task": "reach the red ball" if ep % 2 else "reach the blue ball"}
    if camera:
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        cy, cx = 8 + (2 * i) % 16, 8 + 4 * (ep % 4)
        blob = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20.0)
        frame["observation.images.front"] = np.clip(np.stack([blob, xx * 6, yy * 6], -1), 0, 255).astype(np.uint8)
    return frame


def write_dataset(root: Path, episodes: int = 4, length: int = 16, camera: bool = False) -> Path:
    from policystack.datasets.writer import DatasetWriter

    features = {"observation.state": Feature("float32", (STATE_DIM,)), "action": Feature("float32", (ACTION_DIM,))}
    if camera:
        features["observation.images.front"] = Feature("video", (SIZE, SIZE, 3))
    with DatasetWriter.create(root, fps=FPS, features=features, robot_type="test", vcodec="h264") as w:
        for ep in range(episodes):
            for i in range(length):
                w.add_frame(_frame(ep, i, camera))
            w.save_episode()
    return root


@pytest.fixture(scope="session")
def state_ds(tmp_path_factory) -> Path:
    """4 episodes x 16 frames: observation.state [4], action [3]."""
    return write_dataset(tmp_path_factory.mktemp("train") / "state")


@pytest.fixture(scope="session")
def camera_ds(tmp_path_factory) -> Path:
    """4 episodes x 16 frames: state, action and a 32x32 camera `front` (h264 video)."""
    return write_dataset(tmp_path_factory.mktemp("train") / "camera", camera=True)


def tiny_overrides(dataset: Path, out: Path, *extra: str) -> list[str]:
    """A bc small enough to train in a fraction of a second, no wandb, no loader workers."""
    return [f"dataset.path={dataset}", f"out={out}", "dataset.cache_dir=false", "dataset.num_workers=0",
            "policy.hidden_dim=32", "policy.n_layers=2", "policy.conv_channels=[8,8]", "policy.keypoints=4",
            "policy.horizon=4", "policy.n_action_steps=2", "batch_size=8", "steps=6", "log.every=2",
            "checkpoint.every=3", "log.wandb.enabled=false", "log.progress=false", "optim.warmup_steps=2",
            "optim.lr=1e-3", "threads=1", *extra]
