"""A short flood (a few seconds) of every bound socket of a running ``policystack daemon run``: the
daemon stays up and RUNNING, no pickle is ever run, each junk family is rejected for its own reason,
and memory, log and event history stay bounded -- never a line or a list entry per frame. Timing
(loop rate, missed deadlines with real-time scheduling on and off, 60 s) is the benchmark's:
``benchmarks/bench_flood.py`` (docs/benchmarks.md)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_flood import run_flood  # noqa: E402


def test_a_junk_flood_is_counted_not_logged_and_memory_stays_bounded(tmp_path):
    r = run_flood(tmp_path, baseline_s=1.0, flood_s=4.0)
    flood = r["flood"]
    assert r["alive"] and r["running_after"], r["state_at_end"]
    assert not r["pwned"]  # nothing was unpickled
    rejected = sum(flood["rejected"].values())
    assert rejected >= 1000, flood["rejected"]  # the flood reached the decoder
    assert {"short", "auth", "stale", "schema", "kind", "replay"} <= set(flood["rejected"]), flood["rejected"]
    assert r["final"]["rejected_total"] >= rejected
    # the log: the first rejection, then at most one summary per 10 s of the window (on a loaded machine the
    # flooders may take longer than asked), plus state changes if any -- never a line per frame
    log = (tmp_path / "daemon.log").read_text()
    summaries = 2 + int(flood["seconds"] // 10)
    assert log.count("rejected") <= summaries and flood["log_lines"] <= summaries + 8, log
    events = r["final"]["recent_events"]
    assert sum("rejected" in e for e in events) <= summaries, events
    assert flood["rss_growth"] < 5e6, flood
