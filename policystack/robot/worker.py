"""The policy worker: observations in, time-stamped action chunks out, at the policy's rate.

Loads a checkpoint with ``Policy.from_pretrained`` and connects to the daemon: a SUB socket for
observations (``CONFLATE``: only the newest is kept, a slow policy never works on old frames) and
a PUSH socket for chunks and its ``hello``. Both directions are signed (transport.py); the shared
token comes from ``$POLICYSTACK_DAEMON_TOKEN``. It runs the same way on the daemon's machine (the
supervisor starts it) or on another host::

    POLICYSTACK_DAEMON_TOKEN=... python -m policystack.robot.worker --checkpoint DIR \\
        --connect tcp://robot-host:5555          # observations on 5555, chunks to 5556

With CurveZMQ on at the daemon (``transport.curve_server_secret``), add ``--server-key
server.key`` (its public certificate) and, if the daemon keeps an allow-list, ``--client-key
worker.key_secret`` (a listed client's pair); without ``--client-key`` the worker makes a one-off
pair. A worker the supervisor starts gets both keys through its environment.

Every observation with ``reset`` starts a new episode (``policy.reset()``); every observation is
answered with the full predicted chunk ``[H, A]`` stamped with the observation's ``t_obs``, and with
``done_step``: the first chunk step after which the policy says the episode is over
(``Policy.predict_action_chunk_with_done``, RT-2's terminate token), -1 when it does not say so.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import numpy as np

from policystack.robot.config import token_from_env
from policystack.robot.curve import CLIENT_SECRET_ENV, SERVER_PUBLIC_ENV, ClientCurve
from policystack.robot.transport import Decoder, Encoder, configure_socket
from policystack.types import OBS_ENV_STATE, OBS_IMAGES, OBS_STATE, TASK, camera_key, is_image_key

HELLO_EVERY_S = 0.5


def split_connect(address: str) -> tuple[str, str]:
    """``tcp://host:port`` -> (observations at port, chunks at port + 1)."""
    head, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not head.startswith(("tcp://", "ipc://")):
        raise ValueError(f"--connect {address!r}: expected tcp://host:port")
    return f"{head}:{port}", f"{head}:{int(port) + 1}"


def obs_to_batch(body: dict, device: str = "cpu") -> dict:
    """Transport observation -> policy input (state [1, D], env state [1, E] when sent, images
    [1, 3, H, W], task [str])."""
    import torch

    batch = {OBS_STATE: torch.from_numpy(np.array(body["state"], dtype=np.float32))[None].to(device),
             TASK: [body["task"]]}
    if len(body["env_state"]):
        batch[OBS_ENV_STATE] = torch.from_numpy(np.array(body["env_state"], dtype=np.float32))[None].to(device)
    for cam, img in body["images"].items():
        batch[camera_key(cam)] = torch.from_numpy(np.array(img, dtype=np.uint8))[None].to(device)
    return batch


def serve(checkpoint: str, obs_addr: str, chunk_addr: str, token: bytes, max_bytes: int = 4 << 20,
          window_s: float = 5.0, imports: tuple[str, ...] = (), threads: int = 1,
          max_idle_s: float | None = None, curve: ClientCurve | None = None) -> int:
    """Serve ``checkpoint`` until killed (or ``max_idle_s`` without observations); ``curve``: connect
    as a CurveZMQ client (None: plaintext, as the daemon without curve)."""
    import torch
    import zmq

    from policystack.policies.base import Policy

    torch.set_num_threads(threads)
    ctx = zmq.Context()
    out = ctx.socket(zmq.PUSH)
    configure_socket(out, max_bytes)
    if curve is not None:
        curve.apply(out)
    out.setsockopt(zmq.SNDHWM, 4)
    out.connect(chunk_addr)
    enc = Encoder(token, max_bytes=max_bytes)
    try:
        for mod in imports:
            importlib.import_module(mod)
        policy = Policy.from_pretrained(checkpoint)
    except Exception as e:  # report why to the daemon, then fail
        out.send(enc.encode("hello", policy="", horizon=0, n_action_steps=0, action_dim=0, state_dim=0, images={},
                            error=f"{type(e).__name__}: {e}"[:2000]))
        time.sleep(0.2)
        print(f"worker: cannot load {checkpoint}: {e}", file=sys.stderr)
        return 1
    cfg = policy.config
    action_dim = policy.features["action"].shape[0]
    sub = ctx.socket(zmq.SUB)
    configure_socket(sub, max_bytes)
    if curve is not None:
        curve.apply(sub)
    sub.setsockopt(zmq.CONFLATE, 1)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(obs_addr)
    dec = Decoder(token, max_bytes=max_bytes, window_s=window_s, kinds=("obs",))
    state = policy.features.get(OBS_STATE)
    images = {key[len(OBS_IMAGES) + 1:]: np.array([3, f.shape[0], f.shape[1]], np.int64)
              for key, f in policy.features.items() if is_image_key(key)}  # (H, W, 3) -> [3, H, W]
    hello = dict(policy=policy.name, horizon=cfg.horizon, n_action_steps=cfg.n_action_steps,
                 action_dim=action_dim, state_dim=state.shape[0] if state is not None else 0, images=images, error="")
    last_hello = last_obs = time.monotonic()
    out.send(enc.encode("hello", **hello))
    while True:
        if not sub.poll(int(HELLO_EVERY_S * 1000)):
            now = time.monotonic()
            if now - last_hello >= HELLO_EVERY_S:
                try:
                    out.send(enc.encode("hello", **hello), zmq.NOBLOCK)
                except zmq.Again:  # no daemon connected (gone, or not up yet): keep waiting
                    pass
                last_hello = now
            if max_idle_s is not None and now - last_obs > max_idle_s:
                return 0
            continue
        msg, why = dec.decode(sub.recv())
        if msg is None:
            print(f"worker: rejected a message: {why}", file=sys.stderr)
            continue
        last_obs = time.monotonic()
        b = msg.body
        if b["reset"]:
            policy.reset()
        t0 = time.perf_counter()
        with torch.no_grad():
            actions, done = policy.predict_action_chunk_with_done(obs_to_batch(b))
        chunk = actions[0].float().cpu().numpy()  # [H, A]
        done_step = int(done[0].int().argmax()) if done is not None and bool(done[0].any()) else -1
        try:
            out.send(enc.encode("chunk", episode=b["episode"], obs_seq=b["obs_seq"], t_obs=b["t_obs"],
                                dt=b["dt"], actions=chunk, infer_s=time.perf_counter() - t0,
                                done_step=done_step), zmq.NOBLOCK)
        except zmq.Again:
            print("worker: daemon is not taking chunks (queue full); dropped one", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m policystack.robot.worker", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--connect", help="tcp://host:port of the daemon (observations at port, chunks at port+1)")
    p.add_argument("--obs", help="observation address (instead of --connect)")
    p.add_argument("--chunks", help="chunk address (instead of --connect)")
    p.add_argument("--import", dest="imports", action="append", default=[],
                   help="module to import first (registers a Policy subclass defined outside policystack)")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--max-bytes", type=int, default=4 << 20)
    p.add_argument("--window-s", type=float, default=5.0)
    p.add_argument("--max-idle-s", type=float, default=None, help="exit after this long without observations")
    p.add_argument("--server-key", help="CurveZMQ: the daemon's public certificate (server.key)")
    p.add_argument("--client-key", help="CurveZMQ: this worker's secret certificate (NAME.key_secret); "
                   "needed when the daemon has an allow-list (default: a one-off key pair)")
    p.add_argument("--exit-with-parent", action="store_true", help="exit when the starting process dies")
    a = p.parse_args(argv)
    if a.exit_with_parent:
        from policystack.robot.loop import _die_with_parent

        _die_with_parent()
    if a.connect:
        obs_addr, chunk_addr = split_connect(a.connect)
    elif a.obs and a.chunks:
        obs_addr, chunk_addr = a.obs, a.chunks
    else:
        p.error("give --connect tcp://host:port, or both --obs and --chunks")
    try:
        curve = ClientCurve.resolve(a.server_key, a.client_key, os.environ)
    except ValueError as e:  # a missing or malformed key: say which, no traceback
        p.error(str(e))
    for name in (SERVER_PUBLIC_ENV, CLIENT_SECRET_ENV):  # read once; not inherited by anything else
        os.environ.pop(name, None)
    return serve(a.checkpoint, obs_addr, chunk_addr, token_from_env(), a.max_bytes, a.window_s,
                 tuple(a.imports), a.threads, a.max_idle_s, curve)


if __name__ == "__main__":
    sys.exit(main())
