"""Attention masks from token-group rules: each rule, padding, causality check, pretty printer."""

import pytest
import torch

from policystack.policies.layers.attention import (
    PREFIX,
    AttentionRule,
    TokenGroup,
    generate_attention_mask,
    pretty_print_attention_mask,
    verify_causality,
)
from policystack.policies.rt1 import rt1_token_groups

R = AttentionRule


def test_rules_give_the_expected_blocks():
    groups = [
        TokenGroup("task", PREFIX, 2, {"task": R.ALL}),
        TokenGroup("obs", 0, 2, {"task": R.ALL, "obs": R.CAUSAL}),
        TokenGroup("readout", 0, 1, {"task": R.ALL, "obs": R.CAUSAL, "readout": R.SELF}),
        TokenGroup("obs", 1, 2, {"task": R.ALL, "obs": R.CAUSAL}),
        TokenGroup("readout", 1, 1, {"task": R.ALL, "obs": R.CURRENT, "readout": R.SELF}),
    ]
    m = generate_attention_mask(groups).long()
    expected = torch.tensor([
        # t t o o r o o r
        [1, 1, 0, 0, 0, 0, 0, 0],  # task
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],  # obs@0: block-causal, sees both tokens of its frame
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],  # readout@0
        [1, 1, 1, 1, 0, 1, 1, 0],  # obs@1 never sees readouts (no rule -> NEVER)
        [1, 1, 1, 1, 0, 1, 1, 0],
        [1, 1, 0, 0, 0, 1, 1, 1],  # readout@1: CURRENT obs only, itself only
    ])
    torch.testing.assert_close(m, expected)
    verify_causality(groups, m.bool())


def test_rt1_mask_matches_the_reference_construction():
    """RT-1's transformer_network._generate_masks: lower-triangular minus action->action links."""
    T, n_img, n_act = 3, 4, 2
    groups = rt1_token_groups(T, n_img, n_act)
    m = generate_attention_mask(groups)
    step = n_img + n_act
    n = T * step
    ref = torch.ones(n, n).tril()

    def action_index(k):
        return -1 if k % step < n_img else k // step

    for i in range(n):
        for j in range(n):
            ai, aj = action_index(i), action_index(j)
            if ai != -1 and aj != -1 and (aj < ai or (aj == ai and j <= i)):
                ref[i, j] -= 1
    torch.testing.assert_close(m.int(), ref.int())
    verify_causality(groups, m, strict_order=True)
    # one pass: no action token sees any action token, so no ground truth or prediction leaks in
    is_act = torch.tensor([action_index(k) != -1 for k in range(n)])
    assert not m[is_act][:, is_act].any()


def test_verify_causality_catches_future_and_order_leaks():
    groups = [TokenGroup("a", 0, 2, {"*": R.ALL}), TokenGroup("b", 1, 2, {"*": R.CAUSAL})]
    with pytest.raises(ValueError, match=r"not causal: token 0 \(a, timestep 0\) attends to token 2 \(b, timestep 1\)"):
        verify_causality(groups, generate_attention_mask(groups))
    same_step = [TokenGroup("a", 0, 3, {"a": R.ALL})]
    verify_causality(same_step, generate_attention_mask(same_step))  # fine per timestep
    with pytest.raises(ValueError, match="not causal"):
        verify_causality(same_step, generate_attention_mask(same_step), strict_order=True)


def test_padding_masks_keys_but_keeps_the_diagonal():
    groups = [TokenGroup("obs", t, 2, {"obs": R.CAUSAL}) for t in range(3)]
    pad = torch.tensor([[True, True, False, False, False, False]])  # frame 0 is a repeat
    m = generate_attention_mask(groups, pad)
    assert m.shape == (1, 6, 6)
    assert not m[0, 2:, :2].any()  # nobody attends to the padded frame
    assert m[0].diagonal().all()  # no empty row
    with pytest.raises(ValueError, match=r"key_is_pad must be bool \[B, 6\]"):
        generate_attention_mask(groups, pad[:, :4])


def test_pretty_print_shows_the_layout():
    groups = rt1_token_groups(2, 3, 2)
    text = pretty_print_attention_mask(groups, generate_attention_mask(groups))
    lines = text.splitlines()
    assert lines[1].startswith("obs@0 |  \\  .  .  .")
    assert lines[2].startswith("act@0 |  x  .  .  .")
    assert lines[4].startswith("act@1 |  x  .  x  .")
    assert "3 tokens" in lines[1]


def test_group_validation():
    with pytest.raises(ValueError, match="num_tokens must be >= 1"):
        TokenGroup("x", 0, 0)
    with pytest.raises(ValueError, match="expected an AttentionRule"):
        TokenGroup("x", 0, 1, {"x": "causal"})
