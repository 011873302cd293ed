"""EvalRunner on real envs and a real (random-weight) bc policy; short episodes keep this fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _eval_fixtures import make_bc

from policystack.datasets.video import probe_video
from policystack.eval.expert import ScriptedExpert
from policystack.eval.runner import EvalResult, EvalRunner, env_kwargs_from_features
from policystack.policies.bc import BCPolicy


def outcomes(result: EvalResult) -> list[tuple]:
    return [(e.index, e.seed, e.success, e.length, e.reward, e.max_reward, e.task) for e in result.episodes]


def test_bc_records_and_determinism(bc_state):
    runner = EvalRunner(task="Reach", episodes=3, n_envs=1, seed=7, max_steps=6, progress=False)
    a = runner.run(bc_state)
    assert [e.seed for e in a.episodes] == [7, 8, 9] and [e.index for e in a.episodes] == [0, 1, 2]
    assert all(e.length == 6 and not e.success for e in a.episodes)  # a random policy does not reach
    assert all(isinstance(e.task, str) and e.task for e in a.episodes)
    assert a.success_rate == 0.0 and a.ci_low == 0.0 and 0 < a.ci_high < 1
    assert a.mean_length == 6.0 and a.mean_reward == pytest.approx(np.mean([e.reward for e in a.episodes]))
    assert len({e.reward for e in a.episodes}) == 3  # different seeds -> different episodes
    b = runner.run(bc_state)
    assert outcomes(a) == outcomes(b)
    c = EvalRunner(task="Reach", episodes=3, n_envs=1, seed=8, max_steps=6, progress=False).run(bc_state)
    assert outcomes(c)[0][2:] == outcomes(a)[1][2:]  # episode seeds, not positions, decide outcomes


def test_n_envs_does_not_change_results(bc_state):
    """n_envs=2 (AsyncVectorEnv, spawned workers, per-slot policy copies) == n_envs=1 exactly,
    with episodes of different lengths so the two envs restart at different steps."""
    expert = ScriptedExpert()
    kw = dict(task="Reach", episodes=3, seed=0, progress=False)
    one = EvalRunner(n_envs=1, **kw).run(expert)
    two = EvalRunner(n_envs=2, **kw).run(expert)
    assert len({e.length for e in one.episodes}) > 1
    assert outcomes(one) == outcomes(two)
    # a learned, stochastic policy: per-slot copies, each episode's torch RNG stream seeded with its seed
    kw = dict(task="Reach", episodes=3, seed=3, max_steps=5, progress=False)
    noisy = NoisyBC(bc_state.config, bc_state.features, None)
    noisy.load_state_dict(bc_state.state_dict())
    n1, n2 = EvalRunner(n_envs=1, **kw).run(noisy), EvalRunner(n_envs=2, **kw).run(noisy)
    assert outcomes(n1) == outcomes(n2)
    assert [e.reward for e in n1.episodes] != [e.reward for e in EvalRunner(n_envs=1, **kw).run(bc_state).episodes]


class NoisyBC(BCPolicy):
    """bc plus Gaussian action noise from torch's global RNG (like diffusion sampling)."""

    def predict_action_chunk(self, obs):
        chunk = super().predict_action_chunk(obs)
        return chunk + 0.3 * torch.randn_like(chunk)


class StopsAtThree(BCPolicy):
    """bc that says the episode is over after its third action (as RT-2's terminate token does)."""

    def predict_action_chunk_with_done(self, obs):
        chunk = self.predict_action_chunk(obs)
        first = self._planned = getattr(self, "_planned", 0)  # actions of earlier chunks (n_action_steps each)
        self._planned += self.config.n_action_steps
        return chunk, (first + torch.arange(1, chunk.shape[1] + 1) == 3).expand(chunk.shape[:2])

    def reset(self):
        super().reset()
        self._planned = 0


def test_a_policy_that_says_done_ends_its_episode(bc_state):
    stops = StopsAtThree(bc_state.config, bc_state.features, None)
    stops.load_state_dict(bc_state.state_dict())
    for n_envs in (1, 2):
        r = EvalRunner(task="Reach", episodes=3, n_envs=n_envs, seed=7, max_steps=6, progress=False).run(stops)
        assert [(e.length, e.policy_done) for e in r.episodes] == [(3, True)] * 3
    plain = EvalRunner(task="Reach", episodes=1, seed=7, max_steps=6, progress=False).run(bc_state)
    assert plain.episodes[0].length == 6 and not plain.episodes[0].policy_done
    assert EvalResult.from_dict(r.to_dict()).episodes[0].policy_done


class CountsCalls(BCPolicy):
    """bc that counts its chunk predictions per episode (as EMMA counts plans, parse failures and holds)."""

    def predict_action_chunk(self, obs):
        self.calls = getattr(self, "calls", 0) + 1
        return super().predict_action_chunk(obs)

    def episode_stats(self):
        return {"calls": getattr(self, "calls", 0)}

    def reset(self):
        super().reset()
        self.calls = 0


def test_policy_episode_stats_are_recorded_and_summed(bc_state):
    counting = CountsCalls(bc_state.config, bc_state.features, None)
    counting.load_state_dict(bc_state.state_dict())
    r = EvalRunner(task="Reach", episodes=2, n_envs=1, seed=7, max_steps=5, progress=False).run(counting)
    per_chunk = bc_state.config.n_action_steps
    expected = -(-5 // per_chunk)  # chunks predicted in a 5-step episode
    assert [e.policy_stats for e in r.episodes] == [{"calls": expected}] * 2
    assert r.policy_stats == {"calls": 2 * expected} and r.to_dict()["policy_stats"] == r.policy_stats
    assert EvalResult.from_dict(r.to_dict()).episodes[1].policy_stats == {"calls": expected}
    assert EvalRunner(task="Reach", episodes=1, seed=7, max_steps=2, progress=False).run(bc_state).policy_stats == {}


def test_policy_state_and_rng_untouched(bc_state):
    bc_state.train()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    EvalRunner(task="Reach", episodes=1, max_steps=2, progress=False).run(bc_state)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is restored
    assert bc_state.training  # mode restored
    assert len(bc_state.history) == 0 and not bc_state._action_queue  # rollouts ran on copies
    bc_state.eval()


def test_expert_succeeds_on_reach():
    r = EvalRunner(task="Reach", episodes=2, seed=0, progress=False).run(ScriptedExpert())
    assert r.success_rate == 1.0 and all(e.success for e in r.episodes)
    assert all(e.length < 50 for e in r.episodes)  # terminated on success, before the time limit
    assert r.env_kwargs["cameras"] == ()


def test_camera_policy_and_videos(bc_camera, tmp_path):
    assert env_kwargs_from_features("Reach", bc_camera.features) == {"image_size": 32, "cameras": ("front",)}
    r = EvalRunner(task="Reach", episodes=2, seed=0, max_steps=4, video_dir=tmp_path, n_videos=1,
                   progress=False).run(bc_camera)
    assert r.env_kwargs["cameras"] == ("front",) and r.env_kwargs["image_size"] == 32
    assert len(r.videos) == 1 and r.episodes[0].video and r.episodes[1].video is None
    info = probe_video(r.videos[0])
    assert (info.width, info.height) == (32, 32)
    assert info.num_frames == r.episodes[0].length + 1  # every observation incl. the last


def test_expert_video_from_render(tmp_path):
    """Without cameras the video comes from env.render()."""
    r = EvalRunner(task="Reach", episodes=1, seed=0, video_dir=tmp_path, n_videos=1,
                   env_kwargs={"cameras": (), "image_size": 48}, progress=False).run(ScriptedExpert())
    info = probe_video(r.videos[0])
    assert (info.width, info.height, info.num_frames) == (48, 48, r.episodes[0].length + 1)


def test_feature_mismatch_fails_before_rollout(bc_camera):
    calls = []

    class Spy(type(bc_camera)):
        def select_action(self, obs):
            calls.append(1)
            return super().select_action(obs)

    spy = Spy(bc_camera.config, bc_camera.features, None)
    spy.load_state_dict(bc_camera.state_dict())
    with pytest.raises(ValueError, match=r"missing 'observation.images.front'.*cameras="):
        EvalRunner(task="Reach", episodes=1, env_kwargs={"cameras": ()}, progress=False).run(spy)
    with pytest.raises(ValueError, match=r"observation.images.front'.*expects shape \[3, 32, 32\].*\[3, 48, 48\]"):
        EvalRunner(task="Reach", episodes=1, env_kwargs={"image_size": 48}, progress=False).run(spy)
    with pytest.raises(ValueError, match=r"'action'.*outputs shape \[7\].*takes \[8\]"):
        EvalRunner(task="Reach", episodes=1, env_kwargs={"action_mode": "joint"}, progress=False).run(spy)
    assert calls == []


def test_joint_action_mode_from_features():
    policy = make_bc("Reach", cameras=(), action_mode="joint")
    assert env_kwargs_from_features("Reach", policy.features)["action_mode"] == "joint"
    r = EvalRunner(task="Reach", episodes=1, max_steps=2, progress=False).run(policy)
    assert r.env_kwargs["action_mode"] == "joint" and r.episodes[0].length == 2


def test_env_state_from_features():
    """A state-based checkpoint (environment_state, no camera) gets an env that observes it."""
    policy = make_bc("Push", cameras=(), env_state=True)
    assert env_kwargs_from_features("Push", policy.features) == {"cameras": (), "env_state": True}
    r = EvalRunner(task="Push", episodes=1, max_steps=2, progress=False).run(policy)
    assert r.env_kwargs["env_state"] is True and r.episodes[0].length == 2


def test_bad_arguments():
    with pytest.raises(KeyError, match="unknown env 'Nope'.*PickPlace"):
        EvalRunner(task="Nope")
    with pytest.raises(ValueError, match="episodes=0"):
        EvalRunner(task="Reach", episodes=0)
    with pytest.raises(ValueError, match="n_envs=0"):
        EvalRunner(task="Reach", n_envs=0)


def test_result_roundtrip(bc_state):
    r = EvalRunner(task="Reach", episodes=2, max_steps=2, progress=False).run(bc_state)
    d = r.to_dict()
    assert d["n_episodes"] == 2 and d["successes"] == 0 and d["episodes"][0]["seed"] == 1000
    back = EvalResult.from_dict(d)
    assert outcomes(back) == outcomes(r) and back.success_rate == r.success_rate
    with pytest.raises(ValueError, match="not an eval result"):
        EvalResult.from_dict({"task": "Reach"})


@pytest.mark.parametrize("name", ["drawer-close-v3", "MetaWorld-drawer-close-v3", "metaworld/drawer-close-v3",
                                  "policystack/MetaWorld-drawer-close-v3-v0"])
def test_metaworld_names_resolve_as_collect_writes_them(name):
    from policystack.eval.envs import resolve_task

    assert resolve_task(name) == ("metaworld", "drawer-close-v3")
    assert resolve_task("policystack/Reach-v0") == ("tabletop", "Reach")
