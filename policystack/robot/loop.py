"""The control loop: its own process, a fixed rate (default 500 Hz), nothing allocated per tick.

Each tick: wait for the deadline (sleep until ``spin_s`` before it, then spin), read the driver,
take a new chunk from the command block if the supervisor wrote one, sample the interpolated
setpoint, pass it through the SafetyFilter, write the driver, publish the state block.

Set-up (``setup_realtime``): CPU pinning, SCHED_FIFO, ``mlockall``, each when permitted, with a
warning naming what was refused; the garbage collector is frozen and disabled (the loop keeps no
cyclic garbage). If the parent dies (``PR_SET_PDEATHSIG``) or SIGTERM arrives, the loop
decelerates to rest and exits.

Run as ``python -m policystack.robot.loop --config CFG.json --blocks PREFIX`` (the supervisor
does); ``--duration`` and ``--stats FILE.npz`` serve the benchmark.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from policystack.robot.config import RobotConfig
from policystack.robot.drivers import Driver, make_driver
from policystack.robot.interpolation import ChunkInterpolator
from policystack.robot.safety import EVENT_NAMES, SafetyFilter
from policystack.robot.shm import Block, command_fields, control_fields, state_fields

MAX_CHUNK = 256  # longest chunk the command block holds


def setup_realtime(priority: int, cpu: int) -> list[str]:
    """Pin, raise to SCHED_FIFO, lock memory, freeze the GC. Returns what was refused (and warns)."""
    refused = []
    if cpu >= 0:
        try:
            os.sched_setaffinity(0, {cpu})
        except (OSError, ValueError) as e:
            refused.append(f"CPU pinning to {cpu} ({e})")
    if priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except (PermissionError, OSError) as e:
            refused.append(f"SCHED_FIFO priority {priority} ({e}; grant CAP_SYS_NICE or an rtprio limit)")
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.mlockall(1 | 2) != 0:  # MCL_CURRENT | MCL_FUTURE
            refused.append(f"mlockall (errno {ctypes.get_errno()}; raise RLIMIT_MEMLOCK)")
    except OSError as e:
        refused.append(f"mlockall ({e})")
    gc.collect()
    gc.freeze()
    gc.disable()
    if refused:
        warnings.warn("control loop runs without real-time guarantees: refused " + "; ".join(refused),
                      RuntimeWarning, stacklevel=2)
    return refused


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ControlLoop:
    """One robot, one safety filter, one interpolator, three shared blocks."""

    def __init__(self, config: RobotConfig, driver: Driver, state: Block, command: Block, control: Block,
                 stats_len: int = 0):
        self.cfg, self.driver = config, driver
        self.state, self.command, self.control = state, command, control
        A = config.limits.dim
        if driver.dim != A:
            raise ValueError(f"driver {type(driver).__name__} has {driver.dim} command components; the robot "
                             f"config {config.name!r} has limits for {A}")
        self.safety = SafetyFilter(config.limits, config.period, config.watchdog_s)
        self.interp = ChunkInterpolator(A, MAX_CHUNK, config.blend_s, config.interpolation)
        self.q = np.zeros(A)
        self.extra = np.zeros(max(driver.extra_dim, 1))
        self.target = np.zeros(A)
        self.cmd_buf = command.buffers()
        self.ctl_buf = control.buffers()
        self.late = np.zeros(stats_len)  # per-tick wake-up lateness (s), for the benchmark
        self.body = np.zeros(stats_len)  # per-tick body time (s)
        self.prev_cmd = np.zeros(A)
        self._dq = np.zeros(A)
        self.max_dq = 0.0  # largest per-tick change of any command component outside resets
        self.ticks = 0
        self.misses = 0
        self.late_max = 0.0
        self._last_gen = 0.0
        self._last_ctl = -1
        self._hold_gen = 0.0
        self._reset_gen = 0.0
        self._run_to = 0.0  # lockstep: ticks the supervisor has granted (control block ``run_to``)
        self._stopping = False

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def _poll_control(self, now: float) -> bool:
        """Take the control block's changes; True if it held an episode reset."""
        seq = self.control.seq
        if seq == self._last_ctl:
            return False
        seq = self.control.try_read(self.ctl_buf)
        if seq < 0:
            return False  # the supervisor is mid-write: next tick
        self._last_ctl = seq
        c = self.ctl_buf
        if c["estop"][0]:
            self.safety.estop(now)
        else:
            self.safety.clear_estop()
        if c["stop"][0]:
            self._stopping = True
        if c["hold_gen"][0] != self._hold_gen:
            self._hold_gen = c["hold_gen"][0]
            self.interp.clear()
        self._run_to = c["run_to"][0]
        if c["reset_gen"][0] != self._reset_gen:
            self._reset_gen = c["reset_gen"][0]
            self.interp.clear()
            seed = c["reset_seed"][0]
            self.driver.reset(c["reset_extra"], int(seed) if seed >= 0 else None)
            self.driver.read(self.q, self.extra)
            self.safety.reset(self.q)
            self.prev_cmd[:] = self.safety.q
            return True
        return False

    def _poll_command(self, now: float) -> None:
        if self.command.f["gen"][0] == self._last_gen:
            return
        if self.command.try_read(self.cmd_buf) < 0:
            return  # the supervisor is mid-write: next tick
        b = self.cmd_buf
        self._last_gen = b["gen"][0]
        n = int(b["n"][0])
        if 1 <= n <= MAX_CHUNK and b["dt"][0] > 0:
            self.interp.load(b["t_obs"][0], b["dt"][0], b["actions"][:n], now)
            self.safety.command_received(now)

    def start(self) -> None:
        """At rest at the measured position (call before the first ``tick``; ``run`` does)."""
        self.driver.read(self.q, self.extra)
        self.safety.reset(self.q)
        self.prev_cmd[:] = self.safety.q

    def tick(self, now: float) -> None:
        self.driver.read(self.q, self.extra)
        self._poll_control(now)
        self._poll_command(now)
        have = self.interp.sample(now, self.target)
        cmd = self.safety.step(self.target if have else None, self.q, now)
        self.driver.write(cmd)
        np.subtract(cmd, self.prev_cmd, out=self._dq)
        np.abs(self._dq, out=self._dq)
        dq = self._dq.max()
        if dq > self.max_dq:
            self.max_dq = float(dq)
        self.prev_cmd[:] = cmd
        self._publish(now, self.ticks, have)

    def _publish(self, now: float, tick: int, have: bool) -> None:
        """The state block: measured ``q`` (read at the tick's start), the command written, events."""
        s, f = self.state, self.state.f
        s.begin()
        f["t"][0] = now
        f["tick"][0] = tick
        f["ready"][0] = 1.0
        f["q_meas"][:] = self.q
        f["q_cmd"][:] = self.prev_cmd
        f["target"][:] = self.target if have else np.nan
        f["faults"][0] = self.safety.faults
        f["active"][0] = self.safety.active
        f["counts"][:] = self.safety.counts
        f["misses"][0] = self.misses
        f["late_max"][0] = self.late_max
        f["max_dq"][0] = self.max_dq
        f["reset_ack"][0] = self._reset_gen
        f["chunk_ack"][0] = self._last_gen
        f["extra"][:] = self.extra
        s.end()

    def run(self, duration: float | None = None, spin_s: float | None = None) -> None:
        """Tick until stopped (or for ``duration`` s), then decelerate to rest before returning."""
        period = self.cfg.period
        spin = self.cfg.spin_s if spin_s is None else spin_s
        self._stopping = False
        self.safety.clear_estop()
        self._last_ctl = -1  # re-read the control block (an e-stop there latches again)
        self.start()
        clock, sleep = time.monotonic, time.sleep
        start = clock()
        deadline = start + period
        end = np.inf if duration is None else start + duration
        stop_at = np.inf
        n_stats = len(self.late)
        while True:
            rem = deadline - clock() - spin
            if rem > 0:
                sleep(rem)
            now = clock()
            while now < deadline:
                now = clock()
            late = now - deadline
            self.tick(deadline)
            done = clock()
            if self.ticks < n_stats:
                self.late[self.ticks] = late
                self.body[self.ticks] = done - now
            if late > self.late_max:
                self.late_max = late
            self.ticks += 1
            deadline += period
            if done > deadline:  # overran into the next period: count it, skip the lost ticks
                skipped = int((done - deadline) // period) + 1
                self.misses += skipped
                deadline += skipped * period
            if (self._stopping or deadline > end) and stop_at == np.inf:
                self.safety.estop(deadline)  # decelerate to rest, then leave
                stop_at = deadline + float(np.max(np.abs(self.safety.v) / self.safety.amax)) + 2 * period
            if deadline > stop_at:
                return


    def run_lockstep(self, idle_s: float = 0.0002) -> None:
        """Simulated time, for the simulator only: tick ``i`` runs at ``t = i * period`` and only while
        ``i`` is below the control block's ``run_to`` (the supervisor grants one policy step of ticks at
        a time, after the chunk for that step's observation is in the command block). After the last
        granted tick and after an episode reset the state block is published again with ``tick`` =
        ticks done and the state measured then, so the supervisor observes exactly the state the next
        tick starts from, as an env observes after ``step``. Returns on stop (nothing to decelerate)."""
        period = self.cfg.period
        self._stopping = False
        self.start()
        self.publish_measured(0.0)
        while not self._stopping:
            now = self.ticks * period
            if self._poll_control(now):
                self._publish(now, self.ticks, False)
            if self.ticks < self._run_to:
                self.tick(now)
                self.ticks += 1
                if self.ticks >= self._run_to:
                    self.publish_measured(self.ticks * period)
            else:
                time.sleep(idle_s)

    def publish_measured(self, now: float) -> None:
        """Read the driver now and publish it (``tick`` = ticks done), with the last command: between
        ticks, the state the next tick starts from (a tick publishes the state it started from)."""
        self.driver.read(self.q, self.extra)
        self._publish(now, self.ticks, False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m policystack.robot.loop", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="robot config as JSON (written by the supervisor)")
    p.add_argument("--blocks", required=True, help="path prefix of the shared blocks (.state/.command/.control)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--stats", default=None, help="write per-tick lateness and body time to this .npz")
    p.add_argument("--spin-s", type=float, default=None, help="override the config's spin_s (0 = plain sleep)")
    p.add_argument("--no-rt", action="store_true", help="do not ask for SCHED_FIFO / pinning / mlockall")
    p.add_argument("--lockstep", action="store_true",
                   help="simulated time: tick only as the supervisor grants (sim driver only; see run_lockstep)")
    args = p.parse_args(argv)
    cfg = RobotConfig.from_dict(json.loads(Path(args.config).read_text()), where=args.config)
    _die_with_parent()
    driver = make_driver(cfg.driver, cfg.driver_options, cfg.rate_hz, cfg.policy_hz)
    driver.connect()
    info = Path(args.blocks + ".info.json")  # what the supervisor cannot know before the driver is up
    tmp = info.with_suffix(".tmp")
    tmp.write_text(json.dumps({"names": driver.names, "extra_dim": driver.extra_dim}))
    os.replace(tmp, info)
    state = Block(args.blocks + ".state", state_fields(cfg.limits.dim, driver.extra_dim))
    command = Block(args.blocks + ".command", command_fields(cfg.limits.dim, MAX_CHUNK))
    control = Block(args.blocks + ".control", control_fields(driver.extra_dim))
    stats_len = int(cfg.rate_hz * (args.duration + 1)) if (args.stats and args.duration) else 0
    loop = ControlLoop(cfg, driver, state, command, control, stats_len=stats_len)
    signal.signal(signal.SIGTERM, loop.request_stop)
    signal.signal(signal.SIGINT, loop.request_stop)
    if args.lockstep and cfg.driver != "sim":
        raise SystemExit(f"--lockstep: the {cfg.driver!r} driver runs in real time; only the sim can step on demand")
    rt = not (args.no_rt or args.lockstep)
    refused = setup_realtime(cfg.rt_priority if rt else 0, cfg.cpu if rt else -1)
    print(json.dumps({"loop": "started", "pid": os.getpid(), "rt_refused": refused}), flush=True)
    try:
        if args.lockstep:
            loop.run_lockstep()
        else:
            loop.run(duration=args.duration, spin_s=args.spin_s)
    finally:
        driver.close()
        gc.enable()
    n = min(loop.ticks, stats_len)
    if args.stats:
        np.savez(args.stats, late=loop.late[:n], body=loop.body[:n], misses=loop.misses, ticks=loop.ticks,
                 rt_refused=np.array(refused, dtype=str))
    counts = {k: int(v) for k, v in zip(EVENT_NAMES, loop.safety.counts)}
    print(json.dumps({"loop": "stopped", "ticks": loop.ticks, "misses": loop.misses,
                      "late_max_us": round(loop.late_max * 1e6, 1), "event_ticks": counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
