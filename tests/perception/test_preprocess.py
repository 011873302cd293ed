"""Image preprocessing: the three normalisations, resizing, and the uint8 check naming the key."""

import pytest
import torch

from policystack.perception.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessor


def test_normalisations_and_resize():
    img = torch.tensor([0, 255], dtype=torch.uint8).repeat_interleave(8).view(1, 1, 4, 4).expand(2, 3, 4, 4)
    assert ImagePreprocessor(normalization="unit")(img).unique().tolist() == [0.0, 1.0]
    assert ImagePreprocessor(normalization="half")(img).unique().tolist() == [-1.0, 1.0]
    out = ImagePreprocessor(normalization="imagenet")(img)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(out[0, :, -1, -1], (1 - mean) / std)
    resized = ImagePreprocessor(size=2, normalization="unit")(img[None].expand(5, 2, 3, 4, 4))  # leading dims kept
    assert resized.shape == (5, 2, 3, 2, 2) and resized.dtype == torch.float32
    assert ImagePreprocessor(size=8).state_dict() == {}  # nothing in a checkpoint


def test_errors_name_the_key_and_the_choice():
    with pytest.raises(ValueError, match="'observation.images.front': expected uint8 images"):
        ImagePreprocessor()(torch.zeros(1, 3, 4, 4), "observation.images.front")
    with pytest.raises(ValueError, match="expected uint8 images"):
        ImagePreprocessor()(torch.zeros(1, 4, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="not one of"):
        ImagePreprocessor(normalization="zscore")
