"""The daemon's three bound sockets, and what it takes to open them safely.

- ``obs`` (PUB): observations to the policy worker(s);
- ``chunks`` (PULL): action chunks and hellos from workers, operator commands;
- ``telemetry`` (PUB): signed status documents for ``policystack daemon status``.

Every frame is signed and checked (``transport.py``: ``Encoder`` / ``Decoder``); with CurveZMQ on
(``curve.py``) the three are CURVE servers and, with an allow-list, the ZAP handler runs before the
first bind. A local worker gets a fresh client key pair per start (``worker_curve_env``).

Junk is dropped as early and as cheaply as it can be (docs/daemon.md, "Under a flood"):
- every socket has a ZAP domain, so libzmq refuses at the greeting a peer that does not speak ZMTP 3
  (random bytes on the port) instead of taking it as a ZMTP 1.0 peer; with curve on, a peer without
  the server's key (or, with an allow-list, a listed key) never completes the handshake;
- size caps before anything is read: the chunk socket takes frames up to ``inbound_max_bytes`` (a
  full chunk plus 16 KiB), the PUB sockets, which only ever receive subscriptions (and curve's
  handshake commands), 2 KiB; libzmq drops a larger frame with its connection;
- bounded queues: 32 frames per peer on the chunk socket, 16 subscription messages per peer on the PUB
  sockets (without it a subscription flood grows libzmq's queues by megabytes);
  ``transport.obs_queue`` observations and 10 telemetry documents per subscriber (a subscriber that
  never reads pins at most those);
- a read budget: at most ``transport.max_frames_per_s`` frames a second are read from the chunk
  socket (``recv``); the rest wait in those queues, fair-queued per peer, and the flooder blocks;
- a rejected frame costs one length check and one HMAC (``Decoder``); it is counted by reason, never
  logged or kept one by one (the supervisor's ``RejectionLog``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from policystack.robot.config import TransportConfig
from policystack.robot.curve import (
    CLIENT_SECRET_ENV,
    SERVER_PUBLIC_ENV,
    ZAP_DOMAIN,
    AllowList,
    KeyPair,
    ServerCurve,
    curve_server,
)
from policystack.robot.processes import DaemonError
from policystack.robot.transport import Decoder, Encoder, Message, configure_socket

# what a PUB socket receives: subscriptions (ours are empty) and, with curve, handshake commands (~300 B)
SUBSCRIPTION_MAX_BYTES = 2048


class Channels:
    """The daemon's sockets on ``host`` (``port``: obs; chunks ``port + 1``, telemetry ``port + 2``;
    0: any free ports). ``addrs`` names the bound addresses."""

    def __init__(self, tc: TransportConfig, token: bytes, host: str, port: int, inbound_max_bytes: int,
                 on_reject: Callable[[str], None]):
        self.on_reject = on_reject  # called with the reason of every rejected frame
        self.rate = float(tc.max_frames_per_s)
        self._tokens, self._refilled = self.rate / 10, time.monotonic()  # read budget: burst of 0.1 s
        # keys first: a missing or malformed key file fails here, before any socket exists
        self.curve = ServerCurve.load(tc.curve_server_secret, tc.curve_allowed_clients) \
            if tc.curve_server_secret else None
        self._worker_keys: KeyPair | None = None  # the local worker's ephemeral curve keys
        self._ctx = zmq.Context()
        # the ZAP handler runs before the first bind, so no client slips in ahead of it
        self.allow_list = AllowList(self._ctx, self.curve.allowed) \
            if self.curve is not None and self.curve.allowed is not None else None
        self.enc = Encoder(token, sender="daemon-" + os.urandom(6).hex(), max_bytes=tc.max_message_bytes)
        self.dec = Decoder(token, max_bytes=inbound_max_bytes, window_s=tc.window_s, kinds=("chunk", "hello", "command"))
        self.pub = self._ctx.socket(zmq.PUB)
        self.pull = self._ctx.socket(zmq.PULL)
        self.tele = self._ctx.socket(zmq.PUB)
        for s, max_in in ((self.pub, SUBSCRIPTION_MAX_BYTES), (self.pull, inbound_max_bytes),
                          (self.tele, SUBSCRIPTION_MAX_BYTES)):
            configure_socket(s, max_in)
            s.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
            if self.curve is not None:
                curve_server(s, self.curve.keys)
        self.pub.setsockopt(zmq.SNDHWM, tc.obs_queue)  # every observation counts (history): queue, never conflate
        self.tele.setsockopt(zmq.SNDHWM, 10)
        self.pull.setsockopt(zmq.RCVHWM, 32)
        for s in (self.pub, self.tele):  # subscriptions queued per peer: a flood of them waits in TCP
            s.setsockopt(zmq.RCVHWM, 16)
        try:
            self.addrs = self._bind(host, port)
        except zmq.ZMQError as e:  # close what was opened (sockets, the ZAP thread) before saying why
            self.close()
            ports = f"{port}-{port + 2}" if port else "random ports"
            raise DaemonError(f"cannot bind the daemon's sockets on {host} ({ports}): {e}; another daemon "
                              "may be running there -- stop it or pass another port=") from None

    @property
    def _sockets(self) -> tuple[zmq.Socket, ...]:
        return self.pub, self.pull, self.tele

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

    # --- curve -----------------------------------------------------------------------------------------
    def worker_curve_env(self) -> dict[str, str]:
        """Environment entries for a local worker about to start: with curve on, a fresh client key pair
        (admitted by the allow-list, the previous worker's key discarded) and the server's public key."""
        if self.curve is None:
            return {}
        if self.allow_list is not None and self._worker_keys is not None:
            self.allow_list.discard(self._worker_keys.public)
        self._worker_keys = KeyPair.generate()
        if self.allow_list is not None:
            self.allow_list.add(self._worker_keys.public)
        return {SERVER_PUBLIC_ENV: self.curve.keys.public.decode(), CLIENT_SECRET_ENV: self._worker_keys.secret.decode()}

    def curve_status(self) -> dict[str, Any]:
        return {"on": self.curve is not None, "allow_list": self.allow_list is not None,
                "denied_handshakes": self.allow_list.denied if self.allow_list is not None else 0}

    def curve_hint(self) -> str:
        """Why a worker may not have said hello, when curve is on ("" otherwise)."""
        if self.curve is None:
            return ""
        return (" (curve is on: the worker needs the server's public key, --server-key"
                + (", and a client key listed in transport.curve_allowed_clients, --client-key; "
                   f"{self.allow_list.denied} handshakes were refused" if self.allow_list is not None else "")
                + ")")

    # --- messages -------------------------------------------------------------------------------------
    def recv(self, timeout_ms: int) -> Message | None:
        """The next valid message on the chunk socket within ``timeout_ms``, or None (nothing, a rejected
        frame -- counted by reason in ``dec.rejected`` -- or the read budget spent: then it waits for
        the budget instead, at most ``timeout_ms``)."""
        now = time.monotonic()
        self._tokens = min(self.rate / 10, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens < 1.0:
            time.sleep(min(timeout_ms / 1000, (1.0 - self._tokens) / self.rate))
            return None
        if not self.pull.poll(timeout_ms):
            return None
        self._tokens -= 1.0
        msg, why = self.dec.decode(self.pull.recv())
        if msg is None:
            self.on_reject(why)
        return msg

    def publish_obs(self, **body: Any) -> None:
        self.pub.send(self.enc.encode("obs", **body), zmq.NOBLOCK)

    def beat(self) -> None:
        """Tell listening workers the daemon waits for their hello (``transport.SCHEMAS['beat']``)."""
        self.pub.send(self.enc.encode("beat"), zmq.NOBLOCK)

    def publish_telemetry(self, status: str) -> None:
        self.tele.send(self.enc.encode("telemetry", status=status))

    def close(self) -> None:
        for s in self._sockets:
            s.close(0)
        if self.allow_list is not None:
            self.allow_list.stop()
        self._ctx.term()
