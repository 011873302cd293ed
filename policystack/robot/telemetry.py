"""What ``policystack daemon status`` prints: the supervisor's status document, published as a
signed ``telemetry`` message at most every ``period_s`` (5 Hz).

Document keys: ``state``, ``episode``, ``step``, ``episodes_done``, ``successes`` (null on a robot
without a success check), ``loop`` (alive, tick, misses, late_max_us, active faults, per-event tick
counts, q_cmd), ``worker`` (alive, restarts, the running episode's ``obs_missed`` and
``replans_skipped``, and its hello: policy, horizon, shapes), ``latency_ms`` (observation -> chunk in
the loop's command block, p50 / p99 of the last 200), ``rejected`` (rejected frames by reason) and
``rejected_total``, ``recent_events`` (the last 10), ``curve`` (on, allow_list, denied_handshakes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from policystack.robot.safety import EVENT_NAMES, FAULTS


def loop_status(state: dict[str, np.ndarray], alive: bool) -> dict[str, Any]:
    """The ``loop`` entry from the loop's state block (``shm.state_fields``)."""
    faults = int(state["faults"][0])
    return {"alive": alive, "tick": int(state["tick"][0]), "misses": int(state["misses"][0]),
            "late_max_us": round(float(state["late_max"][0]) * 1e6, 1),
            "faults": [EVENT_NAMES[c] for c in FAULTS if faults & (1 << c)],
            "event_ticks": {n: int(c) for n, c in zip(EVENT_NAMES, state["counts"])},
            "q_cmd": [round(float(x), 4) for x in state["q_cmd"]]}


def latency_status(latencies_s: list[float] | Any) -> dict[str, float | None]:
    """p50 / p99 (ms) of the last 200 observation -> chunk latencies (s)."""
    lat = np.array(list(latencies_s)[-200:]) * 1e3
    return {"p50": float(np.percentile(lat, 50)) if lat.size else None,
            "p99": float(np.percentile(lat, 99)) if lat.size else None}


class TelemetryPublisher:
    """Publishes ``build()``'s document through ``send`` (a JSON string), at most every ``period_s``."""

    def __init__(self, build: Callable[[], dict[str, Any]], send: Callable[[str], None], period_s: float = 0.2):
        self.build, self.send, self.period_s = build, send, period_s
        self._last = 0.0

    def __call__(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.period_s:
            return
        self._last = now
        self.send(json.dumps(self.build()))
