"""The pretrained EfficientNet-Lite0 encoder: real ImageNet weights offline, frozen, cacheable."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from policystack.perception.image import (
    PretrainedImageEncoder,
    fold_batchnorm,
    lite0_weights_path,
    load_lite0_state_dict,
    round_like_cache,
)


def test_lite0_weights_classify_a_photo():
    """The package's weights load into timm's Lite0 by position and recognise skimage's cat photo."""
    import timm
    from skimage import data

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_lite0_state_dict(net, lite0_weights_path())
    x = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 127.5 - 1
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = net.eval()(x).topk(3).indices[0].tolist()
    assert set(top) & {281, 282, 285}, top  # tabby / tiger cat / Egyptian cat


def test_wrong_weights_are_refused(tmp_path):
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="1 tensors"):
        load_lite0_state_dict(net, path)


@pytest.mark.parametrize(("stages", "size", "channels", "grid"), [(5, 96, 112, 6), (5, 128, 112, 8), (3, 96, 40, 12)])
def test_shapes_and_frozen(stages, size, channels, grid):
    enc = PretrainedImageEncoder("lite0", stages=stages, image_size=size)
    assert (enc.out_channels, enc.grid) == (channels, grid)
    x = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    out = enc.train()(x)  # frozen: train() keeps BatchNorm in eval mode, no graph
    assert out.shape == (2, channels, grid, grid) and not out.requires_grad
    assert not any(p.requires_grad for p in enc.parameters())
    assert torch.equal(out, enc.eval()(x))


def test_feature_transform_matches_live_features_after_rounding():
    enc = PretrainedImageEncoder("lite0", stages=5, image_size=96)
    frames = np.random.default_rng(0).integers(0, 256, (5, 3, 96, 96), dtype=np.uint8)
    cached = enc.frame_transform(batch_size=2)(frames)
    assert cached.dtype == np.float16 and cached.shape == (5, 112, 6, 6)
    live = round_like_cache(enc(torch.from_numpy(frames)))
    # equal up to one float16 step (batched convolutions may round the float32 values differently)
    torch.testing.assert_close(torch.from_numpy(cached).float(), live, rtol=2e-3, atol=2e-3)
    assert enc.cache_id != PretrainedImageEncoder("lite0", stages=4, image_size=96).cache_id
    # repeated frames (a still scene) are encoded once and come back in their places
    order = [3, 0, 3, 1, 3]
    torch.testing.assert_close(torch.from_numpy(enc.frame_transform(batch_size=2)(frames[order])).float(),
                               torch.from_numpy(cached[order]).float(), rtol=2e-3, atol=2e-3)


def test_fold_batchnorm_keeps_the_function():
    """The feature cache runs a copy with BatchNorm folded into the convolutions: same outputs, no
    BatchNorm left, the original untouched; a BatchNorm that follows no convolution stays."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), BatchNormAct2d(8, act_layer=torch.nn.ReLU6),
                              torch.nn.Conv2d(8, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    net.eval()
    x = torch.randn(2, 3, 9, 9)
    folded = fold_batchnorm(net)
    torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
    assert [type(m).__name__ for m in folded] == ["Conv2d", "Sequential", "Conv2d", "Identity", "BatchNorm2d"]
    assert isinstance(net[1], BatchNormAct2d)  # a copy was folded
    enc = PretrainedImageEncoder("lite0", stages=3, image_size=96)
    frames = torch.randint(0, 256, (3, 3, 96, 96), dtype=torch.uint8)
    with torch.no_grad():
        fast = fold_batchnorm(enc.trunk)(enc.preprocess(frames))
    torch.testing.assert_close(fast, enc(frames), rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown pretrained image encoder"):
        PretrainedImageEncoder("resnet")
    with pytest.raises(ValueError, match="stages"):
        PretrainedImageEncoder("lite0", stages=9)
    with pytest.raises(ValueError, match="uint8"):
        PretrainedImageEncoder("lite0", pretrained=False)(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="cannot be cached"):
        PretrainedImageEncoder("lite0", frozen=False, pretrained=False).frame_transform()
