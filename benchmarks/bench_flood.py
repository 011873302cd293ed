"""The daemon under a flood: every bound socket flooded with junk from loopback, against the same
daemon's no-flood window measured just before.

One ``policystack daemon run robot=sim`` (a small BC checkpoint, a local worker, one long episode);
first ``--baseline`` seconds with no flood, then ``--flood`` seconds during which flooder processes
send, as fast as they can:

- to the command/chunk socket (PULL): random bytes, truncated msgpack (valid signed frames cut
  short), pickle payloads (a ``__reduce__`` that would create a file if anything unpickled it),
  oversized frames (above the socket's size cap: libzmq drops the connection), and frames signed
  with the daemon's token but invalid -- replayed, stale (60 s old), wrong schema, wrong kind;
- to the observation and telemetry sockets (PUB): raw TCP connections sending random bytes, and SUB
  peers subscribing junk topics (random bytes, pickles, truncated msgpack) that never read.

Per window: the daemon's state (sampled from its telemetry every 0.2 s: the fraction RUNNING), its
resident memory (VmRSS of the supervisor process) and log (stderr bytes and lines) growth, the
control loop's rate (ticks / s) and missed deadlines, frames the flooders sent and the decoder
rejected (by reason). Flooders run at ``--flooder-nice`` (19: an attacker's CPU is not the robot's;
on loopback it is the same two cores). Rows: real-time scheduling on and off (``no_rt``), and curve on
(an allow-list; the flooders are plaintext, so the handshake drops them).

    python benchmarks/bench_flood.py [--baseline 60] [--flood 60] [--rows rt,no_rt,curve] [--no-write]

Writes its table between ``<!-- BEGIN bench_flood -->`` and ``<!-- END bench_flood -->`` in
docs/benchmarks.md. ``run_flood`` is also what ``tests/robot/test_flood.py`` runs (a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402
from bench_daemon import make_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-flood-token-0123456789abcdef"
PWNED = Path(tempfile.gettempdir()) / "policystack-flood-unpickled"  # created only if a pickle ran


class Pwn:
    """A pickle payload: unpickling it would create ``PWNED``."""

    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


# --- junk ---------------------------------------------------------------------------------------------
def junk_frames(token: bytes, rng: np.random.Generator) -> dict[str, list[bytes]]:
    """Frame families for the command/chunk socket (each a list to cycle through)."""
    import msgpack

    from policystack.robot.transport import Encoder

    enc = Encoder(token, sender="flood-" + os.urandom(4).hex())
    chunk = dict(episode=-1, obs_seq=1, t_obs=0.0, dt=0.1, infer_s=0.0, obs_missed=0, replans_skipped=0,
                 actions=np.zeros((8, 8), np.float32))
    valid = enc.encode("chunk", **chunk)  # accepted once (an old episode's chunk: dropped), then replays

    def signed(d: dict) -> bytes:
        import hashlib
        import hmac

        payload = msgpack.packb(d, use_bin_type=True)
        return payload + hmac.new(token, payload, hashlib.sha256).digest()

    env = {"v": 1, "sender": "flood-signed", "seq": 1 << 40}
    now = time.time()
    return {
        "random": [rng.bytes(int(n)) for n in rng.integers(1, 4096, 64)],
        "truncated_msgpack": [valid[: int(n)] for n in rng.integers(1, len(valid) - 1, 64)],
        "pickle": [pickle.dumps(Pwn(), protocol=p) for p in range(2, 6)] + [pickle.dumps({"x": list(range(100))})],
        "replayed": [valid],
        "stale": [signed({**env, "kind": "chunk", "ts": now - 60.0, "body": {}})],
        "wrong_schema": [signed({**env, "kind": "chunk", "ts": now, "body": {"actions": 1}}),
                         signed({**env, "kind": "chunk", "ts": now, "body": []})],
        "wrong_kind": [enc.encode("telemetry", status="{}"), enc.encode("beat"),
                       enc.encode("obs", episode=0, obs_seq=1, t_obs=0.0, dt=0.1, task="x", state=np.zeros(1),
                                  env_state=np.zeros(0), images={}, reset=True, seed=0, replan=True)],
    }


def _refresh_stale_timestamps(frames: dict[str, list[bytes]], token: bytes) -> None:
    """Signed frames carry a send time; keep the 'wrong schema' ones inside the window (stale ones stay
    60 s old) so they are rejected for their schema, not their age."""
    import msgpack

    fresh = []
    for f in frames["wrong_schema"]:
        d = msgpack.unpackb(f[:-32], raw=False)
        d["ts"] = time.time()
        d["seq"] += 1
        import hashlib
        import hmac

        payload = msgpack.packb(d, use_bin_type=True)
        fresh.append(payload + hmac.new(token, payload, hashlib.sha256).digest())
    frames["wrong_schema"] = fresh


# --- flooders (child processes) -------------------------------------------------------------------------
def child_pull(addr: str, duration: float, out: str, oversized: int) -> None:
    """PUSH junk to the command/chunk socket until ``duration`` is over; ``oversized`` > 0: only frames
    of that many bytes (libzmq drops the connection on each; the PUSH reconnects)."""
    import zmq

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDTIMEO, 100)
    push.connect(addr)
    rng = np.random.default_rng(os.getpid())
    token = TOKEN.encode()
    frames = {"oversized": [b"\0" * oversized]} if oversized else junk_frames(token, rng)
    sent = {k: 0 for k in frames}
    end = time.monotonic() + duration
    refresh = time.monotonic() + 1.0
    i = 0
    while time.monotonic() < end:
        if not oversized and time.monotonic() > refresh:
            _refresh_stale_timestamps(frames, token)
            refresh = time.monotonic() + 1.0
        for kind, fs in frames.items():  # 8 frames of each family in turn
            for j in range(8):
                try:
                    push.send(fs[(i + j) % len(fs)])
                    sent[kind] += 1
                except zmq.Again:  # the daemon is not reading (its queue for us is full): next family
                    break
        i += 8
    Path(out).write_text(json.dumps(sent))
    push.close(0)
    ctx.term()


def child_pub(addr: str, duration: float, out: str) -> None:
    """Junk at a PUB socket: SUB peers subscribing junk topics (never reading), raw TCP random bytes."""
    import zmq

    host, port = addr.removeprefix("tcp://").rsplit(":", 1)
    rng = np.random.default_rng(os.getpid())
    ctx = zmq.Context()
    subs = []
    for _ in range(4):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVHWM, 1)
        s.connect(addr)
        subs.append(s)
    topics = [rng.bytes(int(n)) for n in rng.integers(1, 64, 64)] + [pickle.dumps(Pwn())]
    sent = {"subscriptions": 0, "raw_connections": 0}
    end = time.monotonic() + duration
    i = 0
    while time.monotonic() < end:
        s = subs[i % len(subs)]
        s.setsockopt(zmq.SUBSCRIBE, topics[i % len(topics)])
        s.setsockopt(zmq.UNSUBSCRIBE, topics[i % len(topics)])
        sent["subscriptions"] += 1
        i += 1
        if i % 50 == 0:
            try:
                with socket.create_connection((host, int(port)), timeout=0.5) as raw:
                    raw.sendall(rng.bytes(int(rng.integers(1, 2048))))
                sent["raw_connections"] += 1
            except OSError:
                pass
    Path(out).write_text(json.dumps(sent))
    for s in subs:
        s.close(0)
    ctx.term()


# --- the daemon under test --------------------------------------------------------------------------------
def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Telemetry:
    """Reads the daemon's telemetry in a thread: the latest document and the states seen."""

    def __init__(self, addr: str, token: bytes, curve=None):
        import zmq

        from policystack.robot.transport import Decoder

        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        if curve is not None:
            curve.apply(self.sub)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(addr)
        self.dec = Decoder(token, kinds=("telemetry",))
        self.doc: dict | None = None
        self.states: list[str] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            if self.sub.poll(100):
                msg, _ = self.dec.decode(self.sub.recv())
                if msg is not None:
                    self.doc = json.loads(msg.body["status"])
                    self.states.append(self.doc["state"])

    def wait(self, pred, timeout: float, what: str) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.doc is not None and pred(self.doc):
                return self.doc
            time.sleep(0.05)
        raise TimeoutError(f"daemon telemetry: timed out waiting for {what} (last: {self.doc})")

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sub.close(0)
        self.ctx.term()


def snapshot(pid: int, log: Path, tele: Telemetry) -> dict:
    doc = tele.doc
    text = log.read_bytes()
    return {"t": time.monotonic(), "rss": rss_bytes(pid), "log_bytes": len(text), "log_lines": text.count(b"\n"),
            "tick": doc["loop"]["tick"], "misses": doc["loop"]["misses"], "rejected": dict(doc["rejected"]),
            "states": len(tele.states), "latency_ms": doc["latency_ms"]}


def window(a: dict, b: dict, tele: Telemetry, rate_hz: float) -> dict:
    states = tele.states[a["states"]:b["states"]]
    dt = b["t"] - a["t"]
    rej = {k: v - a["rejected"].get(k, 0) for k, v in b["rejected"].items() if v - a["rejected"].get(k, 0)}
    return {"seconds": dt, "running": sum(s == "RUNNING" for s in states) / max(len(states), 1),
            "rss_growth": b["rss"] - a["rss"], "log_bytes": b["log_bytes"] - a["log_bytes"],
            "log_lines": b["log_lines"] - a["log_lines"], "loop_hz": (b["tick"] - a["tick"]) / dt,
            "misses": b["misses"] - a["misses"], "expected_ticks": dt * rate_hz, "rejected": rej,
            "latency_ms": b["latency_ms"]}  # of the last 200 chunks at the window's end


def run_flood(workdir: Path, baseline_s: float, flood_s: float, rt: bool = False, curve: bool = False,
              flooder_nice: int = 19, sockets: tuple[str, ...] = ("chunks", "obs", "telemetry"),
              oversized: bool = True) -> dict:
    """Start a daemon, measure ``baseline_s`` without and ``flood_s`` with the flood; stop it. Returns
    {"baseline": window, "flood": window, "sent": {kind: frames}, "final": telemetry doc,
    "pwned": whether a pickle was ever run, "rt_refused": ...}."""
    from policystack.robot.curve import ClientCurve, KeyPair, write_key_pair

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / "ckpt"
    if not (ckpt / "config.json").is_file():  # small: 32 px, the flood is the load
        make_checkpoint(ckpt, image_size=32, horizon=8, n_action_steps=4, conv_channels=(8, 8), keypoints=4,
                        hidden_dim=32, n_layers=2)
    PWNED.unlink(missing_ok=True)
    log = workdir / "daemon.log"
    env = {**os.environ, "POLICYSTACK_DAEMON_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "policystack.cli", "daemon", "run", "robot=sim", f"checkpoint={ckpt}", "task=Reach",
           "episodes=1000", "max_steps=1000000", "cameras=front", "image_size=32", "port=0",
           f"no_rt={'false' if rt else 'true'}"]
    tele_curve = None
    if curve:
        keys = workdir / f"keys-{os.getpid()}-{time.monotonic_ns()}"
        server_pub, server_sec = write_key_pair(keys / "server", "server")
        op_pub, op_sec = write_key_pair(keys / "clients", "operator")
        cmd += [f"robot.transport.curve_server_secret={server_sec}",
                f"robot.transport.curve_allowed_clients={keys / 'clients'}"]
        tele_curve = ClientCurve.resolve(str(server_pub), str(op_sec))
        assert isinstance(tele_curve.keys, KeyPair)
    with open(log, "wb") as err:
        daemon = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    flooders: list[subprocess.Popen] = []
    tele = None
    try:
        addrs = json.loads(daemon.stdout.readline())
        tele = Telemetry(addrs["telemetry"], TOKEN.encode(), tele_curve)
        tele.wait(lambda d: d["state"] == "RUNNING" and d["step"] >= 10, 180, "the first episode")
        time.sleep(1.0)
        a = snapshot(daemon.pid, log, tele)
        time.sleep(baseline_s)
        b = snapshot(daemon.pid, log, tele)
        chunk_addr = addrs["commands"]
        outs = []
        me = Path(__file__).resolve()
        children = []
        if "chunks" in sockets:
            children += [("pull", chunk_addr, 0), ("pull", chunk_addr, 0)] + (
                [("pull", chunk_addr, 8 << 20)] if oversized else [])
        children += [("pub", addrs[name], 0) for name in ("obs", "telemetry") if name in sockets]
        for i, (kind, addr, size) in enumerate(children):
            out = workdir / f"flooder-{i}.json"
            out.unlink(missing_ok=True)
            outs.append(out)
            flooders.append(subprocess.Popen(
                ["nice", "-n", str(flooder_nice), sys.executable, str(me), "--child", kind, "--addr", addr,
                 "--duration", str(flood_s), "--out", str(out), "--oversized", str(size)], env=env))
        for p in flooders:
            p.wait(flood_s + 60)
        c = snapshot(daemon.pid, log, tele)
        end = tele.states[-1] if tele.states else None
        try:  # RUNNING at the end of the flood (or again soon after: an episode may have ended meanwhile)
            tele.wait(lambda d: d["state"] == "RUNNING", 60, "RUNNING after the flood")
            running_after = True
        except TimeoutError:
            running_after = False
        sent: dict[str, int] = {}
        for out in outs:
            for k, v in json.loads(out.read_text()).items():
                sent[k] = sent.get(k, 0) + v
        final = tele.doc
        rate = 500.0
        return {"baseline": window(a, b, tele, rate), "flood": window(b, c, tele, rate), "sent": sent,
                "final": final, "state_at_end": end, "running_after": running_after, "pwned": PWNED.exists(),
                "alive": daemon.poll() is None, "rt": rt, "curve": curve, "flooder_nice": flooder_nice}
    finally:
        for p in flooders:
            if p.poll() is None:
                p.kill()
        if tele is not None:
            tele.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        daemon.stdout.close()


# --- report -----------------------------------------------------------------------------------------------
def table(rows: list[dict], load: tuple[float, float], baseline_s: float, flood_s: float) -> str:
    nice = rows[0]["flooder_nice"] if rows else "-"
    lines = [f"The daemon under a flood, {baseline_s:g} s without, then {flood_s:g} s with every bound socket flooded "
             f"from loopback by 5 flooder processes at nice {nice} (3 on the chunk socket, one of them sending only "
             f"oversized frames; 1 on each PUB socket), on this {os.cpu_count()}-core {platform.machine()} VM, "
             f"shared with other work: 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end. "
             "Sim robot at 500 Hz, a small BC checkpoint (torch 1 thread), one 32 px camera, one long episode. "
             "RUNNING: share of telemetry samples (5 Hz) in state RUNNING; RSS: growth of the supervisor process's "
             "VmRSS over the window; log: growth of its stderr; loop rate: ticks per second (500 = none lost); "
             "missed: deadlines the loop missed in the window.",
             "", "| run | window | RUNNING | RSS growth | log growth | loop rate | missed | frames sent | rejected by "
             "the decoder | chunk latency p50 / p99 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = ("curve + allow-list, " if r["curve"] else "") + ("real-time on" if r["rt"] else "real-time off")
        for wname in ("baseline", "flood"):
            w = r[wname]
            sent = sum(r["sent"].values()) if wname == "flood" else 0
            lat = w.get("latency_ms") or {}
            lat_s = f"{lat['p50']:.0f} / {lat['p99']:.0f} ms" if lat.get("p50") is not None else "-"
            lines.append(f"| {name} | {'no flood' if wname == 'baseline' else 'flood'} ({w['seconds']:.0f} s) | "
                         f"{w['running']:.0%} | {w['rss_growth'] / 1e6:+.2f} MB | {w['log_bytes']} B, "
                         f"{w['log_lines']} lines | {w['loop_hz']:.1f} Hz | {w['misses']} | {sent} | "
                         f"{sum(w['rejected'].values())} | {lat_s} |")
    if rows:
        lines += ["", "Frames sent per family (last row): " + ", ".join(
            f"{k} {v}" for k, v in sorted(rows[-1]["sent"].items())) + "."]
    lines += ["", "Run: `python benchmarks/bench_flood.py --baseline 60 --flood 60`."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", type=float, default=60.0)
    p.add_argument("--flood", type=float, default=60.0)
    p.add_argument("--rows", default="rt,no_rt,curve", help="comma list of rt, no_rt, curve")
    p.add_argument("--flooder-nice", type=int, default=19)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", choices=["pull", "pub"], help=argparse.SUPPRESS)
    p.add_argument("--addr", help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--oversized", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child == "pull":
        return child_pull(a.addr, a.duration, a.out, a.oversized)
    if a.child == "pub":
        return child_pub(a.addr, a.duration, a.out)
    os.environ.setdefault("MUJOCO_GL", "egl")
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as td:
        for name in a.rows.split(","):
            r = run_flood(Path(td) / name, a.baseline, a.flood, rt=name in ("rt", "curve"), curve=name == "curve",
                          flooder_nice=a.flooder_nice)
            print(name, json.dumps({k: v for k, v in r.items() if k != "final"}), flush=True)
            rows.append(r)
    out = table(rows, (load0, os.getloadavg()[0]), a.baseline, a.flood)
    print(out)
    if not a.no_write:
        write_section("bench_flood", out)


if __name__ == "__main__":
    main()
