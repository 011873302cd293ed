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
    # change the future (new content: a uniform shift of a token's features is invisible through the
    # pre-norms and the final LayerNorm, so `+= 10` only differed by float rounding, and on some CPUs not)
    x2[:, 3:] = torch.randn(2, 2, 16)
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


def test_kv_cache_gives_the_outputs_of_the_full_causal_pass():
    from policystack.policies.layers.transformer import KVCache

    torch.manual_seed(0)
    net = DecoderStack(n_layer=2, d_model=16, n_head=2, head_dim=8, mlp_hidden=32).eval()
    x = torch.randn(2, 7, 16)
    full = net(x, torch.ones(7, 7, dtype=torch.bool).tril())
    cache = KVCache(2)
    first = net(x[:, :4], torch.ones(4, 4, dtype=torch.bool).tril(), cache)  # the prefix, then one token a step
    steps = [net(x[:, t:t + 1], torch.ones(1, t + 1, dtype=torch.bool), cache) for t in range(4, 7)]
    torch.testing.assert_close(torch.cat([first, *steps], 1), full, rtol=1e-5, atol=1e-5)
    assert len(cache) == 7
    with pytest.raises(ValueError, match="M=8 keys"):
        net(x[:, :1], torch.ones(1, 7, dtype=torch.bool), cache)
    with pytest.raises(ValueError, match="KVCache has 3 layers"):
        net(x[:, :1], torch.ones(1, 1, dtype=torch.bool), KVCache(3))
