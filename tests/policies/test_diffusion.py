"""diffusion: LeRobot's Diffusion Policy behind our Policy interface: LeRobot's windows, loss equal to
LeRobot's on processor-normalised inputs, unnormalised chunks from the current step, the frames its
history holds, seeded sampling, overfit, config validation (what every family keeps -- presets, a
training step, save/load, select_action, reset -- is in test_contract.py)."""

import numpy as np
import pytest
import torch

from policystack.policies.base import get_policy_class
from policystack.policies.diffusion import DiffusionConfig, DiffusionPolicy
from policystack.types import Feature

FEATURES = {
    "observation.state": Feature("float32", (5,)),
    "observation.images.front": Feature("video", (64, 64, 3)),
    "action": Feature("float32", (3,)),
}
A_MIN, A_MAX = np.array([10.0, -20.0, 0.0]), np.array([20.0, -10.0, 0.5])
STATS = {
    "observation.state": {"min": np.full(5, -2.0), "max": np.full(5, 2.0)},
    "observation.images.front": {"mean": np.array([0.4, 0.5, 0.6]).reshape(3, 1, 1),
                                 "std": np.array([0.2, 0.25, 0.3]).reshape(3, 1, 1)},
    "action": {"min": A_MIN, "max": A_MAX},
}
T_OBS, H, A = 2, 8, 3


def small_config(**kw) -> DiffusionConfig:
    return DiffusionConfig(**{"n_obs_steps": T_OBS, "horizon": H, "n_action_steps": 4, "down_dims": (16, 32),
                              "diffusion_step_embed_dim": 16, "spatial_softmax_num_keypoints": 8,
                              "num_inference_steps": 4, **kw})


def make_batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(A_MIN, dtype=torch.float32), torch.tensor(A_MAX, dtype=torch.float32)
    return {
        "observation.state": torch.rand(b, T_OBS, 5, generator=g) * 4 - 2,
        "observation.images.front": torch.randint(0, 256, (b, T_OBS, 3, 64, 64), generator=g, dtype=torch.uint8),
        "action": lo + (hi - lo) * torch.rand(b, H, A, generator=g),
        "action_is_pad": torch.zeros(b, H, dtype=torch.bool),
        "task": ["do it"] * b,
    }


def step_obs(batch, i):
    return {"observation.state": batch["observation.state"][:, i],
            "observation.images.front": batch["observation.images.front"][:, i], "task": batch["task"]}


def stacked_history(policy, obs):
    return policy.history.window(policy.history_step(obs))[0]


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_windows_follow_lerobots_diffusion_config():
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig as LeRobotDiffusionConfig

    cfg = small_config()
    assert cfg.observation_delta_indices == [-1, 0]
    assert cfg.action_delta_indices == list(range(-1, 7))  # starts at the oldest observed frame
    ref = LeRobotDiffusionConfig(n_obs_steps=T_OBS, horizon=H, n_action_steps=4, down_dims=(16, 32), device="cpu")
    assert cfg.observation_delta_indices == ref.observation_delta_indices
    assert cfg.action_delta_indices == ref.action_delta_indices
    assert cfg.chunk_size == H - T_OBS + 1


def test_builds_lerobot_diffusion_from_our_features():
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy as LeRobotDiffusionPolicy

    policy = DiffusionPolicy(small_config(), FEATURES, STATS)
    assert get_policy_class("diffusion") is DiffusionPolicy
    assert isinstance(policy.lerobot, LeRobotDiffusionPolicy)
    cfg = policy.lerobot.config
    assert cfg.crop_shape == (56, 56)  # crop_ratio 0.875 of the 64x64 images
    assert cfg.pretrained_backbone_weights is None and cfg.horizon == H and cfg.n_obs_steps == T_OBS
    assert cfg.input_features["observation.images.front"].shape == (3, 64, 64)
    assert DiffusionPolicy(small_config(crop_ratio=1.0), FEATURES, STATS).lerobot.config.crop_shape is None
    assert DiffusionPolicy(small_config(crop_shape=(48, 40)), FEATURES, STATS).lerobot.config.crop_shape == (48, 40)
    assert any(k.startswith("lerobot.diffusion.unet.") for k in policy.state_dict())


def test_loss_is_lerobots_on_processor_normalised_inputs():
    policy = DiffusionPolicy(small_config(), FEATURES, STATS)
    batch = make_batch()
    torch.manual_seed(3)
    loss, logs = policy.compute_loss(batch)
    img_mean = torch.tensor(STATS["observation.images.front"]["mean"], dtype=torch.float32)
    img_std = torch.tensor(STATS["observation.images.front"]["std"], dtype=torch.float32)
    lo, hi = torch.tensor(A_MIN, dtype=torch.float32), torch.tensor(A_MAX, dtype=torch.float32)
    expected_in = {  # LeRobot's processor: min_max to [-1, 1] for state and action, images [0, 1] mean/std
        "observation.state": batch["observation.state"] / 2.0,
        "observation.images.front": (batch["observation.images.front"].float() / 255 - img_mean) / img_std,
        "action": 2 * (batch["action"] - lo) / (hi - lo) - 1,
        "action_is_pad": batch["action_is_pad"],
    }
    torch.manual_seed(3)
    ref, _ = policy.lerobot(expected_in)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-5)
    assert logs == {"mse": pytest.approx(ref.item(), rel=1e-4)}


def test_wrong_window_is_reported():
    policy = DiffusionPolicy(small_config(), FEATURES, STATS)
    batch = make_batch()
    batch["action"] = batch["action"][:, :4]
    with pytest.raises(ValueError, match=r"expected action \[B, 8, A\]"):
        policy.compute_loss(batch)


def test_predict_action_chunk_is_unnormalised_from_the_current_step():
    policy = DiffusionPolicy(small_config(), FEATURES, STATS).eval()
    obs = step_obs(make_batch(b=3), 1)
    chunk = policy.predict_action_chunk(obs, generator=seeded())
    assert chunk.shape == (3, H - T_OBS + 1, A)
    # clip_sample keeps the normalised trajectory in [-1, 1]: unnormalised it lies in [min, max]
    lo, hi = torch.tensor(A_MIN, dtype=torch.float32), torch.tensor(A_MAX, dtype=torch.float32)
    assert (chunk >= lo - 1e-4).all() and (chunk <= hi + 1e-4).all()
    assert chunk[..., 0].min() > 9.0 and chunk[..., 1].max() < -9.0  # not left in normalised units
    # it is the tail of LeRobot's sampled trajectory, from the current (last observed) frame on
    history = stacked_history(policy, obs)
    inputs = policy.lerobot_inputs(history)
    inputs["observation.images"] = torch.stack([inputs["observation.images.front"]], dim=-4)
    model = policy.lerobot.diffusion
    cond = model._prepare_global_conditioning(inputs)
    full = model.conditional_sample(3, global_cond=cond, generator=seeded())
    torch.testing.assert_close(chunk, policy.normalizer.unnormalize("action", full[:, T_OBS - 1:]))
    # same seed, same chunk; other seed, other chunk
    torch.testing.assert_close(policy.predict_action_chunk(obs, generator=seeded()), chunk, rtol=0, atol=0)
    assert not torch.allclose(policy.predict_action_chunk(obs, generator=seeded(1)), chunk)


def test_select_action_keeps_history_and_queues_a_chunk():
    policy = DiffusionPolicy(small_config(n_action_steps=2), FEATURES, STATS).eval()
    batch = make_batch(b=2)
    steps = [step_obs(batch, 0), step_obs(batch, 1), step_obs(make_batch(b=2, seed=7), 0)]
    # first step: history is the first frame repeated (as the loader pads at an episode start)
    torch.manual_seed(0)
    first = policy.select_action(steps[0])
    repeated = {k: torch.stack([steps[0][k]] * T_OBS, 1) for k in ("observation.state", "observation.images.front")}
    assert all(torch.equal(v, repeated[k]) for k, v in stacked_history(policy, steps[0]).items())
    torch.manual_seed(0)
    policy_fresh_chunk = policy.predict_action_chunk(steps[0])  # history still [step0]: same frames
    torch.testing.assert_close(first, policy_fresh_chunk[:, 0])
    torch.testing.assert_close(policy.select_action(steps[1]), policy_fresh_chunk[:, 1])  # from the queue
    # third call predicts again, from the two latest frames (steps 1 and 2)
    h = stacked_history(policy, steps[2])
    torch.testing.assert_close(h["observation.state"],
                               torch.stack([steps[1]["observation.state"], steps[2]["observation.state"]], 1))
    torch.manual_seed(5)
    expect = policy.predict_action_chunk(steps[2])  # reads the history, does not change it
    torch.manual_seed(5)
    torch.testing.assert_close(policy.select_action(steps[2]), expect[:, 0])
    policy.reset()
    assert len(policy.history) == 0 and not policy._action_queue


def test_overfits_a_small_batch():
    torch.manual_seed(0)
    policy = DiffusionPolicy(small_config(prediction_type="sample", crop_ratio=1.0), FEATURES, STATS)
    batch = make_batch(b=2)

    def eval_loss():  # the same noise and timesteps every time
        policy.eval()
        torch.manual_seed(123)
        with torch.no_grad():
            loss = sum(policy.compute_loss(batch)[0].item() for _ in range(4)) / 4
        policy.train()
        return loss

    before = eval_loss()
    opt = torch.optim.AdamW([p for n, p in policy.named_parameters() if ".backbone." not in n], lr=3e-3)
    for _ in range(20):
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.2 * before, (before, after)


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of 2\\*\\*len\\(down_dims\\)"):
        DiffusionConfig(horizon=12, down_dims=(64, 128, 256))
    with pytest.raises(ValueError, match="n_action_steps \\(8\\) must be <= horizon - n_obs_steps \\+ 1 \\(7\\)"):
        DiffusionConfig(n_obs_steps=2, horizon=8, n_action_steps=8, down_dims=(64, 128))
    with pytest.raises(ValueError, match="noise_scheduler_type"):
        DiffusionConfig(noise_scheduler_type="Euler")
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionConfig(prediction_type="v_prediction")
    with pytest.raises(ValueError, match="num_inference_steps"):
        DiffusionConfig(num_inference_steps=500)
    with pytest.raises(ValueError, match="leave crop_shape None"):
        DiffusionConfig(resize_shape=(64, 64), crop_shape=(56, 56))
    with pytest.raises(ValueError, match="crop_ratio"):
        DiffusionConfig(crop_ratio=0.0)
    with pytest.raises(ValueError, match="divisible by n_groups"):
        DiffusionConfig(down_dims=(12, 24), horizon=16)
    with pytest.raises(ValueError, match="use_group_norm"):
        DiffusionConfig(pretrained_backbone_weights="ResNet18_Weights.IMAGENET1K_V1")
    cfg = DiffusionConfig.from_dict({"down_dims": [32, 64], "horizon": 8, "n_action_steps": 4, "resize_shape": [40, 40]})
    assert cfg.down_dims == (32, 64) and cfg.resize_shape == (40, 40)


def test_missing_features_and_bad_shapes_are_reported():
    with pytest.raises(KeyError, match="diffusion needs 'observation.state'"):
        DiffusionPolicy(small_config(), {k: v for k, v in FEATURES.items() if k != "observation.state"}, STATS)
    with pytest.raises(KeyError, match="at least one camera"):
        DiffusionPolicy(small_config(), {k: v for k, v in FEATURES.items() if "images" not in k}, STATS)
    two_sizes = {**FEATURES, "observation.images.wrist": Feature("video", (16, 16, 3))}
    with pytest.raises(ValueError, match="all cameras at one shape"):
        DiffusionPolicy(small_config(image_normalization="identity"), two_sizes, STATS)
    with pytest.raises(ValueError, match="does not fit the 64x64 images"):
        DiffusionPolicy(small_config(crop_shape=(80, 80)), FEATURES, STATS)
    # ResNet18 turns 28x28 crops into a 1x1 map: the spatial softmax would make images irrelevant
    small_images = {**FEATURES, "observation.images.front": Feature("video", (32, 32, 3))}
    with pytest.raises(ValueError, match="feature map .* is 1x1"):
        DiffusionPolicy(small_config(), small_images, STATS)
    with pytest.raises(KeyError, match="no 'min' for 'action'"):
        DiffusionPolicy(small_config(), FEATURES, {**STATS, "action": {"mean": A_MIN, "std": A_MAX}})


