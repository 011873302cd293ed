"""Frames for the writer / stats / commands tests (imported by conftest.py and the tests; a
uniquely named module, because several test directories have a conftest.py).

Frame values are a deterministic function of (episode, frame) so that every test can check
exact values after a round trip.
"""

from __future__ import annotations

import numpy as np

from policystack.types import Feature

H = W = 32
FPS = 10
TASKS = ("pick up the red cube", "open the drawer")
FEATURES = {
    "observation.state": Feature("float32", (4,), names=["x", "y", "z", "g"]),
    "action": Feature("float32", (3,)),
    "observation.images.front": Feature("video", (H, W, 3)),
    "observation.images.wrist": Feature("video", (H, W, 3)),
    "observation.images.top": Feature("image", (H, W, 3)),
}


def state(ep: int, i: int) -> np.ndarray:
    return np.array([ep, i, ep * 100 + i, np.sin(ep + 0.1 * i)], dtype=np.float32)


def action(ep: int, i: int) -> np.ndarray:
    return np.array([0.5 * i, -ep, np.cos(i)], dtype=np.float32)


def image(ep: int, i: int, cam: int) -> np.ndarray:
    """A smooth gradient with a moving bright blob: compresses well, differs per frame."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    cy, cx = 6 + (3 * i + 5 * ep) % (H - 12), 8 + 4 * cam
    blob = 150 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30)
    img = np.stack([xx * 4 + 20 * cam + blob, yy * 4 + 10 * ep + blob, np.full_like(xx, 40 + 15 * i) + blob], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def task(ep: int) -> str:
    return TASKS[ep % 2]


def frame(ep: int, i: int) -> dict:
    return {"observation.state": state(ep, i), "action": action(ep, i),
            "observation.images.front": image(ep, i, 0),
            "observation.images.wrist": image(ep, i, 1).transpose(2, 0, 1),  # channel-first is accepted
            "observation.images.top": image(ep, i, 2), "task": task(ep)}


def length(ep: int) -> int:
    return 4 + ep


def write_episodes(w, episodes) -> None:
    for ep in episodes:
        for i in range(length(ep)):
            w.add_frame(frame(ep, i))
        assert w.save_episode() == ep


class MeanColour:
    """A frame transform for the loader (``frame_transforms``): per-frame channel means, float16
    [L, 3, 1, 1]; counts its calls."""

    cache_id = "mean-colour-v1"

    def __init__(self):
        self.calls = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.calls += 1
        return frames.astype(np.float32).mean((2, 3), keepdims=True).astype(np.float16)
