"""A fake ``cv2.VideoCapture``: the camera boundary below LeRobot's real ``OpenCVCamera`` (the one
place besides the servo bus where the daemon's tests fake hardware).

``DEVICES`` maps a device path to its native mode ``(width, height, fps)``; opening any other path
fails as a missing ``/dev/videoN`` does. ``read`` paces itself at the device's fps and returns BGR
frames whose blue channel is 200, green 100, red the frame counter (mod 256), so a test can tell the
frames are this camera's and were converted to RGB.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

DEVICES: dict[str, tuple[int, int, float]] = {}


class FakeVideoCapture:
    def __init__(self, index_or_path, backend: int = 0):
        self.path = str(index_or_path)
        self.opened = self.path in DEVICES
        if self.opened:
            self.width, self.height, self.fps = DEVICES[self.path]
        self.frames = 0
        self._next = time.monotonic()

    def isOpened(self) -> bool:  # noqa: N802  (OpenCV's names)
        return self.opened

    def release(self) -> None:
        self.opened = False

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FRAME_WIDTH: float(self.width), cv2.CAP_PROP_FRAME_HEIGHT: float(self.height),
                cv2.CAP_PROP_FPS: float(self.fps)}.get(prop, 0.0)

    def set(self, prop: int, value: float) -> bool:
        # a real camera accepts only its modes; this one only its native mode
        return self.get(prop) == float(value)

    def read(self):
        if not self.opened:
            return False, None
        wait = self._next - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._next = max(self._next + 1.0 / self.fps, time.monotonic())
        self.frames += 1
        img = np.empty((self.height, self.width, 3), np.uint8)
        img[..., 0], img[..., 1], img[..., 2] = 200, 100, self.frames % 256
        return True, img
