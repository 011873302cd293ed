"""Gato's own rules (the contract tests cover build, training step, save/load, select_action, reset):
its tokenisation (mu-law, bins, text ids, patch positions, separator), its loss mask, the KV cache,
constrained decoding, prompts, several embodiments in one model and the errors on bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_contract import FEATURES

from policystack.datasets.mixture import mixture_key
from policystack.datasets.vqa import vl_task
from policystack.policies.base import Policy
from policystack.policies.gato import IGNORE, GatoConfig, GatoPolicy
from policystack.policies.layers.patches import PatchEmbedding, patch_intervals, patch_positions
from policystack.policies.tokenizers import MuLawTokenizer, mu_law, mu_law_inverse, subword_tokenizer
from policystack.training.config import load_preset
from policystack.types import ACTION, END_SUFFIX, EPISODE_INDEX, FRAME_INDEX, TASK, DataError, Feature

SAWYER = {"observation.state": Feature("float32", (39,)), "observation.images.corner2": Feature("video", (32, 32, 3)),
          ACTION: Feature("float32", (4,))}
SMALL = dict(width=32, depth=2, heads=2, mlp_hidden=64, patch_channels=8, image_size=32)


def small(**kw) -> GatoPolicy:
    torch.manual_seed(0)
    return GatoPolicy(GatoConfig(**{**SMALL, **kw}), FEATURES, None)


def robot_batch(features, B: int, tasks: list[str], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch: dict = {TASK: tasks, EPISODE_INDEX: torch.arange(B), FRAME_INDEX: torch.arange(B)}
    for k, f in features.items():
        if f.is_visual:
            batch[k] = torch.randint(0, 256, (B, 1, *f.chw), generator=g, dtype=torch.uint8)
        else:
            batch[k] = torch.randn(B, 1, *f.shape, generator=g)
        batch[k + "_is_pad"] = torch.zeros(B, 1, dtype=torch.bool)
    return batch


def obs_of(batch: dict, i: int = 0, n: int = 1) -> dict:
    out = {k: v[i:i + n, 0] for k, v in batch.items() if k.startswith("observation.") and not k.endswith("_is_pad")}
    return {**out, TASK: batch[TASK][i:i + n]}


# --- tokenisation -----------------------------------------------------------------------------------
def test_mu_law_matches_the_formula_and_round_trips():
    x = torch.tensor([-256.0, -1.0, -0.01, 0.0, 0.01, 1.0, 256.0])
    want = torch.sign(x) * torch.log(x.abs() * 100 + 1) / math.log(256 * 100 + 1)
    torch.testing.assert_close(mu_law(x), want)
    assert mu_law(torch.tensor(256.0)).item() == pytest.approx(1.0)
    torch.testing.assert_close(mu_law_inverse(mu_law(x)), x, rtol=1e-4, atol=1e-5)
    # through the 1024 bins: off by at most half a bin in mu-law space (fine near 0, coarse far out)
    tok = MuLawTokenizer()
    v = torch.linspace(-5, 5, 1001)
    err = (mu_law(tok.decode(tok.encode(v))) - mu_law(v)).abs()
    assert err.max() <= 1 / 1024 + 1e-6
    assert (tok.decode(tok.encode(torch.tensor([0.001]))) - 0.001).abs() < 2e-4  # resolution near 0


def test_bins_edges_and_clipping():
    tok = MuLawTokenizer()
    edges = torch.tensor([-1.0 + 2 * k / 1024 for k in (1, 512, 513)])  # bin edges in mu-law space
    below, above = mu_law_inverse(edges - 1e-4), mu_law_inverse(edges + 1e-4)
    assert tok.encode(below).tolist() == [0, 511, 512] and tok.encode(above).tolist() == [1, 512, 513]
    assert tok.encode(torch.tensor([0.0])).item() == 512  # 0 opens the upper half
    assert tok.encode(torch.tensor([-1e6, 1e6])).tolist() == [0, 1023]  # clipped to [-1, 1] after mu-law
    with pytest.raises(TypeError, match="float"):
        tok.encode(torch.tensor([1, 2]))


def test_values_and_discrete_ids_go_after_the_text_vocabulary():
    policy = small()
    c = policy.config
    ids = policy.value_ids(torch.tensor([[-1e6, 0.0, 1e6]]))
    assert ids.tolist() == [[c.text_vocab, c.text_vocab + 512, c.text_vocab + 1023]]
    assert policy.value_block.to_vocab(torch.tensor([0, 7])).tolist() == [c.text_vocab, c.text_vocab + 7]  # discrete
    assert policy.separator == c.text_vocab + c.n_bins and policy.vocab_size == policy.separator + 1
    assert policy.embed.num_embeddings == policy.vocab_size


def test_text_is_smollm2_subwords_cut_to_the_text_vocabulary():
    full, cut = subword_tokenizer(49152), subword_tokenizer(8192)
    text = "reach the red ball, then describe the scene"
    a, b = full.encode(text, add_special_tokens=False).ids, cut.encode(text, add_special_tokens=False).ids
    assert len(a) < len(text) // 2  # subwords, not bytes
    assert max(b) < 8192 and cut.decode(b) == text and full.decode(a) == text
    rare = "Thessalonians"  # a word SmolLM2 has as one token past the cut
    assert max(full.encode(rare, add_special_tokens=False).ids) >= 8192
    assert max(cut.encode(rare, add_special_tokens=False).ids) < 8192
    with pytest.raises(ValueError, match="can be cut to"):
        subword_tokenizer(100)


def test_patch_positions_sampled_within_the_interval_in_training_mean_at_eval():
    lo, hi = patch_intervals(4, 128)
    assert lo.tolist() == [0, 32, 64, 96] and hi.tolist() == [32, 64, 96, 128]
    g = torch.Generator().manual_seed(0)
    draws = patch_positions(4, 128, 2000, sample=True, generator=g)
    assert ((draws >= lo) & (draws < hi)).all()
    assert all(len(draws[:, r].unique()) == 32 for r in range(4))  # the whole interval is used
    assert patch_positions(4, 128, 3, sample=False).tolist() == [[16, 48, 80, 112]] * 3
    net = PatchEmbedding(16, image_size=32, channels=8)
    x = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    net.eval()
    assert net(x).shape == (2, 4, 16) and torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


def test_patches_are_encoded_each_on_its_own_in_raster_order():
    net = PatchEmbedding(16, image_size=32, channels=8).eval()
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    y = x.clone()
    y[..., :16, 16:] = 0  # change the top-right patch only: patch 1 in raster order
    changed = (net(x) - net(y)).abs().sum(-1)[0] > 0
    assert changed.tolist() == [False, True, False, False]


def test_separator_before_each_action_and_token_layout():
    policy = small().eval()
    batch = robot_batch(FEATURES, 2, ["a", "b"])
    x = {k: v[:, 0] for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() >= 2}
    e, ids, in_loss = policy.timestep("main", x, with_action=True)
    P, D, A = 4, 6, 4  # 32 px -> 2x2 patches; 6-d state; 4-d action
    assert e.shape == (2, P + D + 1 + A, 32)
    assert (ids[:, :P] == -1).all()  # patches have no id
    block = (ids >= policy.value_block.start) & (ids < policy.separator)
    assert block[:, P:P + D].all() and block[:, P + D + 1:].all()
    assert (ids[:, P + D] == policy.separator).all() and ((ids == policy.separator).sum(1) == 1).all()
    assert in_loss[:, P + D + 1:].all() and not in_loss[:, :P + D + 1].any()  # the actions only
    e2, ids2, _ = policy.timestep("main", x, with_action=False)  # inference: up to the separator
    assert torch.equal(ids2, ids[:, :P + D + 1]) and torch.equal(e2, e[:, :P + D + 1])


# --- the loss mask ------------------------------------------------------------------------------------
def test_loss_on_text_and_action_tokens_only():
    policy = small(prompt_fraction=0.0)
    batch = robot_batch(FEATURES, 2, ["reach the red ball", "open it"])
    batch["action_is_pad"][1] = True  # past the episode's end: no action loss for sample 1
    vl = robot_batch({"observation.images.front": FEATURES["observation.images.front"]}, 1,
                     [vl_task("what colour is the ball?", "red")])
    for k, v in vl.items():
        batch[mixture_key(1, k)] = v
    samples = policy.samples(batch)
    _, targets, _ = policy.pack(samples)
    seqs = [torch.cat([p[1] for p in s]) for s in samples]
    text = lambda s: policy.text.encode(s, add_special_tokens=False).ids + [0]  # noqa: E731
    for b, ids in enumerate(seqs):
        t = targets[b, targets.shape[1] - len(ids):]
        expected = torch.full_like(ids, IGNORE)
        if b < 2:  # [instruction + eot] [patches] [state] [|] [action]
            n_text = len(text(batch[TASK][b]))
            expected[:n_text - 1] = ids[1:n_text]  # text predicts the next text token
            if b == 0:
                expected[-5:-1] = ids[-4:]  # the separator and the first 3 actions predict the next action
        else:  # [patches] [question] [answer + eot]
            expected[:-1] = torch.where(ids[1:] >= 0, ids[1:], IGNORE)  # the last patch predicts the question
        assert torch.equal(t, expected), (b, t.tolist(), expected.tolist())
    loss, logs = policy.compute_loss(batch)
    assert torch.isfinite(loss) and {"action_loss", "text_loss", "action_accuracy"} <= set(logs)


def test_training_prompts_are_the_ends_of_other_episodes_of_the_task_without_loss():
    policy = small(prompt_fraction=1.0, prompt_steps=2)
    batch = robot_batch(FEATURES, 4, ["reach"] * 3 + ["other"])
    batch[EPISODE_INDEX] = torch.tensor([0, 1, 1, 3])
    assert policy.samples(batch)[0][0][1].numel() == len(policy.text_ids("reach"))  # no episode ends: no prompt
    ends = policy.config.episode_end_indices(list(FEATURES))
    assert ends == {k: [-1, 0] for k in FEATURES if k.startswith("observation.") or k == ACTION}
    episode_end = robot_batch(FEATURES, 4 * 2, ["reach"] * 8, seed=1)  # 2 frames per episode 0..3
    for k in ends:  # the loader's <key>_episode_end [B, 2, ...]: each sample's own episode's last frames
        per_episode = episode_end[k][:, 0].reshape(4, 2, *episode_end[k].shape[2:])
        batch[k + END_SUFFIX] = per_episode[batch[EPISODE_INDEX]]
    step = 4 + 6 + 1 + 4
    for _ in range(5):  # prompts are drawn at random among the other episodes of the task
        samples = policy.samples(batch)
        lengths = [sum(len(p[1]) for p in s) for s in samples]
        text = len(policy.text_ids("reach"))
        assert lengths[:3] == [text + 3 * step] * 3  # another episode's last two timesteps + its own
        assert lengths[3] == len(policy.text_ids("other")) + step  # no other demonstration of its task
        prompt = samples[0][0]
        assert not prompt[2].any() and len(prompt[1]) == 2 * step
        # sample 0 (episode 0) is prompted by episode 1's end (sample 1 or 2: the same end), in time order
        actions = policy.value_ids(batch[ACTION + END_SUFFIX][1])
        assert torch.equal(prompt[1].view(2, step)[:, -4:], actions)
        # samples 1 and 2 (episode 1) by episode 0's end, never their own episode's
        assert torch.equal(samples[1][0][1].view(2, step)[:, -4:], policy.value_ids(batch[ACTION + END_SUFFIX][0]))
    assert policy.config.episode_end_indices(["observation.images.front"]) == {}  # no action: a text part
    assert small(prompt_fraction=0.0).config.episode_end_indices(list(FEATURES)) == {}


# --- decoding -------------------------------------------------------------------------------------------
def test_kv_cache_gives_the_same_actions_as_recomputing():
    policy = small().eval()
    batch = robot_batch(FEATURES, 3, ["reach the red ball", "press the blue button now please", "x"], seed=3)
    policy.set_prompt("x", {k: v[:, 0] for k, v in robot_batch(FEATURES, 2, ["x"] * 2, seed=4).items()
                            if isinstance(v, torch.Tensor) and v.dim() >= 2})  # sample 2 is longer: left padding
    obs = obs_of(batch, 0, 3)
    emb, x, mask = policy.prefix(obs)
    with_cache = policy.decode_actions(x, mask, 4, use_cache=True)
    without = policy.decode_actions(x, mask, 4, use_cache=False)
    assert torch.equal(with_cache, without)
    # each sample acts as it does alone (padding changes nothing)
    for i in range(3):
        _, xi, mi = policy.prefix(obs_of(batch, i))
        assert torch.equal(policy.decode_actions(xi, mi, 4, use_cache=True), with_cache[i:i + 1])
    policy.config.kv_cache = False
    a = policy.predict_action_chunk(obs)
    policy.config.kv_cache = True
    assert torch.equal(a, policy.predict_action_chunk(obs)) and a.shape == (3, 1, 4)


def test_a_non_action_token_is_impossible():
    policy = small().eval()
    with torch.no_grad():  # make every text id and the separator far likelier than any value id
        policy.embed.weight[:policy.value_block.start] *= 50
        policy.embed.weight[policy.separator] *= 50
    obs = obs_of(robot_batch(FEATURES, 2, ["a", "b"]), 0, 2)
    emb, x, mask = policy.prefix(obs)
    free = policy.logits(policy.transformer(x, mask)[:, -1]).argmax(-1)
    assert ((free < policy.value_block.start) | (free >= policy.separator)).all()  # unconstrained: not an action
    ids = policy.decode_actions(x, mask, 4, use_cache=True)
    assert ((ids >= policy.value_block.start) & (ids < policy.separator)).all()


# --- embodiments ------------------------------------------------------------------------------------------
def test_two_embodiments_in_one_model_train_together_and_act_with_their_own_sizes(tmp_path):
    policy = small(embodiments={"sawyer": {k: f.to_json() for k, f in SAWYER.items()}})
    batch = robot_batch(FEATURES, 2, ["reach", "reach"])
    for k, v in robot_batch(SAWYER, 2, ["mw reach"] * 2, seed=1).items():
        batch[mixture_key(1, k)] = v
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    policy.eval()
    assert policy.predict_action_chunk(obs_of(batch)).shape == (1, 1, 4)
    sawyer_obs = obs_of(robot_batch(SAWYER, 1, ["mw reach"]))
    assert policy.embodiment_of(sawyer_obs) == "sawyer"
    assert policy.predict_action_chunk(sawyer_obs).shape == (1, 1, 4)
    view = policy.for_embodiment("sawyer")
    assert view.features == SAWYER and view.embed.weight is policy.embed.weight
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert set(loaded.embodiments) == {"main", "sawyer"}
    assert torch.equal(loaded.predict_action_chunk(sawyer_obs), policy.predict_action_chunk(sawyer_obs))


def test_a_mixed_in_robot_dataset_becomes_an_embodiment(tmp_path):
    policy = small()
    where = f"{tmp_path}/mw_reach/meta/info.json"
    keys = policy.mixture_keys({**SAWYER, "timestamp": Feature("float32", (1,))}, where)
    assert sorted(keys) == sorted(SAWYER) and "mw_reach" in policy.config.embodiments
    assert policy.mixture_keys(FEATURES, where) == list(FEATURES)  # the policy's own embodiment: nothing added
    assert set(policy.embodiments) == {"main", "mw_reach"}
    vl = {"observation.images.front": FEATURES["observation.images.front"]}
    assert policy.mixture_keys(vl, where) == ["observation.images.front"]
    with pytest.raises(DataError, match="need a camera"):
        policy.mixture_keys({"observation.state": Feature("float32", (3,))}, where)


# --- bad input -------------------------------------------------------------------------------------------
def test_unknown_embodiment_and_size_mismatches_are_named():
    policy = small().eval()
    obs = obs_of(robot_batch(FEATURES, 1, ["a"]))
    with pytest.raises(ValueError, match=r"unknown embodiment: the observation has \['observation.environment_state'\]"):
        policy.predict_action_chunk({"observation.environment_state": torch.zeros(1, 6), TASK: ["a"]})
    bad = {**obs, "observation.state": torch.zeros(1, 12)}
    with pytest.raises(ValueError, match=r"observation.state of 12 values; embodiment 'main' takes \[\[6\]\] "
                                         r"\(state dim mismatch\)"):
        policy.predict_action_chunk(bad)
    batch = robot_batch(FEATURES, 2, ["a", "b"])
    batch[ACTION] = torch.zeros(2, 1, 7)
    with pytest.raises(ValueError, match=r"batch part 0 is embodiment 'main' by its observations, whose action has "
                                         r"4 dims; its 'action' has 7"):
        policy.compute_loss(batch)
    with pytest.raises(KeyError, match="no embodiment 'sawyer'"):
        policy.for_embodiment("sawyer")
    long = small(context_length=10)
    with pytest.raises(ValueError, match="exceeds context_length 10"):
        long.eval().predict_action_chunk(obs)


@pytest.mark.parametrize("field, value, match", [
    ("horizon", 2, "must be 1"),
    ("normalization", {"action": "mean_std"}, "must be {}"),
    ("image_size", 40, "multiple of patch_size"),
    ("prompt_fraction", 1.5, r"in \[0, 1\]"),
    ("embodiments", {"main": {}}, "the policy's own features"),
    ("embodiments", {"arm": {"observation.state": {"dtype": "float32", "shape": [3]}}}, "needs a 1-D 'action'"),
])
def test_config_errors_say_what_to_fix(field, value, match):
    kw = {field: value}
    if field == "horizon":
        kw["n_action_steps"] = 1
    with pytest.raises(ValueError, match=match):
        GatoConfig(**kw)


def test_too_many_tokens_per_timestep_is_refused():
    with pytest.raises(ValueError, match=r"embodiment 'main' has 10 observation tokens .* allows 8 \(max_obs_tokens\)"):
        small(max_obs_tokens=8)


def test_paper_presets_are_within_ten_percent_of_the_paper_sizes():
    for preset, size in (("gato_paper_79m", 79e6), ("gato_paper_364m", 364e6), ("gato_paper", 1.18e9)):
        klass, cfg, _ = load_preset(preset)
        with torch.device("meta"):
            n = sum(p.numel() for p in klass(cfg, FEATURES, None).parameters())
        print(f"{preset}: {n:,} parameters ({n / size - 1:+.1%} vs the paper's {size:,.0f})")
        assert abs(n / size - 1) < 0.10, preset


def test_prompt_changes_the_context():
    policy = small().eval()
    obs = obs_of(robot_batch(FEATURES, 1, ["reach"]))
    _, x0, _ = policy.prefix(obs)
    demo = {k: v[:, 0] for k, v in robot_batch(FEATURES, 3, ["reach"] * 3, seed=5).items()
            if isinstance(v, torch.Tensor) and v.dim() >= 2}
    policy.set_prompt("reach", demo)
    _, x1, _ = policy.prefix(obs)
    assert x1.shape[1] == x0.shape[1] + 2 * (4 + 6 + 1 + 4)  # prompt_steps=2 timesteps kept from the end
    clone = copy.deepcopy(policy)
    clone.set_prompt("reach", None)
    assert clone.prefix(obs)[1].shape == x0.shape


# --- scripts/gato_eval.py: the prompts of an evaluation ---------------------------------------------
def gato_eval_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "gato_eval.py"
    spec = importlib.util.spec_from_file_location("gato_eval", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_eval_prompts_are_the_last_frames_of_each_instructions_last_episode(tmp_path):
    from policystack.datasets.writer import DatasetWriter

    script = gato_eval_script()
    feats = {"observation.state": Feature("float32", (2,)), ACTION: Feature("float32", (3,))}
    episodes = [("reach the red ball", 3), ("press the blue button", 4), ("reach the red ball", 5)]
    with DatasetWriter.create(tmp_path / "demos", 10, feats, use_videos=False) as w:
        for ep, (task, n) in enumerate(episodes):
            for i in range(n):
                w.add_frame({"observation.state": [ep, i], ACTION: [ep, i, 0.0], "task": task})
            w.save_episode()
    keys = ["observation.state", ACTION]
    prompts = script.prompts_from(str(tmp_path / "demos"), keys, steps=2)
    assert sorted(prompts) == ["press the blue button", "reach the red ball"]
    red = prompts["reach the red ball"]  # episode 2 (the last of its instruction), frames 3 and 4
    assert red["observation.state"].tolist() == [[2, 3], [2, 4]] and red[ACTION][:, :2].tolist() == [[2, 3], [2, 4]]
    assert prompts["press the blue button"]["observation.state"].tolist() == [[1, 2], [1, 3]]
    with pytest.raises(ValueError, match="lacks"):
        script.prompts_from(str(tmp_path / "demos"), keys + ["observation.images.front"], steps=2)


def test_eval_checks_every_task_spec_before_the_first_episode(tmp_path, capsys):
    small().save_pretrained(tmp_path / "ckpt")
    script = gato_eval_script()
    for spec, said in [("Reach=sawyer", "no embodiment 'sawyer'; it has ['main']"),
                       ("Reach", "expected TASK=EMBODIMENT")]:
        with pytest.raises(SystemExit):  # before any env is built: the first spec is valid and never runs
            script.main([str(tmp_path / "ckpt"), "--task", "Reach=main", "--task", spec, "--out", str(tmp_path / "x")])
        assert said in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_policystack_eval_acts_as_the_embodiment_it_is_told(tmp_path, capsys):
    """`policystack eval ... embodiment=sawyer`: the Sawyer view of a two-robot checkpoint runs MetaWorld
    (its features build the env); without it the main robot's features do not fit; bad names are refused."""
    from policystack.eval.commands import as_embodiment, main

    small(embodiments={"sawyer": {k: f.to_json() for k, f in SAWYER.items()}}).save_pretrained(tmp_path / "ckpt")
    common = [f"checkpoint={tmp_path / 'ckpt'}", "env=metaworld/reach-v3", "episodes=1", "max_steps=3", "videos=0",
              "camera_convention=upright"]
    assert main([*common, "embodiment=sawyer", f"out={tmp_path / 'ok'}"]) == 0
    assert "reach-v3: success" in capsys.readouterr().out and (tmp_path / "ok" / "eval_info.json").exists()
    assert main([*common, f"out={tmp_path / 'main'}"]) == 2  # the main robot (6-d state) is not a Sawyer
    assert "observation.state" in capsys.readouterr().err
    assert main([*common, "embodiment=ur5", f"out={tmp_path / 'x'}"]) == 2
    assert "embodiment=ur5: " in (err := capsys.readouterr().err) and "it has ['main', 'sawyer']" in err
    with pytest.raises(ValueError, match="acts on one robot"):
        as_embodiment(object(), "main", "bc_checkpoint")
