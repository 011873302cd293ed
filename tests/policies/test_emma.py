"""EMMA's own parts: the parser (malformed, truncated, NaN, huge outputs -> hold, never a crash), the
trajectory grammar (no token outside it can come out), the waypoint follower (holds), the labels built
from privileged columns, the counts eval reports, and the privileged columns reaching only EMMA."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_contract import FEATURES_FOR, make_batch, stats_of

from policystack.perception.vlm import byte_tokenizer
from policystack.policies.emma import (
    NUMBER_TOKENS,
    TRAJECTORY,
    EmmaConfig,
    EmmaPolicy,
    TrajectoryGrammar,
    advance,
    follow,
    objects_in,
    parse_trajectory,
    section,
    trajectory_template,
    trajectory_text,
)
from policystack.types import OBS_STATE, PRIVILEGED_DECISION, PRIVILEGED_OBJECTS, TASK

WORKSPACE = EmmaConfig().workspace
GOOD = "Decision: move to the ball. Trajectory: [(0.42, -0.10, 0.12, 0), (0.40, -0.08, 0.05, 1)]"


# --- the parser --------------------------------------------------------------------------------------
def test_parser_reads_a_well_formed_answer():
    wps, why = parse_trajectory(GOOD, WORKSPACE)
    assert why == "ok"
    np.testing.assert_allclose(wps, [[0.42, -0.10, 0.12, 0], [0.40, -0.08, 0.05, 1]])
    wps, why = parse_trajectory(trajectory_text(np.array([[0.5, 0.0, 0.3, 0.9]])), WORKSPACE)
    assert why == "ok" and wps.tolist() == [[0.5, 0.0, 0.3, 1.0]]


@pytest.mark.parametrize("text,reason", [
    ("", "malformed"),
    ("Scene: a red ball. Objects: red ball at (0.42, -0.10, 0.03).", "malformed"),  # no trajectory
    ("Trajectory: [(0.42, -0.10, 0.12, 0), (0.40, -0.0", "malformed"),  # truncated
    ("Trajectory: [(0.42, -0.10, 0.12, 0)", "malformed"),  # no closing bracket
    ("Trajectory: [(0.42, -0.10, 0.12)]", "malformed"),  # three numbers
    ("Trajectory: [(0.42, -0.10, 0.12, 0, 1)]", "malformed"),  # five
    ("Trajectory: []", "malformed"),
    ("Trajectory: [(0.4.2, -0.10, 0.12, 0)]", "malformed"),
    ("Trajectory: [(abc, -0.10, 0.12, 0)]", "malformed"),
    ("Trajectory: [(0.42, -0.10, 0.12, 0.5)]", "malformed"),  # gripper neither 0 nor 1
    ("Trajectory: [(0.42, -0.10, 0.12, 0)] and more", "malformed"),
    ("Trajectory: [(nan, -0.10, 0.12, 0)]", "non-finite"),
    ("Trajectory: [(0.42, NaN, 0.12, 0)]", "non-finite"),
    ("Trajectory: [(0.42, -0.10, inf, 0)]", "non-finite"),
    ("Trajectory: [(0.42, -0.10, -Infinity, 0)]", "non-finite"),
    ("Trajectory: [(1e308, -0.10, 0.12, 0)]", "huge"),
    ("Trajectory: [(0.42, 123456789012345678901234567890, 0.12, 0)]", "huge"),
    ("Trajectory: [(9.99, -0.10, 0.12, 0)]", "out of workspace"),
    ("Trajectory: [(0.42, -0.10, -0.01, 0)]", "out of workspace"),  # under the table
])
def test_parser_holds_on_bad_output(text, reason):
    assert parse_trajectory(text, WORKSPACE) == (None, reason)


def test_parser_never_raises_on_random_text():
    rng = random.Random(0)
    alphabet = "Trajectory: [(0123456789.-, )]naefNI\x00\n\u00e9"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
        wps, why = parse_trajectory(text, WORKSPACE)
        assert (wps is None) == (why != "ok")
        if wps is not None:
            assert np.all(np.isfinite(wps)) and wps.shape[1] == 4


def test_sections_and_objects_are_read_back():
    text = ("Scene: a red ball and a blue ball. Objects: red ball at (0.42, -0.10, 0.03); blue ball at (nan, 0, 0). "
            "Behaviour: gripper 21 cm from it, open. Decision: move to the ball. " + TRAJECTORY + " [(0.4, 0, 0.1, 0)]")
    assert section(text, "Decision") == "move to the ball"
    assert section(text, "Behaviour") == "gripper 21 cm from it, open"
    assert section("no sections here", "Decision") == ""
    found = objects_in(text)
    assert list(found) == ["red ball"]  # the NaN entry is left out
    np.testing.assert_allclose(found["red ball"], [0.42, -0.10, 0.03])


# --- the grammar -------------------------------------------------------------------------------------
def _grammar(k: int, budget: int):
    tok = byte_tokenizer(["<image>"])
    strings = [tok.decode([i]) for i in range(len(tok))]
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    return tok, TrajectoryGrammar(strings, tok.eos_token_id, k, budget, enc(" " + TRAJECTORY), enc(TRAJECTORY),
                                  tok.all_special_ids)


@pytest.mark.parametrize("budget", [0, 5])
def test_grammar_only_lets_well_formed_trajectories_out(budget):
    """Random logits (any token could win) through the processor, greedily: every answer parses into
    exactly k waypoints; at every trajectory step the ids left are exactly those that continue the template."""
    k = 3
    atoms = trajectory_template(k)
    g = torch.Generator().manual_seed(budget)
    for trial in range(20):
        tok, grammar = _grammar(k, budget)
        ids = torch.zeros(1, 4, dtype=torch.long)  # a "prompt"
        for _ in range(grammar.max_tokens()):
            scores = grammar(ids, torch.randn(1, len(tok), generator=g) * 5)
            allowed = torch.isfinite(scores[0]).nonzero()[:, 0].tolist()
            row = grammar._rows[0]
            if row["mode"] == "traj":
                for i in range(len(tok)):
                    continues = i in grammar.candidates and advance(atoms, row["pos"], grammar.strings[i]) is not None
                    assert (i in allowed) == (continues or (row["pos"] == len(atoms) and i == tok.eos_token_id))
            assert tok.convert_tokens_to_ids("<image>") not in allowed and tok.pad_token_id not in allowed
            nxt = int(scores[0].argmax())
            if nxt == tok.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        else:
            pytest.fail("the grammar never let the end token out within max_tokens")
        text = tok.decode(ids[0, 4:])
        assert TRAJECTORY in text
        body = text[text.rfind(TRAJECTORY):]
        # numbers are well formed (a NaN or a huge number cannot be written); only the workspace can fail
        wps, why = parse_trajectory(body, [[-10, -10, -10], [10, 10, 10]])
        assert why == "ok" and wps.shape == (k, 4), (trial, text)


def test_grammar_accepts_the_labels_it_was_trained_on():
    text = trajectory_text(np.array([[0.42, -0.10, 0.12, 0], [-0.004, 0.0, 0.5, 1]]))
    assert text.endswith("[(0.42, -0.10, 0.12, 0), (0.00, 0.00, 0.50, 1)]")
    atoms = trajectory_template(2)
    assert advance(atoms, 0, text[len(TRAJECTORY):]) == len(atoms)
    assert advance(atoms, 0, " [(nan") is None and advance(atoms, 0, " [(12.") is None


# --- the follower -----------------------------------------------------------------------------------
def test_follower_holds_without_a_plan():
    hold = follow(None, np.array([0.4, 0.0, 0.3]), closure=0.9, steps=3, step_m=0.05, max_speed=0.5, tolerance=0.01)
    assert hold[:, :3].tolist() == [[0, 0, 0]] * 3 and hold[:, 3].tolist() == [1, 1, 1]  # stays closed
    assert follow(None, np.zeros(3), 0.1, 2, 0.05, 0.5, 0.01)[:, 3].tolist() == [-1, -1]  # stays open


def test_follower_moves_along_the_waypoints_at_bounded_speed():
    wps = np.array([[0.5, 0.0, 0.3, 0], [0.5, 0.0, 0.2, 1]])
    steps = follow(wps, np.array([0.4, 0.0, 0.3]), 0.0, 8, step_m=0.05, max_speed=0.5, tolerance=0.01)
    assert np.all(np.linalg.norm(steps[:, :3], axis=1) <= 0.5 + 1e-9)
    np.testing.assert_allclose(steps[0], [0.5, 0, 0, -1])  # toward the first waypoint, gripper open
    pos = np.array([0.4, 0.0, 0.3]) + 0.05 * steps[:, :3].sum(0)
    np.testing.assert_allclose(pos, [0.5, 0.0, 0.2], atol=1e-9)  # reached the last one
    assert steps[-1, 3] == 1  # closing as the last waypoint says


# --- the policy's labels and counts -----------------------------------------------------------------
@pytest.fixture(scope="module")
def policy() -> EmmaPolicy:
    torch.manual_seed(0)
    features = FEATURES_FOR["emma"]
    return EmmaPolicy(EmmaConfig(), features, stats_of(features)).eval()


def test_labels_are_written_from_the_privileged_columns(policy):
    objects = np.array([0, 0, 0.42, -0.10, 0.03, 1, 1, 0.5, 0.2, 0.02], dtype=np.float32)  # red ball, blue cube
    wps = np.array([[0.42, -0.1, 0.12, 0], [0.42, -0.1, 0.05, 0]])
    text = policy.answer("reach the red ball", np.array([0.42, -0.10, 0.24]), 0.0, objects, 0.0, wps)
    assert text == ("Scene: a red ball and a blue cube. Objects: red ball at (0.42, -0.10, 0.03). "
                    "Behaviour: gripper 21 cm from it, open. Decision: reach. "
                    "Trajectory: [(0.42, -0.10, 0.12, 0), (0.42, -0.10, 0.05, 0)]")
    # named by colour only ("sphere" is no kind of the scene): still the red ball alone
    assert "Objects: red ball at (0.42, -0.10, 0.03). Behaviour" in policy.answer(
        "touch the red sphere", np.array([0.42, -0.10, 0.24]), 0.0, objects, 0.0, wps)
    empty = np.full(10, -1.0)
    assert policy.answer("press the button", np.zeros(3), 1.0, empty, 1.0, wps).startswith(
        "Scene: nothing. Objects: none. Behaviour: gripper closed. Decision: press. Trajectory: [")
    assert policy.prompt("reach the red ball.", torch.tensor([[0.4, 0.0, 0.3], [0.41, -0.004, 0.29]])) == \
        "In: reach the red ball. Gripper path: (0.40, 0.00, 0.30), (0.41, 0.00, 0.29).\nOut:"


def test_ee_frame_writes_offsets_from_the_pinch_point_and_follows_them():
    features = FEATURES_FOR["emma"]
    p = EmmaPolicy(EmmaConfig(frame="ee", text_depth=1), features, None)
    objects = np.array([0, 0, 0.42, -0.10, 0.03, -1, -1, 0, 0, 0])
    ee = np.array([0.40, 0.00, 0.24])
    text = p.answer("reach the red ball", ee, 0.0, objects, 0.0, np.array([[0.42, -0.1, 0.12, 0]]))
    assert "Objects: red ball at (0.02, -0.10, -0.21). Behaviour: gripper 23 cm from it" in text
    assert text.endswith("Trajectory: [(0.02, -0.10, -0.12, 0)]")
    state = torch.zeros(2, 15)
    state[:, 8:11] = torch.tensor(ee, dtype=torch.float32)
    assert np.allclose(p.origin(state[0]), ee) and np.allclose(objects_in(text, p.origin(state[0]))["red ball"],
                                                                 [0.42, -0.10, 0.03])
    # the same offsets move the arm toward base-frame (0.42, -0.10, 0.12); one that leaves the workspace from
    # here (z 0.24 - 0.30 < 0) holds, though the written numbers alone would be inside the box
    p.reset()
    actions = p.actions_from_text([text, "Trajectory: [(0.30, 0.20, -0.30, 0)]"], state)
    direction = actions[0, 0, :3].numpy()
    assert np.allclose(direction / np.linalg.norm(direction), np.array([0.02, -0.10, -0.12]) / np.linalg.norm(
        [0.02, -0.10, -0.12]), atol=1e-4)
    assert torch.all(actions[1, :, :3] == 0) and p.episode_stats()["out_of_workspace"] == 1
    assert EmmaPolicy(EmmaConfig(text_depth=1), features, None).origin(state[0]).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="frame is 'world'"):
        EmmaConfig(frame="world")


@pytest.mark.parametrize("reasoning,starts", [("objects", "Objects: red ball at"), ("none", "Trajectory: [")])
def test_chain_of_thought_ablations_write_less(reasoning, starts):
    features = FEATURES_FOR["emma"]
    p = EmmaPolicy(EmmaConfig(reasoning=reasoning, text_depth=1), features, None)
    objects = np.array([0, 0, 0.42, -0.10, 0.03, -1, -1, 0, 0, 0])
    text = p.answer("reach the red ball", np.zeros(3), 0.0, objects if reasoning != "none" else None,
                    0.0 if reasoning != "none" else None, np.array([[0.4, 0.0, 0.1, 0]]))
    assert text.startswith(starts) and "Decision" not in text and "Scene" not in text


def test_bad_plans_hold_and_are_counted(policy):
    policy.reset()
    state = torch.zeros(3, 15)
    state[:, 7] = torch.tensor([0.0, 0.0, 1.0])  # gripper closure
    state[:, 8:11] = torch.tensor([0.4, 0.0, 0.3])
    texts = [GOOD, "Trajectory: [(nan, 0.1, 0.2, 0)]", "Trajectory: [(0.42, -0.10, 0.90, 0)]"]
    actions = policy.actions_from_text(texts, state)
    assert actions.shape == (3, policy.config.horizon, 7)
    assert actions[0, 0, :3].abs().sum() > 0  # follows
    assert torch.all(actions[1:, :, :6] == 0)  # holds: no motion, no rotation
    assert actions[1, 0, 6] == -1 and actions[2, 0, 6] == 1  # the gripper kept as it was
    assert policy.episode_stats() == {"plans": 3, "parse_failures": 1, "out_of_workspace": 1, "holds": 2}
    policy.reset()
    assert policy.episode_stats()["plans"] == 0


def test_a_plan_from_the_model_is_decoded_under_the_grammar(policy):
    policy.reset()
    obs = {OBS_STATE: torch.zeros(1, 15), "observation.images.front": torch.zeros(1, 3, 64, 64, dtype=torch.uint8),
           TASK: ["reach the red ball"]}
    obs[OBS_STATE][0, 8:11] = torch.tensor([0.4, 0.0, 0.3])
    texts = policy.plan(obs)
    assert TRAJECTORY in texts[0]
    body = texts[0][texts[0].rfind(TRAJECTORY):]
    assert parse_trajectory(body, [[-10] * 3, [10] * 3])[1] == "ok"  # well formed (an untrained model's numbers)
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (1, 5, 7) and torch.isfinite(chunk).all() and policy.episode_stats()["plans"] == 1


@pytest.mark.parametrize("reasoning", ["full", "none"])
def test_plans_decoded_by_the_cached_loop_are_those_of_model_generate(reasoning, monkeypatch):
    """vlm.generate decodes a plan with its own KV-cache loop (_greedy_over, the grammar as a logits processor,
    rows that have ended continue with padding); transformers' model.generate with the same processor is the
    reference: the same texts, for a left-padded batch of two prompts whose rows end at different tokens."""
    torch.manual_seed(0)
    p = EmmaPolicy(EmmaConfig(reasoning=reasoning, max_reasoning_tokens=24, text_depth=2), FEATURES_FOR["emma"],
                   None).eval()
    g = torch.Generator().manual_seed(1)
    obs = {OBS_STATE: torch.rand(2, 15, generator=g),
           "observation.images.front": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g),
           TASK: ["reach the red ball", "open the top drawer of the cabinet, slowly"]}
    calls = {"loop": 0, "generate": 0}
    loop, generate = p.vlm._greedy_over, p.vlm.model.generate
    monkeypatch.setattr(p.vlm, "_greedy_over", lambda *a: calls.update(loop=calls["loop"] + 1) or loop(*a))
    monkeypatch.setattr(p.vlm.model, "generate", lambda **k: calls.update(generate=calls["generate"] + 1) or generate(**k))
    p.reset()
    fast = p.plan(obs)
    assert calls == {"loop": 1, "generate": 0}
    p.vlm.family = copy.copy(p.vlm.family)
    p.vlm.family.cached_greedy = False  # the reference path
    p.reset()
    reference = p.plan(obs)
    assert calls == {"loop": 1, "generate": 1}
    assert fast == reference
    assert fast[0] != fast[1] and len(fast[0]) != len(fast[1])  # the rows differ and end apart (padding written)
    for text in fast:
        assert parse_trajectory(text, [[-10] * 3, [10] * 3])[1] == "ok"


def test_number_tokens_write_each_coordinate_as_one_token():
    """number_tokens: the same text, each number one token (201 of them, as fmt writes them), the grammar
    still lets only the template out and accepts the labels."""
    assert len(set(NUMBER_TOKENS)) == 201 and "0.00" in NUMBER_TOKENS and "-0.00" not in NUMBER_TOKENS
    features = FEATURES_FOR["emma"]
    plain = EmmaPolicy(EmmaConfig(text_depth=1), features, None)
    p = EmmaPolicy(EmmaConfig(text_depth=1, number_tokens=True), features, None)
    assert p.vlm.vocab_size == plain.vlm.vocab_size + 201
    objects = np.array([0, 0, 0.42, -0.10, 0.03, 1, 1, 0.5, 0.2, 0.02], dtype=np.float32)
    wps = np.array([[0.42, -0.1, 0.12, 0], [0.42, -0.1, 0.09, 0], [0.42, -0.1, 0.07, 0], [0.42, -0.1, 0.05, 1]])
    text = p.answer("reach the red ball", np.array([0.42, -0.10, 0.24]), 0.0, objects, 0.0, wps)
    tok = p.vlm.tokenizer
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    pieces = [tok.decode([i]) for i in ids]
    assert pieces[-13:] == ["(", "0.42", ",", " ", "-0.10", ",", " ", "0.05", ",", " ", "1", ")", "]"]
    assert len(ids) <= len(plain.vlm.tokenizer.encode(text, add_special_tokens=False)) - 45  # 15 numbers, 3-4 characters fewer each
    grammar = p.grammar()
    row = {"mode": "free", "n": 0, "tail": ""}
    body = tok.encode(text[text.index(TRAJECTORY):], add_special_tokens=False)
    for i in tok.encode(text[:text.index(TRAJECTORY)], add_special_tokens=False) + body:
        grammar._step(row, i)
        assert row["mode"] != "end" or i == body[-1]
    assert row["mode"] == "traj" and row["pos"] == len(grammar.atoms)  # the whole template, in number tokens


def test_number_sigma_makes_a_near_miss_cheaper_than_a_far_one():
    """number_sigma: a number token's target is a Gaussian over the number tokens by value; other tokens and
    sigma -> 0 are plain cross-entropy."""
    features = FEATURES_FOR["emma"]
    p = EmmaPolicy(EmmaConfig(text_depth=1, number_tokens=True, number_sigma=0.02), features, None)
    first, V = p.number_ids[0], p.vlm.vocab_size
    at = {t: first + i for i, t in enumerate(NUMBER_TOKENS)}
    target = torch.tensor([at["0.42"]])

    def peaked(token):  # logits with nearly all mass on one token
        logits = torch.zeros(1, V)
        logits[0, at[token]] = 20.0
        return logits
    near, far = p.text_loss(peaked("0.43"), target), p.text_loss(peaked("-0.50"), target)
    assert near < far - 3  # graded: mass next to the target counts
    one_hot = F.cross_entropy(peaked("0.43"), target)
    assert one_hot == pytest.approx(F.cross_entropy(peaked("-0.50"), target))  # one-hot: every miss alike
    p.config.number_sigma = 1e-4
    logits = torch.randn(3, V)
    targets = torch.tensor([at["0.42"], 65, at["-1.00"]])  # a number, a letter, the lowest number
    assert p.text_loss(logits, targets) == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-4)
    with pytest.raises(ValueError, match="number_sigma=0.02: expected 0, or > 0 with number_tokens"):
        EmmaConfig(number_sigma=0.02)


def test_locate_loss_trains_the_image_side_toward_the_named_object():
    """locate_weight: the first critical object's true position regressed from the image tokens; its loss is
    part of the total, its gradient reaches the projector, and the head is never used to act."""
    torch.manual_seed(0)
    features = FEATURES_FOR["emma"]
    p = EmmaPolicy(EmmaConfig(text_depth=1, locate_weight=2.0), features, stats_of(features))
    batch = make_batch(p.config, features, stats_of(features))
    batch[PRIVILEGED_OBJECTS] = torch.tensor([[0, 0, 0.42, -0.10, 0.03, 1, 1, 0.5, 0.2, 0.02]] * 3)[:, None]
    batch[PRIVILEGED_DECISION] = torch.zeros(3, 1)
    batch[TASK] = ["reach the red ball", "touch the blue cube", "reach the red ball"]
    loss, info = p.compute_loss(batch)
    assert info["loss"] == pytest.approx(info["text_loss"] + 2.0 * info["locate_loss"], rel=1e-5)
    assert info["locate_cm"] > 0
    loss.backward()
    assert p.locator.query.weight.grad.abs().sum() > 0 and p.projector.mlp[0].weight.grad.abs().sum() > 0
    # the named object is the target: moving the blue cube changes the second sample's target only
    moved = dict(batch)
    moved[PRIVILEGED_OBJECTS] = batch[PRIVILEGED_OBJECTS].clone()
    moved[PRIVILEGED_OBJECTS][:, 0, 7] += 0.3
    torch.manual_seed(0)
    assert p.compute_loss(moved)[1]["locate_loss"] != pytest.approx(info["locate_loss"])
    # text_batch 1: the text of the first sample only, the locate head on all three
    p.config.text_batch = 1
    short = p.compute_loss(batch)[1]
    assert short["locate_loss"] == pytest.approx(info["locate_loss"]) and short["text_loss"] != pytest.approx(
        info["text_loss"])
    with pytest.raises(ValueError, match="locate_weight must be >= 0"):
        EmmaConfig(locate_weight=-1)
    with pytest.raises(ValueError, match="text_batch=4: expected null, or >= 1 with locate_weight > 0"):
        EmmaConfig(text_batch=4)


def test_instruction_image_is_one_more_image_the_text_reads():
    """instruction_image: K instruction-aware tokens pooled from every camera go in as one more image; the text's
    loss trains the pooling, the plan reads it, the instruction changes it, and it needs nothing privileged."""
    torch.manual_seed(0)
    features = FEATURES_FOR["emma"]
    plain = {k: f for k, f in features.items() if k not in (PRIVILEGED_OBJECTS, PRIVILEGED_DECISION)}
    p = EmmaPolicy(EmmaConfig(text_depth=1, reasoning="none", instruction_image=True), plain, stats_of(plain))
    batch = make_batch(p.config, plain, stats_of(plain))
    batch[TASK] = ["reach the red ball", "touch the blue cube", "reach the red ball"]
    tokens = p.image_tokens({k: batch[k][:, -1:] for k in p.camera_keys}, batch[TASK])
    more, located = p.with_instruction_image(tokens, batch[TASK])
    assert more.shape == (3, tokens.shape[1] + 1, *tokens.shape[2:]) and torch.equal(more[:, :-1], tokens)
    assert not torch.allclose(more[0, -1], more[1, -1])  # other words, other tokens (the same images)
    assert located.shape == (3, 3)
    loss, info = p.compute_loss(batch)
    loss.backward()
    assert p.locator.queries.grad.abs().sum() > 0 and p.locator.attend.in_proj_weight.grad.abs().sum() > 0
    obs = {OBS_STATE: torch.zeros(1, 15), TASK: ["reach the red ball"],
           **{k: torch.zeros(1, 3, 64, 64, dtype=torch.uint8) for k in p.camera_keys}}
    p.eval().reset()
    assert parse_trajectory(p.plan(obs)[0], [[-10] * 3, [10] * 3])[1] == "ok"
    assert EmmaPolicy(EmmaConfig(text_depth=1, locate_weight=1.0), features, None).locator.queries is None  # as saved


def test_labels_need_the_privileged_columns(policy):
    no_vocab = EmmaPolicy(EmmaConfig(text_depth=1), {k: f for k, f in FEATURES_FOR["emma"].items()
                                                      if k not in (PRIVILEGED_OBJECTS, PRIVILEGED_DECISION)}, None)
    with pytest.raises(KeyError, match="privileged=true"):
        no_vocab.compute_loss({TASK: ["x"]})
    locating = EmmaPolicy(EmmaConfig(text_depth=1, reasoning="none", locate_weight=1.0),
                          {k: f for k, f in FEATURES_FOR["emma"].items()
                           if k not in (PRIVILEGED_OBJECTS, PRIVILEGED_DECISION)}, None)
    with pytest.raises(KeyError, match="locate_weight=1.0"):  # the auxiliary target is privileged too
        locating.compute_loss({TASK: ["x"]})
    assert PRIVILEGED_OBJECTS not in policy.features  # nothing privileged among its inputs (eval, daemon)


def test_config_errors_say_what_to_fix():
    with pytest.raises(ValueError, match="reasoning is 'some'"):
        EmmaConfig(reasoning="some")
    with pytest.raises(ValueError, match="workspace must be"):
        EmmaConfig(workspace=[[0, 0, 0], [0, 1, 1]])
    with pytest.raises(ValueError, match="must hold \\['dx', 'dy', 'dz', 'gripper'\\]"):
        features = dict(FEATURES_FOR["emma"])
        features["action"] = type(features["action"])("float32", (8,), names=[f"joint{i}" for i in range(8)])
        EmmaPolicy(EmmaConfig(text_depth=1), features, None)
