"""FiLM-EfficientNet: it is timm's EfficientNet (B3 loads timm's weights), FiLM after every block,
identity at init, conditioning changes the features once FiLM is trained."""

import pytest
import timm
import torch

from policystack.policies.layers.efficientnet_film import FilmEfficientNet, build_efficientnet


def test_b3_trunk_is_timm_efficientnet_b3():
    ours = build_efficientnet(1.2, 1.4, 7)
    ref = timm.create_model("efficientnet_b3", pretrained=False, num_classes=0)
    assert ours.load_state_dict(ref.state_dict(), strict=True)  # same modules, same shapes
    assert sum(len(s) for s in ours.blocks) == 26 and ours.num_features == 1536


def test_film_after_every_block_is_identity_at_init_and_conditioning_acts_later():
    torch.manual_seed(0)
    net = FilmEfficientNet(cond_dim=8, out_dim=16, width_mult=0.25, depth_mult=0.25, num_stages=3).eval()
    assert len(net.films) == sum(len(s) for s in net.net.blocks)
    x = torch.randn(2, 3, 32, 32)
    c1, c2 = torch.randn(2, 8), torch.randn(2, 8)
    y1 = net(x, c1)
    assert y1.shape == (2, 16, 32 // net.stride, 32 // net.stride)
    torch.testing.assert_close(net(x, c2), y1)  # FiLM is the identity: conditioning has no effect yet
    with torch.no_grad():
        net.films[0].to_gamma.weight.normal_()
    assert not torch.allclose(net(x, c2), net(x, c1))


def test_load_backbone_weights(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    donor = build_efficientnet(0.25, 0.25, 2)
    save_file(donor.state_dict(), str(tmp_path / "w.safetensors"))
    net = FilmEfficientNet(4, 8, 0.25, 0.25, 2)
    net.load_backbone_weights(tmp_path / "w.safetensors")
    torch.testing.assert_close(net.net.conv_stem.weight, donor.conv_stem.weight)
    wrong = build_efficientnet(0.5, 0.25, 2)
    save_file(wrong.state_dict(), str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="(?s)bad.safetensors: does not fit.*size mismatch"):
        net.load_backbone_weights(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="do not exist"):
        net.load_backbone_weights(tmp_path / "none.safetensors")
