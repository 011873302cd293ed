"""Small datasets written by LeRobot 0.4.4's own writer, shared by the loader and video tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FPS = 10
SIZE = 32
VIDEO_KEY = "observation.images.top"
IMAGE_KEY = "observation.images.wrist"  # stored as PNG in the parquet (dtype "image")
EPISODE_LENGTHS = (12, 20, 5, 17)  # one shorter than the action horizon
TASKS = ("pick the red cube", "open the drawer")


def frame_image(ep: int, i: int, cam: int) -> np.ndarray:
    """A moving gradient with some noise: compressible, different per frame / camera."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    noise = np.random.default_rng(1000 * ep + 10 * i + cam).integers(0, 40, (SIZE, SIZE))
    img = np.stack([(xx * 7 + 11 * i + 50 * cam) % 256, (yy * 5 + 23 * ep) % 256, (xx + yy + noise) % 256], -1)
    return img.astype(np.uint8)


def features() -> dict:
    return {
        "observation.state": {"dtype": "float32", "shape": (6,), "names": None},
        "action": {"dtype": "float32", "shape": (3,), "names": None},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        VIDEO_KEY: {"dtype": "video", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]},
        IMAGE_KEY: {"dtype": "image", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]},
    }


def add_episodes(ds) -> None:
    """The same frames into LeRobot's writer or ours (same add_frame / save_episode API)."""
    rng = np.random.default_rng(0)
    for ep, length in enumerate(EPISODE_LENGTHS):
        for i in range(length):
            ds.add_frame({"observation.state": rng.standard_normal(6).astype(np.float32),
                          "action": rng.standard_normal(3).astype(np.float32),
                          "next.reward": np.array([i / length], dtype=np.float32),
                          VIDEO_KEY: frame_image(ep, i, 0), IMAGE_KEY: frame_image(ep, i, 1),
                          "task": TASKS[ep % 2]})
        ds.save_episode()
    ds.finalize()


def write_lerobot_dataset(root: Path, vcodec: str = "libsvtav1") -> Path:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    add_episodes(LeRobotDataset.create("test/loader", fps=FPS, root=root, features=features(), use_videos=True,
                                       vcodec=vcodec))
    return root


def write_policystack_dataset(root: Path, vcodec: str = "libsvtav1") -> Path:
    """The same frames through policystack.datasets.writer (one data / video file per episode)."""
    from policystack.datasets.writer import DatasetWriter

    add_episodes(DatasetWriter.create(root, fps=FPS, features=features(), vcodec=vcodec))
    return root


@pytest.fixture(scope="session")
def lerobot_root(tmp_path_factory) -> Path:
    """4 episodes (12, 20, 5, 17 frames) written by LeRobot: one AV1 camera, one PNG camera."""
    return write_lerobot_dataset(tmp_path_factory.mktemp("lerobot") / "ds")
