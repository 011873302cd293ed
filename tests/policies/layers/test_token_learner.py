"""TokenLearner: shapes and that each output token is a convex combination of the inputs."""

import pytest
import torch

from policystack.policies.layers.token_learner import TokenLearner


def test_token_learner_shapes_from_map_and_tokens():
    torch.manual_seed(0)
    tl = TokenLearner(dim=32, num_tokens=8, bottleneck_dim=16)
    fmap = torch.randn(4, 32, 9, 9)  # 81 tokens per frame, as in RT-1
    out = tl(fmap)
    assert out.shape == (4, 8, 32)
    torch.testing.assert_close(tl(fmap.flatten(2).transpose(1, 2)), out)


def test_output_tokens_are_weighted_averages_of_inputs():
    torch.manual_seed(0)
    tl = TokenLearner(dim=6, num_tokens=3, bottleneck_dim=8)
    x = torch.randn(2, 10, 6)
    out = tl(x)
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    assert ((out >= lo - 1e-5) & (out <= hi + 1e-5)).all()  # inside the per-channel range of the inputs
    same = torch.ones(2, 10, 6) * 3.0  # identical inputs -> every output token equals them
    torch.testing.assert_close(tl(same), torch.ones(2, 3, 6) * 3.0)


def test_token_learner_rejects_bad_rank():
    with pytest.raises(ValueError, match="expects \\[B, C, H, W\\] or \\[B, N, C\\]"):
        TokenLearner(4)(torch.randn(4, 4))
