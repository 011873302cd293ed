"""CurveZMQ for the daemon's sockets: encryption plus, optionally, an allow-list of client keys.

Opt-in, on top of the HMAC token of ``transport.py`` (which stays: defence in depth). With curve
on, the daemon's bound sockets (observations PUB, chunks PULL, telemetry PUB) are CURVE servers
holding the server key pair; a policy worker and ``policystack daemon status`` connect as CURVE
clients that know the server's public key. A client with the wrong server key, a plaintext client
and (with an allow-list) a client whose public key is not listed never complete the handshake, so
nothing reaches them and nothing of theirs reaches the decoder.

Keys are ZeroMQ certificates, the files of ``zmq.auth.create_certificates`` (or ``policystack
daemon keys DIR name=NAME``): ``NAME.key`` holds the public key, ``NAME.key_secret`` the pair
(keep it mode 0600). Keys are Z85 text, 40 characters for 32 bytes.

One socket helper per role (``curve_server`` / ``curve_client``), used by the supervisor, the
worker and ``daemon status``; ``AllowList`` runs ZeroMQ's ZAP handler (``ThreadAuthenticator``)
for one context.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85

# the supervisor hands a local worker its keys through these (never on the command line)
SERVER_PUBLIC_ENV = "POLICYSTACK_CURVE_SERVER_PUBLIC"
CLIENT_SECRET_ENV = "POLICYSTACK_CURVE_CLIENT_SECRET"
# the ZAP domain of the daemon's sockets: with one set, libzmq refuses at the greeting a peer that does
# not speak ZMTP 3 (random bytes on the port) instead of taking it as a ZMTP 1.0 peer (channels.py)
ZAP_DOMAIN = b"policystack"
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CERT_HELP = "a ZeroMQ certificate (zmq.auth.create_certificates or `policystack daemon keys DIR`)"


class KeyFileError(ValueError):
    """A key file (or key variable) is missing, unreadable or not a valid CURVE key."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # Z85, 40 bytes
    secret: bytes = b""  # Z85, 40 bytes; b"" when only the public key is known

    @classmethod
    def generate(cls) -> KeyPair:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    @classmethod
    def from_secret(cls, secret: bytes, where: str) -> KeyPair:
        """The pair of a Z85 secret key (the public key is derived from it)."""
        secret = _z85_key(secret, where, "secret-key")
        return cls(zmq.curve_public(secret), secret)


def _z85_key(value: bytes | str, where: str, what: str) -> bytes:
    key = value.encode() if isinstance(value, str) else bytes(value)
    if len(key) != 40:
        raise KeyFileError(f"{where}: {what} is {len(key)} characters; expected a 40-character Z85 CURVE key")
    try:
        raw = z85.decode(key)
    except (ValueError, KeyError, IndexError):
        raw = b""
    if len(raw) != 32:
        raise KeyFileError(f"{where}: {what} is not valid Z85 (expected 40 characters of ZeroMQ's Z85 alphabet)")
    return key


def _read_certificate(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret or b"") of a certificate file; every failure names the file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise KeyFileError(f"{p}: no such key file; expected {_CERT_HELP}")
    try:
        with open(p, "rb"):
            pass
        public, secret = zmq.auth.load_certificate(p)
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read the key file ({e.strerror or e})") from None
    except ValueError:
        raise KeyFileError(f"{p}: no 'public-key = \"...\"' line; expected {_CERT_HELP}") from None
    public = _z85_key(public, str(p), "public-key")
    return public, _z85_key(secret, str(p), "secret-key") if secret else b""


def load_public_key(path: str | os.PathLike) -> bytes:
    """The public key of a certificate (``NAME.key``, or the pair's ``NAME.key_secret``)."""
    return _read_certificate(path)[0]


def load_key_pair(path: str | os.PathLike) -> KeyPair:
    """The key pair of a secret certificate (``NAME.key_secret``); checks that the two keys belong
    together and warns when others may read the file."""
    public, secret = _read_certificate(path)
    p = Path(path).expanduser()
    if not secret:
        raise KeyFileError(f"{p}: holds a public key only; expected the secret certificate (NAME.key_secret)")
    if zmq.curve_public(secret) != public:
        raise KeyFileError(f"{p}: public-key does not belong to secret-key (edited or mixed-up file)")
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(f"{p}: secret key file is readable by other users (mode "
                      f"{stat.S_IMODE(p.stat().st_mode):o}); run `chmod 600 {p}`", stacklevel=2)
    return KeyPair(public, secret)


def load_allowed_keys(directory: str | os.PathLike) -> frozenset[bytes]:
    """The public keys of every ``*.key`` certificate in ``directory`` (an allow-list)."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise KeyFileError(f"{d}: no such directory; expected a directory of client public keys (*.key)")
    files = sorted(d.glob("*.key"))
    if not files:
        raise KeyFileError(f"{d}: no client public keys (*.key) in it: no client could connect")
    return frozenset(load_public_key(f) for f in files)


def write_key_pair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write a new key pair as ``DIR/NAME.key`` (public, 0644) and ``DIR/NAME.key_secret`` (0600),
    each atomically, in ZeroMQ's certificate format. Existing files are never overwritten."""
    from policystack.io import atomic_writer

    if not KEY_NAME.match(name):
        raise ValueError(f"key name {name!r}: expected letters, digits, '_', '.', '-'")
    d = Path(directory).expanduser()
    public_path, secret_path = d / f"{name}.key", d / f"{name}.key_secret"
    for p in (public_path, secret_path):
        if p.exists():
            raise KeyFileError(f"{p} exists; not overwriting a key (remove it or choose another name=)")
    keys = KeyPair.generate()
    body = f'metadata\ncurve\n    public-key = "{keys.public.decode()}"\n'
    with atomic_writer(secret_path) as f:  # mkstemp: created 0600, so the secret is never exposed
        f.write(("#   ZeroMQ CURVE **Secret** Certificate (policystack daemon keys)\n"
                 "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"
                 f'{body}    secret-key = "{keys.secret.decode()}"\n').encode())
    with atomic_writer(public_path) as f:
        f.write(f"#   ZeroMQ CURVE Public Certificate (policystack daemon keys)\n\n{body}".encode())
        os.fchmod(f.fileno(), 0o644)
    return public_path, secret_path


# --- sockets -----------------------------------------------------------------------------------------
def curve_server(sock: zmq.Socket, keys: KeyPair) -> None:
    """Make ``sock`` a CURVE server (before bind)."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)


def curve_client(sock: zmq.Socket, server_public: bytes, keys: KeyPair) -> None:
    """Make ``sock`` a CURVE client of the server with ``server_public`` (before connect)."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


@dataclass(frozen=True)
class ServerCurve:
    """The daemon's side: its key pair and, optionally, the allowed client public keys."""

    keys: KeyPair
    allowed: frozenset[bytes] | None = None  # None: any client that knows the server's public key

    @classmethod
    def load(cls, secret_path: str, allowed_dir: str | None = None) -> ServerCurve:
        return cls(load_key_pair(secret_path), load_allowed_keys(allowed_dir) if allowed_dir else None)


@dataclass(frozen=True)
class ClientCurve:
    """A client's side: the server's public key and this client's key pair."""

    server_public: bytes
    keys: KeyPair

    def apply(self, sock: zmq.Socket) -> None:
        curve_client(sock, self.server_public, self.keys)

    @classmethod
    def resolve(cls, server_key: str | None = None, client_key: str | None = None,
                env: Mapping[str, str] | None = None) -> ClientCurve | None:
        """From files (``server_key``: the server's ``.key``; ``client_key``: this client's
        ``.key_secret``), else from ``env`` (what the supervisor gives a local worker); the client
        pair is ephemeral when none is given (enough unless the daemon has an allow-list).
        None: curve off."""
        env = env or {}
        if server_key:
            server_public = load_public_key(server_key)
        elif env.get(SERVER_PUBLIC_ENV):
            server_public = _z85_key(env[SERVER_PUBLIC_ENV], f"${SERVER_PUBLIC_ENV}", "the server key")
        else:
            if client_key or env.get(CLIENT_SECRET_ENV):
                raise KeyFileError("a client key was given without the server's public key: give the "
                                   "server key (worker --server-key, status server_key=) as well")
            return None
        if client_key:
            keys = load_key_pair(client_key)
        elif env.get(CLIENT_SECRET_ENV):
            keys = KeyPair.from_secret(env[CLIENT_SECRET_ENV].encode(), f"${CLIENT_SECRET_ENV}")
        else:
            keys = KeyPair.generate()
        return cls(server_public, keys)


class AllowList:
    """ZeroMQ's ZAP handler for ``ctx``: a CURVE client is accepted only if its public key is in
    the set. Start it before binding; ``add`` / ``discard`` change the set while it runs (the
    supervisor admits each local worker's ephemeral key). ``denied`` counts refused handshakes."""

    def __init__(self, ctx: zmq.Context, keys: Iterable[bytes]):
        from zmq.auth.thread import ThreadAuthenticator

        self._keys = set(keys)
        self._lock = threading.Lock()
        self.denied = 0
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        for domain in ("*", ZAP_DOMAIN.decode()):  # sockets without a ZAP domain, and the daemon's
            self._auth.configure_curve_callback(domain, credentials_provider=self)

    def callback(self, domain: Any, key: bytes) -> bool:  # called by the authenticator's thread
        with self._lock:
            ok = bytes(key) in self._keys
            self.denied += not ok
        return ok

    def add(self, key: bytes) -> None:
        with self._lock:
            self._keys.add(key)

    def discard(self, key: bytes) -> None:
        with self._lock:
            self._keys.discard(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def stop(self) -> None:
        self._auth.stop()
