"""The supervisor's two child processes and the shared blocks it talks to the control loop through.

- ``LoopProcess``: the control loop (``python -m policystack.robot.loop``) and its three shared
  blocks (state: written by the loop every tick; command: a chunk per write; control: hold / reset /
  e-stop / stop). The supervisor's verbs on the loop (hold, reset, write a chunk, stop) live here;
  what they mean is the loop's (``loop.py``).
- ``WorkerProcess``: a local policy worker (``python -m policystack.robot.worker``), started with the
  token (and CurveZMQ keys) in its environment, never on its command line.
- ``SideProcess``: a helper beside the daemon that the run does not depend on (the speech announcer,
  the success detector): it dies with the daemon, and if it dies first the daemon logs one line and
  goes on without it.

Both children die with the supervisor (``PR_SET_PDEATHSIG``); the blocks of a daemon killed with
SIGKILL are removed by the next one (``remove_orphaned_blocks``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from policystack.robot.config import TOKEN_ENV, RobotConfig
from policystack.robot.loop import MAX_CHUNK
from policystack.robot.shm import Block, command_fields, control_fields, shm_dir, state_fields


class DaemonError(RuntimeError):
    pass


def child_env(token: bytes, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: ours, the token, this checkout on PYTHONPATH, ``extra``."""
    env = dict(os.environ)
    env[TOKEN_ENV] = token.decode()
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def remove_orphaned_blocks() -> None:
    """Delete the shared blocks of daemons that died without cleaning up (kill -9)."""
    for d in shm_dir().glob("policystack-daemon-*"):
        try:
            pid = int((d / "owner.pid").read_text())
            os.kill(pid, 0)
            continue  # its daemon is alive
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # not ours to judge (unreadable, another user's, being created)
        for p in d.glob("*"):
            p.unlink(missing_ok=True)
        d.rmdir()


class LoopProcess:
    """The control-loop process of one daemon, and the blocks shared with it."""

    def __init__(self, robot: RobotConfig):
        self.robot = robot
        remove_orphaned_blocks()
        self.dir = Path(tempfile.mkdtemp(prefix="policystack-daemon-", dir=shm_dir()))
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        self.prefix = str(self.dir / "blocks")
        self.proc: subprocess.Popen | None = None
        self.state: Block | None = None
        self.command: Block | None = None
        self.control: Block | None = None

    def start(self, driver_options: dict[str, Any], extra_dim: int, token: bytes, no_rt: bool,
              timeout_s: float, lockstep: bool = False) -> None:
        """Create the blocks, start the loop, return once it published its first state. ``lockstep``: the
        loop runs on simulated time, as far as ``grant`` lets it (``ControlLoop.run_lockstep``)."""
        A = self.robot.limits.dim
        self.state = Block.create(self.prefix + ".state", state_fields(A, extra_dim))
        self.command = Block.create(self.prefix + ".command", command_fields(A, MAX_CHUNK))
        self.control = Block.create(self.prefix + ".control", control_fields(extra_dim))
        robot = self.robot.to_dict()
        robot["driver_options"] = driver_options
        cfg_path = self.dir / "robot.json"
        cfg_path.write_text(json.dumps(robot))
        cmd = [sys.executable, "-m", "policystack.robot.loop", "--config", str(cfg_path), "--blocks", self.prefix]
        if no_rt:
            cmd.append("--no-rt")
        if lockstep:
            cmd.append("--lockstep")
        self.proc = subprocess.Popen(cmd, env=child_env(token))
        deadline = time.monotonic() + timeout_s
        while self.state.f["ready"][0] != 1.0:
            if self.proc.poll() is not None:
                raise DaemonError(f"control loop exited with code {self.proc.returncode} before ready")
            if time.monotonic() > deadline:
                raise DaemonError(f"control loop not ready after {timeout_s} s")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else -1

    @property
    def info_path(self) -> str:
        """What the loop's driver reported at start (``scene.read_loop_info`` reads it)."""
        return self.prefix + ".info.json"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise DaemonError if the loop process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise DaemonError(f"control loop process exited (code {self.proc.returncode})")

    # --- verbs ---------------------------------------------------------------------------------------
    def control_write(self, **fields: float | np.ndarray) -> None:
        b = self.control
        b.begin()
        for k, v in fields.items():
            b.f[k][...] = v
        b.end()

    def hold(self) -> None:
        """The loop drops its chunk; the safety filter decelerates to rest and holds."""
        self.control_write(hold_gen=self.control.f["hold_gen"][0] + 1)

    def reset(self, extra: np.ndarray, seed: int, timeout_s: float = 30.0) -> None:
        """Lay out episode ``seed`` in the loop's sim and teleport it to ``extra``; wait for the ack."""
        gen = self.control.f["reset_gen"][0] + 1
        self.control_write(reset_gen=gen, reset_seed=seed, reset_extra=extra)
        deadline = time.monotonic() + timeout_s
        while self.state.f["reset_ack"][0] != gen:
            self.check()
            if time.monotonic() > deadline:
                raise DaemonError(f"the control loop did not acknowledge the episode reset within {timeout_s:g} s")
            time.sleep(0.002)

    def write_chunk(self, actions: np.ndarray, t_obs: float, dt: float) -> None:
        """Hand ``actions`` [n, A] (action i for policy step i from ``t_obs``) to the loop."""
        blk = self.command
        n = actions.shape[0]
        blk.begin()
        blk.f["t_obs"][0] = t_obs
        blk.f["dt"][0] = dt
        blk.f["n"][0] = n
        blk.f["actions"][:n] = actions
        blk.f["gen"][0] += 1
        blk.end()

    def ticks_done(self) -> int:
        """Lockstep: the ticks the loop has run (its state is published at that point)."""
        return int(self.state.f["tick"][0])

    def grant(self, ticks: int, timeout_s: float = 10.0) -> None:
        """Lockstep: let the loop run ``ticks`` more ticks of simulated time; return once it has and has
        published the state they lead to."""
        target = self.ticks_done() + ticks
        self.control_write(run_to=target)
        deadline = time.monotonic() + timeout_s
        while self.ticks_done() != target:
            self.check()
            if time.monotonic() > deadline:
                raise DaemonError(f"the control loop did not run its {ticks} granted ticks within {timeout_s} s")
            time.sleep(0.0002)

    def stop(self, timeout_s: float = 10.0) -> dict[str, np.ndarray]:
        """Stop the loop (it decelerates to rest first); returns its last published state."""
        final = self.state.snapshot() if self.state is not None else {}
        if self.proc is not None and self.proc.poll() is None:
            self.control_write(stop=1.0)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        return final

    def remove_blocks(self) -> None:
        for p in self.dir.glob("*"):
            p.unlink()
        self.dir.rmdir()


class WorkerProcess:
    """A local policy worker process."""

    def __init__(self, cmd: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(cmd, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL and reap (a stopped or deadlocked process ignores SIGTERM)."""
        self.proc.kill()
        self.proc.wait()

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()


def side_process_start(conn: dict[str, str]) -> None:
    """First steps of a side process's ``main`` once its arguments are read: the CurveZMQ keys the daemon
    passed in the environment are dropped from it (they were read), and with ``exit_with_parent=true`` in
    ``conn`` the process dies with the daemon."""
    from policystack.robot.curve import CLIENT_SECRET_ENV, SERVER_PUBLIC_ENV

    for name in (SERVER_PUBLIC_ENV, CLIENT_SECRET_ENV):
        os.environ.pop(name, None)
    if conn.get("exit_with_parent", "").lower() in ("1", "true", "yes"):
        from policystack.robot.loop import _die_with_parent

        _die_with_parent()


def yield_cpu(nice: int, avoid_cpu: int) -> None:
    """Run at niceness ``nice`` and never on CPU ``avoid_cpu`` (the control loop's; -1: none). Best effort."""
    try:
        os.nice(nice)
        others = os.sched_getaffinity(0) - {avoid_cpu}
        if others:  # (a one-CPU machine has no other)
            os.sched_setaffinity(0, others)
    except OSError:
        pass


class SideProcess:
    """``python -m module exit_with_parent=true args...`` beside the daemon, e.g. the speech announcer
    (``interaction/announcer.py``) or the success detector (``perception/watcher.py``): the token (and,
    with CurveZMQ on, a key pair of its own, admitted like a local worker's) in its environment, its
    output on the daemon's stderr (the daemon's stdout is its JSON). It never touches the control loop.
    If it exits on its own with a code not in ``quiet_codes`` (those mean it has said why itself), one
    line goes to ``log`` ("... died ...; the daemon goes on without <feature>") and the daemon goes on."""

    def __init__(self, what: str, feature: str, module: str, args: list[str], token: bytes,
                 log: Callable[[str], None], quiet_codes: Iterable[int] = (0,), server_curve=None, allow_list=None):
        from policystack.robot.curve import CLIENT_SECRET_ENV, SERVER_PUBLIC_ENV, KeyPair

        self.what, self.feature, self.log, self.quiet_codes = what, feature, log, tuple(quiet_codes)
        extra = {}
        if server_curve is not None:
            keys = KeyPair.generate()
            if allow_list is not None:
                allow_list.add(keys.public)
            extra = {SERVER_PUBLIC_ENV: server_curve.keys.public.decode(), CLIENT_SECRET_ENV: keys.secret.decode()}
        self._stopping = False
        self.proc = subprocess.Popen([sys.executable, "-m", module, "exit_with_parent=true", *args],
                                     env=child_env(token, extra), stdout=2)
        self._watch = threading.Thread(target=self._watcher, name=f"{feature}-watch", daemon=True)
        self._watch.start()

    def _watcher(self) -> None:
        code = self.proc.wait()
        if self._stopping or code in self.quiet_codes:
            return
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        self.log(f"{self.what} (pid {self.proc.pid}) died ({how}); the daemon goes on without {self.feature}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (it may finish what it is doing, e.g. say what is queued), then end it; its exit code."""
        self._stopping = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
