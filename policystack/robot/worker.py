"""The policy worker: observations in, time-stamped action chunks out, at the policy's rate.

Loads a checkpoint with ``Policy.from_pretrained`` and connects to the daemon: a SUB socket for
observations and a PUSH socket for chunks and its ``hello``, which it sends in answer to the daemon's
``beat`` (so the daemon knows the subscription works before the first observation). Both directions are signed
(transport.py); the shared token comes from ``$POLICYSTACK_DAEMON_TOKEN``. It runs the same way on
the daemon's machine (the supervisor starts it) or on another host::

    POLICYSTACK_DAEMON_TOKEN=... python -m policystack.robot.worker --checkpoint DIR \\
        --connect tcp://robot-host:5555          # observations on 5555, chunks to 5556

With CurveZMQ on at the daemon (``transport.curve_server_secret``), add ``--server-key
server.key`` (its public certificate) and, if the daemon keeps an allow-list, ``--client-key
worker.key_secret`` (a listed client's pair); without ``--client-key`` the worker makes a one-off
pair. A worker the supervisor starts gets both keys through its environment.

One history mechanism, the one ``Policy.select_action`` and ``policystack eval`` use: the daemon sends
the observation of *every* policy step; for one marked ``replan`` the worker calls
``predict_action_chunk`` and sends the full chunk ``[H, A]`` stamped with the observation's
``t_obs``, with the policy's ``decision`` (what a reasoning policy decided, in words; "" for most)
and ``done_step``: the first chunk step after which the policy says the episode is over
(``Policy.predict_action_chunk_with_done``, RT-2's terminate token), -1 when it does not say so;
then, for every observation, ``observe`` (a policy with history appends the frame). An
observation with ``reset`` starts an episode (``policy.reset()``, torch seeded with the episode's seed
as eval seeds it). So a history policy (RT-1, diffusion) sees exactly the frames it sees in eval.

The daemon drives joint targets. A checkpoint trained on the tabletop suite's ee_delta actions (every
camera policy collected with the default ``action_mode``) is converted here (``PolicySession``): the
daemon asks for a chunk every step, the policy predicts every ``n_action_steps`` as in eval, and each
answer is the chunk's remaining actions through ``envs.base.EEDeltaFollower`` (the env's own ee_delta
arithmetic and differential IK) from that step's measured joints and pinch-site pose, as joint targets
[H, 8]; the hello says so (``follower``) and reports ``action_dim`` 8 and ``n_action_steps`` 1.

Nothing is dropped silently: observations queue (``--obs-queue`` frames, the daemon's
``transport.obs_queue``) instead of being conflated; a gap in an episode's ``obs_seq`` (frames lost
because the worker fell further behind than the queue, or a worker that joined mid-episode) is counted
and reported in every chunk (``obs_missed``), and the daemon reports it. A worker that is behind
(several observations waiting) answers only the newest replan request among them and observes all
the frames in order (``replans_skipped`` counts the requests it passed over), so it catches up
instead of acting on ever older frames.
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
from policystack.robot.transport import Decoder, Encoder, RejectionLog, configure_socket
from policystack.types import ACTION, OBS_ENV_STATE, OBS_IMAGES, OBS_STATE, TASK, camera_key, is_image_key

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


def acts_in_ee_delta(policy) -> bool:
    """True when the policy's actions are the tabletop suite's ee_delta layout and its state carries the
    pinch-site pose: the worker turns its chunks into joint targets (``EEDeltaFollower``), since the
    daemon drives joint targets."""
    from policystack.envs.base import EE_ACTION_NAMES, STATE_NAMES

    action, state = policy.features.get(ACTION), policy.features.get(OBS_STATE)
    return (action is not None and list(action.names or []) == EE_ACTION_NAMES
            and state is not None and list(state.names or []) == STATE_NAMES)


class PolicySession:
    """Feeds one policy the daemon's observation stream as ``select_action`` feeds it in an env: per
    episode ``reset``, per observation an optional ``predict_action_chunk`` then ``observe``.

    An ee_delta policy (``converts``) acts as in the env, where each action moves the arm from its
    *measured* pose: the daemon asks every step (the hello reports ``n_action_steps`` 1), the policy
    predicts only when ``n_action_steps`` of its chunk have run (as ``select_action``), and every answer
    is the chunk's remaining actions turned into joint targets by ``EEDeltaFollower`` from this step's
    observed joints and pinch-site pose (its first = the target the env's ``step`` would set)."""

    def __init__(self, policy):
        self.policy = policy
        self.converts = acts_in_ee_delta(policy)
        self._follower = None
        self._chunk: np.ndarray | None = None  # ee_delta: the last predicted chunk [H, 7]
        self._chunk_seq = 0  # the obs_seq it was predicted at
        self._chunk_done = -1  # its done_step
        self.episode: int | None = None
        self.next_seq = 1
        self.obs_missed = 0  # this episode's observations that never arrived
        self.replans_skipped = 0  # this episode's replan requests answered by a newer one

    def begin(self, body: dict) -> dict:
        """Episode and gap bookkeeping for one observation; returns its policy batch."""
        import torch

        if body["reset"] or body["episode"] != self.episode:
            self.policy.reset()
            if body["seed"] >= 0:
                torch.manual_seed(body["seed"])
            self.episode, self.next_seq, self.replans_skipped = body["episode"], 1, 0
            self.obs_missed, self._chunk = 0, None
        self.obs_missed += max(0, body["obs_seq"] - self.next_seq)  # a gap, or joined mid-episode
        self.next_seq = body["obs_seq"] + 1
        return obs_to_batch(body)

    def handle(self, body: dict, replan: bool) -> tuple[np.ndarray, int] | None:
        """One observation: if ``replan``, the chunk [H, A] and its ``done_step`` (the first step after
        which the policy says the episode is over, -1 if none), else None; then ``observe``."""
        import torch

        batch = self.begin(body)
        plan = None
        with torch.no_grad():
            if replan and self.converts:
                plan = self._follow(body, batch)
            elif replan:
                plan = self._predict(batch)
            self.policy.observe(batch)
        return plan

    def _predict(self, batch: dict) -> tuple[np.ndarray, int]:
        actions, done = self.policy.predict_action_chunk_with_done(batch)
        done_step = int(done[0].int().argmax()) if done is not None and bool(done[0].any()) else -1
        return actions[0].float().cpu().numpy(), done_step

    def _follow(self, body: dict, batch: dict) -> tuple[np.ndarray, int]:
        """ee_delta: predict if ``n_action_steps`` of the last chunk have run (or it ran out), then its
        remaining actions as joint targets from this observation's measured pose."""
        age = body["obs_seq"] - self._chunk_seq
        if self._chunk is None or age >= max(1, int(self.policy.config.n_action_steps)) or age >= len(self._chunk):
            self._chunk, self._chunk_done = self._predict(batch)
            self._chunk_seq, age = body["obs_seq"], 0
        if self._follower is None:
            from policystack.envs.base import EEDeltaFollower

            self._follower = EEDeltaFollower(dt=float(body["dt"]))
        joints = self._follower.follow(np.asarray(body["state"]), self._chunk[age:]).astype(np.float32)
        return joints, (max(0, self._chunk_done - age) if self._chunk_done >= 0 else -1)


def serve(checkpoint: str, obs_addr: str, chunk_addr: str, token: bytes, max_bytes: int = 4 << 20,
          window_s: float = 5.0, imports: tuple[str, ...] = (), threads: int = 1,
          max_idle_s: float | None = None, curve: ClientCurve | None = None, obs_queue: int = 100) -> int:
    """Serve ``checkpoint`` until killed (or ``max_idle_s`` without observations); ``curve``: connect
    as a CurveZMQ client (None: plaintext, as the daemon without curve); ``obs_queue``: observations
    held while the policy is busy."""
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
    session = PolicySession(policy)
    action_dim = 8 if session.converts else policy.features[ACTION].shape[0]  # joint targets [q1..q7, gripper]
    sub = ctx.socket(zmq.SUB)
    configure_socket(sub, max_bytes)
    if curve is not None:
        curve.apply(sub)
    sub.setsockopt(zmq.RCVHWM, obs_queue)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(obs_addr)
    dec = Decoder(token, max_bytes=max_bytes, window_s=window_s, kinds=("obs", "beat"))
    rejected = RejectionLog(lambda line: print(f"worker: {line}", file=sys.stderr, flush=True), where=" from the daemon")
    state = policy.features.get(OBS_STATE)
    images = {key[len(OBS_IMAGES) + 1:]: np.array([3, f.shape[0], f.shape[1]], np.int64)
              for key, f in policy.features.items() if is_image_key(key)}  # (H, W, 3) -> [3, H, W]
    hello = dict(policy=policy.name, horizon=cfg.horizon, n_action_steps=1 if session.converts else cfg.n_action_steps,
                 action_dim=action_dim, state_dim=state.shape[0] if state is not None else 0, images=images, error="")
    if session.converts:  # only then: a daemon from before the key still takes every other hello
        hello["follower"] = (f"ee_delta -> joint targets (IK in the worker from each step's measured pose; "
                             f"the policy predicts every {cfg.n_action_steps} steps)")
    last_hello, last_obs = -float("inf"), time.monotonic()
    while True:
        if not sub.poll(int(HELLO_EVERY_S * 1000)):
            rejected.poll()
            if max_idle_s is not None and time.monotonic() - last_obs > max_idle_s:
                return 0
            continue
        frames = [sub.recv()]
        while len(frames) < obs_queue and sub.poll(0):  # everything that queued while the policy was busy
            frames.append(sub.recv())
        bodies = []
        for frame in frames:
            msg, why = dec.decode(frame)
            if msg is None:
                rejected.add(why)
            elif msg.kind == "beat":  # the daemon waits for us, and our subscription reaches it: hello
                now = time.monotonic()
                if now - last_hello >= HELLO_EVERY_S:
                    try:
                        out.send(enc.encode("hello", **hello), zmq.NOBLOCK)
                    except zmq.Again:  # the daemon is not taking messages: the next beat asks again
                        pass
                    last_hello = now
            else:
                bodies.append(msg.body)
        if bodies:
            last_obs = time.monotonic()
        newest = max((i for i, b in enumerate(bodies) if b["replan"]), default=-1)
        for i, b in enumerate(bodies):
            t0 = time.perf_counter()
            plan = session.handle(b, replan=i == newest)
            if b["replan"] and i != newest:
                session.replans_skipped += 1
            if plan is None:
                continue
            chunk, done_step = plan
            try:
                out.send(enc.encode("chunk", episode=b["episode"], obs_seq=b["obs_seq"], t_obs=b["t_obs"], dt=b["dt"],
                                    actions=chunk, infer_s=time.perf_counter() - t0,
                                    obs_missed=session.obs_missed, replans_skipped=session.replans_skipped,
                                    decision=str(session.policy.decision), done_step=done_step),
                         zmq.NOBLOCK)
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
    p.add_argument("--obs-queue", type=int, default=100,
                   help="observations held while the policy is busy (the daemon's transport.obs_queue)")
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
                 tuple(a.imports), a.threads, a.max_idle_s, curve, a.obs_queue)


if __name__ == "__main__":
    sys.exit(main())
