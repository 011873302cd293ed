"""bc: loss masking, overfitting a small batch, history at inference == the training path, the instruction
and environment state as inputs, errors (presets, a training step, save/load, select_action and reset are
in test_contract.py)."""

import numpy as np
import pytest
import torch
from overfit import overfit

from policystack.policies.bc import BCConfig, BCPolicy, random_shift
from policystack.types import Feature

FEATURES = {
    "observation.state": Feature("float32", (5,)),
    "observation.images.front": Feature("video", (32, 32, 3)),
    "action": Feature("float32", (3,)),
}
STATS = {
    "observation.state": {"mean": np.zeros(5), "std": np.ones(5)},
    "action": {"mean": np.array([1.0, 0.0, -1.0]), "std": np.array([2.0, 1.0, 0.5])},
}


def make_batch(b=8, t=2, h=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observation.state": torch.randn(b, t, 5, generator=g),
        "observation.images.front": torch.randint(0, 256, (b, t, 3, 32, 32), generator=g, dtype=torch.uint8),
        "action": torch.randn(b, h, 3, generator=g),
        "action_is_pad": torch.zeros(b, h, dtype=torch.bool),
        "task": ["do it"] * b,
    }


def small_config(**kw):
    """The from-scratch conv path (vision_backbone='conv'), small."""
    return BCConfig(**{"n_obs_steps": 2, "horizon": 4, "n_action_steps": 2, "conv_channels": (8, 16),
                       "keypoints": 8, "hidden_dim": 64, "vision_backbone": "conv", **kw})


def lite0_config(**kw):
    """The pretrained path: frozen Lite0 (2 stages, tiny) + FiLM head."""
    return BCConfig(**{"n_obs_steps": 2, "horizon": 4, "n_action_steps": 2, "backbone_stages": 2,
                       "backbone_image_size": 32, "head_width": 16, "keypoints": 8, "hidden_dim": 64, **kw})


def test_loss_ignores_padded_steps():
    torch.manual_seed(0)
    policy = BCPolicy(small_config(), FEATURES, STATS)
    batch = make_batch()
    batch["action_is_pad"][:, 2:] = True
    policy.eval()
    loss_a, _ = policy.compute_loss(batch)
    batch["action"][:, 2:] += 100.0  # padded targets must not matter
    loss_b, _ = policy.compute_loss(batch)
    torch.testing.assert_close(loss_a, loss_b)


def test_overfits_a_small_batch():
    torch.manual_seed(0)
    policy = BCPolicy(small_config(random_shift=0), FEATURES, STATS)
    first, last, _ = overfit(policy, make_batch())
    assert last < 0.2 * first, (first, last)


def test_select_action_uses_observation_history():
    torch.manual_seed(0)
    policy = BCPolicy(small_config(n_action_steps=1), FEATURES, STATS).eval()
    b = make_batch(b=2)
    steps = [{"observation.state": b["observation.state"][:, i],
              "observation.images.front": b["observation.images.front"][:, i], "task": b["task"]} for i in range(2)]
    first = policy.select_action(steps[0])
    # at an episode start the first frame is repeated, like the loader's padding
    repeated = {k: torch.stack([steps[0][k]] * 2, 1) for k in ("observation.state", "observation.images.front")}
    repeated["task"] = b["task"]
    expect_first = policy.normalizer.unnormalize("action", policy.head(policy._features(repeated)).view(2, 4, 3))[:, 0]
    torch.testing.assert_close(first, expect_first)
    second = policy.select_action(steps[1])
    stacked = {k: b[k] for k in ("observation.state", "observation.images.front", "task")}
    expect = policy.normalizer.unnormalize("action", policy.head(policy._features(stacked)).view(2, 4, 3))[:, 0]
    torch.testing.assert_close(second, expect)
    assert policy.predict_action_chunk(steps[1]).shape == (2, 4, 3)


def words_only_batch() -> dict:
    """8 samples with the same images and state, two instructions and two different targets: only a
    policy that reads the instruction can fit both."""
    torch.manual_seed(0)
    batch = make_batch(b=8)
    for k in ("observation.state", "observation.images.front"):
        batch[k] = batch[k][:1].expand_as(batch[k]).clone()
    batch["task"] = ["reach the red ball", "reach the blue ball"] * 4
    batch["action"] = torch.tensor([[2.0, 1.0, -1.0], [-2.0, -1.0, 0.0]]).repeat(4, 1)[:, None].expand(8, 4, 3).clone()
    return batch


def test_instruction_selects_the_action():
    """Same images and state, two instructions, two different targets: only a policy that reads
    the instruction can fit both (the tabletop scenes hold distractors named by the task)."""
    batch = words_only_batch()
    losses = {}
    for enc in ("hashed", "none"):
        torch.manual_seed(0)
        policy = BCPolicy(small_config(random_shift=0, text_encoder=enc), FEATURES, STATS)
        losses[enc] = overfit(policy, batch)[1]
    assert losses["hashed"] < 0.1 < losses["none"], losses
    with pytest.raises(KeyError, match="needs the instruction"):
        policy = BCPolicy(small_config(), FEATURES, STATS)
        policy.predict_action_chunk({k: batch[k][:, 0] for k in ("observation.state", "observation.images.front")})
    with pytest.raises(ValueError, match="text_encoder"):
        BCConfig(text_encoder="bert")


def test_random_shift_keeps_shape_and_content_range():
    img = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    out = random_shift(img, 2)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 255
    assert torch.equal(random_shift(img, 0), img.float())


def test_environment_state_is_an_input():
    """State-only bc (no camera) reads observation.environment_state: two batches that differ
    only there must give different actions, and a batch without it is an error naming it."""
    feats = {"observation.state": Feature("float32", (5,)), "observation.environment_state": Feature("float32", (3,)),
             "action": Feature("float32", (3,))}
    stats = {**STATS, "observation.environment_state": {"mean": np.zeros(3), "std": np.ones(3)}}
    torch.manual_seed(0)
    policy = BCPolicy(small_config(text_encoder="none"), feats, stats).eval()
    obs = {"observation.state": torch.zeros(1, 5), "observation.environment_state": torch.zeros(1, 3)}
    a0 = policy.predict_action_chunk(obs)
    a1 = policy.predict_action_chunk({**obs, "observation.environment_state": torch.ones(1, 3)})
    assert not torch.allclose(a0, a1)
    with pytest.raises(KeyError, match="environment_state"):
        policy.predict_action_chunk({"observation.state": torch.zeros(1, 5)})


def test_missing_features_are_reported():
    with pytest.raises(KeyError, match="no 'action'"):
        BCPolicy(small_config(), {"observation.state": Feature("float32", (5,))}, STATS)
    with pytest.raises(KeyError, match="bc needs"):
        BCPolicy(small_config(), {"action": Feature("float32", (3,))}, STATS)
    with pytest.raises(ValueError, match="conv_channels"):
        BCConfig(conv_channels=())


def test_lite0_words_select_the_object_through_film():
    """With the frozen pretrained trunk the instruction reaches the image head (FiLM): same images and
    state, two instructions, two targets; the trunk stays untouched by training."""
    batch = words_only_batch()
    policy = BCPolicy(lite0_config(), FEATURES, STATS)
    policy.load_external_weights()
    trunk = {k: v.clone() for k, v in policy.pretrained.state_dict().items()}
    assert overfit(policy, batch)[1] < 0.1
    assert all(torch.equal(v, policy.pretrained.state_dict()[k]) for k, v in trunk.items())
    blind = BCPolicy(lite0_config(text_encoder="none"), FEATURES, STATS)  # no words: the FiLM head stays a plain head
    blind.load_external_weights()
    assert overfit(blind, batch)[1] > 0.1
    with pytest.raises(ValueError, match="vision_backbone"):
        BCConfig(vision_backbone="resnet")


def test_lite0_trains_on_cached_features_as_on_frames():
    """frame_transforms() gives the loader the frozen trunk; compute_loss on its (float16) output equals
    compute_loss on the uint8 frames, so training on the cache is training on the images."""
    policy = BCPolicy(lite0_config(), FEATURES, STATS).eval()
    policy.load_external_weights()
    transforms = policy.frame_transforms()
    assert set(transforms) == {"observation.images.front"}
    batch = make_batch(b=3)
    frames = batch["observation.images.front"]
    cached = torch.from_numpy(transforms["observation.images.front"](frames.flatten(0, 1).numpy()))
    with torch.no_grad():
        want = policy.compute_loss(batch)[0]
        got = policy.compute_loss({**batch, "observation.images.front": cached.view(*frames.shape[:2], *cached.shape[1:])})[0]
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="cached features"):
        policy.compute_loss({**batch, "observation.images.front": torch.zeros(3, 2, 7, 2, 2)})
    assert BCPolicy(small_config(), FEATURES, STATS).frame_transforms() == {}
