"""Forward kinematics of the Franka Panda in pure numpy (no allocation per call), for the safety
filter's end-effector workspace check.

Craig's (modified) Denavit-Hartenberg parameters from Franka's documentation; the tool point is a
fixed offset in the frame of joint 7 (``tool_offset``, m), e.g. the pinch point of the gripper.
``tests/robot/test_kinematics.py`` checks this against MuJoCo's model of the suite's arm.
"""

from __future__ import annotations

import numpy as np

# (a, d, alpha) per joint, modified DH (Franka Control Interface documentation)
PANDA_DH = np.array([
    [0.0, 0.333, 0.0],
    [0.0, 0.0, -np.pi / 2],
    [0.0, 0.316, np.pi / 2],
    [0.0825, 0.0, np.pi / 2],
    [-0.0825, 0.384, -np.pi / 2],
    [0.0, 0.0, np.pi / 2],
    [0.088, 0.0, np.pi / 2],
])


class PandaFK:
    """``position(q [>=7]) -> [3]`` tool point in the base frame; buffers preallocated once."""

    def __init__(self, tool_offset: np.ndarray | list[float], base_pos: np.ndarray | list[float] = (0.0, 0.0, 0.0)):
        self.tool = np.append(np.asarray(tool_offset, dtype=np.float64), 1.0)  # [4] homogeneous
        self.base = np.asarray(base_pos, dtype=np.float64)
        self._a = PANDA_DH[:, 0].copy()
        self._d = PANDA_DH[:, 1].copy()
        self._ca = np.cos(PANDA_DH[:, 2])
        self._sa = np.sin(PANDA_DH[:, 2])
        self._T = np.eye(4)
        self._A = np.eye(4)
        self._tmp = np.eye(4)
        self._out4 = np.zeros(4)
        self._out = np.zeros(3)
        self._cq = np.zeros(7)
        self._sq = np.zeros(7)

    def position(self, q: np.ndarray) -> np.ndarray:
        """q: [>=7] joint angles (rad) -> [3] tool point (a view of an internal buffer)."""
        np.cos(q[:7], out=self._cq)
        np.sin(q[:7], out=self._sq)
        T, A, tmp = self._T, self._A, self._tmp
        T[...] = 0.0
        T[0, 0] = T[1, 1] = T[2, 2] = T[3, 3] = 1.0
        for i in range(7):
            c, s, ca, sa = self._cq[i], self._sq[i], self._ca[i], self._sa[i]
            # modified DH: Rot_x(alpha) Trans_x(a) Rot_z(theta) Trans_z(d)
            A[0, 0], A[0, 1], A[0, 2], A[0, 3] = c, -s, 0.0, self._a[i]
            A[1, 0], A[1, 1], A[1, 2], A[1, 3] = s * ca, c * ca, -sa, -sa * self._d[i]
            A[2, 0], A[2, 1], A[2, 2], A[2, 3] = s * sa, c * sa, ca, ca * self._d[i]
            np.matmul(T, A, out=tmp)
            T[...] = tmp
        np.matmul(T, self.tool, out=self._out4)
        np.add(self._out4[:3], self.base, out=self._out)
        return self._out
