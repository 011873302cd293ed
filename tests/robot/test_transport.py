"""Transport: round trip, malformed, oversized, bad token, replay, stale timestamps, schema."""

import hashlib
import hmac
import time

import msgpack
import numpy as np
import pytest
import zmq

from policystack.robot.transport import MAC_BYTES, Decoder, Encoder, configure_socket

TOKEN = b"0123456789abcdef-test-token"


def chunk_body(**over):
    body = dict(episode=0, obs_seq=1, t_obs=1.5, dt=0.1, actions=np.arange(16, dtype=np.float32).reshape(2, 8),
                infer_s=0.01, obs_missed=0, replans_skipped=0, done_step=-1)
    body.update(over)
    return body


def test_round_trip_keeps_types_and_values():
    enc, dec = Encoder(TOKEN), Decoder(TOKEN)
    imgs = {"front": np.random.default_rng(0).integers(0, 255, (3, 8, 8), dtype=np.uint8)}
    frame = enc.encode("obs", episode=3, obs_seq=7, t_obs=2.0, dt=0.1, task="pick", reset=True, seed=5,
                       replan=False, state=np.linspace(0, 1, 15, dtype=np.float32), env_state=np.zeros(0, np.float32),
                       images=imgs)
    msg, why = dec.decode(frame)
    assert why == "" and msg.kind == "obs" and msg.seq == 1 and msg.sender == enc.sender
    b = msg.body
    assert b["state"].dtype == np.float32 and b["state"].shape == (15,) and b["env_state"].shape == (0,)
    np.testing.assert_array_equal(b["images"]["front"], imgs["front"])
    assert b["task"] == "pick" and b["reset"] is True and b["episode"] == 3 and b["replan"] is False
    msg, why = dec.decode(enc.encode("chunk", **chunk_body()))
    np.testing.assert_array_equal(msg.body["actions"], chunk_body()["actions"])


def _resign(payload: bytes, token: bytes = TOKEN) -> bytes:
    return payload + hmac.new(token, payload, hashlib.sha256).digest()


def _payload(**over):
    d = {"v": 1, "kind": "chunk", "sender": "s", "seq": 1, "ts": time.time(),
         "body": {"episode": 0, "obs_seq": 1, "t_obs": 1.0, "dt": 0.1, "infer_s": 0.0, "obs_missed": 0,
                  "replans_skipped": 0, "done_step": -1,
                  "actions": {"dtype": "float32", "shape": [1, 8], "data": b"\0" * 32}}}
    d.update(over)
    return msgpack.packb(d, use_bin_type=True)


@pytest.mark.parametrize("frame,reason", [
    (lambda: b"", "short"),
    (lambda: b"\x00" * 10, "short"),
    (lambda: b"\xff" * 100, "auth"),  # garbage
    (lambda: _resign(b"\xc1\xc1\xc1 not msgpack"), "malformed"),
    (lambda: _resign(msgpack.packb([1, 2, 3])), "schema"),
    (lambda: _resign(_payload(kind="pickle")), "kind"),
    (lambda: _resign(_payload(v=2)), "version"),
    (lambda: _resign(_payload(body={"episode": 0})), "schema"),
    (lambda: _resign(_payload(seq="1")), "seq"),
    (lambda: _resign(msgpack.packb({"v": 1, "kind": "chunk", "sender": "s", "seq": 1, "ts": time.time(),
                            "body": {"episode": 0, "obs_seq": 1, "t_obs": 1.0, "dt": 0.1, "infer_s": 0.0,
                                     "actions": {"dtype": "float32", "shape": [1, 8], "data": b"\0" * 31}}},
                           use_bin_type=True)), "schema"),  # byte count does not match the shape
    (lambda: _resign(msgpack.packb({"v": 1, "kind": "chunk", "sender": "s", "seq": 1, "ts": time.time(),
                            "body": {"episode": 0, "obs_seq": 1, "t_obs": 1.0, "dt": 0.1, "infer_s": 0.0,
                                     "actions": {"dtype": "object", "shape": [1], "data": b"x"}}},
                           use_bin_type=True)), "schema"),  # no object arrays
    (lambda: _resign(msgpack.packb(msgpack.ExtType(1, b"evil"))), "malformed"),  # no ext types
])
def test_malformed_frames_are_rejected_with_a_reason(frame, reason):
    msg, why = Decoder(TOKEN).decode(frame())  # built now: the timestamps are fresh
    assert msg is None and why.startswith(reason), why


def test_non_bytes_frame_is_rejected():
    assert Decoder(TOKEN).decode(12345)[0] is None


def test_bad_token_and_tampering_are_rejected():
    frame = Encoder(b"another-token-of-16+chars").encode("chunk", **chunk_body())
    assert Decoder(TOKEN).decode(frame)[1].startswith("auth")
    good = bytearray(Encoder(TOKEN).encode("chunk", **chunk_body()))
    good[20] ^= 1
    assert Decoder(TOKEN).decode(bytes(good))[1].startswith("auth")


def test_replay_and_reordering_are_rejected():
    enc, dec = Encoder(TOKEN), Decoder(TOKEN)
    f1, f2 = enc.encode("chunk", **chunk_body()), enc.encode("chunk", **chunk_body())
    assert dec.decode(f2)[0] is not None
    assert dec.decode(f2)[1].startswith("replay")
    assert dec.decode(f1)[1].startswith("replay")  # older seq from the same sender
    assert Decoder(TOKEN).decode(f1)[0] is not None  # a fresh receiver accepts it
    assert dec.rejected["replay"] == 2


def test_old_and_future_timestamps_are_rejected():
    dec = Decoder(TOKEN, window_s=2.0)
    assert dec.decode(_resign(_payload(ts=time.time() - 10)))[1].startswith("stale")
    assert dec.decode(_resign(_payload(ts=time.time() + 10)))[1].startswith("stale")
    assert dec.decode(_resign(_payload(ts=time.time())))[0] is not None


def test_oversized_is_rejected_by_decoder_and_encoder():
    dec = Decoder(TOKEN, max_bytes=4096)
    big = Encoder(TOKEN).encode("chunk", **chunk_body(actions=np.zeros((200, 8), np.float32)))
    assert len(big) > 4096 and dec.decode(big)[1].startswith("oversized")
    with pytest.raises(ValueError, match="limit"):
        Encoder(TOKEN, max_bytes=4096).encode("chunk", **chunk_body(actions=np.zeros((200, 8), np.float32)))


def test_encoder_checks_the_schema():
    with pytest.raises(KeyError, match="kind"):
        Encoder(TOKEN).encode("shell", cmd="rm")
    with pytest.raises(KeyError, match="body keys"):
        Encoder(TOKEN).encode("chunk", episode=0)


def test_zmq_maxmsgsize_drops_oversized_frames_on_loopback():
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        configure_socket(pull, 4096)
        push.setsockopt(zmq.LINGER, 0)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        push.send(b"x" * 100_000)  # libzmq drops the connection on this one
        assert not pull.poll(300)
        push.close(0)
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(f"tcp://127.0.0.1:{port}")
        frame = Encoder(TOKEN).encode("chunk", **chunk_body())
        push.send(frame)
        assert pull.poll(2000)
        msg, why = Decoder(TOKEN).decode(pull.recv())
        assert msg is not None, why
    finally:
        pull.close(0)
        push.close(0)
        ctx.term()


def test_mac_is_sha256_sized():
    frame = Encoder(TOKEN).encode("chunk", **chunk_body())
    assert hmac.new(TOKEN, frame[:-MAC_BYTES], hashlib.sha256).digest() == frame[-MAC_BYTES:]
