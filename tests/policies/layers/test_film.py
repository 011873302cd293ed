"""FiLM: identity at initialisation, then a real per-sample modulation."""

import pytest
import torch

from policystack.policies.layers.film import FiLM


def test_film_is_identity_at_init():
    torch.manual_seed(0)
    film = FiLM(cond_dim=16, num_channels=8)
    x, cond = torch.randn(3, 8, 5, 5), torch.randn(3, 16)
    torch.testing.assert_close(film(x, cond), x, rtol=0, atol=0)


def test_film_modulates_per_sample_and_channel_after_training_signal():
    torch.manual_seed(0)
    film = FiLM(4, 2)
    with torch.no_grad():
        film.to_gamma.weight.fill_(1.0)
        film.to_beta.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.ones(2, 2, 3)  # [B, C, L]
    cond = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    out = film(x, cond)
    # sample 0: gamma = 1 per channel -> x*2 + beta; sample 1: gamma = 0 -> x + beta
    torch.testing.assert_close(out[0, :, 0], torch.tensor([2.5, 1.5]))
    torch.testing.assert_close(out[1, :, 0], torch.tensor([1.5, 0.5]))


def test_film_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="need \\[B, 8, ...\\]"):
        FiLM(16, 8)(torch.randn(2, 4, 3, 3), torch.randn(2, 16))
