"""Decoder blocks: the mask really cuts information flow; shapes; mask validation."""

import pytest
import torch

from policystack.policies.layers.transformer import DecoderStack


def test_masked_tokens_do_not_influence_outputs():
    torch.manual_seed(0)
    net = DecoderStack(n_layer=2, d_model=16, n_head=2, head_dim=12, mlp_hidden=32).eval()
    x = torch.randn(2, 5, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    y = net(x, causal)
    assert y.shape == (2, 5, 16)
    x2 = x.clone()
    x2[:, 3:] += 10.0  # change the future
    y2 = net(x2, causal)
    torch.testing.assert_close(y2[:, :3], y[:, :3])
    assert not torch.allclose(y2[:, 3:], y[:, 3:])
    batched = causal[None].expand(2, 5, 5)
    torch.testing.assert_close(net(x, batched), y)


def test_mask_must_be_bool_and_fit():
    net = DecoderStack(1, 8, 2, 4, 16)
    with pytest.raises(ValueError, match="mask must be bool"):
        net(torch.randn(1, 3, 8), torch.ones(3, 3))
    with pytest.raises(ValueError, match="N=3"):
        net(torch.randn(1, 3, 8), torch.ones(4, 4, dtype=torch.bool))
