"""SafetyFilter: every command the loop writes to a driver passes through here.

Pure numpy, buffers preallocated in ``__init__``; ``step`` allocates nothing but numpy scalars.
Per tick, for a target x [A] (A = 7 joints + gripper) and the measured positions q_meas [A]:

1. faults (any -> HOLD: decelerate from the current command velocity to rest at the acceleration
   limit, starting this tick; the command never jumps):
   - ``NAN``: the target has NaN/inf (latched until the next fresh chunk),
   - ``STALE``: no fresh command for ``watchdog_s`` or no target at all (chunk ran out),
   - ``ESTOP``: software e-stop (latched until ``clear_estop``),
   - ``WORKSPACE``: the tool point of the (clamped) target lies outside the workspace box,
   - ``TRACKING``: a measured joint is farther than ``max_tracking_error`` from the command, or
     the measurement is NaN/inf (latched until the next fresh chunk);
2. clamps (recorded, not faults): joint position box, then a velocity profile that can always
   stop in time (discrete braking, ``v^2 / 2a + v dt / 2 <= |e|``), the velocity limit, the per-tick ``max_step`` and the
   acceleration limit (the one tick that lands exactly on a target may take out a remaining
   speed below ``a * dt``).

Every rising edge of a fault or clamp is appended to a ring of events ``(t, code, value)``;
``counts[code]`` counts ticks each one was active.
"""

from __future__ import annotations

import numpy as np

from policystack.robot.config import Limits
from policystack.robot.kinematics import PandaFK

# event codes (bit i of the fault / clamp masks)
NAN, STALE, ESTOP, WORKSPACE, TRACKING = 0, 1, 2, 3, 4
JOINT_LIMIT, VELOCITY, ACCELERATION, MAX_STEP = 5, 6, 7, 8
EVENT_NAMES = ("nan", "stale", "estop", "workspace", "tracking",
               "joint_limit", "velocity", "acceleration", "max_step")
N_EVENTS = len(EVENT_NAMES)
FAULTS = (NAN, STALE, ESTOP, WORKSPACE, TRACKING)
_LATCHED = (1 << NAN) | (1 << TRACKING)
EVENT_DTYPE = np.dtype([("t", "f8"), ("code", "i8"), ("value", "f8")])


class SafetyFilter:
    """Turns targets into safe commands. ``dt``: control period (s)."""

    def __init__(self, limits: Limits, dt: float, watchdog_s: float, ring: int = 1024):
        self.limits = limits
        self.dt = float(dt)
        self.watchdog_s = float(watchdog_s)
        A = limits.dim
        self.low = np.array(limits.joint_low)
        self.high = np.array(limits.joint_high)
        self.vmax = np.minimum(np.array(limits.velocity), limits.max_step / self.dt)
        self.amax = np.array(limits.acceleration)
        self.track_tol = np.array(limits.max_tracking_error)
        self.ws_low = np.array(limits.workspace_low)
        self.ws_high = np.array(limits.workspace_high)
        self.fk = PandaFK(limits.tool_offset) if limits.tool_offset is not None else None
        self.q = np.zeros(A)  # current command
        self.v = np.zeros(A)  # current command velocity
        self.x = np.zeros(A)  # clamped target
        self._e = np.zeros(A)
        self._s = np.zeros(A)
        self._t = np.zeros(A)
        self._vd = np.zeros(A)
        self._lo = np.zeros(A)
        self._hi = np.zeros(A)
        self._land = np.zeros(A, dtype=bool)
        self._moving = np.zeros(A, dtype=bool)
        self.events = np.zeros(ring, dtype=EVENT_DTYPE)
        self.n_events = 0  # total appended; the ring holds the last len(events)
        self.counts = np.zeros(N_EVENTS, dtype=np.int64)
        self.active = 0  # bit mask of faults and clamps active at the last tick
        self.faults = 0  # bit mask of faults active at the last tick
        self._latched = 0
        self._estop = False
        self.last_fresh = -np.inf

    # --- inputs besides the target ---------------------------------------------------------------
    def reset(self, q_meas: np.ndarray) -> None:
        """Start (or re-start after a sim reset) at rest at the measured position."""
        np.clip(q_meas, self.low, self.high, out=self.q)
        self.v[:] = 0.0
        self._latched = 0

    def command_received(self, now: float) -> None:
        """A fresh, valid chunk arrived: feeds the watchdog and clears latched faults."""
        self.last_fresh = now
        self._latched = 0

    def estop(self, now: float) -> None:
        """Latch the software e-stop (recorded as an event by the next ``step``)."""
        self._estop = True

    def clear_estop(self) -> None:
        self._estop = False

    @property
    def holding(self) -> bool:
        return self.faults != 0

    # --- the tick ------------------------------------------------------------------------------
    def step(self, target: np.ndarray | None, q_meas: np.ndarray, now: float) -> np.ndarray:
        """target: [A] or None (nothing to track); q_meas: [A] -> command [A] (internal buffer)."""
        active = 0
        if self._estop:
            active |= 1 << ESTOP
        if target is None or now - self.last_fresh > self.watchdog_s:
            active |= 1 << STALE
        if not np.isfinite(q_meas).all():
            self._latched |= 1 << TRACKING
        else:
            np.subtract(q_meas, self.q, out=self._e)
            np.abs(self._e, out=self._e)
            if (self._e > self.track_tol).any():
                self._latched |= 1 << TRACKING
        if target is not None and not (active & (1 << STALE)):
            if not np.isfinite(target).all():
                self._latched |= 1 << NAN
            else:
                np.clip(target, self.low, self.high, out=self.x)
                if not np.array_equal(self.x, target):
                    active |= 1 << JOINT_LIMIT
                if self.fk is not None:
                    p = self.fk.position(self.x)
                    if (p < self.ws_low).any() or (p > self.ws_high).any():
                        active |= 1 << WORKSPACE
        active |= self._latched
        fault = active & ((1 << NAN) | (1 << STALE) | (1 << ESTOP) | (1 << WORKSPACE) | (1 << TRACKING))
        if fault:
            self._hold()
        else:
            active |= self._track()
        self._account(active, now)
        self.faults = fault
        return self.q

    def _hold(self) -> None:
        """Decelerate towards rest at the acceleration limit, then stay."""
        dv = self._t
        np.multiply(self.amax, self.dt, out=dv)
        np.clip(0.0, self.v - dv, self.v + dv, out=self.v)  # v moves towards 0 by at most a*dt
        self._integrate()

    def _track(self) -> int:
        """Move towards self.x under the velocity / stopping-distance / step / acceleration limits."""
        active = 0
        e, s, vd, dt = self._e, self._s, self._vd, self.dt
        np.subtract(self.x, self.q, out=e)
        np.abs(e, out=s)
        np.divide(s, dt, out=vd)  # speed that reaches the target this tick
        # speed from which discrete braking (v, v - a dt, ...) still stops at the target:
        # v^2 / 2a + v dt / 2 = |e|  ->  v = sqrt((a dt / 2)^2 + 2 a |e|) - a dt / 2
        np.multiply(self.amax, 0.5 * dt, out=self._lo)
        np.multiply(s, 2.0, out=self._t)
        np.multiply(self._t, self.amax, out=self._t)
        np.add(self._t, self._lo * self._lo, out=self._t)
        np.sqrt(self._t, out=self._t)
        np.subtract(self._t, self._lo, out=self._t)
        np.minimum(self._t, self.vmax, out=self._t)
        if (vd > self._t + 1e-12).any() and (vd > self.vmax).any():
            active |= 1 << VELOCITY
        np.minimum(vd, self._t, out=vd)
        np.copysign(vd, e, out=vd)
        np.multiply(self.amax, dt, out=self._t)
        np.subtract(self.v, self._t, out=self._lo)
        np.add(self.v, self._t, out=self._hi)
        if (vd < self._lo).any() or (vd > self._hi).any():
            active |= 1 << ACCELERATION
        np.clip(vd, self._lo, self._hi, out=self.v)
        # never pass the target: the landing tick (one that reaches or would pass it) stops exactly on
        # it -- q = x to the bit, not q + (x - q) / dt * dt
        land = self._land
        np.multiply(self.v, dt, out=self._t)
        np.subtract(self._t, e, out=self._t)
        np.multiply(self._t, e, out=self._t)
        np.greater_equal(self._t, 0.0, out=land)
        np.not_equal(e, 0.0, out=self._moving)
        np.logical_and(land, self._moving, out=land)
        landing = land.any()
        if landing:
            np.divide(e, dt, out=self.v, where=land)
        self._integrate()
        if landing:
            np.copyto(self.q, self.x, where=land)
        return active

    def _integrate(self) -> None:
        np.multiply(self.v, self.dt, out=self._t)
        np.add(self.q, self._t, out=self._t)
        np.clip(self._t, self.low, self.high, out=self.q)
        # a clipped component stops (can only happen while decelerating to hold near a limit)
        np.not_equal(self.q, self._t, out=self._s, casting="unsafe")
        if self._s.any():
            self.v[self._s != 0] = 0.0

    def _account(self, active: int, now: float) -> None:
        rising = active & ~self.active
        for code in range(N_EVENTS):
            bit = 1 << code
            if active & bit:
                self.counts[code] += 1
                if rising & bit:
                    self._record(now, code, 0.0)
        self.active = active

    def _record(self, now: float, code: int, value: float) -> None:
        ev = self.events[self.n_events % len(self.events)]
        ev["t"], ev["code"], ev["value"] = now, code, value
        self.n_events += 1

    def recent_events(self) -> list[tuple[float, str]]:
        """(t, name) of the events still in the ring, oldest first (allocates: not for the loop)."""
        n = min(self.n_events, len(self.events))
        idx = [(self.n_events - n + i) % len(self.events) for i in range(n)]
        return [(float(self.events[i]["t"]), EVENT_NAMES[int(self.events[i]["code"])]) for i in idx]
