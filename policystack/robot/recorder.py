"""Records daemon episodes into a LeRobot v3 dataset as they happen (one dataset episode per
daemon episode), through ``DatasetWriter``: each ``save_episode`` is durable when it returns, so
a kill -9 of the daemon loses at most the episode in progress.

Frame t holds the observation at policy tick t and, as its action, the command the loop was
sending during the step that followed (the loop's command at tick t + 1), as teleoperation
recorders store the commanded position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from policystack.datasets.writer import DatasetWriter
from policystack.types import ACTION, TASK, FeatureSpec


class EpisodeRecorder:
    def __init__(self, root: str | Path, fps: int, features: FeatureSpec, robot_type: str):
        root = Path(root)
        if (root / "meta" / "info.json").is_file():
            self.writer = DatasetWriter.resume(root)
            if self.writer.fps != fps:
                raise ValueError(f"{root}: dataset is at {self.writer.fps} fps; the daemon records at {fps}")
        else:
            self.writer = DatasetWriter.create(root, fps=fps, features=features, robot_type=robot_type,
                                               use_videos=True)
        self._pending: dict[str, Any] | None = None

    def observe(self, obs: dict[str, np.ndarray], task: str, command: np.ndarray) -> None:
        """Add the previous frame with ``command`` as its action; hold this one until the next."""
        if self._pending is not None:
            self._pending[ACTION] = np.asarray(command, dtype=np.float32)
            self.writer.add_frame(self._pending)
        self._pending = {**obs, TASK: task}

    def end_episode(self, command: np.ndarray) -> int | None:
        """Close the episode (durable on return); its index, or None if it had no frames."""
        if self._pending is not None:
            self._pending[ACTION] = np.asarray(command, dtype=np.float32)
            self.writer.add_frame(self._pending)
            self._pending = None
        if self.writer.episode_frames == 0:
            return None
        return self.writer.save_episode()

    def close(self) -> None:
        self._pending = None
        if self.writer.episode_frames:
            self.writer.discard_episode()
        self.writer.finalize()
