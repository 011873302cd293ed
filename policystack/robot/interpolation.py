"""Setpoints from the time-stamped actions of a chunk, and cross-fading at chunk seams.

A chunk is ``actions [n, A]`` predicted from an observation taken at ``t_obs`` (the daemon's
monotonic clock) with policy period ``dt``. Two timing conventions (``mode``):

- ``"hold"`` (default): action i is the setpoint during policy step i, from ``t_obs + i * dt`` until
  ``t_obs + (i + 1) * dt`` (a zero-order hold). This is what the policies were trained on: the
  suite's env (``TabletopEnv.step``) sets action i as the servo target for the whole of step i,
  and LeRobot's record / eval loops ``send_action`` once per frame and let the robot's controller
  move there. The safety filter downstream turns the steps into a velocity- and
  acceleration-limited motion. A new chunk simply takes over (as a policy's action queue does in
  an env rollout); ``blend_s`` is not used.
- ``"linear"``: action i is the setpoint to *reach* at ``t_obs + (i + 1) * dt``, linear in time in
  between, the first action held before its time. Smoother (the setpoint is continuous), but on
  average half a policy step behind the hold convention, so a policy trained on held actions sees
  its arm lag its plan. Seams: when a chunk replaces the running one at ``t_r``, the offset
  ``d = y(t_r) - c(t_r)`` between the current output and the new chunk is faded out with a
  smoothstep over ``blend_s``: ``y(t) = c(t) + d * (1 - s((t - t_r) / blend_s))``; the output is
  continuous at every seam (one during a fade included), and its slope changes by at most the two
  chunks' slopes at the seam plus ``1.5 |d| / blend_s``.

In both modes the chunk runs out at ``end_time()`` (``sample`` returns False and the safety filter
holds), and latency needs no special case: the part of a chunk already in the past is never sampled.
"""

from __future__ import annotations

import numpy as np

MODES = ("hold", "linear")


def smoothstep(u: float) -> float:
    u = 0.0 if u < 0.0 else (1.0 if u > 1.0 else u)
    return u * u * (3.0 - 2.0 * u)


class ChunkInterpolator:
    """Preallocated for chunks of up to ``max_len`` actions of ``dim`` components."""

    def __init__(self, dim: int, max_len: int, blend_s: float, mode: str = "hold"):
        if mode not in MODES:
            raise ValueError(f"interpolation mode {mode!r}: expected one of {list(MODES)}")
        self.dim, self.max_len, self.mode = dim, max_len, mode
        self.blend_s = float(blend_s) if mode == "linear" else 0.0
        self.values = np.zeros((max_len, dim))
        self.n = 0
        self.t_first = 0.0  # time action 0 starts (hold) / is reached (linear)
        self.dt = 1.0
        self.offset = np.zeros(dim)
        self.t_seam = -np.inf
        self._cur = np.zeros(dim)

    @property
    def active(self) -> bool:
        return self.n > 0

    def clear(self) -> None:
        self.n = 0
        self.offset[:] = 0.0

    def load(self, t_obs: float, dt: float, actions: np.ndarray, now: float) -> None:
        """Replace the running chunk at time ``now``; actions: [n, dim] with 1 <= n <= max_len."""
        n = actions.shape[0]
        if not 1 <= n <= self.max_len or actions.shape[1] != self.dim or not dt > 0:
            raise ValueError(f"chunk of shape {actions.shape} with dt={dt}: expected [1..{self.max_len}, "
                             f"{self.dim}] and dt > 0")
        had = self.blend_s > 0 and self.sample(now, self._cur)
        self.values[:n] = actions
        self.n, self.dt = n, dt
        self.t_first = t_obs + dt if self.mode == "linear" else t_obs
        if had and np.isfinite(self._cur).all():
            self._raw(now, self.offset)
            np.subtract(self._cur, self.offset, out=self.offset)
            self.t_seam = now
        else:
            self.offset[:] = 0.0

    def _raw(self, now: float, out: np.ndarray) -> None:
        # a tick at a step boundary belongs to the step it starts, also when rounding puts u a hair
        # below the integer (simulated time in lockstep lands on the boundaries exactly)
        u = (now - self.t_first) / self.dt + 1e-9
        if u <= 0.0:
            out[:] = self.values[0]
            return
        i = int(u)
        if i >= self.n - 1:
            out[:] = self.values[self.n - 1]
            return
        if self.mode == "hold":
            out[:] = self.values[i]
            return
        w = u - i
        np.multiply(self.values[i], 1.0 - w, out=out)
        out += w * self.values[i + 1]  # small temporary: dim floats

    def end_time(self) -> float:
        """Time after which the chunk has run out."""
        return self.t_first + self.n * self.dt

    def sample(self, now: float, out: np.ndarray) -> bool:
        """Write the setpoint at ``now`` into out [dim]; False (out untouched) if there is none."""
        if self.n == 0 or now > self.end_time():
            return False
        self._raw(now, out)
        if self.blend_s > 0:
            k = 1.0 - smoothstep((now - self.t_seam) / self.blend_s)
            if k > 0.0:
                out += k * self.offset
        return True
