"""The announcer: speaks what the control daemon does, from its signed telemetry, in a process of
its own.

    policystack daemon run ... speech=piper [speech.KEY=VALUE ...]     # the daemon starts it
    policystack say --follow [telemetry=tcp://127.0.0.1:5557] [server_key=F] [client_key=F] [KEY=VALUE ...]

It subscribes to the daemon's telemetry (the socket ``policystack daemon status`` reads: signed,
optionally CurveZMQ) and compares each document with the one before (``announcements``):

| event | said | from telemetry |
|---|---|---|
| episode start | "Episode 3. Pick up the red cube." | ``episode`` changes while RUNNING; ``instruction`` |
| episode end | "Episode 3 succeeded." / "Episode 3: time is up." | ``last_result`` changes |
| hold and its reason | "Holding: no fresh command from the policy." / "Holding: homing failed." | a new fault in ``loop.faults`` during an episode; ``hold`` (a counter and the supervisor's reason) outside episode ends |
| e-stop | "Emergency stop." (interrupts what is being said) / "... released." | ``estop`` in ``loop.faults`` |
| a policy's decision | the text (an EMMA plan's meta-decision) | ``decision`` changes |
| end of the run | "Run over: 8 of 10 episodes succeeded." | ``state`` becomes STOPPED (best effort: the daemon's last message can be lost as it closes) |

Announcements go through a bounded queue (``queue``, default 4): a new one replaces a queued one of
the same kind, and when the queue is full the oldest is dropped -- nothing ever waits for speech.
An e-stop goes to the front and cuts the sentence being said short.

Failures never reach the daemon: a speaker that cannot start (no voice, no weights, no program)
logs one line and the process exits with ``EXIT_NO_SPEECH``; a backend that fails mid-sentence logs
one line and the next announcement is tried (``max_failures`` in a row: one line, speech off); a
crash of the whole process is one line in the daemon's log (``AnnouncerProcess``). Nothing here
touches the control loop: the process runs at ``nice`` 10 with one synthesis thread, never on the
loop's CPU (``avoid_cpu``, which ``daemon run`` sets to ``robot.cpu``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from policystack.interaction.audio import OUTPUTS, AudioSink, open_sink
from policystack.interaction.speaker import SPEAKERS, Speaker, Style, make_speaker, speaker_class
from policystack.keyvalue import parse_key_values
from policystack.robot.processes import SideProcess, side_process_start, yield_cpu

EXIT_NO_SPEECH = 3  # the announcer could not speak and has said why (one line)
DEFAULT_TELEMETRY = "tcp://127.0.0.1:5557"


def log_line(message: str) -> None:
    print(f"[speech] {message}", file=sys.stderr, flush=True)


@dataclass
class SpeechConfig:
    """Options of ``policystack say`` and ``daemon run speech.KEY=VALUE`` besides the backend's own."""

    backend: str = "piper"  # piper, espeak, indextts
    output: str = "auto"  # auto: the sound device if there is one, else WAV files; device; wav
    out_dir: Path = Path("speech")  # where WAV files go
    player: str = ""  # a command reading raw s16le mono PCM on stdin ({rate}: the sample rate); "": paplay/aplay
    keep: int = 200  # WAV files kept in out_dir (the oldest are deleted)
    queue: int = 4  # announcements waiting at most (a new one drops the oldest)
    nice: int = 10  # the announcer process's niceness (0-19)
    avoid_cpu: int = -1  # a CPU it never runs on (daemon run: the control loop's robot.cpu); -1: none
    drain_s: float = 10.0  # at the end of the run: how long queued announcements may still take
    stats: str = ""  # append one JSON line of timings per utterance to this file (benchmarks)

    def __post_init__(self):
        if self.backend not in SPEAKERS:
            raise ValueError(f"backend={self.backend!r}: expected one of {', '.join(SPEAKERS)}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output={self.output!r}: expected one of {', '.join(OUTPUTS)}")
        for name, low, high in (("keep", 1, 10**6), ("queue", 1, 1000), ("nice", 0, 19)):
            if not low <= getattr(self, name) <= high:
                raise ValueError(f"{name}={getattr(self, name)}: expected {low}-{high}")
        if self.drain_s < 0:
            raise ValueError(f"drain_s={self.drain_s}: expected >= 0")


def parse_speech_args(argv: list[str]) -> tuple[SpeechConfig, list[str]]:
    """``key=value`` arguments -> (SpeechConfig, the backend's options, checked against its config)."""
    own = [f.name for f in fields(SpeechConfig)]
    mine = [a for a in argv if a.partition("=")[0] in own]
    rest = [a for a in argv if a.partition("=")[0] not in own]
    cfg = SpeechConfig(**parse_key_values(mine, SpeechConfig))
    options = speaker_class(cfg.backend).config_class
    try:
        options(**parse_key_values(rest, options))
    except ValueError as e:
        raise ValueError(f"{e} (speech options: {', '.join(own)})") from None
    return cfg, rest


@dataclass
class Announcement:
    kind: str  # episode, result, hold, estop, decision, stopped, say
    text: str
    t_event: float = field(default_factory=time.time)  # wall clock of the event
    urgent: bool = False  # goes first and cuts a non-urgent sentence short
    style: Style | None = None


def speak(speaker: Speaker, sink: AudioSink, a: Announcement,
          interrupted: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Say ``a`` into ``sink`` piece by piece; its timings (wall clock, s). Raises what the backend or
    the sink raise (the sink's utterance is aborted first)."""
    t_start, t_first, n, synth = time.time(), None, 0, 0.0
    sink.begin(a.text, speaker.sample_rate)
    pieces = iter(speaker.stream(a.text, a.style))
    where, cut = "", False
    try:
        while True:
            t0 = time.perf_counter()
            piece = next(pieces, None)
            synth += time.perf_counter() - t0
            if piece is None:
                break
            t_first = t_first or time.time()
            sink.write(piece)
            n += len(piece)
            if interrupted():
                cut = True
                sink.abort()
                break
        if not cut:
            where = sink.end()
    except BaseException:
        sink.abort()
        raise
    finally:
        getattr(pieces, "close", lambda: None)()
    return {"kind": a.kind, "text": a.text, "backend": speaker.name, "t_event": a.t_event, "t_start": t_start,
            "t_first_sample": t_first, "t_end": time.time(), "audio_s": n / speaker.sample_rate,
            "synth_s": synth, "interrupted": cut, "where": where}


class Announcer:
    """Speaks announcements one after another in a thread; ``say`` never blocks."""

    def __init__(self, speaker: Speaker, sink: AudioSink, max_queue: int = 4,
                 log: Callable[[str], None] = log_line, stats: str = "", max_failures: int = 3):
        self.speaker, self.sink, self.max_queue, self.log = speaker, sink, max_queue, log
        self.max_failures = max_failures
        self._stats = open(stats, "a") if stats else None  # closed in close()
        self._q: deque[Announcement] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._speaking: Announcement | None = None
        self._cut = threading.Event()
        self.spoken = self.dropped = self.failed = 0
        self.gave_up = False
        self.timings: deque[dict[str, Any]] = deque(maxlen=1000)  # the latest utterances' (speak's) timings
        self._thread = threading.Thread(target=self._run, name="announcer", daemon=True)
        self._thread.start()

    def say(self, a: Announcement) -> None:
        with self._cv:
            if self._closed or self.gave_up:
                self.dropped += 1
                return
            n = len(self._q)
            self._q = deque(x for x in self._q if x.kind != a.kind)
            self.dropped += n - len(self._q)
            if a.urgent:
                self._q.appendleft(a)
                if self._speaking is not None and not self._speaking.urgent:
                    self._cut.set()
            else:
                self._q.append(a)
            while len(self._q) > self.max_queue:  # drop the oldest, an urgent one last
                self._q.remove(next((x for x in self._q if not x.urgent), self._q[0]))
                self.dropped += 1
            self._cv.notify()

    def pending(self) -> int:
        with self._cv:
            return len(self._q) + (self._speaking is not None)

    def close(self, timeout: float = 10.0) -> bool:
        """Say what is queued (for at most ``timeout`` s), then stop; True if everything was said."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)
        done = not self._thread.is_alive()
        if not done:
            with self._cv:
                self.dropped += len(self._q)
                self._q.clear()
            self._cut.set()
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        return done

    def _run(self) -> None:
        fails = 0
        while True:
            with self._cv:
                while not self._q and not self._closed:
                    self._cv.wait()
                if not self._q:
                    return
                a = self._speaking = self._q.popleft()
                self._cut.clear()
            try:
                t = speak(self.speaker, self.sink, a, self._cut.is_set)
            except Exception as e:
                self.failed += 1
                fails += 1
                self.log(f"{self.speaker.name} failed while saying {a.text[:60]!r}: {type(e).__name__}: {e}; "
                         "announcement skipped")
                if fails >= self.max_failures:
                    self.log(f"{self.speaker.name} failed {fails} times in a row: speech is off from here on")
                    with self._cv:
                        self.gave_up = True
                        self.dropped += len(self._q)
                        self._q.clear()
                        self._speaking = None
                    return
                continue
            finally:
                with self._cv:
                    self._speaking = None
            fails = 0
            self.spoken += 1
            self.timings.append(t)
            if self._stats is not None and not self._stats.closed:
                self._stats.write(json.dumps(t) + "\n")
                self._stats.flush()


# --- what the telemetry says -------------------------------------------------------------------------
RESULT_WORDS = {"timeout": "time is up", "worker_lost": "the policy worker was lost",
                "worker_stalled": "the policy worker stalled", "stopped": "stopped",
                "operator": "ended by the operator", "sensor_fault": "sensor fault",
                "detector_done": "the detector says the task is done"}
FAULT_WORDS = {"stale": "Holding: no fresh command from the policy.",
               "nan": "Holding: the policy sent an invalid action.",
               "workspace": "Holding: the target is outside the workspace.",
               "tracking": "Holding: the arm is not following its command."}
QUIET_HOLDS = ("startup", "episode ", "home reached")  # episode ends are said with their result


def _result_text(r: dict[str, Any], judged: bool) -> tuple[str, Style | None]:
    i, reason = r.get("index"), r.get("reason", "")
    if r.get("success"):
        return f"Episode {i} succeeded.", Style(emotion={"happy": 0.6})
    if reason == "timeout" and not judged:  # a real robot: no success check, the episode ran its length
        return f"Episode {i} is over.", None
    return f"Episode {i}: {RESULT_WORDS.get(reason, reason.replace('_', ' '))}.", Style(emotion={"sad": 0.3})


def _hold_text(reason: str) -> str:
    """The supervisor's hold reason as a short sentence ("homing failed: not within ..." -> "Holding:
    homing failed."); "" for the holds not worth saying."""
    if not reason or reason.startswith(QUIET_HOLDS):
        return ""
    return f"Holding: {reason.split(':')[0].split(' (')[0].strip()[:80]}."


def announcements(prev: dict[str, Any] | None, cur: dict[str, Any], t_event: float) -> list[Announcement]:
    """What changed from telemetry document ``prev`` to ``cur`` worth saying. With no ``prev`` (the
    first document seen) only the running episode, if any, is said."""
    out: list[Announcement] = []

    def add(kind: str, text: str, urgent: bool = False, style: Style | None = None) -> None:
        out.append(Announcement(kind, text, t_event, urgent, style))

    first = prev is None
    prev = {"state": "IDLE", "episode": -1, "last_result": cur.get("last_result")} if first else prev
    state, was = cur.get("state"), prev.get("state")
    faults = set((cur.get("loop") or {}).get("faults") or ())
    before = set((prev.get("loop") or {}).get("faults") or ())
    if state != "STOPPED" and not first:  # a stopping loop e-stops itself to come to rest: not news
        if "estop" in faults - before:
            add("estop", "Emergency stop.", urgent=True, style=Style(emotion={"surprised": 0.5}))
        elif "estop" in before - faults:
            add("estop", "Emergency stop released.")
    result, last = cur.get("last_result"), prev.get("last_result")
    if result and (not last or result.get("index") != last.get("index")):
        text, style = _result_text(result, judged=cur.get("successes") is not None)
        add("result", text, style=style)
    episode = cur.get("episode", -1)
    if state == "RUNNING" and episode != prev.get("episode"):
        instruction = (cur.get("instruction") or "").strip()
        add("episode", f"Episode {episode}." + (f" {instruction[0].upper()}{instruction[1:]}" if instruction else "")
            + ("" if not instruction or instruction[-1] in ".!?" else "."))
    elif state == "RUNNING" and was == "RUNNING":
        for f in sorted(faults - before):
            if f in FAULT_WORDS:
                add("hold", FAULT_WORDS[f])
    if first:
        return out
    hold, held = cur.get("hold") or {}, prev.get("hold") or {}
    if hold.get("gen", 0) > held.get("gen", 0) and (text := _hold_text(hold.get("reason", ""))):
        add("hold", text)
    decision = (cur.get("decision") or "").strip()
    if decision and decision != (prev.get("decision") or "").strip():
        add("decision", decision)
    if state == "STOPPED" and was != "STOPPED":
        n, k = cur.get("episodes_done", 0), cur.get("successes")
        add("stopped", f"Run over: {k} of {n} episodes succeeded." if k is not None else f"Run over after {n} episodes.")
    return out


def follow(address: str, token: bytes, announcer: Announcer, curve=None, stop: threading.Event | None = None,
           log: Callable[[str], None] = log_line) -> None:
    """Read the daemon's telemetry at ``address`` and announce what changes, until the daemon says
    STOPPED, ``stop`` is set or the announcer gives up. ``curve``: a ``ClientCurve`` (None: plaintext)."""
    import zmq

    from policystack.robot.transport import Decoder, configure_socket

    stop = stop or threading.Event()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    configure_socket(sub, 1 << 20)
    if curve is not None:
        curve.apply(sub)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(address)
    dec = Decoder(token, max_bytes=1 << 20, kinds=("telemetry",))
    prev, said = None, set()
    try:
        while not stop.is_set() and not announcer.gave_up:
            if not sub.poll(200):
                continue
            msg, why = dec.decode(sub.recv())
            try:
                if msg is None:
                    raise ValueError(f"telemetry rejected: {why}")
                cur = json.loads(msg.body["status"])
                found = announcements(prev, cur, msg.ts)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                key = str(e).split(":")[0]
                if key not in said:  # one line per kind of problem
                    said.add(key)
                    log(f"ignoring telemetry I cannot read: {type(e).__name__}: {e}"[:300])
                continue
            for a in found:
                announcer.say(a)
            prev = cur
            if cur.get("state") == "STOPPED":
                return
    finally:
        sub.close(0)
        ctx.term()


# --- the process ---------------------------------------------------------------------------------------
FOLLOW_KEYS = ("telemetry", "server_key", "client_key", "exit_with_parent")


def start_speaking(cfg: SpeechConfig, options: list[str]) -> tuple[Speaker, AudioSink]:
    """This process as a speaker runs: at ``cfg.nice``, off the control loop's CPU, the backend loaded
    and warmed up (which also proves it works before the first event), its sink open."""
    yield_cpu(cfg.nice, cfg.avoid_cpu)
    speaker = make_speaker(cfg.backend, options)
    speaker.synthesize("Ready.")
    return speaker, open_sink(cfg.output, cfg.out_dir, cfg.player, cfg.keep, log_line)


def main(argv: list[str] | None = None) -> int:
    """``python -m policystack.interaction.announcer [telemetry=ADDR] [server_key=F] [client_key=F]
    [exit_with_parent=true] [speech options]`` (also ``policystack say --follow ...``); the daemon's
    token from ``$POLICYSTACK_DAEMON_TOKEN``, curve keys from files or the environment the daemon gives."""
    from policystack.robot.config import token_from_env
    from policystack.robot.curve import ClientCurve

    argv = sys.argv[1:] if argv is None else argv
    conn = {k: v for k, _, v in (a.partition("=") for a in argv) if k in FOLLOW_KEYS}
    try:
        cfg, options = parse_speech_args([a for a in argv if a.partition("=")[0] not in FOLLOW_KEYS])
        curve = ClientCurve.resolve(conn.get("server_key"), conn.get("client_key"), os.environ)
        token = token_from_env(required=True)
    except (ValueError, KeyError) as e:
        log_line(f"speech off: {e.args[0] if isinstance(e, KeyError) else e}")
        return 2
    side_process_start(conn)
    try:
        speaker, sink = start_speaking(cfg, options)
    except Exception as e:  # SpeechError, a bad option, or whatever a backend's library raises
        log_line(f"speech off: {e}")
        return EXIT_NO_SPEECH
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    address = conn.get("telemetry", DEFAULT_TELEMETRY)
    log_line(f"announcing the daemon at {address} with {speaker.name} to {sink}")
    announcer = Announcer(speaker, sink, cfg.queue, log_line, cfg.stats)
    try:
        follow(address, token, announcer, curve, stop)
    except Exception as e:  # a bad address, a socket error: say so once, as for a speaker that cannot start
        log_line(f"speech off: cannot follow the daemon's telemetry at {address}: {type(e).__name__}: {e}")
        return EXIT_NO_SPEECH
    finally:
        announcer.close(cfg.drain_s)
        speaker.close()
    return EXIT_NO_SPEECH if announcer.gave_up else 0


class AnnouncerProcess(SideProcess):
    """The announcer as the daemon's child process (``daemon run speech=...``): started beside the
    supervisor, stopped after the run (``SideProcess``: if it dies on its own, one line goes to ``log``
    and the daemon goes on without speech)."""

    def __init__(self, telemetry: str, token: bytes, argv: list[str], log: Callable[[str], None],
                 server_curve=None, allow_list=None):
        super().__init__("speech announcer", "speech", "policystack.interaction.announcer",
                         [f"telemetry={telemetry}", *argv], token, log, (0, EXIT_NO_SPEECH, 2), server_curve,
                         allow_list)


if __name__ == "__main__":
    sys.exit(main())
