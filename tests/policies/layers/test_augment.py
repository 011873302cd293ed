"""Crops shared by the families: random_shift (DrQ / RT-1) and crop (Diffusion Policy / UWM)."""

import pytest
import torch

from policystack.policies.layers.augment import crop, random_shift


def test_centre_crop_takes_the_middle_window():
    img = torch.arange(2 * 3 * 10 * 10).view(2, 3, 10, 10)
    torch.testing.assert_close(crop(img, 6, 4, random=False), img[:, :, 2:8, 3:7])


def test_random_crop_takes_a_window_of_each_image_at_its_own_offset():
    torch.manual_seed(0)
    img = torch.arange(64 * 100).view(64, 1, 10, 10)  # every pixel unique: where it came from is known
    out = crop(img, 7, 7, random=True)
    tops = (out[:, 0, 0, 0] % 100) // 10
    lefts = out[:, 0, 0, 0] % 10
    for n in range(64):
        assert torch.equal(out[n], img[n, :, tops[n]:tops[n] + 7, lefts[n]:lefts[n] + 7])
    assert len(set(zip(tops.tolist(), lefts.tolist()))) > 5 and tops.max() <= 3 and lefts.max() <= 3
    with pytest.raises(ValueError, match="a 11x7 window does not fit images of 10x10"):
        crop(img, 11, 7, random=True)


def test_random_shift_keeps_the_size_and_replicates_edges():
    torch.manual_seed(0)
    img = torch.rand(4, 3, 8, 8)
    out = random_shift(img, 2)
    assert out.shape == img.shape
    pad = torch.nn.functional.pad(img, (2, 2, 2, 2), mode="replicate")
    windows = [pad[n, :, i:i + 8, j:j + 8] for n in range(4) for i in range(5) for j in range(5)]
    assert all(any(torch.equal(out[n], w) for w in windows[25 * n:25 * (n + 1)]) for n in range(4))
