"""ObservationHistory: the loader's window at inference (left-padded by the first step, is_pad marked),
bounded, for tensors and dicts of tensors."""

import pytest
import torch

from policystack.policies.layers.history import ObservationHistory


def test_window_pads_like_the_loader_and_keeps_only_what_it_needs():
    steps = [torch.full((2, 3), float(i)) for i in range(5)]  # [B=2, 3] per step
    h = ObservationHistory(3)
    stacked, is_pad = h.window(steps[0])
    assert stacked.shape == (2, 3, 3) and stacked[:, :, 0].tolist() == [[0, 0, 0]] * 2
    assert is_pad.tolist() == [[True, True, False]] * 2
    h.append(steps[0])
    stacked, is_pad = h.window(steps[1])
    assert stacked[0, :, 0].tolist() == [0, 0, 1] and is_pad[0].tolist() == [True, False, False]
    for s in steps[1:4]:
        h.append(s)
    assert len(h) == 2 and torch.equal(h.last, steps[3])  # n_steps - 1 past steps at most
    stacked, is_pad = h.window(steps[4])
    assert stacked[1, :, 0].tolist() == [2, 3, 4] and not is_pad.any()
    h.clear()
    assert len(h) == 0 and h.last is None


def test_dict_steps_and_a_single_step_history():
    h = ObservationHistory(2)
    a = {"x": torch.zeros(1, 4), "img": torch.zeros(1, 3, 2, 2, dtype=torch.uint8)}
    b = {"x": torch.ones(1, 4), "img": torch.ones(1, 3, 2, 2, dtype=torch.uint8)}
    h.append(a)
    stacked, is_pad = h.window(b)
    assert stacked["x"].shape == (1, 2, 4) and stacked["img"].shape == (1, 2, 3, 2, 2)
    assert stacked["img"].dtype == torch.uint8 and stacked["x"][0, :, 0].tolist() == [0, 1]
    assert is_pad.tolist() == [[False, False]]
    one = ObservationHistory(1)
    one.append(a)  # nothing to keep: a window is the current step alone
    assert len(one) == 0 and torch.equal(one.window(b)[0]["x"], b["x"][:, None])
    with pytest.raises(ValueError, match="n_steps >= 1"):
        ObservationHistory(0)
