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
  frames; a sensor fault ends the episode, ``sensor_fault``), records the frame, publishes every
  observation to the worker (which ``observe``s each one, as ``select_action`` does), marked
  ``replan`` every ``replan_every`` ticks (the worker then predicts a chunk), and forwards every
  valid chunk (signed, fresh, right episode and shape) into the loop's command block. Rejected
  messages are counted by reason and published; nothing on the socket can reach the loop unchecked.
- Lockstep (``lockstep=True``, sim only): the loop runs on simulated time and advances one policy
  step of ticks only once the chunk for that step's observation is in its command block, so a run
  is deterministic and, with limits that pass targets through, steps the physics exactly as an env
  rollout does (``policystack eval``'s; tests/robot/test_daemon_eval_parity.py).
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
- A success detector (``daemon run detector=DIR``, ``perception/watcher.py``, a process of its own that
  reads the observation stream) sends ``detector_done`` for an episode it judges done: that episode, if
  it is still running, ends (``detector_done``); the sim's success check comes first, and a verdict for
  an episode already over is ignored.

Telemetry (signed ``telemetry`` messages on a PUB socket, 5 Hz) is what ``policystack daemon
status`` prints.

Parts (as polymetis splits transport, server and client): ``channels.py`` the sockets (signing,
CurveZMQ), ``processes.py`` the loop and worker processes and the shared blocks (the verbs on the
loop: hold, reset, chunk, stop), ``scene.py`` per-episode set-up and observations, ``telemetry.py``
the status document; this module the states, the episode loop, homing and restarts.
"""

from __future__ import annotations

import enum
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policystack.robot.channels import Channels
from policystack.robot.config import RobotConfig
from policystack.robot.loop import MAX_CHUNK
from policystack.robot.processes import DaemonError, LoopProcess, WorkerProcess, child_env
from policystack.robot.scene import Scene, SensorFault, make_scene, read_loop_info
from policystack.robot.telemetry import TelemetryPublisher, latency_status, loop_status
from policystack.robot.transport import RejectionLog, inbound_max_bytes
from policystack.types import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE, check_camera_records

__all__ = ["DaemonConfig", "DaemonError", "EpisodeResult", "State", "Supervisor"]

NO_ENV_STATE = np.zeros(0, np.float32)  # what the obs message carries when the robot has no env state
EVENTS_KEPT = 200  # the event history is a ring: a flood of anything can never grow it
LATENCIES_KEPT = 100_000  # ~2.8 h of chunks at 10 Hz


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
    replan_every: int | None = None  # policy ticks between chunk requests; default n_action_steps
    worker_imports: tuple[str, ...] = ()
    worker_threads: int = 1
    max_restarts: int = 2
    # a local worker that is alive but has answered no observation for this long is killed and
    # restarted (the loop already holds after watchdog_s); None: the robot's watchdog_s
    stall_timeout_s: float | None = None
    hello_timeout_s: float = 120.0
    no_rt: bool = False
    # sim only: simulated time, the loop steps one policy step once its chunk is in (deterministic runs)
    lockstep: bool = False
    # the checkpoint's features (config.json): a sim scene is checked against its camera records
    policy_features: Any = field(default=None, repr=False)
    log: Any = field(default=None, repr=False)  # callable(str); default prints to stderr

    def __post_init__(self):
        if self.lockstep and self.robot.driver != "sim":
            raise ValueError(f"lockstep=true: robot {self.robot.name!r} (driver {self.robot.driver!r}) runs in real "
                             "time; only the sim driver can step on demand")
        if self.replan_every is not None and self.replan_every < 1:
            raise ValueError(f"replan_every={self.replan_every}: expected a number of policy steps >= 1")


@dataclass
class EpisodeResult:
    index: int
    success: bool
    steps: int
    # "success", "timeout", "policy_done", "detector_done", "worker_lost", "worker_stalled", "stopped", "operator",
    # "sensor_fault"
    reason: str
    dataset_episode: int | None = None
    obs_missed: int = 0  # observations that never reached the worker (its history had gaps)
    replans_skipped: int = 0  # replan requests the worker answered with a newer one (it was behind)


class Supervisor:
    """Composes the daemon's parts: ``Channels`` (sockets), ``LoopProcess`` / ``WorkerProcess``
    (children, shared blocks), the ``Scene`` (episode set-up, observations, success) and telemetry;
    runs episodes, homes a real robot (``move_to``) and restarts a lost worker."""

    def __init__(self, cfg: DaemonConfig):
        self.cfg = cfg
        self.log = cfg.log or (lambda s: print(f"[daemon] {s}", file=sys.stderr, flush=True))
        self.state = State.IDLE
        self.results: list[EpisodeResult] = []
        # observation -> chunk in the loop's command block (s), the last LATENCIES_KEPT
        self.latencies: deque[float] = deque(maxlen=LATENCIES_KEPT)
        self.events: deque[str] = deque(maxlen=EVENTS_KEPT)  # what happened, newest last
        # rejected frames: counted by reason (self.dec.rejected), one summary line per interval
        self.rejections = RejectionLog(self._log_rejections, where=" on the chunk socket")
        self.restarts = 0
        self.worker_info: dict[str, Any] = {}
        self._stop = False
        self._end_episode = False  # an operator's end-episode command, for the running episode
        self._detector_done = False  # the success detector judged the running episode done
        self.scene: Scene | None = None
        self.channels = Channels(cfg.robot.transport, cfg.token, cfg.host, cfg.port,
                                 inbound_max_bytes(cfg.robot.limits.dim, MAX_CHUNK), on_reject=self.rejections.add)
        self.addrs = self.channels.addrs
        self.dec = self.channels.dec
        self.allow_list = self.channels.allow_list
        self.loop = LoopProcess(cfg.robot)
        self.worker_proc: WorkerProcess | None = None
        self._publish = TelemetryPublisher(self._status, self.channels.publish_telemetry)
        self.step = 0
        self.episode = -1
        self.obs_missed = 0  # the running episode's, as the worker reports them
        self.replans_skipped = 0
        self.final_loop_state: dict[str, np.ndarray] = {}
        self.instruction = self.decision = self.hold_reason = ""  # in telemetry, for the announcer

    # --- processes ---------------------------------------------------------------------------------
    def start_loop(self, timeout_s: float = 60.0) -> None:
        r = self.cfg.robot
        try:
            self.scene = make_scene(r, self.cfg.task, self.cfg.cameras, self.cfg.image_size, self.cfg.env_state)
        except SensorFault as e:
            raise DaemonError(str(e)) from None
        if self.cfg.policy_features and self.scene.judges_success:  # sim: the scene says how it renders
            missing = sorted(k for k in self.cfg.policy_features
                             if k.startswith("observation.") and k not in self.scene.features)
            if missing:
                raise DaemonError(f"the checkpoint takes {missing}, which the sim scene {self.cfg.task!r} does not "
                                  f"make (it makes {sorted(self.scene.features)}); set cameras=/env_state= to match "
                                  "the training data, or leave them to the checkpoint")
            try:
                check_camera_records(self.cfg.policy_features, self.scene.features, f"the sim scene {self.cfg.task!r}",
                                     hint="Leave cameras= and image_size= to the checkpoint")
            except ValueError as e:
                raise DaemonError(str(e)) from None
        self.loop.start(self.scene.driver_options(dict(r.driver_options)), self.scene.extra_dim, self.cfg.token,
                        self.cfg.no_rt, timeout_s, lockstep=self.cfg.lockstep)
        self.log(f"control loop started (pid {self.loop.pid}, {r.rate_hz:g} Hz)")
        self.scene.attach(read_loop_info(self.loop.info_path))
        self._hold("startup")

    def start_worker(self) -> None:
        if self.cfg.checkpoint is None:
            self.log(f"waiting for a remote worker: --connect {self.addrs['obs']}")
            return
        cmd = [sys.executable, "-m", "policystack.robot.worker", "--checkpoint", str(self.cfg.checkpoint),
               "--obs", self.addrs["obs"], "--chunks", self.addrs["chunks"],
               "--threads", str(self.cfg.worker_threads), "--exit-with-parent",
               "--max-bytes", str(self.cfg.robot.transport.max_message_bytes),
               "--obs-queue", str(self.cfg.robot.transport.obs_queue)]
        for m in self.cfg.worker_imports:
            cmd += ["--import", m]
        self.worker_proc = WorkerProcess(cmd, child_env(self.cfg.token, self.channels.worker_curve_env()))
        self.log(f"policy worker started (pid {self.worker_proc.pid})")

    def wait_hello(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop:
            self.channels.beat()  # a worker answers once this reaches it (its subscription works)
            msg = self.channels.recv(100)
            if msg is not None and msg.kind == "hello":
                if msg.body["error"]:
                    raise DaemonError(f"policy worker failed to load the checkpoint: {msg.body['error']}")
                self.worker_info = {k: v for k, v in msg.body.items() if k != "images"}
                self.worker_info["images"] = {c: [int(x) for x in v] for c, v in msg.body["images"].items()}
                self.worker_sender = msg.sender
                follower = msg.body.get("follower") or ""
                self.log(f"worker ready: policy {msg.body['policy']}, horizon {msg.body['horizon']}, "
                         f"n_action_steps {msg.body['n_action_steps']}" + (f", actions {follower}" if follower else ""))
                if msg.body["horizon"] > MAX_CHUNK:
                    raise DaemonError(f"policy horizon {msg.body['horizon']} exceeds the {MAX_CHUNK} actions a chunk "
                                      "may hold (loop.MAX_CHUNK)")
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
            self.telemetry()
        raise DaemonError(f"no hello from a policy worker within {timeout_s} s{self.channels.curve_hint()}")

    def _worker_alive(self) -> bool:
        return self.worker_proc is None or self.worker_proc.poll() is None

    def _stop_worker(self) -> None:
        p, self.worker_proc = self.worker_proc, None
        if p is not None:
            p.stop()

    def _lost_worker(self, stalled: bool = False) -> None:
        """Restart the local worker after it died or stalled (at most ``max_restarts`` times)."""
        if stalled and self.worker_proc is not None:
            self.events.append(f"policy worker stalled (pid {self.worker_proc.pid}): killed")
            self.worker_proc.kill()
        code = self.worker_proc.returncode if self.worker_proc is not None else None
        self.events.append(f"policy worker exited (code {code})")
        if self.restarts >= self.cfg.max_restarts:
            raise DaemonError(f"policy worker died or stalled {self.restarts + 1} times; giving up (last exit code {code})")
        self.restarts += 1
        self._stop_worker()
        self.start_worker()
        self.wait_hello(self.cfg.hello_timeout_s)

    # --- the loop (LoopHandle for the scene) ----------------------------------------------------------
    def _hold(self, why: str) -> None:
        self.loop.hold()
        self.hold_reason = why
        if self.state != State.STOPPED:
            self.state = State.HOLD if self.state != State.IDLE or why != "startup" else State.IDLE
        self.log(f"hold ({why})")

    def estop(self) -> None:
        self.loop.control_write(estop=1.0)

    def clear_estop(self) -> None:
        self.loop.control_write(estop=0.0)

    def reset_loop(self, qpos: np.ndarray, seed: int, timeout_s: float = 30.0) -> None:
        """Teleport the loop's sim to ``qpos`` after laying out episode ``seed``; wait for the ack (the
        loop's env lays the episode out inside one tick: 5 s was too short once, on 2 cores shared with a
        training and a restarting worker)."""
        self.loop.reset(qpos, seed, timeout_s)

    def move_to(self, target: np.ndarray, tolerance: np.ndarray, timeout_s: float) -> bool:
        """Drive the arm to ``target`` [A] through the loop's safety filter (its velocity and acceleration
        limits shape the move): a one-action chunk at ``target``, renewed every policy period so the
        watchdog stays fed. True once every measured component is within ``tolerance`` [A] of it and the
        command has arrived; False on timeout or stop. Either way the loop holds afterwards."""
        r = self.cfg.robot
        dt = 1.0 / r.policy_hz
        target = np.asarray(target, dtype=np.float64).reshape(1, -1)
        snap = self.loop.state.buffers("q_meas", "q_cmd")
        self.state = State.HOMING
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        err = np.full(r.limits.dim, np.inf)
        while not self._stop:
            self.loop.check()
            now = time.monotonic()
            self.loop.state.read(snap)
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
            self.loop.write_chunk(target, now, 2 * dt)  # held for two periods, renewed every period
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
            self.loop.check()
            wait = t_end - time.monotonic()
            if wait <= 0:
                return
            msg = self.channels.recv(max(1, min(100, int(wait * 1000))))
            if msg is not None and msg.kind == "command":
                self._command(msg)
            self.telemetry()

    def loop_state(self) -> dict[str, np.ndarray]:
        return self.loop.state.snapshot()

    # --- messages -------------------------------------------------------------------------------------
    def _log_rejections(self, line: str) -> None:
        self.events.append(line)
        self.log(line)

    def telemetry(self, force: bool = False) -> None:
        """Publish the status document (at most 5 Hz unless ``force``); write a due rejection summary."""
        self.rejections.poll()
        self._publish(force)

    def _command(self, msg) -> None:
        op = msg.body["op"]
        if op == "stop":
            self._stop = True
        elif op == "end_episode":
            self._end_episode = True
        elif op == "detector_done":
            episode = msg.body.get("episode")
            if self.state != State.RUNNING or episode != self.episode:
                self.events.append(f"detector verdict for episode {episode} ignored (episode {self.episode} is "
                                   f"{'running' if self.state == State.RUNNING else 'over'})")
                return
            self._detector_done = True
            p = msg.body.get("p")
            self.events.append(f"detector: episode {episode} looks done" + (f" (P {p:.2f})" if p is not None else ""))
            return
        else:
            self.events.append(f"operator command {op!r} ignored (valid: stop, end_episode, detector_done)")
            return
        self.events.append(f"operator command: {op}")
        self.log(f"operator command: {op}")

    def _forward_chunk(self, msg, episode: int, dt: float, t_loop: float | None = None) -> bool:
        """Hand a chunk that passed the transport checks to the loop if it is for this ``episode`` and
        well-formed; ``t_loop``: its observation's time on the loop's clock (lockstep: simulated; None:
        the message's ``t_obs``, the shared monotonic clock)."""
        b = msg.body
        a = b["actions"]
        if b["episode"] != episode or b["t_obs"] > time.monotonic():
            return False  # a late chunk of an old episode (or from the future): drop
        if not (1 <= a.shape[0] <= MAX_CHUNK and a.shape[1] == self.cfg.robot.limits.dim):
            self.events.append(f"chunk of shape {list(a.shape)} rejected")
            return False
        if not np.isfinite(a).all():
            self.events.append(f"chunk for obs {b['obs_seq']} has NaN/inf (forwarded: the loop holds)")
        self.loop.write_chunk(a, b["t_obs"] if t_loop is None else t_loop, dt)
        self.latencies.append(time.monotonic() - b["t_obs"])
        if b["obs_missed"] > self.obs_missed:
            if not self.obs_missed:
                self.events.append(f"episode {episode}: the worker missed observations (its history has gaps)")
                self.log(f"episode {episode}: the policy worker missed {b['obs_missed']} observations; its "
                         "history has gaps (worker too slow for transport.obs_queue, or joined mid-episode)")
            self.obs_missed = b["obs_missed"]
        self.replans_skipped = max(self.replans_skipped, b["replans_skipped"])
        self.decision = b.get("decision", "")[:500]
        return True

    def _status(self) -> dict[str, Any]:
        """The telemetry document (``telemetry.py``)."""
        return {
            "state": self.state.value, "episode": self.episode, "step": self.step,
            "episodes_done": len(self.results),
            "successes": sum(r.success for r in self.results) if self.judges_success else None,
            "loop": loop_status(self.loop.state.snapshot(), self.loop.alive),
            "worker": {"alive": self._worker_alive(), "restarts": self.restarts, "obs_missed": self.obs_missed,
                       "replans_skipped": self.replans_skipped, **self.worker_info},
            "latency_ms": latency_status(self.latencies),
            "rejected": dict(self.dec.rejected), "rejected_total": self.rejections.total,
            "recent_events": list(self.events)[-10:],
            "curve": self.channels.curve_status(),
            "instruction": self.instruction, "decision": self.decision,
            "hold": {"gen": int(self.loop.control.f["hold_gen"][0]), "reason": self.hold_reason},
            "last_result": self.results[-1].__dict__ if self.results else None,
        }

    # --- episodes --------------------------------------------------------------------------------------
    @property
    def judges_success(self) -> bool:
        return self.scene is None or self.scene.judges_success

    def run_episode(self, index: int, instruction: str, recorder=None) -> EpisodeResult:
        """Run episode ``index`` (already set up by the scene) until success, its step limit, a fault,
        an operator command or a stop."""
        cfg, r = self.cfg, self.cfg.robot
        dt = 1.0 / r.policy_hz
        instruction = cfg.instruction or instruction
        self._end_episode = self._detector_done = False
        max_steps = cfg.max_steps or self.scene.max_steps
        replan = cfg.replan_every or int(self.worker_info.get("n_action_steps", 1))
        self.episode, self.state, self.instruction, self.decision = index, State.RUNNING, instruction, ""
        self.obs_missed = self.replans_skipped = 0
        self.log(f"episode {index}: {instruction!r} (seed {cfg.seed + index})")
        self.telemetry(force=True)  # events go out as they happen (the announcer speaks them)
        snap = self.loop.state.buffers("t", "q_meas", "q_cmd", "extra")
        stall_s = cfg.stall_timeout_s if cfg.stall_timeout_s is not None else r.watchdog_s
        reason, success = "timeout", False
        request, requested_at, answered = 0, -np.inf, True  # obs_seq of the newest chunk request; sent when
        waiting_since = np.inf  # when the oldest unanswered request was sent
        t_loop = None  # lockstep: the simulated time of the newest request's observation
        done_at: int | None = None  # the step at which the policy's plan ends the episode (Policy.done)
        t_next = time.monotonic()
        step = 0
        for step in range(max_steps + 1):
            self.step = step
            self.loop.state.read(snap)
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
            # a chunk every `replan` steps, or again when the last request went unanswered for 2 steps
            replan_now = step % replan == 0 or (not answered and t_obs - requested_at > 2 * dt)
            images = {k[len(OBS_IMAGES) + 1:]: v for k, v in obs.items() if k.startswith(OBS_IMAGES + ".")}
            self.channels.publish_obs(episode=index, obs_seq=step + 1, t_obs=t_obs, dt=dt, task=instruction,
                                      state=obs[OBS_STATE], env_state=obs.get(OBS_ENV_STATE, NO_ENV_STATE),
                                      images=images, reset=step == 0, seed=cfg.seed + index, replan=replan_now)
            if replan_now:
                if answered:
                    waiting_since = t_obs
                request, requested_at, answered = step + 1, t_obs, False
                t_loop = float(snap["t"][0]) if cfg.lockstep else None
            t_next += dt
            while True:  # relay chunks until the next policy tick (lockstep: until the request is answered)
                self.loop.check()
                if not self._worker_alive():
                    reason = "worker_lost"
                    break
                if self._end_episode or self._stop or self._detector_done:
                    break
                if (self.worker_proc is not None and not answered
                        and time.monotonic() - waiting_since > stall_s):
                    reason = "worker_stalled"
                    break
                wait = (0.0 if answered else 0.1) if cfg.lockstep else t_next - time.monotonic()
                if wait <= 0:  # lockstep: the chunk is in (or none was asked for); else the next tick is due
                    break
                msg = self.channels.recv(max(1, int(wait * 1000)))
                if msg is not None and msg.kind == "command":
                    self._command(msg)
                elif (msg is not None and msg.kind == "chunk"
                      and (not cfg.lockstep or msg.body["obs_seq"] == request)
                      and self._forward_chunk(msg, index, dt, t_loop)):
                    answered = answered or msg.body["obs_seq"] == request
                    # the newest plan decides: its step k (played from step obs_seq - 1) ends the episode
                    k = msg.body.get("done_step", -1)
                    done_at = msg.body["obs_seq"] + k if k >= 0 else None
                    if answered:
                        waiting_since = np.inf
                self.telemetry()
            if reason in ("worker_lost", "worker_stalled") or self._stop or self._end_episode or self._detector_done:
                reason = "stopped" if self._stop else "operator" if self._end_episode else reason if \
                    reason in ("worker_lost", "worker_stalled") else "detector_done"
                break
            if cfg.lockstep:
                self.loop.grant(int(round(r.rate_hz / r.policy_hz)))
        self._hold(f"episode {index} ended: {reason}")
        self.loop.state.read(snap)
        ds_ep = recorder.end_episode(snap["q_cmd"]) if recorder is not None else None
        res = EpisodeResult(index, success, step, reason, ds_ep, self.obs_missed, self.replans_skipped)
        self.results.append(res)
        self.telemetry(force=True)
        gaps = f" (worker missed {self.obs_missed} observations)" if self.obs_missed else ""
        self.log(f"episode {index}: {reason} after {step} steps{gaps}")
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

    def shutdown(self) -> None:
        if self.state == State.STOPPED and self.loop.proc is None:
            return
        self._stop_worker()
        if self.loop.proc is not None:
            self.final_loop_state = self.loop.stop()
        self.state = State.STOPPED
        if self.loop.state is not None:
            self.telemetry(force=True)
        self.channels.close()
        if self.scene is not None:
            self.scene.close()
        self.loop.remove_blocks()
