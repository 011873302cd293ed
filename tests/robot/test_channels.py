"""The daemon's sockets drop junk early and cheaply: raw bytes never get past libzmq's greeting,
oversized frames never reach the decoder, reading is capped by the frame budget, and rejections are
logged at a bounded rate (one summary per interval), never one line per frame."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import zmq

from policystack.robot import transport
from policystack.robot.channels import Channels
from policystack.robot.config import TransportConfig
from policystack.robot.transport import Encoder, RejectionLog, inbound_max_bytes

TOKEN = b"channels-test-token-0123456789"


@pytest.fixture
def channels():
    rejected: list[str] = []
    ch = Channels(TransportConfig(max_frames_per_s=100), TOKEN, "127.0.0.1", 0, inbound_max_bytes(8, 256),
                  on_reject=rejected.append)
    ch.rejected_reasons = rejected
    yield ch
    ch.close()


def chunk_frame(enc: Encoder) -> bytes:
    return enc.encode("chunk", episode=0, obs_seq=1, t_obs=0.0, dt=0.1, infer_s=0.0, obs_missed=0, replans_skipped=0,
                      actions=np.zeros((4, 8), np.float32))


def drain(ch: Channels, seconds: float) -> list:
    end, got = time.monotonic() + seconds, []
    while time.monotonic() < end:
        msg = ch.recv(10)
        if msg is not None:
            got.append(msg)
    return got


def test_raw_bytes_never_reach_the_decoder_and_oversized_frames_are_dropped_by_libzmq(channels):
    host, port = channels.addrs["chunks"].removeprefix("tcp://").rsplit(":", 1)
    rng = np.random.default_rng(0)
    for _ in range(20):  # random bytes: no ZMTP 3 greeting, refused before anything is read
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(rng.bytes(int(rng.integers(1, 4096))))
    ctx = zmq.Context()
    big, good = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    for s in (big, good):
        s.setsockopt(zmq.LINGER, 0)
        s.connect(channels.addrs["chunks"])
    try:
        big.send(b"\0" * (inbound_max_bytes(8, 256) + 1))  # dropped with its connection by libzmq
        good.send(chunk_frame(Encoder(TOKEN)))
        got = drain(channels, 1.0)
    finally:
        big.close(0)
        good.close(0)
        ctx.term()
    assert [m.kind for m in got] == ["chunk"]
    assert channels.rejected_reasons == [] and channels.dec.rejected == {}


def test_reading_is_capped_by_the_frame_budget_and_a_valid_frame_still_gets_through(channels):
    ctx = zmq.Context()
    junk, good = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    for s in (junk, good):
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDTIMEO, 0)
        s.connect(channels.addrs["chunks"])
    try:
        time.sleep(0.2)
        for _ in range(2000):  # far more than 1 s of budget at 100 frames/s
            try:
                junk.send(b"\xff" * 64)
            except zmq.Again:
                break
        good.send(chunk_frame(Encoder(TOKEN)))  # fair-queued: read after at most one junk frame
        t0 = time.monotonic()
        got = drain(channels, 1.0)
        elapsed = time.monotonic() - t0
    finally:
        junk.close(0)
        good.close(0)
        ctx.term()
    reads = len(channels.rejected_reasons) + len(got)
    assert [m.kind for m in got] == ["chunk"]
    assert 0 < reads <= 100 * elapsed + 10 + 5  # the rate, the initial burst (0.1 s), one refill's slack


def test_rejections_are_logged_once_then_summarised_per_interval(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(transport.time, "monotonic", lambda: now[0])
    lines: list[str] = []
    log = RejectionLog(lines.append, interval_s=10.0, where=" on the chunk socket")
    for i in range(10_000):
        log.add("auth: bad HMAC" if i % 4 else "short: 3 bytes")
        now[0] += 0.0001  # 10,000 frames in 1 s
    assert len(lines) == 1 and lines[0].startswith("rejected a frame on the chunk socket: short: 3 bytes")
    now[0] += 9.5
    log.poll()
    assert len(lines) == 2 and "rejected 9999 frames on the chunk socket in the last 11 s (auth 7500, short 2499)" \
        in lines[1]
    log.poll()
    assert len(lines) == 2 and log.total == 10_000  # nothing new: no line
