"""RT-1: paper size, overfitting, inference history == training path, augmentation, position code, loss
masking, errors (what every family keeps -- presets, a training step, save/load, select_action, reset -- is
in test_contract.py)."""

import time

import numpy as np
import pytest
import torch
from overfit import overfit

from policystack.policies.layers.attention import verify_causality
from policystack.policies.layers.position import sincos_2d
from policystack.policies.rt1 import RT1Config, RT1Policy, shift_frames
from policystack.training.config import load_preset as load_training_preset

A, D = 4, 5
CAMS = ("observation.images.front", "observation.images.wrist")
TASKS = ["pick up the red block", "put the cube in the bowl", "open the drawer", "push the button"]
# a small model for the behavioural tests (the presets are tested separately), one action per step
SMALL = dict(backbone="efficientnet", n_obs_steps=3, horizon=1, n_action_steps=1, image_size=16, backbone_stages=2, d_model=32, n_layer=1, n_head=2, head_dim=16,
             mlp_hidden=64, tokens_per_image=4, token_learner_bottleneck=16, dropout=0.0)


def features(size=16, cams=CAMS, state=True):
    from policystack.types import Feature
    f = {"action": Feature("float32", (A,))}
    if state:
        f["observation.state"] = Feature("float32", (D,))
    for k in cams:
        f[k] = Feature("video", (size, size, 3))
    return f


STATS = {"observation.state": {"mean": np.zeros(D), "std": np.ones(D)},
         "action": {"min": np.array([-2.0, 0.0, -1.0, 10.0]), "max": np.array([2.0, 1.0, 1.0, 20.0]),
                    "q01": np.array([-1.5, 0.1, -0.9, 11.0]), "q99": np.array([1.5, 0.9, 0.9, 19.0])}}


def make_batch(B, T, H=1, size=16, cams=CAMS, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(STATS["action"]["min"]).float(), torch.tensor(STATS["action"]["max"]).float()
    batch = {k: torch.randint(0, 256, (B, T, 3, size, size), dtype=torch.uint8, generator=g) for k in cams}
    batch.update({
        "observation.state": torch.randn(B, T, D, generator=g),
        "action": lo + (hi - lo) * torch.rand(B, H, A, generator=g),
        "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
        "observation.state_is_pad": torch.zeros(B, T, dtype=torch.bool),
        "task": [TASKS[i % len(TASKS)] for i in range(B)],
    })
    return batch


def step_obs(batch, t):
    obs = {k: batch[k][:, t] for k in (*CAMS, "observation.state") if k in batch}
    obs["task"] = batch["task"]
    return obs


def load_preset(name):
    klass, cfg, _ = load_training_preset(name)
    assert klass is RT1Policy
    return cfg


def test_config_validation_messages():
    with pytest.raises(ValueError, match="RT-1 bins actions over \\[-1, 1\\].*'min_max', 'quantile'"):
        RT1Config(normalization={"action": "mean_std"})
    with pytest.raises(ValueError, match="text_encoder is 'use'; choose one of \\['hashed', 'hashed_ordered', 'minilm'\\]"):
        RT1Config(text_encoder="use")
    with pytest.raises(ValueError, match="tokens_per_image=20 exceeds the 4x4 feature map"):
        RT1Config(backbone="efficientnet", image_size=64, backbone_stages=4, tokens_per_image=20)
    with pytest.raises(ValueError, match="backbone_stages must be in 1..7"):
        RT1Config(backbone_stages=8)
    with pytest.raises(ValueError, match="n_action_steps"):
        RT1Config(horizon=1, n_action_steps=2)
    assert RT1Config(backbone="efficientnet", image_size=288, backbone_stages=7).feature_grid == 9  # the paper's 81
    assert RT1Config(backbone="efficientnet", image_size=300, backbone_stages=7).feature_grid == 10
    assert RT1Config().feature_grid == 12  # lite0, 3 stages, 96 px: stride 8
    with pytest.raises(ValueError, match="backbone is 'resnet'"):
        RT1Config(backbone="resnet")
    with pytest.raises(ValueError, match="random_shift applies to backbone 'efficientnet'"):
        RT1Config(random_shift=0.1)


def test_policy_needs_a_camera_and_state_when_configured():
    with pytest.raises(KeyError, match="at least one camera"):
        RT1Policy(RT1Config(), features(cams=()), STATS)
    with pytest.raises(KeyError, match="use_state is True but the features have no 'observation.state'"):
        RT1Policy(RT1Config(), features(state=False), STATS)


def test_paper_preset_parameter_count_is_within_10_percent_of_35m():
    cfg = load_preset("rt1_paper")
    with torch.device("meta"):  # sizes only
        policy = RT1Policy(cfg, features(size=288, cams=CAMS[:1], state=False), STATS)
    n = sum(p.numel() for p in policy.parameters())
    print(f"paper RT-1: {n:,} parameters (paper: ~35M)")
    assert abs(n - 35e6) / 35e6 < 0.10
    assert policy.n_obs_tokens == 8 and cfg.feature_grid ** 2 == 81 and cfg.n_obs_steps == 6
    assert len(policy.image_encoder.films) == 26  # FiLM after every MBConv block of EfficientNet-B3
    verify_causality(policy.token_groups, policy.attn_mask, strict_order=True)


@pytest.mark.slow
def test_paper_preset_trains_one_step_and_acts():
    torch.manual_seed(0)
    policy = RT1Policy(load_preset("rt1_paper"), features(size=96, cams=CAMS[:1], state=False), STATS)
    batch = make_batch(1, 6, size=96, cams=CAMS[:1])
    t0 = time.perf_counter()
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    print(f"paper RT-1 train step (B=1): {time.perf_counter() - t0:.2f}s")
    policy.eval()
    action = policy.select_action(step_obs(batch, 0))
    assert action.shape == (1, A) and torch.isfinite(action).all()


# --- behaviour -----------------------------------------------------------------------------------
def test_tiny_batch_overfits():
    torch.manual_seed(0)
    policy = RT1Policy(RT1Config(**dict(SMALL, n_obs_steps=2)), features(), STATS)
    batch = make_batch(4, 2)
    first, last, logs = overfit(policy, batch)
    print(f"overfit: loss {first:.3f} -> {last:.4f}, token accuracy {logs['token_accuracy']:.2f}")
    assert last < 0.1 * first, (first, last)
    assert logs["token_accuracy"] > 0.9
    # decoded actions land on the targets' bins: within one bin width of the normalised range
    policy.eval()
    with torch.no_grad():
        tokens = policy.encode_frames({k: batch[k] for k in CAMS}, batch["observation.state"],
                                      policy.embed_tasks(batch["task"], 4))
        ids = policy.action_logits(tokens).argmax(-1)
    pred = policy.normalizer.unnormalize("action", policy.action_tokenizer.decode(ids))
    bin_width = torch.tensor(STATS["action"]["max"] - STATS["action"]["min"]).float() / 256
    assert ((pred - batch["action"]).abs() <= 1.5 * bin_width).float().mean() > 0.9


def test_inference_history_matches_the_training_path():
    """select_action over T steps sees exactly the window the loader would give (with padding)."""
    torch.manual_seed(0)
    policy = RT1Policy(RT1Config(**SMALL), features(), STATS).eval()
    T = policy.config.n_obs_steps
    batch = make_batch(2, T + 1, seed=1)
    torch.nn.init.normal_(policy.head.weight, std=1.0)  # make the argmax sensitive to every input
    expected = []
    with torch.no_grad():
        cond = policy.embed_tasks(batch["task"], 2)
        for t in range(T + 1):  # the window ending at t, left-padded by repeating frame 0 as the loader does
            idx = [max(0, t - T + 1 + i) for i in range(T)]
            window = {k: batch[k][:, idx] for k in CAMS}
            tokens = policy.encode_frames(window, batch["observation.state"][:, idx], cond)
            pad = torch.tensor([[t - T + 1 + i < 0 for i in range(T)]] * 2)
            ids = policy.action_logits(tokens, pad).argmax(-1)
            expected.append(policy.normalizer.unnormalize("action", policy.action_tokenizer.decode(ids))[:, 0])
    got = [policy.select_action(step_obs(batch, t)) for t in range(T + 1)]
    for t in range(T + 1):
        torch.testing.assert_close(got[t], expected[t], msg=f"step {t}")
    assert len(policy.history) == T - 1  # the past frames a window needs besides the current one
    policy.reset()
    assert len(policy.history) == 0
    torch.testing.assert_close(policy.select_action(step_obs(batch, 0)), expected[0])


def test_random_shift_moves_each_sample_and_camera_by_one_offset_across_its_frames():
    torch.manual_seed(0)
    B, T, C, S, p = 8, 3, 2, 20, 4
    x = torch.rand(B, T, C, 3, S, S)
    y = shift_frames(x, p / S)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x.flatten(0, 2), (p, p, p, p), mode="replicate").view(B, T, C, 3, S + 2 * p, -1)
    offsets = set()
    for b in range(B):
        for c in range(C):  # the one window of the padded frames that gives every frame of (b, c)
            hits = [(r, q) for r in range(2 * p + 1) for q in range(2 * p + 1)
                    if torch.equal(padded[b, :, c, :, r:r + S, q:q + S], y[b, :, c])]
            assert hits, f"sample {b} camera {c} is not a shifted window of its frames"
            offsets.add(hits[0])
    assert len(offsets) > 1  # offsets are drawn per sample and camera
    assert shift_frames(x, 0.01) is x  # under half a pixel: nothing to do
    with pytest.raises(ValueError, match="random_shift must be in \\[0, 0.5\\)"):
        RT1Config(backbone="efficientnet", random_shift=0.5)


def test_random_shift_is_training_only():
    torch.manual_seed(0)
    batch = make_batch(2, 3)
    plain = RT1Policy(RT1Config(**SMALL), features(), STATS).eval()
    shifted = RT1Policy(RT1Config(**{**SMALL, "random_shift": 0.25}), features(), STATS)
    shifted.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(shifted.eval().compute_loss(batch)[0], plain.compute_loss(batch)[0])
        assert not torch.equal(shifted.train().compute_loss(batch)[0], plain.train().compute_loss(batch)[0])


def test_position_embedding_gives_every_feature_cell_its_own_code():
    code = sincos_2d(32, 3, 5)
    assert code.shape == (32, 3, 5)
    cells = code.flatten(1).T  # [15, 32]
    assert torch.cdist(cells, cells).add(torch.eye(15) * 1e3).min() > 0.5  # all 15 codes apart
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(30, 3, 3)
    torch.manual_seed(0)
    batch = make_batch(2, 3)
    plain = RT1Policy(RT1Config(**SMALL), features(), STATS).eval()
    placed = RT1Policy(RT1Config(**{**SMALL, "position_embedding": True}), features(), STATS).eval()
    assert placed.feature_pos.shape == (32, placed.config.feature_grid, placed.config.feature_grid)
    placed.load_state_dict(plain.state_dict())  # no new weights: the code is a fixed, unsaved buffer
    with torch.no_grad():
        assert not torch.allclose(placed.compute_loss(batch)[0], plain.compute_loss(batch)[0])


def test_padded_frames_are_masked_out():
    torch.manual_seed(0)
    policy = RT1Policy(RT1Config(**SMALL), features(), STATS).eval()
    batch = make_batch(2, 3)
    batch["observation.state_is_pad"][:, 0] = True
    changed = {k: v.clone() for k, v in batch.items() if k != "task"}
    changed["task"] = batch["task"]
    changed["observation.images.front"][:, 0] = 255 - changed["observation.images.front"][:, 0]
    with torch.no_grad():
        torch.testing.assert_close(policy.compute_loss(changed)[0], policy.compute_loss(batch)[0])
        changed["observation.state_is_pad"][:, 0] = False  # the same change counts once it is not padding
        assert not torch.allclose(policy.compute_loss(changed)[0], policy.compute_loss(batch)[0])


def test_loss_ignores_padded_actions_and_uses_every_horizon_step():
    torch.manual_seed(0)
    policy = RT1Policy(RT1Config(**{**SMALL, "horizon": 2}), features(), STATS).eval()
    batch = make_batch(2, 3, H=2)
    batch["action_is_pad"][:, 1] = True
    other = dict(batch, action=batch["action"].clone())
    other["action"][:, 1] = torch.tensor(STATS["action"]["min"]).float()  # change only padded targets
    with torch.no_grad():
        torch.testing.assert_close(policy.compute_loss(other)[0], policy.compute_loss(batch)[0])
        assert policy.predict_action_chunk(step_obs(batch, 0)).shape == (2, 2, A)


def test_actions_decode_into_the_normalisation_range_with_quantile_mode():
    torch.manual_seed(0)
    policy = RT1Policy(RT1Config(**dict(SMALL, normalization={"observation.state": "mean_std",
                                                              "action": "quantile"})), features(), STATS).eval()
    batch = make_batch(3, 3)
    act = policy.predict_action_chunk(step_obs(batch, 0))[:, 0]
    lo, hi = torch.tensor(STATS["action"]["q01"]).float(), torch.tensor(STATS["action"]["q99"]).float()
    assert ((act >= lo - 1e-4) & (act <= hi + 1e-4)).all()


def test_task_change_restarts_history_and_batch_size_change_is_refused():
    torch.manual_seed(0)
    policy = RT1Policy(RT1Config(**SMALL), features(), STATS).eval()
    batch = make_batch(2, 3)
    policy.select_action(step_obs(batch, 0))
    policy.select_action(step_obs(batch, 1))
    assert len(policy.history) == 2
    obs = step_obs(batch, 2)
    obs["task"] = ["stack the blocks", "stack the blocks"]
    policy.select_action(obs)
    assert len(policy.history) == 1
    with pytest.raises(ValueError, match="batch size changed from 2 to 1.*reset\\(\\)"):
        policy.select_action({k: v[:1] for k, v in step_obs(batch, 0).items()})


def test_bad_inputs_name_the_key():
    policy = RT1Policy(RT1Config(**SMALL), features(), STATS)
    batch = make_batch(2, 3)
    del batch["observation.images.wrist"]
    with pytest.raises(KeyError, match="the batch has no 'observation.images.wrist'"):
        policy.compute_loss(batch)
    batch = make_batch(2, 3)
    batch["observation.images.front"] = batch["observation.images.front"].float()
    with pytest.raises(ValueError, match="'observation.images.front': expected uint8 images"):
        policy.compute_loss(batch)
    with pytest.raises(ValueError, match="built for n_obs_steps=3 frames, got 2"):
        policy.compute_loss(make_batch(2, 2))
    with pytest.raises(KeyError, match="the observation has no 'task'"):
        policy.select_action({k: v for k, v in step_obs(make_batch(2, 1), 0).items() if k != "task"})


LITE0 = dict(SMALL, backbone="lite0", image_size=32, backbone_stages=2, n_obs_steps=2)


def test_lite0_backbone_trains_on_cached_features_as_on_frames():
    """The frozen Lite0 trunk: frame_transforms() gives the loader its features; the loss on those equals
    the loss on the uint8 frames, and training leaves the trunk as loaded."""
    policy = RT1Policy(RT1Config(**LITE0), features(), STATS).eval()
    policy.load_external_weights()
    transforms = policy.frame_transforms()
    assert set(transforms) == set(policy.camera_keys)
    batch = make_batch(2, 2)
    cached = dict(batch)
    for k in policy.camera_keys:
        x = batch[k]
        f = torch.from_numpy(transforms[k](x.flatten(0, 1).numpy()))
        cached[k] = f.view(*x.shape[:2], *f.shape[1:])
    with torch.no_grad():
        torch.testing.assert_close(policy.compute_loss(cached)[0], policy.compute_loss(batch)[0], rtol=1e-3, atol=1e-4)
    trunk = {k: v.clone() for k, v in policy.pretrained.state_dict().items()}
    policy.train()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(2):
        loss = policy.compute_loss(cached)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, policy.pretrained.state_dict()[k]) for k, v in trunk.items())
    assert RT1Policy(RT1Config(**SMALL), features(), STATS).frame_transforms() == {}
