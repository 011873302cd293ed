"""The daemon's success detector: ends an episode when a describer says its task is done, in a process
of its own (a real robot has no ``is_success``).

    policystack daemon run ... detector=DIR [detector.threshold=0.5] [detector.consecutive=2]
        [detector.every_s=0] [detector.nice=10] [detector.threads=1]

``DIR`` is a ``describer`` checkpoint (``perception/describe.py``). The process subscribes to the
daemon's observation stream (the socket the policy worker reads: signed, CurveZMQ when the daemon has
it on) and keeps only the NEWEST observation: its receive queue holds at most ``RCV_QUEUE`` frames
(ZeroMQ drops the rest for this subscriber alone, and the daemon's send never waits), and of what is
queued it judges the last and drops the older ones. For that frame it asks the detector
P(done | frames, instruction) (``DescriberPolicy.success_probability``); when ``consecutive`` frames of
one episode in a row reach ``threshold``, it sends the daemon one signed ``command`` message,
``op="detector_done"`` with the episode number and the probability, on the chunk socket. The
supervisor ends that episode (reason ``detector_done``) if it is still the running one; a late verdict
for an episode already over is ignored there.

Nothing here touches the control loop: the process runs at ``nice`` 10 with ``threads`` torch threads,
never on the loop's CPU (``avoid_cpu``, which ``daemon run`` sets to ``robot.cpu``). It cannot block the
supervisor either: a slow detector only judges fewer frames. A checkpoint that cannot be loaded (a
missing directory, no weights, not a describer, cameras the daemon does not send) is one log line, the
process exits with ``EXIT_NO_DETECTOR`` and the daemon runs on without it (``robot.processes.SideProcess``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policystack.keyvalue import parse_key_values

EXIT_NO_DETECTOR = 3  # the detector could not start and has said why (one line)
RCV_QUEUE = 4  # observations this subscriber's queue holds at most (older ones are dropped)
CONNECTION_KEYS = ("obs", "commands", "server_key", "client_key", "exit_with_parent")


def log_line(message: str) -> None:
    print(f"[detector] {message}", file=sys.stderr, flush=True)


@dataclass
class DetectorConfig:
    """``daemon run detector=DIR detector.KEY=VALUE``."""

    checkpoint: str
    threshold: float = 0.5  # a frame says "done" when P(done) >= threshold
    consecutive: int = 2  # frames of one episode in a row that must say "done"
    every_s: float = 0.0  # at least this long between two judgements (0: as fast as the model runs)
    nice: int = 10  # the process's niceness (0-19)
    avoid_cpu: int = -1  # a CPU it never runs on (daemon run: the control loop's robot.cpu); -1: none
    threads: int = 1  # torch threads
    device: str = "cpu"

    def __post_init__(self):
        if not self.checkpoint:
            raise ValueError("detector=: expected a describer checkpoint directory")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"detector.threshold={self.threshold}: expected a probability in [0, 1]")
        if self.consecutive < 1:
            raise ValueError(f"detector.consecutive={self.consecutive}: expected >= 1")
        if self.every_s < 0:
            raise ValueError(f"detector.every_s={self.every_s}: expected >= 0")
        if not 0 <= self.nice <= 19:
            raise ValueError(f"detector.nice={self.nice}: expected 0-19")
        if self.threads < 1:
            raise ValueError(f"detector.threads={self.threads}: expected >= 1")


def parse_detector_args(argv: list[str]) -> DetectorConfig:
    """``key=value`` arguments (checkpoint and the ``detector.`` options without their prefix)."""
    return DetectorConfig(**parse_key_values(argv, DetectorConfig, required=("checkpoint",)))


class EpisodeJudge:
    """Turns per-frame probabilities into at most one "done" per episode: ``consecutive`` frames of the
    same episode in a row at or above ``threshold``."""

    def __init__(self, threshold: float, consecutive: int):
        self.threshold, self.consecutive = threshold, consecutive
        self.episode, self.streak, self.said = None, 0, False

    def update(self, episode: int, p: float) -> bool:
        """True exactly once per episode: when this frame completes the streak."""
        if episode != self.episode:
            self.episode, self.streak, self.said = episode, 0, False
        if self.said:
            return False
        self.streak = self.streak + 1 if p >= self.threshold else 0
        if self.streak >= self.consecutive:
            self.said = True
            return True
        return False


def check_detector(cfg: DetectorConfig) -> None:
    """That ``cfg.checkpoint`` is a describer checkpoint, read without torch (so a missing one is said
    within a second of the daemon's start); a clear ValueError / FileNotFoundError otherwise."""
    from policystack.policies.files import read_checkpoint_meta

    meta, _ = read_checkpoint_meta(cfg.checkpoint)  # a missing directory, config.json or weights file, named
    if meta["policy"] != "describer":
        raise ValueError(f"{cfg.checkpoint}: a {meta['policy']!r} checkpoint; the detector needs a 'describer' one "
                         "(policystack train policy=describer ...)")


def load_detector(cfg: DetectorConfig):
    """The describer of ``cfg.checkpoint`` in eval mode (``check_detector`` first)."""
    from policystack.policies.base import Policy

    check_detector(cfg)
    return Policy.from_pretrained(cfg.checkpoint, map_location=cfg.device).eval()


def frames_of(body: dict[str, Any], camera_keys: list[str]) -> dict[str, Any] | None:
    """An observation message's images as the detector's input (camera key -> uint8 [1, 3, H, W]), or
    None when a camera it needs is not in the message."""
    import numpy as np
    import torch

    from policystack.types import camera_key

    images = {camera_key(c): img for c, img in body["images"].items()}
    if any(k not in images for k in camera_keys):
        return None
    return {k: torch.from_numpy(np.array(images[k], dtype=np.uint8))[None] for k in camera_keys}  # a copy: decoded arrays are read-only


def watch(detector, obs_addr: str, commands_addr: str, token: bytes, cfg: DetectorConfig, curve=None,
          stop: threading.Event | None = None, log: Callable[[str], None] = log_line) -> dict[str, Any]:
    """Judge the daemon's newest observations until ``stop``; send ``detector_done`` commands (module
    docstring). Returns counts: frames judged, dropped unjudged, episodes ended, mean latency (s)."""
    import zmq

    from policystack.robot.transport import Decoder, Encoder, configure_socket

    stop = stop or threading.Event()
    ctx = zmq.Context()
    sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
    for s in (sub, push):
        configure_socket(s, 64 << 20)
        if curve is not None:
            curve.apply(s)
    sub.setsockopt(zmq.RCVHWM, RCV_QUEUE)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(obs_addr)
    push.setsockopt(zmq.SNDHWM, 4)
    push.setsockopt(zmq.LINGER, 500)
    push.connect(commands_addr)
    dec, enc = Decoder(token, max_bytes=64 << 20, kinds=("obs", "beat")), Encoder(token, sender="detector")
    judge = EpisodeJudge(cfg.threshold, cfg.consecutive)
    stats = {"judged": 0, "dropped": 0, "ended": 0, "latency_s": 0.0}
    said: set[str] = set()
    last = -float("inf")
    try:
        while not stop.is_set():
            if not sub.poll(200):
                continue
            newest = None
            while sub.poll(0):  # the queue holds at most RCV_QUEUE frames; keep the newest
                msg, why = dec.decode(sub.recv())
                if msg is not None and msg.kind == "obs":
                    stats["dropped"] += newest is not None
                    newest = msg
            if newest is None or time.monotonic() - last < cfg.every_s:
                continue
            body = newest.body
            images = frames_of(body, detector.camera_keys)
            if images is None:
                if "cameras" not in said:
                    said.add("cameras")
                    log(f"the daemon sends cameras {sorted(body['images'])}; the detector needs "
                        f"{detector.camera_keys}: no verdicts until it does")
                continue
            t0 = last = time.monotonic()
            p = float(detector.success_probability(images, [body["task"]])[0])
            stats["latency_s"] += time.monotonic() - t0
            stats["judged"] += 1
            if judge.update(body["episode"], p):
                push.send(enc.encode("command", op="detector_done", episode=body["episode"], p=p), zmq.NOBLOCK)
                stats["ended"] += 1
                log(f"episode {body['episode']}: the task looks done (P {p:.2f} on {cfg.consecutive} frame(s) in "
                    f"a row, step {body['obs_seq']}); asked the daemon to end it")
    finally:
        sub.close(0)
        push.close()
        ctx.term()
    if stats["judged"]:
        stats["latency_s"] /= stats["judged"]
    return stats


def main(argv: list[str] | None = None) -> int:
    """``python -m policystack.perception.watcher obs=ADDR commands=ADDR [exit_with_parent=true]
    [server_key=F] [client_key=F] checkpoint=DIR [options]`` (the daemon starts it: ``detector=DIR``);
    the token from ``$POLICYSTACK_DAEMON_TOKEN``, curve keys from files or the environment the daemon gives."""
    from policystack.robot.config import token_from_env
    from policystack.robot.curve import ClientCurve
    from policystack.robot.processes import side_process_start, yield_cpu

    argv = sys.argv[1:] if argv is None else argv
    conn = {k: v for k, _, v in (a.partition("=") for a in argv) if k in CONNECTION_KEYS}
    try:
        cfg = parse_detector_args([a for a in argv if a.partition("=")[0] not in CONNECTION_KEYS])
        curve = ClientCurve.resolve(conn.get("server_key"), conn.get("client_key"), os.environ)
        token = token_from_env(required=True)
        if "obs" not in conn or "commands" not in conn:
            raise ValueError("obs= and commands= (the daemon's observation and chunk addresses) are required")
    except (ValueError, KeyError) as e:
        log_line(f"detector off: {e.args[0] if isinstance(e, KeyError) else e}")
        return 2
    side_process_start(conn)
    yield_cpu(cfg.nice, cfg.avoid_cpu)
    try:
        check_detector(cfg)
        import torch

        torch.set_num_threads(cfg.threads)
        detector = load_detector(cfg)
    except Exception as e:  # a missing directory, no weights, another family, a broken file
        log_line(f"detector off: cannot load {cfg.checkpoint}: {e}"[:500])
        return EXIT_NO_DETECTOR
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log_line(f"judging the daemon's observations at {conn['obs']} with {cfg.checkpoint} (threshold "
             f"{cfg.threshold}, {cfg.consecutive} frame(s) in a row)")
    try:
        stats = watch(detector, conn["obs"], conn["commands"], token, cfg, curve, stop)
    except Exception as e:  # a bad address, a socket error: one line, as for a detector that cannot start
        log_line(f"detector off: cannot follow the daemon at {conn['obs']}: {type(e).__name__}: {e}")
        return EXIT_NO_DETECTOR
    log_line(f"judged {stats['judged']} frames ({stats['dropped']} newer ones replaced older ones), ended "
             f"{stats['ended']} episodes, {stats['latency_s'] * 1e3:.0f} ms per judgement")
    return 0


def start_detector_process(obs: str, commands: str, token: bytes, argv: list[str], log: Callable[[str], None],
                           server_curve=None, allow_list=None):
    """The detector as the daemon's child process (``daemon run detector=DIR``): a ``SideProcess``."""
    from policystack.robot.processes import SideProcess

    return SideProcess("success detector", "the detector", "policystack.perception.watcher",
                       [f"obs={obs}", f"commands={commands}", *argv], token, log, (0, 2, EXIT_NO_DETECTOR),
                       server_curve, allow_list)


if __name__ == "__main__":
    sys.exit(main())
