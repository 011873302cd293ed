"""UniformActionTokenizer: round trip within half a bin, edge clipping, id range, errors; TokenBlock."""

import pytest
import torch

from policystack.policies.tokenizers import TokenBlock, UniformActionTokenizer


def test_round_trip_error_at_most_half_a_bin():
    tok = UniformActionTokenizer(256, -1.0, 1.0)
    x = torch.cat([torch.linspace(-1, 1, 10_001), torch.rand(5000) * 2 - 1])
    ids = tok.encode(x)
    assert ids.dtype == torch.int64 and int(ids.min()) == 0 and int(ids.max()) == 255
    err = (tok.decode(ids) - x).abs().max().item()
    assert err <= tok.bin_width / 2 + 1e-6
    assert err > tok.bin_width / 2 * 0.9  # the bound is tight: values near bin edges exist


def test_bins_are_uniform_and_centres_decode_to_themselves():
    tok = UniformActionTokenizer(4, 0.0, 2.0)
    torch.testing.assert_close(tok.bin_centers(), torch.tensor([0.25, 0.75, 1.25, 1.75]))
    torch.testing.assert_close(tok.encode(torch.tensor([0.0, 0.49, 0.5, 1.99, 2.0])), torch.tensor([0, 0, 1, 3, 3]))
    torch.testing.assert_close(tok.encode(tok.bin_centers()), torch.arange(4))


def test_out_of_range_values_clip_to_edge_bins_and_shapes_are_kept():
    tok = UniformActionTokenizer()
    ids = tok.encode(torch.tensor([[-5.0, 5.0, 0.0]]))
    assert ids.shape == (1, 3) and ids.tolist() == [[0, 255, 128]]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="n_bins must be an int >= 2"):
        UniformActionTokenizer(1)
    with pytest.raises(ValueError, match="high > low"):
        UniformActionTokenizer(8, 1.0, 1.0)
    tok = UniformActionTokenizer(8)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 7\], got min 0, max 8"):
        tok.decode(torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="NaN or inf"):
        tok.encode(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="integer ids"):
        tok.decode(torch.tensor([0.5]))


def test_token_block_maps_bins_onto_consecutive_vocabulary_ids_and_back():
    block = TokenBlock(start=1000, size=256)
    bins = UniformActionTokenizer(256).encode(torch.tensor([[-1.0, 0.0, 0.999]]))
    ids = block.to_vocab(bins)
    assert ids.tolist() == [[1000, 1128, 1255]] and list(block.ids) == list(range(1000, 1256))
    assert torch.equal(block.to_bins(ids), bins)
    with pytest.raises(ValueError, match=r"id 999 is outside the block \[1000, 1255\]"):
        block.to_bins(torch.tensor([999, 1000]))
    with pytest.raises(ValueError, match=r"bins must lie in \[0, 255\], got min 0, max 256"):
        block.to_vocab(torch.tensor([0, 256]))
    with pytest.raises(TypeError, match="integer bins"):
        block.to_vocab(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="size >= 1"):
        TokenBlock(start=0, size=0)
