"""Messages between daemon, policy worker and status clients: msgpack with an explicit schema,
typed array buffers, a size cap and HMAC-SHA256 authentication with replay protection.

Wire format of one ZeroMQ frame::

    payload = msgpack({"v": 1, "kind": str, "sender": str, "seq": int, "ts": float, "body": {...}})
    frame   = payload || HMAC-SHA256(token, payload)          (32 bytes)

- No pickle anywhere: msgpack carries only nil/bool/int/float/str/bin/array/map, and the decoder
  is told not to build anything else (``strict_map_key``, no ext types, no object hooks).
- Arrays are maps ``{"dtype": "float32", "shape": [H, A], "data": <bin>}`` with dtypes from
  ``DTYPES``; the byte count must equal prod(shape) * itemsize.
- Each ``kind`` has a schema (``SCHEMAS``): the body keys, their types, array dtypes and ranks;
  anything else is rejected.
- Replay: ``seq`` must increase per ``sender`` (a random id per process start); ``ts`` (the
  sender's wall clock) must lie within ``window_s`` of the receiver's.
- ``Decoder.decode`` never raises: it returns ``(message, "")`` or ``(None, reason)``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

VERSION = 1
MAC_BYTES = 32
DTYPES = {"float32": np.float32, "float64": np.float64, "uint8": np.uint8, "int64": np.int64}

# kind -> body key -> spec. Spec: "int", "float", "str", "bool", ("array", dtype, ndim),
# ("map", ("array", dtype, ndim)) for a str-keyed map of arrays, ("optional", spec) for a key a body may
# leave out (then absent from the decoded body too).
SCHEMAS: dict[str, dict[str, Any]] = {
    # daemon -> worker: the observation of every policy step (state [D], env_state [E] -- empty unless
    # the sim provides privileged object poses --, images {camera: uint8 [3, H, W]}); obs_seq counts
    # the episode's steps from 1; reset: the first of an episode (seed: the episode's seed for the
    # policy's RNG, as eval seeds it); replan: answer it with a chunk (otherwise only observe it)
    "obs": {"episode": "int", "obs_seq": "int", "t_obs": "float", "dt": "float", "task": "str",
            "state": ("array", "float32", 1), "env_state": ("array", "float32", 1),
            "images": ("map", ("array", "uint8", 3)), "reset": "bool", "seed": "int", "replan": "bool"},
    # worker -> daemon: an action chunk [n, A] for the observation obs_seq; obs_missed: observations of
    # this episode that never reached the worker (its history has gaps), replans_skipped: replan
    # requests it answered with a newer one instead (it was behind); decision: what a reasoning policy
    # (EMMA) decided for it, in words (Policy.decision), read out by the daemon's announcer; done_step:
    # the chunk step after which the policy says the episode is over (Policy.done, RT-2's terminate
    # token), -1 or absent if none (optional like decision: a worker from before it still speaks)
    "chunk": {"episode": "int", "obs_seq": "int", "t_obs": "float", "dt": "float",
              "actions": ("array", "float32", 2), "infer_s": "float", "obs_missed": "int", "replans_skipped": "int",
              "decision": ("optional", "str"), "done_step": ("optional", "int")},
    # daemon -> worker, on the observation socket while the daemon waits for a hello: a worker says hello
    # only once one reached it, so its subscription is known to work before the first observation
    # (no frame of an episode is lost to ZeroMQ's slow-joiner race)
    "beat": {},
    # worker -> daemon: the worker is up (or failed to load: error != ""), with what its policy takes:
    # observation.state [state_dim] and images {camera: int64 [3] = (3, H, W)}
    "hello": {"policy": "str", "horizon": "int", "n_action_steps": "int", "action_dim": "int", "error": "str",
              "state_dim": "int", "images": ("map", ("array", "int64", 1)),
              "follower": ("optional", "str")},  # how the worker turns the policy's actions into joint targets
    # operator -> daemon (``policystack daemon stop`` / ``end-episode``): op is "stop" or "end_episode";
    # the success detector (perception/watcher.py) -> daemon: op "detector_done" for `episode`, with its P(done)
    "command": {"op": "str", "episode": ("optional", "int"), "p": ("optional", "float")},
    # supervisor -> status clients
    "telemetry": {"status": "str"},  # a JSON document: open-ended by design, parsed by the reader
}


class Rejected(ValueError):
    """A message failed validation (used inside the decoder; decode returns the reason)."""


def encode_array(a: np.ndarray) -> dict[str, Any]:
    name = np.dtype(a.dtype).name
    if name not in DTYPES:
        raise TypeError(f"array dtype {name} is not one of {sorted(DTYPES)}")
    a = np.ascontiguousarray(a)
    return {"dtype": name, "shape": list(a.shape), "data": a.tobytes()}


def decode_array(d: Any, dtype: str, ndim: int, where: str) -> np.ndarray:
    if not isinstance(d, dict) or set(d) != {"dtype", "shape", "data"}:
        raise Rejected(f"{where}: expected an array map with dtype, shape, data")
    if d["dtype"] != dtype:
        raise Rejected(f"{where}: dtype {d['dtype']!r}, expected {dtype!r}")
    shape = d["shape"]
    if (not isinstance(shape, list) or len(shape) != ndim
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 1 << 24 for s in shape)):
        raise Rejected(f"{where}: shape {shape!r}, expected {ndim} non-negative ints")
    data = d["data"]
    if not isinstance(data, bytes):
        raise Rejected(f"{where}: data is {type(data).__name__}, expected bytes")
    dt = np.dtype(DTYPES[dtype])
    if len(data) != int(np.prod(shape)) * dt.itemsize:
        raise Rejected(f"{where}: {len(data)} bytes for shape {shape} of {dtype}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _required(schema: dict[str, Any]) -> set[str]:
    return {k for k, spec in schema.items() if not (isinstance(spec, tuple) and spec[0] == "optional")}


def _check(spec: Any, value: Any, where: str) -> Any:
    if spec == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise Rejected(f"{where}: expected int, got {type(value).__name__}")
        return value
    if spec == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Rejected(f"{where}: expected float, got {type(value).__name__}")
        return float(value)
    if spec == "str":
        if not isinstance(value, str):
            raise Rejected(f"{where}: expected str, got {type(value).__name__}")
        return value
    if spec == "bool":
        if not isinstance(value, bool):
            raise Rejected(f"{where}: expected bool, got {type(value).__name__}")
        return value
    if spec[0] == "array":
        return decode_array(value, spec[1], spec[2], where)
    if spec[0] == "optional":
        return _check(spec[1], value, where)
    if spec[0] == "map":
        if not isinstance(value, dict) or len(value) > 16:
            raise Rejected(f"{where}: expected a map of at most 16 entries")
        return {k: _check(spec[1], v, f"{where}[{k!r}]") for k, v in value.items()}
    raise AssertionError(spec)


def _encode_body(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    schema = SCHEMAS[kind]
    if not _required(schema) <= set(body) <= set(schema):
        raise KeyError(f"{kind} message: body keys {sorted(body)}, expected {sorted(schema)}")
    out: dict[str, Any] = {}
    for k, spec in schema.items():
        if k not in body:
            continue
        v = body[k]
        spec = spec[1] if isinstance(spec, tuple) and spec[0] == "optional" else spec
        if isinstance(spec, tuple) and spec[0] == "array":
            out[k] = encode_array(np.asarray(v, dtype=DTYPES[spec[1]]))
        elif isinstance(spec, tuple) and spec[0] == "map":
            out[k] = {name: encode_array(np.asarray(a, dtype=DTYPES[spec[1][1]])) for name, a in v.items()}
        elif spec == "float":
            out[k] = float(v)
        else:
            out[k] = v
    return out


@dataclass
class Message:
    kind: str
    sender: str
    seq: int
    ts: float
    body: dict[str, Any]


class Encoder:
    """Signs messages of one sender (``sender`` defaults to a random id per instance)."""

    def __init__(self, token: bytes, sender: str | None = None, max_bytes: int = 4 << 20):
        if not token:
            raise ValueError("a non-empty token is required")
        self.token = token
        self.sender = sender or os.urandom(8).hex()
        self.max_bytes = max_bytes
        self.seq = 0

    def encode(self, kind: str, **body: Any) -> bytes:
        if kind not in SCHEMAS:
            raise KeyError(f"unknown message kind {kind!r}; valid kinds: {sorted(SCHEMAS)}")
        self.seq += 1
        payload = msgpack.packb({"v": VERSION, "kind": kind, "sender": self.sender, "seq": self.seq,
                                 "ts": time.time(), "body": _encode_body(kind, body)}, use_bin_type=True)
        frame = payload + hmac.new(self.token, payload, hashlib.sha256).digest()
        if len(frame) > self.max_bytes:
            raise ValueError(f"{kind} message is {len(frame)} bytes; the limit is {self.max_bytes}")
        return frame


class Decoder:
    """Verifies and parses frames; keeps the last seq of up to ``max_senders`` senders."""

    def __init__(self, token: bytes, max_bytes: int = 4 << 20, window_s: float = 5.0,
                 kinds: tuple[str, ...] | None = None, max_senders: int = 64):
        if not token:
            raise ValueError("a non-empty token is required")
        self.token, self.max_bytes, self.window_s = token, max_bytes, window_s
        self.kinds = kinds or tuple(SCHEMAS)
        self.last_seq: OrderedDict[str, int] = OrderedDict()
        self.max_senders = max_senders
        self.rejected: dict[str, int] = {}

    def decode(self, frame: Any) -> tuple[Message | None, str]:
        try:
            return self._decode(frame), ""
        except Rejected as e:
            reason = str(e)
        except Exception as e:  # anything msgpack or numpy raise on hostile input
            reason = f"malformed: {type(e).__name__}: {e}"[:200]
        key = reason.split(":")[0]
        self.rejected[key] = self.rejected.get(key, 0) + 1
        return None, reason

    def _decode(self, frame: Any) -> Message:
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise Rejected(f"type: frame is {type(frame).__name__}")
        frame = bytes(frame)
        if len(frame) > self.max_bytes:
            raise Rejected(f"oversized: {len(frame)} bytes > {self.max_bytes}")
        if len(frame) <= MAC_BYTES:
            raise Rejected(f"short: {len(frame)} bytes")
        payload, mac = frame[:-MAC_BYTES], frame[-MAC_BYTES:]
        if not hmac.compare_digest(mac, hmac.new(self.token, payload, hashlib.sha256).digest()):
            raise Rejected("auth: bad HMAC (wrong token or tampered message)")
        d = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_str_len=1 << 20,
                            max_bin_len=self.max_bytes, max_array_len=1 << 16, max_map_len=1 << 10, max_ext_len=0)
        if not isinstance(d, dict) or set(d) != {"v", "kind", "sender", "seq", "ts", "body"}:
            raise Rejected("schema: envelope keys")
        if d["v"] != VERSION:
            raise Rejected(f"version: {d['v']!r}, expected {VERSION}")
        kind = d["kind"]
        if kind not in self.kinds:
            raise Rejected(f"kind: {kind!r} not accepted here (accepted: {list(self.kinds)})")
        sender = _check("str", d["sender"], "sender")
        seq = _check("int", d["seq"], "seq")
        ts = _check("float", d["ts"], "ts")
        if not abs(time.time() - ts) <= self.window_s:
            raise Rejected(f"stale: sender time {ts:.3f} is {time.time() - ts:+.3f} s from ours "
                           f"(window {self.window_s} s)")
        if seq <= self.last_seq.get(sender, 0):
            raise Rejected(f"replay: seq {seq} <= last {self.last_seq.get(sender)} from sender {sender}")
        body = d["body"]
        schema = SCHEMAS[kind]
        if not isinstance(body, dict) or not _required(schema) <= set(body) <= set(schema):
            got = sorted(body) if isinstance(body, dict) else type(body).__name__
            raise Rejected(f"schema: {kind} body keys {got}, expected {sorted(schema)}")
        parsed = {k: _check(spec, body[k], f"schema: {kind}.{k}") for k, spec in schema.items() if k in body}
        self.last_seq[sender] = seq
        self.last_seq.move_to_end(sender)
        while len(self.last_seq) > self.max_senders:
            self.last_seq.popitem(last=False)
        return Message(kind=kind, sender=sender, seq=seq, ts=ts, body=parsed)


class RejectionLog:
    """Logs rejected frames at a bounded rate, never a line per frame: the first rejection at once, then
    at most one summary line per ``interval_s`` -- the count by reason since the last line and one
    example (``poll`` writes a due summary when no frame arrives). ``total`` counts them all."""

    def __init__(self, log: Callable[[str], None], interval_s: float = 10.0, where: str = ""):
        self.log, self.interval_s, self.where = log, interval_s, where  # where: " on the chunk socket"
        self.pending: dict[str, int] = {}
        self.example = ""
        self.total = 0
        self._last: float | None = None

    def add(self, reason: str) -> None:
        self.total += 1
        key = reason.split(":")[0]
        self.pending[key] = self.pending.get(key, 0) + 1
        self.example = self.example or reason
        self.poll()

    def poll(self) -> None:
        now = time.monotonic()
        if not self.pending or (self._last is not None and now - self._last < self.interval_s):
            return
        if self._last is None:
            line = (f"rejected a frame{self.where}: {self.example[:160]} (further rejections: one summary "
                    f"every {self.interval_s:g} s)")
        else:
            by = ", ".join(f"{k} {v}" for k, v in sorted(self.pending.items(), key=lambda kv: -kv[1]))
            line = (f"rejected {sum(self.pending.values())} frames{self.where} in the last {now - self._last:.0f} s "
                    f"({by}); e.g. {self.example[:160]}")
        self.log(line)
        self.pending, self.example, self._last = {}, "", now


def inbound_max_bytes(action_dim: int, max_chunk: int) -> int:
    """The largest frame the daemon's chunk socket takes: a chunk of ``max_chunk`` x ``action_dim`` float32
    plus 16 KiB for the envelope, a hello (error text, image shapes) or an operator command. libzmq drops
    anything larger before it is read (``MAXMSGSIZE``)."""
    return max_chunk * action_dim * 4 + (16 << 10)


def configure_socket(sock: Any, max_bytes: int) -> None:
    """Size cap enforced by libzmq itself (larger frames drop the connection), no linger."""
    import zmq

    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    sock.setsockopt(zmq.LINGER, 0)
