"""The supervisor: starts, watches and stops the control loop and the policy worker, runs
episodes, relays chunks, records, and publishes telemetry.

States::

    IDLE --start episode--> RUNNING --episode end / worker lost / loop fault--> HOLD
    HOLD --next episode--> RUNNING          any --stop / loop died / done--> STOPPED
    IDLE / HOLD --real robot: homing move--> HOMING --home reached--> HOLD (--> RUNNING)

- IDLE / HOLD: the loop holds position (the supervisor bumps ``hold_gen``: the loop drops its
  chunk and the safety filter decelerates to rest).
- Episode set-up is the scene's (``scene.py``): the sim lays out the episode and teleports the
  loop's sim; a real robot is driven home through the safety filter (HOMING; not home within
  ``home_timeout_s``: hold, the run ends with an error), after a ``reset_wait_s`` pause between episodes.
- RUNNING: at the policy rate the supervisor reads the loop's state, builds the observation
  (sim: renders the cameras from the loop's qpos; real robot: measured joints + LeRobot camera
  frames; a sensor fault ends the episode, ``sensor_fault``), records the frame, publishes the observation
  to the worker every ``replan_every`` ticks, and forwards every valid chunk (signed, fresh,
  right episode and shape) into the loop's command block. Rejected messages are counted by
  reason and published; nothing on the socket can reach the loop unchecked.
- Worker died, or (local worker) answered no observation for ``stall_timeout_s``: HOLD, the
  episode ends (failure, recorded), a stalled worker is killed (SIGKILL), the worker is
  restarted (at most ``max_restarts`` times) and the next episode starts once it says hello.
- Loop process died: STOPPED, the worker is stopped, the daemon exits with an error.

- A policy that says the episode is over (a chunk's ``done_step`` >= 0: RT-2's terminate token) ends
  it once the chunk's actions up to that step have had their ticks (``policy_done``); a later chunk
  replaces the plan, and with it the decision. The success check of the sim comes first.
- Operator commands (signed ``command`` messages on the chunk socket: ``policystack daemon stop`` /
  ``end-episode``): stop ends the episode (``stopped``) and the run; end-episode ends the running
  episode (``operator``) and the next one starts. SIGTERM is a stop.

Telemetry (signed ``telemetry`` messages on a PUB socket, 5 Hz) is what ``policystack daemon
status`` prints.
"""

from __future__ import annotations

import enum
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policystack.robot.config import TOKEN_ENV, RobotConfig
from policystack.robot.curve import (
    CLIENT_SECRET_ENV,
    SERVER_PUBLIC_ENV,
    AllowList,
    KeyPair,
    ServerCurve,
    curve_server,
)
from policystack.robot.loop import MAX_CHUNK
from policystack.robot.safety import EVENT_NAMES, FAULTS
from policystack.robot.scene import Scene, SensorFault, make_scene, read_loop_info
from policystack.robot.shm import Block, command_fields, control_fields, shm_dir, state_fields
from policystack.robot.transport import Decoder, Encoder, configure_socket
from policystack.types import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE

NO_ENV_STATE = np.zeros(0, np.float32)  # what the obs message carries when the robot has no env state


class State(enum.Enum):
    IDLE = "IDLE"
    RUNNING = "RUNNING"
    HOMING = "HOMING"
    HOLD = "HOLD"
    STOPPED = "STOPPED"


@dataclass
class DaemonConfig:
    robot: RobotConfig
    token: bytes
    checkpoint: str | None = None  # None: a remote worker connects on its own
    task: str = "Reach"  # sim: the suite task (scene, instructions, success); real robot: the instruction
    instruction: str | None = None  # overrides the scene's instruction
    episodes: int = 1
    max_steps: int | None = None  # per episode; default: the task's max_episode_steps (real: episode_s)
    seed: int = 0
    record: str | None = None
    host: str = "127.0.0.1"
    port: int = 5555  # observations at port, chunks at port + 1, telemetry at port + 2; 0 = any free
    cameras: tuple[str, ...] = ("front",)
    image_size: int = 96
    env_state: bool = False  # sim: observations carry observation.environment_state (privileged)
    replan_every: int | None = None  # policy ticks between observations sent; default n_action_steps
    worker_imports: tuple[str, ...] = ()
    worker_threads: int = 1
    max_restarts: int = 2
    # a local worker that is alive but has answered no observation for this long is killed and
    # restarted (the loop already holds after watchdog_s); None: the robot's watchdog_s
    stall_timeout_s: float | None = None
    hello_timeout_s: float = 120.0
    no_rt: bool = False
    log: Any = field(default=None, repr=False)  # callable(str); default prints to stderr


@dataclass
class EpisodeResult:
    index: int
    success: bool
    steps: int
    # "success", "timeout", "policy_done", "worker_lost", "worker_stalled", "stopped", "operator", "sensor_fault"
    reason: str
    dataset_episode: int | None = None


class DaemonError(RuntimeError):
    pass


def _remove_orphaned_blocks() -> None:
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


class Supervisor:
    def __init__(self, cfg: DaemonConfig):
        import zmq

        self.cfg = cfg
        self.log = cfg.log or (lambda s: print(f"[daemon] {s}", file=sys.stderr, flush=True))
        self.state = State.IDLE
        self.results: list[EpisodeResult] = []
        self.latencies: list[float] = []  # observation -> chunk in the loop's command block (s)
        self.events: list[str] = []
        self.restarts = 0
        self.worker_info: dict[str, Any] = {}
        self._stop = False
        self._end_episode = False  # an operator's end-episode command, for the running episode
        self.scene: Scene | None = None
        self._early_hello = None  # a hello that arrived while the loop was starting
        tc = cfg.robot.transport
        # keys first: a missing or malformed key file fails here, before any socket exists
        self.curve = ServerCurve.load(tc.curve_server_secret, tc.curve_allowed_clients) \
            if tc.curve_server_secret else None
        self._worker_keys: KeyPair | None = None  # the local worker's ephemeral curve keys
        self._ctx = zmq.Context()
        # the ZAP handler runs before the first bind, so no client slips in ahead of it
        self.allow_list = AllowList(self._ctx, self.curve.allowed) \
            if self.curve is not None and self.curve.allowed is not None else None
        self.enc = Encoder(cfg.token, sender="daemon-" + os.urandom(6).hex(), max_bytes=tc.max_message_bytes)
        self.dec = Decoder(cfg.token, max_bytes=tc.max_message_bytes, window_s=tc.window_s,
                           kinds=("chunk", "hello", "command"))
        self.pub = self._ctx.socket(zmq.PUB)
        self.pull = self._ctx.socket(zmq.PULL)
        self.tele = self._ctx.socket(zmq.PUB)
        for s in (self.pub, self.pull, self.tele):
            configure_socket(s, tc.max_message_bytes)
            if self.curve is not None:
                curve_server(s, self.curve.keys)
        self.pub.setsockopt(zmq.SNDHWM, 2)
        try:
            self.addrs = self._bind(cfg.host, cfg.port)
        except zmq.ZMQError as e:  # close what was opened (sockets, the ZAP thread) before saying why
            for s in (self.pub, self.pull, self.tele):
                s.close(0)
            if self.allow_list is not None:
                self.allow_list.stop()
            self._ctx.term()
            ports = f"{cfg.port}-{cfg.port + 2}" if cfg.port else "random ports"
            raise DaemonError(f"cannot bind the daemon's sockets on {cfg.host} ({ports}): {e}; another daemon "
                              "may be running there -- stop it or pass another port=") from None
        self.loop_proc: subprocess.Popen | None = None
        self.worker_proc: subprocess.Popen | None = None
        _remove_orphaned_blocks()
        self._dir = Path(tempfile.mkdtemp(prefix="policystack-daemon-", dir=shm_dir()))
        (self._dir / "owner.pid").write_text(str(os.getpid()))
        self._last_tele = 0.0
        self.step = 0
        self.episode = -1
        self.final_loop_state: dict[str, np.ndarray] = {}

    def _bind(self, host: str, port: int) -> dict[str, str]:
        base = f"tcp://{host}"
        if port:
            self.pub.bind(f"{base}:{port}")
            self.pull.bind(f"{base}:{port + 1}")
            self.tele.bind(f"{base}:{port + 2}")
            return {"obs": f"{base}:{port}", "chunks": f"{base}:{port + 1}", "telemetry": f"{base}:{port + 2}"}
        out = {}
        for name, s in (("obs", self.pub), ("chunks", self.pull), ("telemetry", self.tele)):
            out[name] = f"{base}:{s.bind_to_random_port(base)}"
        return out

    # --- processes ---------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env[TOKEN_ENV] = self.cfg.token.decode()
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def start_loop(self, timeout_s: float = 60.0) -> None:
        r = self.cfg.robot
        try:
            self.scene = make_scene(r, self.cfg.task, self.cfg.cameras, self.cfg.image_size, self.cfg.env_state)
        except SensorFault as e:
            raise DaemonError(str(e)) from None
        nx = self.scene.extra_dim
        A = r.limits.dim
        prefix = str(self._dir / "blocks")
        self.state_blk = Block.create(prefix + ".state", state_fields(A, nx))
        self.cmd_blk = Block.create(prefix + ".command", command_fields(A, MAX_CHUNK))
        self.ctl_blk = Block.create(prefix + ".control", control_fields(nx))
        robot = r.to_dict()
        robot["driver_options"] = self.scene.driver_options(dict(robot["driver_options"]))
        cfg_path = self._dir / "robot.json"
        cfg_path.write_text(json.dumps(robot))
        cmd = [sys.executable, "-m", "policystack.robot.loop", "--config", str(cfg_path), "--blocks", prefix]
        if self.cfg.no_rt:
            cmd.append("--no-rt")
        self.loop_proc = subprocess.Popen(cmd, env=self._env())
        self.log(f"control loop started (pid {self.loop_proc.pid}, {r.rate_hz:g} Hz)")
        deadline = time.monotonic() + timeout_s
        while self.state_blk.f["ready"][0] != 1.0:
            if self.loop_proc.poll() is not None:
                raise DaemonError(f"control loop exited with code {self.loop_proc.returncode} before ready")
            if time.monotonic() > deadline:
                raise DaemonError(f"control loop not ready after {timeout_s} s")
            msg = self._recv(10)  # keep the worker's hellos from going stale in the queue meanwhile
            if msg is not None and msg.kind == "hello":
                self._early_hello = msg
        self.scene.attach(read_loop_info(prefix + ".info.json"))
        self._hold("startup")

    def start_worker(self) -> None:
        if self.cfg.checkpoint is None:
            self.log(f"waiting for a remote worker: --connect {self.addrs['obs']}")
            return
        env = self._env()
        if self.curve is not None:  # a fresh client key pair per worker start, through its environment
            if self.allow_list is not None and self._worker_keys is not None:
                self.allow_list.discard(self._worker_keys.public)
            self._worker_keys = KeyPair.generate()
            if self.allow_list is not None:
                self.allow_list.add(self._worker_keys.public)
            env[SERVER_PUBLIC_ENV] = self.curve.keys.public.decode()
            env[CLIENT_SECRET_ENV] = self._worker_keys.secret.decode()
        cmd = [sys.executable, "-m", "policystack.robot.worker", "--checkpoint", str(self.cfg.checkpoint),
               "--obs", self.addrs["obs"], "--chunks", self.addrs["chunks"],
               "--threads", str(self.cfg.worker_threads), "--exit-with-parent",
               "--max-bytes", str(self.cfg.robot.transport.max_message_bytes)]
        for m in self.cfg.worker_imports:
            cmd += ["--import", m]
        self.worker_proc = subprocess.Popen(cmd, env=env)
        self.log(f"policy worker started (pid {self.worker_proc.pid})")

    def wait_hello(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop:
            msg, self._early_hello = (self._early_hello or self._recv(100)), None
            if msg is not None and msg.kind == "hello":
                if msg.body["error"]:
                    raise DaemonError(f"policy worker failed to load the checkpoint: {msg.body['error']}")
                self.worker_info = {k: v for k, v in msg.body.items() if k != "images"}
                self.worker_info["images"] = {c: [int(x) for x in v] for c, v in msg.body["images"].items()}
                self.worker_sender = msg.sender
                self.log(f"worker ready: policy {msg.body['policy']}, horizon {msg.body['horizon']}, "
                         f"n_action_steps {msg.body['n_action_steps']}")
                if msg.body["action_dim"] != self.cfg.robot.limits.dim:
                    raise DaemonError(f"policy acts in {msg.body['action_dim']} dimensions; robot "
                                      f"{self.cfg.robot.name!r} takes {self.cfg.robot.limits.dim}")
                if self.scene is not None:
                    try:
                        self.scene.check_policy(msg.body)
                    except ValueError as e:
                        raise DaemonError(str(e)) from None
                return
            if msg is not None and msg.kind == "command":
                self._command(msg)
            if self.worker_proc is not None and self.worker_proc.poll() is not None:
                raise DaemonError(f"policy worker exited with code {self.worker_proc.returncode} before hello")
            self._telemetry()
        hint = ""
        if self.curve is not None:
            hint = (" (curve is on: the worker needs the server's public key, --server-key"
                    + (", and a client key listed in transport.curve_allowed_clients, --client-key; "
                       f"{self.allow_list.denied} handshakes were refused" if self.allow_list is not None else "")
                    + ")")
        raise DaemonError(f"no hello from a policy worker within {timeout_s} s{hint}")

    def _worker_alive(self) -> bool:
        return self.worker_proc is None or self.worker_proc.poll() is None

    def _stop_worker(self) -> None:
        p, self.worker_proc = self.worker_proc, None
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # --- loop control --------------------------------------------------------------------------------
    def _control(self, **fields: float | np.ndarray) -> None:
        b = self.ctl_blk
        b.begin()
        for k, v in fields.items():
            b.f[k][...] = v
        b.end()

    def _hold(self, why: str) -> None:
        self._control(hold_gen=self.ctl_blk.f["hold_gen"][0] + 1)
        if self.state != State.STOPPED:
            self.state = State.HOLD if self.state != State.IDLE or why != "startup" else State.IDLE
        self.log(f"hold ({why})")

    def estop(self) -> None:
        self._control(estop=1.0)

    def clear_estop(self) -> None:
        self._control(estop=0.0)

    def reset_loop(self, qpos: np.ndarray, seed: int, timeout_s: float = 5.0) -> None:
        """Teleport the loop's sim to ``qpos`` after laying out episode ``seed``; wait for the ack."""
        gen = self.ctl_blk.f["reset_gen"][0] + 1
        self._control(reset_gen=gen, reset_seed=seed, reset_extra=qpos)
        deadline = time.monotonic() + timeout_s
        while self.state_blk.f["reset_ack"][0] != gen:
            self._check_loop()
            if time.monotonic() > deadline:
                raise DaemonError("the control loop did not acknowledge the episode reset")
            time.sleep(0.002)

    def move_to(self, target: np.ndarray, tolerance: np.ndarray, timeout_s: float) -> bool:
        """Drive the arm to ``target`` [A] through the loop's safety filter (its velocity and acceleration
        limits shape the move): a one-action chunk at ``target``, renewed every policy period so the
        watchdog stays fed. True once every measured component is within ``tolerance`` [A] of it and the
        command has arrived; False on timeout or stop. Either way the loop holds afterwards."""
        r = self.cfg.robot
        dt = 1.0 / r.policy_hz
        target = np.asarray(target, dtype=np.float64).reshape(1, -1)
        snap = {"q_meas": np.zeros(r.limits.dim), "q_cmd": np.zeros(r.limits.dim)}
        self.state = State.HOMING
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        err = np.full(r.limits.dim, np.inf)
        while not self._stop:
            self._check_loop()
            now = time.monotonic()
            self.state_blk.read(snap)
            err = np.abs(snap["q_meas"] - target[0])
            if np.isfinite(err).all() and (err <= tolerance).all() \
                    and (np.abs(snap["q_cmd"] - target[0]) <= 1e-9 + 1e-6 * np.abs(target[0])).all():
                self._hold(f"home reached in {now - t0:.2f} s (max error {err.max():.3g})")
                return True
            if now > deadline:
                self.events.append(f"homing timed out after {timeout_s:g} s; error {err.round(3).tolist()}")
                self._hold(f"homing failed: not within {tolerance.tolist()} of {target[0].tolist()} after "
                           f"{timeout_s:g} s (error {err.round(3).tolist()})")
                return False
            self._write_chunk(target, now, 2 * dt)  # held for two periods, renewed every period
            self._serve_until(now + dt)
        self._hold("homing interrupted: stop")
        return False

    def pause(self, seconds: float) -> None:
        """Hold for ``seconds`` while serving telemetry and operator commands (a stop ends it)."""
        self._serve_until(time.monotonic() + seconds)

    def _serve_until(self, t_end: float) -> None:
        """Until ``t_end`` (or a stop): take messages (operator commands; chunks are not forwarded
        outside an episode), publish telemetry, watch the loop."""
        while not self._stop:
            self._check_loop()
            wait = t_end - time.monotonic()
            if wait <= 0:
                return
            msg = self._recv(max(1, min(100, int(wait * 1000))))
            if msg is not None and msg.kind == "command":
                self._command(msg)
            self._telemetry()

    def _command(self, msg) -> None:
        op = msg.body["op"]
        if op == "stop":
            self._stop = True
        elif op == "end_episode":
            self._end_episode = True
        else:
            self.events.append(f"operator command {op!r} ignored (valid: stop, end_episode)")
            return
        self.events.append(f"operator command: {op}")
        self.log(f"operator command: {op}")

    def _check_loop(self) -> None:
        if self.loop_proc is not None and self.loop_proc.poll() is not None:
            self.state = State.STOPPED
            raise DaemonError(f"control loop process exited (code {self.loop_proc.returncode})")

    def loop_state(self) -> dict[str, np.ndarray]:
        return self.state_blk.snapshot()

    # --- messages -------------------------------------------------------------------------------------
    def _recv(self, timeout_ms: int):
        if not self.pull.poll(timeout_ms):
            return None
        msg, why = self.dec.decode(self.pull.recv())
        if msg is None:
            self.events.append(f"rejected message: {why}")
            self.log(f"rejected a message: {why}")
        return msg

    def _forward_chunk(self, msg, episode: int, dt: float) -> bool:
        b = msg.body
        a = b["actions"]
        if b["episode"] != episode or b["t_obs"] > time.monotonic():
            return False  # a late chunk of an old episode (or from the future): drop
        if not (1 <= a.shape[0] <= MAX_CHUNK and a.shape[1] == self.cfg.robot.limits.dim):
            self.events.append(f"chunk of shape {list(a.shape)} rejected")
            return False
        if not np.isfinite(a).all():
            self.events.append(f"chunk for obs {b['obs_seq']} has NaN/inf (forwarded: the loop holds)")
        self._write_chunk(a, b["t_obs"], dt)
        self.latencies.append(time.monotonic() - b["t_obs"])
        return True

    def _write_chunk(self, actions: np.ndarray, t_obs: float, dt: float) -> None:
        """Hand ``actions`` [n, A] (action i for policy step i from ``t_obs``) to the loop."""
        blk = self.cmd_blk
        n = actions.shape[0]
        blk.begin()
        blk.f["t_obs"][0] = t_obs
        blk.f["dt"][0] = dt
        blk.f["n"][0] = n
        blk.f["actions"][:n] = actions
        blk.f["gen"][0] += 1
        blk.end()

    def _telemetry(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_tele < 0.2:
            return
        self._last_tele = now
        s = self.state_blk.f
        faults = int(s["faults"][0])
        lat = np.array(self.latencies[-200:]) * 1e3
        status = {
            "state": self.state.value, "episode": self.episode, "step": self.step,
            "episodes_done": len(self.results),
            "successes": sum(r.success for r in self.results) if self.judges_success else None,
            "loop": {"alive": self.loop_proc is not None and self.loop_proc.poll() is None,
                     "tick": int(s["tick"][0]), "misses": int(s["misses"][0]),
                     "late_max_us": round(float(s["late_max"][0]) * 1e6, 1),
                     "faults": [EVENT_NAMES[c] for c in FAULTS if faults & (1 << c)],
                     "event_ticks": {n: int(c) for n, c in zip(EVENT_NAMES, s["counts"])},
                     "q_cmd": [round(float(x), 4) for x in s["q_cmd"]]},
            "worker": {"alive": self._worker_alive(), "restarts": self.restarts, **self.worker_info},
            "latency_ms": {"p50": float(np.percentile(lat, 50)) if lat.size else None,
                           "p99": float(np.percentile(lat, 99)) if lat.size else None},
            "rejected": dict(self.dec.rejected), "recent_events": self.events[-10:],
            "curve": {"on": self.curve is not None, "allow_list": self.allow_list is not None,
                      "denied_handshakes": self.allow_list.denied if self.allow_list is not None else 0},
        }
        self.tele.send(self.enc.encode("telemetry", status=json.dumps(status)))

    # --- episodes --------------------------------------------------------------------------------------
    @property
    def judges_success(self) -> bool:
        return self.scene is None or self.scene.judges_success

    def run_episode(self, index: int, instruction: str, recorder=None) -> EpisodeResult:
        """Run episode ``index`` (already set up by the scene) until success, its step limit, a fault,
        an operator command or a stop."""
        import zmq

        cfg, r = self.cfg, self.cfg.robot
        dt = 1.0 / r.policy_hz
        instruction = cfg.instruction or instruction
        self._end_episode = False
        max_steps = cfg.max_steps or self.scene.max_steps
        replan = cfg.replan_every or int(self.worker_info.get("n_action_steps", 1))
        self.episode, self.state = index, State.RUNNING
        self.log(f"episode {index}: {instruction!r} (seed {cfg.seed + index})")
        snap = {"q_meas": np.zeros(r.limits.dim), "q_cmd": np.zeros(r.limits.dim),
                "extra": np.zeros(self.state_blk.f["extra"].shape)}
        stall_s = cfg.stall_timeout_s if cfg.stall_timeout_s is not None else r.watchdog_s
        obs_seq, last_sent, answered, reason, success = 0, -np.inf, True, "timeout", False
        waiting_since = np.inf  # when the oldest unanswered observation was sent
        sent_at: dict[int, int] = {}  # obs_seq -> the step it was sent at
        done_at: int | None = None  # the step at which the policy's plan ends the episode
        t_next = time.monotonic()
        step = 0
        for step in range(max_steps + 1):
            self.step = step
            self.state_blk.read(snap)
            t_obs = time.monotonic()
            try:
                obs, success = self.scene.frame(snap)
            except SensorFault as e:
                reason = "sensor_fault"
                self.events.append(f"episode {index}: {e}")
                self.log(f"sensor fault: {e}")
                break
            if recorder is not None:
                recorder.observe(obs, instruction, snap["q_cmd"])
            if success:
                reason = "success"
                break
            if done_at is not None and step >= done_at:
                reason = "policy_done"
                break
            if step == max_steps:
                break
            due = step % replan == 0 or (not answered and t_obs - last_sent > 2 * dt)
            if due:
                obs_seq += 1
                images = {k[len(OBS_IMAGES) + 1:]: v for k, v in obs.items() if k.startswith(OBS_IMAGES + ".")}
                self.pub.send(self.enc.encode("obs", episode=index, obs_seq=obs_seq, t_obs=t_obs, dt=dt,
                                              task=instruction, state=obs[OBS_STATE],
                                              env_state=obs.get(OBS_ENV_STATE, NO_ENV_STATE), images=images,
                                              reset=step == 0 or obs_seq == 1), zmq.NOBLOCK)
                sent_at[obs_seq] = step
                if answered:
                    waiting_since = t_obs
                last_sent, answered = t_obs, False
            t_next += dt
            while True:  # relay chunks until the next policy tick
                self._check_loop()
                if not self._worker_alive():
                    reason = "worker_lost"
                    break
                if self._end_episode or self._stop:
                    break
                if (self.worker_proc is not None and not answered
                        and time.monotonic() - waiting_since > stall_s):
                    reason = "worker_stalled"
                    break
                wait = t_next - time.monotonic()
                if wait <= 0:
                    break
                msg = self._recv(max(1, int(wait * 1000)))
                if msg is not None and msg.kind == "command":
                    self._command(msg)
                elif msg is not None and msg.kind == "chunk" and self._forward_chunk(msg, index, dt):
                    answered = answered or msg.body["obs_seq"] == obs_seq
                    k = msg.body["done_step"]  # the newest plan decides
                    done_at = sent_at[msg.body["obs_seq"]] + k + 1 if k >= 0 and msg.body["obs_seq"] in sent_at else None
                    if answered:
                        waiting_since = np.inf
                self._telemetry()
            if reason in ("worker_lost", "worker_stalled") or self._stop or self._end_episode:
                reason = "stopped" if self._stop else ("operator" if self._end_episode else reason)
                break
        self._hold(f"episode {index} ended: {reason}")
        self.state_blk.read(snap)
        ds_ep = recorder.end_episode(snap["q_cmd"]) if recorder is not None else None
        res = EpisodeResult(index, success, step, reason, ds_ep)
        self.results.append(res)
        self.log(f"episode {index}: {reason} after {step} steps")
        return res

    def run(self) -> list[EpisodeResult]:
        """Start everything, run ``episodes`` episodes, stop everything; STOPPED at the end."""
        from policystack.robot.recorder import EpisodeRecorder

        recorder = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop", True))
        try:
            self.start_worker()  # loads torch and the checkpoint while the loop starts
            self.start_loop()
            self.wait_hello(self.cfg.hello_timeout_s)
            if self.cfg.record:
                recorder = EpisodeRecorder(self.cfg.record, int(self.cfg.robot.policy_hz), self.scene.features,
                                           robot_type=self.scene.robot_type)
            for i in range(self.cfg.episodes):
                if self._stop:
                    break
                try:
                    instruction = self.scene.start_episode(i, self.cfg.seed + i, self)
                except SensorFault as e:
                    if self._stop:  # a stop during the homing move or the reset pause
                        break
                    raise DaemonError(f"episode {i} could not start: {e}") from None
                if self._stop:
                    break
                res = self.run_episode(i, instruction, recorder)
                if res.reason in ("worker_lost", "worker_stalled"):
                    self._lost_worker(stalled=res.reason == "worker_stalled")
            return self.results
        finally:
            if recorder is not None:
                recorder.close()
            self.shutdown()

    def _lost_worker(self, stalled: bool = False) -> None:
        """Restart the local worker after it died or stalled (at most ``max_restarts`` times)."""
        if stalled and self.worker_proc is not None:
            self.events.append(f"policy worker stalled (pid {self.worker_proc.pid}): killed")
            self.worker_proc.kill()  # SIGKILL: a stopped or deadlocked process ignores SIGTERM
            self.worker_proc.wait()
        code = self.worker_proc.returncode if self.worker_proc is not None else None
        self.events.append(f"policy worker exited (code {code})")
        if self.restarts >= self.cfg.max_restarts:
            raise DaemonError(f"policy worker died or stalled {self.restarts + 1} times; giving up (last exit code {code})")
        self.restarts += 1
        self._stop_worker()
        self.start_worker()
        self.wait_hello(self.cfg.hello_timeout_s)

    def shutdown(self) -> None:
        if self.state == State.STOPPED and self.loop_proc is None:
            return
        self._stop_worker()
        if self.loop_proc is not None:
            self.final_loop_state = self.state_blk.snapshot()
            if self.loop_proc.poll() is None:
                self._control(stop=1.0)
                try:
                    self.loop_proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.loop_proc.kill()
                    self.loop_proc.wait()
            self.loop_proc = None
        self.state = State.STOPPED
        self._telemetry(force=True)
        for s in (self.pub, self.pull, self.tele):
            s.close(0)
        if self.allow_list is not None:
            self.allow_list.stop()
        self._ctx.term()
        if self.scene is not None:
            self.scene.close()
        for p in self._dir.glob("*"):
            p.unlink()
        self._dir.rmdir()
