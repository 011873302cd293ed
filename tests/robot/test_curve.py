"""CurveZMQ on real loopback sockets: round trips, ciphertext on the wire, refused clients (wrong
server key, not in the allow-list, plaintext), key files and their errors, the keys command."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time

import numpy as np
import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from policystack.robot import commands
from policystack.robot.config import TransportConfig, load_robot_config
from policystack.robot.curve import (
    CLIENT_SECRET_ENV,
    SERVER_PUBLIC_ENV,
    AllowList,
    ClientCurve,
    KeyFileError,
    KeyPair,
    ServerCurve,
    curve_server,
    load_allowed_keys,
    load_key_pair,
    load_public_key,
    write_key_pair,
)
from policystack.robot.supervisor import DaemonConfig, Supervisor
from policystack.robot.transport import Decoder, Encoder, configure_socket

TOKEN = b"curve-test-token-0123456789"
MARKER = "pick-the-marker-cube-7f3a"  # a task string to look for on the wire
FAILED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL}


def obs_frame(enc: Encoder) -> bytes:
    return enc.encode("obs", episode=0, obs_seq=1, t_obs=1.0, dt=0.1, task=MARKER, reset=True, seed=0,
                      replan=True, state=np.arange(8, dtype=np.float32), env_state=np.zeros(0, np.float32), images={})


class Pair:
    """A daemon-like server context (PUB + PULL bound, optional allow-list) and a client context."""

    def __init__(self, server: KeyPair | None, allowed: list[bytes] | None = None):
        self.sctx, self.cctx = zmq.Context(), zmq.Context()
        self.allow = AllowList(self.sctx, allowed) if allowed is not None else None
        self.pub, self.pull = self.sctx.socket(zmq.PUB), self.sctx.socket(zmq.PULL)
        self.sockets = [self.pub, self.pull]
        for s in (self.pub, self.pull):
            configure_socket(s, 1 << 20)
            if server is not None:
                curve_server(s, server)
        self.pub_addr = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"
        self.pull_addr = f"tcp://127.0.0.1:{self.pull.bind_to_random_port('tcp://127.0.0.1')}"

    def client(self, kind: int, addr: str, curve: ClientCurve | None):
        s = self.cctx.socket(kind)
        configure_socket(s, 1 << 20)
        if curve is not None:
            curve.apply(s)
        if kind == zmq.SUB:
            s.setsockopt(zmq.SUBSCRIBE, b"")
        mon = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        s.connect(addr)
        self.sockets += [s, mon]
        return s, mon

    def close(self):
        for s in self.sockets:
            s.close(0)
        if self.allow is not None:
            self.allow.stop()
        self.sctx.term()
        self.cctx.term()


def handshake(mon: zmq.Socket, timeout: float = 5.0) -> int:
    """The first handshake outcome a client's monitor reports."""
    if not mon.poll(int(timeout * 1000)):
        raise AssertionError("no handshake event")
    return recv_monitor_message(mon)["event"]


def published(pair: Pair, sub: zmq.Socket, frame: bytes, within: float = 3.0) -> bytes | None:
    """Publish ``frame`` until ``sub`` has it (PUB drops what it sends before a subscriber joins)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        pair.pub.send(frame)
        if sub.poll(50):
            return sub.recv()
    return None


def _try_send(sock: zmq.Socket, frame: bytes) -> None:
    """Queue ``frame`` if the socket takes it (a connecting PUSH may queue or refuse)."""
    try:
        sock.send(frame, zmq.NOBLOCK)
    except zmq.Again:
        pass


@pytest.fixture
def keys():
    return {"server": KeyPair.generate(), "worker": KeyPair.generate(), "stranger": KeyPair.generate()}


def test_pub_sub_and_push_pull_round_trip_over_curve_with_an_allow_list(keys):
    pair = Pair(keys["server"], allowed=[keys["worker"].public])
    try:
        curve = ClientCurve(keys["server"].public, keys["worker"])
        sub, mon_sub = pair.client(zmq.SUB, pair.pub_addr, curve)
        push, mon_push = pair.client(zmq.PUSH, pair.pull_addr, curve)
        assert handshake(mon_sub) == handshake(mon_push) == zmq.EVENT_HANDSHAKE_SUCCEEDED
        frame = published(pair, sub, obs_frame(Encoder(TOKEN)))
        msg, why = Decoder(TOKEN, kinds=("obs",)).decode(frame)
        assert msg is not None and msg.body["task"] == MARKER, why
        push.send(Encoder(TOKEN).encode("hello", policy="bc", horizon=8, n_action_steps=4, action_dim=8,
                                           state_dim=15, images={}, error=""))
        assert pair.pull.poll(3000)
        msg, why = Decoder(TOKEN, kinds=("hello",)).decode(pair.pull.recv())
        assert msg is not None and msg.body["policy"] == "bc", why
        assert pair.allow.denied == 0
    finally:
        pair.close()


class Relay:
    """A TCP relay between a client and a server that keeps every byte it forwards."""

    def __init__(self, target_port: int):
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.target, self.seen, self.lock = target_port, bytearray(), threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        conn, _ = self.lsock.accept()
        up = socket.create_connection(("127.0.0.1", self.target))
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket):
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass


@pytest.mark.parametrize("encrypted", [True, False])
def test_only_ciphertext_crosses_the_wire_with_curve_on(keys, encrypted):
    pair = Pair(keys["server"] if encrypted else None)
    relay = Relay(int(pair.pull_addr.rsplit(":", 1)[1]))
    try:
        curve = ClientCurve(keys["server"].public, keys["worker"]) if encrypted else None
        push, _ = pair.client(zmq.PUSH, f"tcp://127.0.0.1:{relay.port}", curve)
        push.send(obs_frame(Encoder(TOKEN)))
        assert pair.pull.poll(3000)
        msg, why = Decoder(TOKEN).decode(pair.pull.recv())
        assert msg is not None and msg.body["task"] == MARKER, why  # delivered intact either way
        with relay.lock:
            wire = bytes(relay.seen)
        assert len(wire) > 100
        assert (MARKER.encode() in wire) is not encrypted  # plaintext without curve, hidden with it
    finally:
        pair.close()
        relay.lsock.close()


def test_a_client_with_the_wrong_server_key_receives_nothing(keys):
    pair = Pair(keys["server"])
    try:
        wrong, wrong_mon = pair.client(zmq.SUB, pair.pub_addr, ClientCurve(keys["stranger"].public, keys["worker"]))
        right, _ = pair.client(zmq.SUB, pair.pub_addr, ClientCurve(keys["server"].public, keys["worker"]))
        assert handshake(wrong_mon) in FAILED
        assert published(pair, right, obs_frame(Encoder(TOKEN))) is not None  # the server does publish
        for _ in range(5):
            pair.pub.send(obs_frame(Encoder(TOKEN)))
        assert right.poll(1000) and not wrong.poll(300)
    finally:
        pair.close()


def test_a_client_not_in_the_allow_list_is_refused(keys):
    pair = Pair(keys["server"], allowed=[keys["worker"].public])
    try:
        stranger, mon = pair.client(zmq.PUSH, pair.pull_addr, ClientCurve(keys["server"].public, keys["stranger"]))
        assert handshake(mon) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        assert pair.allow.denied >= 1
        _try_send(stranger, b"from a stranger")
        assert not pair.pull.poll(300)
        stranger.close(0)
        pair.allow.add(keys["stranger"].public)  # admitted while running (how a local worker's key gets in)
        late, mon2 = pair.client(zmq.PUSH, pair.pull_addr, ClientCurve(keys["server"].public, keys["stranger"]))
        assert handshake(mon2) == zmq.EVENT_HANDSHAKE_SUCCEEDED
        late.send(b"admitted")
        assert pair.pull.poll(3000) and pair.pull.recv() == b"admitted"
    finally:
        pair.close()


def test_a_plaintext_client_cannot_talk_to_a_curve_server(keys):
    pair = Pair(keys["server"])
    try:
        push, mon_push = pair.client(zmq.PUSH, pair.pull_addr, None)
        sub, mon_sub = pair.client(zmq.SUB, pair.pub_addr, None)
        assert handshake(mon_push) in FAILED and handshake(mon_sub) in FAILED
        _try_send(push, obs_frame(Encoder(TOKEN)))
        for _ in range(5):
            pair.pub.send(obs_frame(Encoder(TOKEN)))
        assert not pair.pull.poll(300) and not sub.poll(300)
    finally:
        pair.close()


# --- key files ----------------------------------------------------------------------------------------
def test_keys_command_writes_zeromq_certificates_and_0600_secrets(tmp_path, capsys):
    d = tmp_path / "keys"
    assert commands.main(["keys", str(d)]) == 0
    assert commands.main(["keys", str(d), "name=worker1"]) == 0
    for name in ("server", "worker1"):
        secret, public = d / f"{name}.key_secret", d / f"{name}.key"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert stat.S_IMODE(public.stat().st_mode) == 0o644
        pub, sec = zmq.auth.load_certificate(secret)  # ZeroMQ's own reader
        assert zmq.curve_public(sec) == pub and zmq.auth.load_certificate(public) == (pub, None)
        assert load_key_pair(secret) == KeyPair(pub, sec)
    assert not list(d.glob(".*"))  # no temporary files left behind
    before = (d / "server.key_secret").read_bytes()
    capsys.readouterr()
    assert commands.main(["keys", str(d)]) == 2  # never overwrites a key
    assert "exists" in capsys.readouterr().err
    assert (d / "server.key_secret").read_bytes() == before
    assert load_allowed_keys(d) == {load_public_key(d / "server.key"), load_public_key(d / "worker1.key")}


def test_certificates_made_by_zmq_auth_load(tmp_path):
    public, secret = zmq.auth.create_certificates(tmp_path, "w")
    os.chmod(secret, 0o600)
    pair = load_key_pair(secret)
    assert load_public_key(public) == pair.public
    os.chmod(secret, 0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        load_key_pair(secret)


def _bad_files(tmp_path):
    good = KeyPair.generate()
    other = KeyPair.generate()
    public_only = tmp_path / "pub.key"
    public_only.write_text(f'curve\n    public-key = "{good.public.decode()}"\n')
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n not a certificate")
    short = tmp_path / "short.key_secret"
    short.write_text('curve\n    public-key = "abc"\n    secret-key = "def"\n')
    mixed = tmp_path / "mixed.key_secret"
    mixed.write_text(f'curve\n    public-key = "{other.public.decode()}"\n    secret-key = "{good.secret.decode()}"\n')
    badchars = tmp_path / "badchars.key_secret"
    badchars.write_text(f'curve\n    public-key = "{good.public.decode()}"\n    secret-key = "{"~" * 40}"\n')
    return {"missing": (tmp_path / "nope.key_secret", "no such key file"),
            "public only": (public_only, "public key only"), "garbage": (garbage, "no 'public-key"),
            "short": (short, "40-character"), "mixed": (mixed, "does not belong"), "badchars": (badchars, "Z85")}


@pytest.mark.parametrize("case", ["missing", "public only", "garbage", "short", "mixed", "badchars"])
def test_bad_server_key_fails_before_any_socket_is_bound(tmp_path, case):
    path, expected = _bad_files(tmp_path)[case]
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    robot = load_robot_config("sim", {"transport.curve_server_secret": str(path)})
    with pytest.raises(KeyFileError, match=expected) as e:
        Supervisor(DaemonConfig(robot=robot, token=TOKEN, port=port, log=lambda s: None))
    assert str(path) in str(e.value)
    with socket.create_server(("127.0.0.1", port)):  # nothing was bound on it
        pass


def test_bad_allow_list_fails_with_the_directory_named(tmp_path):
    server = write_key_pair(tmp_path / "k", "server")[1]
    with pytest.raises(KeyFileError, match="no such directory"):
        ServerCurve.load(str(server), str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyFileError, match=r"no client public keys \(\*\.key\)"):
        ServerCurve.load(str(server), str(tmp_path / "empty"))
    (tmp_path / "empty" / "broken.key").write_text("public-key = \"short\"\n")
    with pytest.raises(KeyFileError, match="broken.key"):
        ServerCurve.load(str(server), str(tmp_path / "empty"))


def test_config_rejects_an_allow_list_without_a_server_key():
    with pytest.raises(ValueError, match="curve_allowed_clients needs"):
        TransportConfig(curve_allowed_clients="/tmp/clients")
    with pytest.raises(ValueError, match="curve_server_secret"):
        TransportConfig(curve_server_secret="")
    assert TransportConfig().curve_server_secret is None  # curve is opt-in


def test_client_keys_resolve_from_files_env_or_a_one_off_pair(tmp_path):
    pub, sec = write_key_pair(tmp_path, "server")
    server = load_key_pair(sec)
    assert ClientCurve.resolve() is None and ClientCurve.resolve(env={}) is None  # curve off
    c = ClientCurve.resolve(str(pub))
    assert c.server_public == server.public and c.keys != ClientCurve.resolve(str(pub)).keys  # one-off pairs
    assert ClientCurve.resolve(str(pub), str(sec)).keys == server
    env = {SERVER_PUBLIC_ENV: server.public.decode(), CLIENT_SECRET_ENV: server.secret.decode()}
    assert ClientCurve.resolve(env=env) == ClientCurve(server.public, server)
    with pytest.raises(KeyFileError, match=f"\\${CLIENT_SECRET_ENV}"):
        ClientCurve.resolve(env={**env, CLIENT_SECRET_ENV: "short"})
    with pytest.raises(KeyFileError, match="without the server's public key"):
        ClientCurve.resolve(client_key=str(sec))


def test_worker_and_status_name_a_bad_key_file(tmp_path, capsys, monkeypatch):
    from policystack.robot import worker

    missing = tmp_path / "server.key"
    with pytest.raises(SystemExit) as e:
        worker.main(["--checkpoint", str(tmp_path), "--connect", "tcp://127.0.0.1:1", "--server-key", str(missing)])
    assert e.value.code == 2 and str(missing) in capsys.readouterr().err
    monkeypatch.setenv("POLICYSTACK_DAEMON_TOKEN", TOKEN.decode())
    assert commands.main(["status", "telemetry=tcp://127.0.0.1:1", f"server_key={missing}"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_a_taken_port_fails_clearly_and_leaves_no_thread_behind(tmp_path):
    import threading

    from policystack.robot.supervisor import DaemonError

    server = write_key_pair(tmp_path / "k", "server")[1]
    write_key_pair(tmp_path / "clients", "operator")
    robot = load_robot_config("sim", {"transport.curve_server_secret": str(server),
                                      "transport.curve_allowed_clients": str(tmp_path / "clients")})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1] - 1  # the chunk socket (port + 1) is the one taken
        threads = threading.active_count()
        with pytest.raises(DaemonError, match=rf"cannot bind .*\({port}-{port + 2}\).*another port="):
            Supervisor(DaemonConfig(robot=robot, token=TOKEN, port=port, log=lambda s: None))
        assert threading.active_count() == threads  # the allow-list's ZAP thread was stopped
