"""Small datasets for the dataset tests: one written by DatasetWriter, one by LeRobot itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from _writer_data import FEATURES, FPS, H, W, action, image, length, state, task, write_episodes


@pytest.fixture(scope="session")
def ours_ds(tmp_path_factory) -> Path:
    """3 episodes (4, 5, 6 frames), 2 tasks, 2 AV1 cameras, 1 PNG camera, written by DatasetWriter."""
    from policystack.datasets.writer import DatasetWriter

    root = tmp_path_factory.mktemp("ours") / "ds"
    with DatasetWriter.create(root, fps=FPS, features=FEATURES, robot_type="panda") as w:
        write_episodes(w, range(3))
    return root


@pytest.fixture(scope="session")
def lerobot_written(tmp_path_factory) -> Path:
    """3 episodes written by LeRobot 0.4.4 itself: state, action, one AV1 camera."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("lerobot") / "ds"
    feats = {"observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "g"]},
             "action": {"dtype": "float32", "shape": (3,), "names": None},
             "observation.images.front": {"dtype": "video", "shape": (H, W, 3),
                                          "names": ["height", "width", "channels"]}}
    ds = LeRobotDataset.create("local/lerobot_written", root=root, fps=FPS, features=feats, use_videos=True)
    for ep in range(3):
        for i in range(length(ep)):
            ds.add_frame({"observation.state": state(ep, i), "action": action(ep, i),
                          "observation.images.front": image(ep, i, 0), "task": task(ep)})
        ds.save_episode()
    ds.finalize()
    return root
