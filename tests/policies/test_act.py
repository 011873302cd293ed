"""act: LeRobot's ACT behind our Policy interface: build from features, loss equal to LeRobot's on the
inputs its processor would give, unnormalised chunks, temporal ensembling, overfit, config and feature
errors (what every family keeps -- presets, a training step, save/load, select_action, reset -- is in
test_contract.py)."""

import numpy as np
import pytest
import torch

from policystack.policies.act import ACTConfig, ACTPolicy
from policystack.policies.base import get_policy_class
from policystack.types import Feature

FEATURES = {
    "observation.state": Feature("float32", (5,)),
    "observation.images.front": Feature("video", (32, 32, 3)),
    "action": Feature("float32", (3,)),
}
STATS = {
    "observation.state": {"mean": np.linspace(-1, 1, 5), "std": np.full(5, 2.0)},
    "observation.images.front": {"mean": np.array([0.4, 0.5, 0.6]).reshape(3, 1, 1),
                                 "std": np.array([0.2, 0.25, 0.3]).reshape(3, 1, 1)},
    "action": {"mean": np.array([10.0, -20.0, 0.5]), "std": np.array([2.0, 1.0, 0.5])},
}
H, A = 8, 3


def small_config(**kw) -> ACTConfig:
    return ACTConfig(**{"horizon": H, "n_action_steps": 4, "dim_model": 32, "n_heads": 4, "dim_feedforward": 64,
                        "n_encoder_layers": 1, "n_vae_encoder_layers": 1, "latent_dim": 8, **kw})


def make_batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observation.state": torch.randn(b, 1, 5, generator=g),
        "observation.images.front": torch.randint(0, 256, (b, 1, 3, 32, 32), generator=g, dtype=torch.uint8),
        "action": torch.randn(b, H, A, generator=g) + torch.tensor([10.0, -20.0, 0.5]),
        "action_is_pad": torch.zeros(b, H, dtype=torch.bool),
        "task": ["do it"] * b,
    }


def one_step(batch, i=0):
    return {"observation.state": batch["observation.state"][:, i],
            "observation.images.front": batch["observation.images.front"][:, i], "task": batch["task"]}


def test_builds_lerobot_act_from_our_features():
    from lerobot.configs.types import FeatureType
    from lerobot.policies.act.modeling_act import ACTPolicy as LeRobotACTPolicy

    policy = ACTPolicy(small_config(), FEATURES, STATS)
    assert get_policy_class("act") is ACTPolicy
    assert isinstance(policy.lerobot, LeRobotACTPolicy)
    cfg = policy.lerobot.config
    assert cfg.chunk_size == H and cfg.n_action_steps == 4 and cfg.pretrained_backbone_weights is None
    assert cfg.input_features["observation.images.front"].type is FeatureType.VISUAL
    assert cfg.input_features["observation.images.front"].shape == (3, 32, 32)
    assert cfg.input_features["observation.state"].type is FeatureType.STATE
    assert cfg.output_features["action"].shape == (A,)
    assert policy.config.observation_delta_indices == [0]
    assert policy.config.action_delta_indices == list(range(H))
    # the wrapped model is part of the state dict (saved with the normaliser statistics)
    keys = policy.state_dict().keys()
    assert any(k.startswith("lerobot.model.backbone.") for k in keys)
    assert "normalizer.observation__images__front__std" in keys


def test_loss_is_lerobots_on_processor_normalised_inputs():
    policy = ACTPolicy(small_config(dropout=0.0), FEATURES, STATS)
    batch = make_batch()
    torch.manual_seed(1)
    loss, logs = policy.compute_loss(batch)
    # what LeRobot's processor would feed its model: mean/std-normalised state and action, images
    # in [0, 1] then per-channel mean/std, one observation step
    img_mean = torch.tensor(STATS["observation.images.front"]["mean"], dtype=torch.float32)
    img_std = torch.tensor(STATS["observation.images.front"]["std"], dtype=torch.float32)
    expected_in = {
        "observation.state": (batch["observation.state"][:, 0] - torch.tensor(STATS["observation.state"]["mean"],
                              dtype=torch.float32)) / 2.0,
        "observation.images.front": (batch["observation.images.front"][:, 0].float() / 255 - img_mean) / img_std,
        "action": (batch["action"] - torch.tensor([10.0, -20.0, 0.5])) / torch.tensor([2.0, 1.0, 0.5]),
        "action_is_pad": batch["action_is_pad"],
    }
    torch.manual_seed(1)
    ref, ref_logs = policy.lerobot(expected_in)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-5)
    assert set(logs) == {"l1_loss", "kld_loss"} and logs["l1_loss"] == pytest.approx(ref_logs["l1_loss"], rel=1e-4)


def test_predict_action_chunk_is_unnormalised():
    policy = ACTPolicy(small_config(), FEATURES, STATS).eval()
    obs = one_step(make_batch(b=2))
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (2, H, A)
    # a head that outputs zeros (normalised) must give the dataset mean (unnormalised)
    with torch.no_grad():
        policy.lerobot.model.action_head.weight.zero_()
        policy.lerobot.model.action_head.bias.zero_()
    mean = torch.tensor(STATS["action"]["mean"], dtype=torch.float32)
    torch.testing.assert_close(policy.predict_action_chunk(obs), mean.expand(2, H, A))


def test_predict_keeps_training_mode():
    policy = ACTPolicy(small_config(), FEATURES, STATS).train()
    policy.predict_action_chunk(one_step(make_batch(b=2)))
    assert policy.training and policy.lerobot.training and policy.lerobot.model.training


def test_temporal_ensembling_averages_overlapping_chunks():
    policy = ACTPolicy(small_config(n_action_steps=1, temporal_ensemble_coeff=0.0), FEATURES, STATS).eval()
    obs_a, obs_b = one_step(make_batch(b=2)), one_step(make_batch(b=2, seed=5))
    chunk_a, chunk_b = policy.predict_action_chunk(obs_a), policy.predict_action_chunk(obs_b)
    torch.testing.assert_close(policy.select_action(obs_a), chunk_a[:, 0])
    # coefficient 0: uniform weights, so step 2 is the mean of chunk_a[1] and chunk_b[0]
    torch.testing.assert_close(policy.select_action(obs_b), (chunk_a[:, 1] + chunk_b[:, 0]) / 2)
    policy.reset()
    torch.testing.assert_close(policy.select_action(obs_b), chunk_b[:, 0])


def test_overfits_a_small_batch():
    torch.manual_seed(0)
    policy = ACTPolicy(small_config(use_vae=False, dropout=0.0, pre_norm=True), FEATURES, STATS).train()
    batch = make_batch(b=2)
    # the ResNet gets gradients (see above) but is not stepped here: AdamW over its 11M parameters
    # would dominate the time of this test
    opt = torch.optim.AdamW([p for n, p in policy.named_parameters() if ".backbone." not in n], lr=2e-3)
    losses = []
    for _ in range(40):
        loss, _ = policy.compute_loss(batch)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0], losses


def test_config_validation():
    with pytest.raises(ValueError, match="n_obs_steps must be 1"):
        ACTConfig(n_obs_steps=2)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        ACTConfig(dim_model=30, n_heads=4)
    with pytest.raises(ValueError, match="temporal_ensemble_coeff needs n_action_steps=1"):
        ACTConfig(temporal_ensemble_coeff=0.01, n_action_steps=4)
    with pytest.raises(ValueError, match="feedforward_activation"):
        ACTConfig(feedforward_activation="swish")
    with pytest.raises(ValueError, match="cannot exceed"):
        ACTConfig(horizon=4, n_action_steps=8)
    with pytest.raises(ValueError, match="image_normalization"):
        ACTConfig(image_normalization="zscore")
    with pytest.raises(ValueError, match="vision_backbone"):
        ACTConfig(vision_backbone="efficientnet_b0")
    with pytest.raises(ValueError, match="unknown ACTConfig fields \\['chunk_size'\\]"):
        ACTConfig.from_dict({"chunk_size": 10})


def test_missing_features_and_stats_are_reported():
    no_state = {k: v for k, v in FEATURES.items() if k != "observation.state"}
    with pytest.raises(KeyError, match="act needs 'observation.state'"):
        ACTPolicy(small_config(), no_state, STATS)
    with pytest.raises(KeyError, match="at least one camera"):
        ACTPolicy(small_config(), {k: v for k, v in FEATURES.items() if "images" not in k}, STATS)
    no_image_stats = {k: v for k, v in STATS.items() if "images" not in k}
    with pytest.raises(KeyError, match="observation.images.front"):
        ACTPolicy(small_config(), FEATURES, no_image_stats)
    # images not normalised: no image statistics needed
    ACTPolicy(small_config(image_normalization="identity"), FEATURES, no_image_stats)
    policy = ACTPolicy(small_config(), FEATURES, STATS)
    bad = one_step(make_batch(b=1))
    bad["observation.images.front"] = bad["observation.images.front"].float()
    with pytest.raises(ValueError, match="expected uint8 images"):
        policy.predict_action_chunk(bad)


