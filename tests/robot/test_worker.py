"""The policy worker feeds a history policy the daemon's observation stream exactly as
``Policy.select_action`` feeds it in an env (predict when a chunk is wanted, then observe every step),
counts what it never received, and catches up when it falls behind. The worker runs its real
``serve`` loop in a thread; this test plays the daemon's side of its two sockets."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import torch
import zmq
from daemon_test_policies import CALL_LOG_ENV, make_checkpoint, make_rt1_checkpoint

from policystack.policies.base import Policy
from policystack.robot.transport import Decoder, Encoder
from policystack.robot.worker import obs_to_batch, serve

TOKEN = b"worker-test-token-0123456789"
TASK = "reach the red ball"
torch.set_num_threads(1)  # as the worker's serve(threads=1) sets it for this process anyway


class DaemonSide:
    """The daemon's end: a PUB for observations (and beats), a PULL for hellos and chunks, and the
    worker's ``serve`` in a thread (it exits ``max_idle_s`` after the last observation)."""

    def __init__(self, ckpt, imports: tuple[str, ...] = ()):
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pull = self.ctx.socket(zmq.PULL)
        obs = f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}"
        chunks = f"tcp://127.0.0.1:{self.pull.bind_to_random_port('tcp://127.0.0.1')}"
        self.enc, self.dec = Encoder(TOKEN), Decoder(TOKEN, kinds=("hello", "chunk"))
        self.thread = threading.Thread(target=serve, args=(str(ckpt), obs, chunks, TOKEN),
                                       kwargs=dict(imports=imports, max_idle_s=3.0), daemon=True)
        self.thread.start()
        end = time.monotonic() + 60
        while time.monotonic() < end:  # as the supervisor's wait_hello: beat until the worker answers
            self.pub.send(self.enc.encode("beat"))
            msg = self.recv(100)
            if msg is not None and msg.kind == "hello":
                self.hello = msg.body
                return
        raise AssertionError("no hello from the worker")

    def recv(self, timeout_ms: int):
        if not self.pull.poll(timeout_ms):
            return None
        msg, why = self.dec.decode(self.pull.recv())
        assert msg is not None, why
        return msg

    def send(self, frame: dict, episode: int, seq: int, replan: bool, seed: int = 7) -> None:
        self.pub.send(self.enc.encode("obs", episode=episode, obs_seq=seq, t_obs=time.monotonic(), dt=0.1, task=TASK,
                                      state=frame["state"], env_state=np.zeros(0, np.float32),
                                      images={"front": frame["front"]}, reset=seq == 1, seed=seed, replan=replan))

    def chunk(self, timeout_s: float = 30.0):
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            msg = self.recv(100)
            if msg is not None and msg.kind == "chunk":
                return msg.body
        raise AssertionError("no chunk from the worker")

    def close(self) -> None:
        self.thread.join(30)
        assert not self.thread.is_alive()
        self.pub.close(0)
        self.pull.close(0)
        self.ctx.term()


def frames(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"state": rng.normal(size=15).astype(np.float32),
             "front": rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)} for _ in range(n)]


def batch(frame: dict) -> dict:
    return obs_to_batch({"state": frame["state"], "env_state": np.zeros(0, np.float32), "task": TASK,
                         "images": {"front": frame["front"]}})


def test_worker_feeds_a_history_policy_as_select_action_does(tmp_path):
    """BC with 2 frames of history (continuous outputs: every input moves them), a chunk every 2 steps:
    the actions the daemon executes from the worker's chunks (action i at step i from the chunk's
    observation) equal ``select_action``'s, step by step. A worker that predicts without observing every
    step (the daemon before this fix) gives other actions."""
    ckpt = make_checkpoint(tmp_path / "bc", n_obs_steps=2, n_action_steps=2, action_std=0.5)
    obs, every = frames(8), 2
    side = DaemonSide(ckpt)
    try:
        executed = []
        for k, frame in enumerate(obs):
            side.send(frame, episode=0, seq=k + 1, replan=k % every == 0)
            if k % every == 0:
                chunk = side.chunk()
                assert chunk["obs_seq"] == k + 1 and chunk["obs_missed"] == 0 and chunk["replans_skipped"] == 0
            executed.append(chunk["actions"][k % every])
    finally:
        side.close()
    ref = Policy.from_pretrained(ckpt)
    ref.reset()
    torch.manual_seed(7)
    expected = [ref.select_action(batch(f))[0].numpy() for f in obs]
    np.testing.assert_allclose(np.array(executed), np.array(expected), atol=1e-6)
    # the check can fail: without the history (every chunk from a fresh policy), the actions differ
    ref.reset()
    no_history = [ref.predict_action_chunk(batch(obs[k]))[0, 0].numpy() for k in range(every, len(obs), every)]
    assert not np.allclose(np.array(no_history), np.array(expected[every::every]), atol=1e-3)


def test_worker_counts_missed_observations_and_answers_only_the_newest_request(tmp_path, monkeypatch):
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv(CALL_LOG_ENV, str(log))
    ckpt = make_rt1_checkpoint(tmp_path / "rt1", call_log=True, n_obs_steps=2, horizon=4, n_action_steps=2)
    obs = frames(10, seed=1)
    side = DaemonSide(ckpt, imports=("daemon_test_policies",))
    try:
        for k in range(4):  # four requests at once: a worker that is behind answers the newest
            side.send(obs[k], episode=0, seq=k + 1, replan=True)
        answered = [side.chunk()]
        while answered[-1]["obs_seq"] != 4:
            answered.append(side.chunk())
        assert answered[-1]["replans_skipped"] + len(answered) == 4
        side.send(obs[5], episode=0, seq=6, replan=True)  # obs_seq 5 never arrives
        gap = side.chunk()
        assert (gap["obs_seq"], gap["obs_missed"]) == (6, 1)
        side.send(obs[8], episode=1, seq=3, replan=True)  # joined episode 1 at its third observation
        late = side.chunk()
        assert (late["episode"], late["obs_missed"], late["replans_skipped"]) == (1, 2, 0)
    finally:
        side.close()
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    observed = [c["state"] for c in calls if c["call"] == "observe"]
    # every frame that arrived was observed once, in order, whether or not it was answered
    np.testing.assert_allclose(observed, [obs[k]["state"] for k in (0, 1, 2, 3, 5, 8)], rtol=1e-6)
    assert [c["call"] for c in calls].count("reset") == 2  # episode 0, and episode 1 joined late
    assert sum(c["call"] == "predict" for c in calls) == len(answered) + 2
