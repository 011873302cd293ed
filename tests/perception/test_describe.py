"""The describer / success detector (perception/describe.py) on a tiny model: training wiring, the
verdict's arithmetic, save/load and bad input."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from policystack.datasets.vqa import vl_task
from policystack.envs.vqa import question_kind, success_question
from policystack.perception.describe import DescriberConfig, DescriberPolicy
from policystack.policies.base import FAMILIES, NON_ACTING, Policy, get_policy_class
from policystack.types import TASK, Feature, camera_key

SIZE = 32
TINY = dict(text_width=32, text_depth=1, text_heads=2, context_length=256, image_size=SIZE, image_grid=1)


def features(cameras=("front", "wrist")):
    return {camera_key(c): Feature("video", (SIZE, SIZE, 3), names=["height", "width", "channels"]) for c in cameras}


@pytest.fixture(scope="module")
def describer() -> DescriberPolicy:
    torch.manual_seed(0)
    return DescriberPolicy(DescriberConfig(**TINY), features(), None).eval()


def frames(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {camera_key(c): torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
            for c in ("front", "wrist")}


def test_success_questions_are_worded_from_the_instruction_alone():
    assert success_question("reach the red ball") == "has the robot done this: reach the red ball?"
    assert success_question("  Open the  blue drawer. ") == "has the robot done this: Open the blue drawer?"
    assert question_kind(success_question("press the green button")) == "success"
    with pytest.raises(ValueError, match="instruction is empty"):
        success_question(" . ")


def test_the_loop_finds_the_family_but_the_policy_contract_does_not_list_it():
    assert get_policy_class("describer") is DescriberPolicy
    assert "describer" in NON_ACTING and "describer" not in FAMILIES


def test_the_probability_is_the_yes_no_softmax_at_the_answer_and_padding_changes_nothing(describer):
    images = frames(3)
    instructions = ["reach the red ball", "open the blue drawer", "press the purple button please now"]
    p = describer.success_probability(images, instructions)
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()
    for b in range(3):  # alone (no padding), from the full forward pass at the prompt's last position
        one = {k: v[b:b + 1] for k, v in images.items()}
        inputs = describer._inputs(one, [success_question(instructions[b])])
        logits = describer.vlm(inputs).logits[0, -1]
        want = torch.softmax(logits[[describer.yes_id, describer.no_id]].float(), -1)[0]
        assert p[b].item() == pytest.approx(want.item(), abs=1e-5)
    assert describer.verdict(images, instructions, threshold=0.0).all()
    assert not describer.verdict(images, instructions, threshold=1.0).any()


def test_training_on_success_and_caption_examples_lowers_the_loss_and_moves_the_verdict(describer):
    torch.manual_seed(1)
    model = copy.deepcopy(describer).train()
    images = frames(3, seed=1)
    for k in images:  # three plainly different scenes (random noise pools to nearly the same features)
        images[k][0], images[k][1] = 230, 20
    tasks = [vl_task(success_question("reach the red ball"), "yes"), vl_task(success_question("reach the red ball"), "no"),
             vl_task("describe the scene.", "a red ball")]
    maps = {k: model.image_encoder.frame_transform()(v.numpy()) for k, v in images.items()}  # as the loader caches
    batch = {**{k: torch.from_numpy(m)[:, None] for k, m in maps.items()}, TASK: tasks}  # [B, 1, C, g, g]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(60):  # the text comes first (about 40 steps), then the frames that tell the answers apart
        loss, logs = model.compute_loss(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["loss"] < 0.1 * first
    p = model.eval().success_probability({k: v[:2] for k, v in images.items()}, ["reach the red ball"] * 2)
    assert p[0] > 0.5 > p[1]  # it learned these frames' answers
    assert model.describe({k: v[2:] for k, v in images.items()}) == ["a red ball"]


def test_cached_lite0_maps_give_what_frames_give(describer):
    images = frames(2)
    maps = {k: describer.image_encoder.frame_transform()(v.numpy()) for k, v in images.items()}
    a = describer.image_tokens(images)
    b = describer.image_tokens({k: torch.from_numpy(m) for k, m in maps.items()})
    # the cache runs a BatchNorm-folded trunk: a feature may round to the neighbouring float16 step
    torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)


def test_save_and_load_give_the_same_probabilities(describer, tmp_path):
    describer.save_pretrained(tmp_path / "det")
    loaded = Policy.from_pretrained(tmp_path / "det")
    assert isinstance(loaded, DescriberPolicy)
    images = frames(2, seed=3)
    torch.testing.assert_close(loaded.success_probability(images, ["reach the red ball"] * 2),
                               describer.success_probability(images, ["reach the red ball"] * 2))


def test_bad_input_says_what_was_expected(describer):
    with pytest.raises(KeyError, match=r"no frames for \['observation.images.wrist'\]"):
        describer.success_probability({camera_key("front"): frames(1)[camera_key("front")]}, ["reach the red ball"])
    with pytest.raises(ValueError, match="2 frames but 1 questions"):
        describer.success_probability(frames(2), ["reach the red ball"])
    with pytest.raises(ValueError, match=r"expected uint8 frames \[B, 3, H, W\]"):
        describer.success_probability({k: v[:, None] for k, v in frames(1).items()}, ["x"])
    with pytest.raises(NotImplementedError, match="does not act"):
        describer.predict_action_chunk({})
    with pytest.raises(KeyError, match="at least one camera"):
        DescriberPolicy(DescriberConfig(**TINY), {}, None)
    with pytest.raises(ValueError, match="looks at one frame"):
        DescriberConfig(**{**TINY, "n_obs_steps": 2})
    with pytest.raises(ValueError, match="cannot take projected Lite0 features"):
        DescriberConfig(**{**TINY, "vlm_family": "paligemma"})
    with pytest.raises(ValueError, match="image_grid=9"):
        dataclasses.replace(DescriberConfig(**TINY), image_grid=9)
