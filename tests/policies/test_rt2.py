"""RT-2: the action tokenizer (q01/q99 -> 256 bins -> dedicated ids), answer-only loss, constrained
decoding, the terminate token, chunks, cached vs live image features, co-training batches, LoRA and bad
input (what every family keeps -- presets, a training step, save/load, select_action, reset -- is in
test_contract.py)."""

import numpy as np
import pytest
import torch
from overfit import overfit

from policystack.datasets.mixture import mixture_key
from policystack.datasets.vqa import vl_task
from policystack.perception.vlm import IGNORE_INDEX, VLMConfig, build_vlm
from policystack.policies.base import Policy
from policystack.policies.rt2 import PROMPT, VL_PROMPT, RT2Config, RT2Policy
from policystack.types import Feature

A = 4
CAMS = ("observation.images.front", "observation.images.wrist")
TASKS = ["reach the red ball", "press the blue button", "open the drawer"]
STATS = {"action": {"q01": np.array([-1.0, 0.0, -0.5, 10.0]), "q99": np.array([1.0, 1.0, 0.5, 20.0]),
                    "min": np.array([-2.0, -1.0, -1.0, 0.0]), "max": np.array([2.0, 2.0, 1.0, 30.0])}}
# small enough for a CPU test: a 2-layer 64-wide text model, Lite0 at 32 px (a 2x2 map after 5 stages)
SMALL = dict(text_width=64, text_depth=2, text_heads=2, context_length=256, image_size=32)


def features(size=32, cams=CAMS):
    f = {"action": Feature("float32", (A,))}
    f.update({k: Feature("video", (size, size, 3)) for k in cams})
    return f


def build(**kw) -> RT2Policy:
    """A small RT-2 as `policystack train` starts one: the Lite0 trunk with its ImageNet weights."""
    torch.manual_seed(0)
    policy = RT2Policy(RT2Config(**{**SMALL, **kw}), features(), STATS)
    policy.load_external_weights()
    return policy


def batch_for(cfg: RT2Config, B=3, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    H = len(cfg.action_delta_indices)
    lo, hi = torch.tensor(STATS["action"]["q01"]).float(), torch.tensor(STATS["action"]["q99"]).float()
    b = {k: torch.randint(0, 256, (B, 1, 3, size, size), dtype=torch.uint8, generator=g) for k in CAMS}
    b["action"] = lo + (hi - lo) * torch.rand(B, H, A, generator=g)
    b["action_is_pad"] = torch.zeros(B, H, dtype=torch.bool)
    b["task"] = TASKS[:B]
    return b


def obs_of(batch, t=0):
    return {**{k: batch[k][:, t] for k in CAMS}, "task": batch["task"]}


# --- the action tokenizer -------------------------------------------------------------------------
def test_actions_become_256_dedicated_tokens_after_the_vocabulary():
    policy = build()
    block = policy.action_block
    vocab = policy.vlm.vocabulary()
    assert block.size == 256 and block.start == len(vocab) - 256  # appended after every existing token
    assert [vocab[f"<act_{i}>"] for i in (0, 255)] == [block.start, block.start + 255]
    text = "reach the red ball"  # words keep their ids: nothing is overwritten
    fresh = build_vlm(VLMConfig(**{k: v for k, v in policy.config.vlm_config().__dict__.items()}))
    assert policy.vlm.tokenizer.encode(text) == fresh.tokenizer.encode(text)


def test_action_tokens_are_openvla_bins_of_the_q01_q99_range():
    policy = build()
    q01, q99 = (torch.tensor(STATS["action"][s]).float() for s in ("q01", "q99"))
    action = torch.stack([q01, q99, (q01 + q99) / 2, q99 + 5.0])[None]  # [1, 4 steps, A]: low, high, mid, beyond
    policy.config.horizon = 4  # (only action_answers reads it here)
    answers = policy.action_answers(action, None)
    ids = torch.tensor(answers[0][0][0]).view(4, A) - policy.action_block.start
    assert answers[0][0][1] and answers[0][1] == ([], False)  # every step in the loss
    assert (ids[0] == 0).all() and (ids[1] == 255).all() and (ids[3] == 255).all()  # q99 and beyond: the last bin
    assert (ids[2] == 128).all()  # the middle of [q01, q99] -> 0 -> bin 128 (floor((0 + 1) / (2 / 256)))
    # decoding a bin gives its centre: within half a bin (of the q01..q99 range) of the action
    values = policy.bins.decode(ids)
    back = policy.normalizer.unnormalize("action", values)
    half_bin = (q99 - q01) / 256 / 2 + 1e-5
    assert ((back[:3] - action[0, :3]).abs() <= half_bin).all()


def test_loss_is_on_action_tokens_and_the_end_token_only():
    policy = build(horizon=2)
    b = batch_for(policy.config)
    b["action_is_pad"][0, 1] = True  # sample 0's second step is past its episode's end
    answers = policy.action_answers(b["action"], b["action_is_pad"])
    prompts = [PROMPT.format(instruction=t) for t in b["task"]]
    inputs = policy.vlm.encode(prompts, answers=answers, image_features=policy.image_tokens(
        {k: b[k] for k in CAMS}))
    labels = inputs.labels
    eos = policy.vlm.tokenizer.eos_token_id
    for i in range(3):
        labelled = labels[i][labels[i] != IGNORE_INDEX].tolist()
        n_steps = 1 if i == 0 else 2
        assert len(labelled) == n_steps * A + 1 and labelled[-1] == eos
        assert all(t in policy.action_block.ids for t in labelled[:-1])
    assert PROMPT == "In: What action should the robot take to {instruction}?\nOut:"
    # the padded step's tokens are in the input (after the valid ones) but not in the loss
    row = inputs.input_ids[0].tolist()
    pad_step = answers[0][1][0]
    assert len(pad_step) == A and row[-A - 1:-1] == pad_step


# --- decoding ---------------------------------------------------------------------------------------
def test_a_non_action_token_cannot_be_generated():
    """The model's favourite token is made a word ('a'); unconstrained decoding then writes it, the
    policy's constrained decoding still writes action tokens only (TokenBlock.to_bins would raise)."""
    policy = build(horizon=2).eval()
    word = policy.vlm.tokenizer.convert_tokens_to_ids("a")

    def favour_word(module, args, out):
        out = out.clone()
        out[..., word] += 1e4
        return out

    policy.vlm.model.lm_head.register_forward_hook(favour_word)
    b = batch_for(policy.config)
    tokens = policy.image_tokens({k: b[k] for k in CAMS})
    prompts = [PROMPT.format(instruction=t) for t in b["task"]]
    free = policy.vlm.generate(prompts, image_features=tokens, max_new_tokens=3, stop_at_eos=False)
    assert (free.ids == word).all()
    chunk = policy.predict_action_chunk(obs_of(b))
    assert chunk.shape == (3, 2, A) and torch.isfinite(chunk).all()
    sampled = policy.vlm.generate(prompts, image_features=tokens, max_new_tokens=8, stop_at_eos=False,
                                  allowed_token_ids=policy.action_block.ids, do_sample=True, temperature=5.0)
    assert all(int(t) in policy.action_block.ids for t in sampled.ids.flatten())


def test_chunks_write_horizon_steps_and_queue_n_action_steps():
    policy = build(horizon=3, n_action_steps=2).eval()
    b = batch_for(policy.config)
    chunk = policy.predict_action_chunk(obs_of(b))
    assert chunk.shape == (3, 3, A)
    q01, q99 = (torch.tensor(STATS["action"][s]).float() for s in ("q01", "q99"))
    assert ((chunk >= q01 - 1e-4) & (chunk <= q99 + 1e-4)).all()  # bin centres lie inside [q01, q99]
    torch.testing.assert_close(policy.select_action(obs_of(b)), chunk[:, 0])
    torch.testing.assert_close(policy.select_action(obs_of(b)), chunk[:, 1])
    assert len(policy._action_queue) == 0


# --- terminate ---------------------------------------------------------------------------------------
def test_terminate_label_is_the_last_step_of_an_episode():
    policy = build(terminate_token=True, horizon=2)
    assert policy.config.action_delta_indices == [0, 1, 2]  # one more offset for the label
    b = batch_for(policy.config)
    b["action_is_pad"][0, 1:] = True  # sample 0: step 0 is its episode's last
    b["action_is_pad"][1, 2:] = True  # sample 1: step 1 is the last
    answers = policy.action_answers(b["action"], b["action_is_pad"])
    start = policy.action_block.start
    steps = [torch.tensor(a[0][0]).view(-1, A + 1) - start for a in answers]
    assert steps[0].shape[0] == 1 and steps[0][0, A] == 255  # done
    assert steps[1][:, A].tolist() == [0, 255]  # not done, then done
    assert steps[2][:, A].tolist() == [0, 0]


def test_terminate_token_is_learned_and_reported_by_select_action():
    policy = build(terminate_token=True)
    b = batch_for(policy.config, B=2)
    b["action_is_pad"][0, 1] = True  # sample 0 ends here, sample 1 goes on
    first, last, logs = overfit(policy, b, steps=100, lr=3e-3)
    assert last < 0.2 * first and logs["action_accuracy"] == 1.0
    policy.eval()
    chunk, done = policy.predict_action_chunk_with_done(obs_of(b))
    assert done.tolist() == [[True], [False]]
    policy.select_action(obs_of(b))
    assert policy.done.tolist() == [True, False]
    policy.reset()
    assert policy.done is None
    plain = build()
    plain.eval().select_action(obs_of(batch_for(plain.config)))
    assert plain.done is None  # a policy without the token never says so


# --- images -------------------------------------------------------------------------------------------
def test_cached_lite0_maps_give_the_loss_of_live_images():
    """The loader's frame cache (frame_transforms) hands compute_loss float16-rounded Lite0 maps: the same
    loss as encoding the uint8 frames in the policy."""
    policy = build()
    b = batch_for(policy.config)
    transforms = policy.frame_transforms()
    assert sorted(transforms) == list(CAMS)
    cached = dict(b)
    for k in CAMS:
        maps = transforms[k](b[k][:, 0].numpy())  # what the loader stores per frame: float16 [N, C, g, g]
        assert maps.dtype == np.float16
        cached[k] = torch.from_numpy(maps).float()[:, None]
    torch.manual_seed(0)
    live, _ = policy.compute_loss(b)
    torch.manual_seed(0)
    from_cache, _ = policy.compute_loss(cached)
    torch.testing.assert_close(from_cache, live)
    assert any(k.startswith("image_encoder.trunk.") for k in policy.state_dict())  # frozen Lite0: in the checkpoint
    assert not any(p.requires_grad for p in policy.image_encoder.parameters())  # and out of the optimiser
    assert build(freeze_vision=False).frame_transforms() == {}  # a fine-tuned encoder cannot be cached
    with pytest.raises(ValueError, match="cached Lite0 maps"):
        bad = dict(cached)
        bad[CAMS[0]] = bad[CAMS[0]][..., :1]
        policy.compute_loss(bad)


def test_vision_tower_frozen_or_fine_tuned():
    frozen = build()
    b = batch_for(frozen.config)
    assert all(not p.requires_grad for p in frozen.image_encoder.parameters())
    tuned = build(freeze_vision=False)
    loss, _ = tuned.compute_loss(b)
    loss.backward()
    assert tuned.image_encoder.trunk[0].weight.grad is not None
    builtin = build(vision_tower="builtin", patch_size=8, vision_width=32, vision_depth=1, vision_heads=2)
    assert all(not p.requires_grad for p in builtin.vlm.vision_parameters())
    builtin.compute_loss(b)[0].backward()
    assert builtin.vlm.model.model.connector.modality_projection.proj.weight.grad is not None
    tuned_builtin = build(vision_tower="builtin", freeze_vision=False, patch_size=8, vision_width=32,
                          vision_depth=1, vision_heads=2)
    tuned_builtin.compute_loss(b)[0].backward()
    assert all(p.grad is not None for p in tuned_builtin.vlm.vision_parameters())


# --- co-training ---------------------------------------------------------------------------------------
def test_mixed_batches_train_on_actions_and_text_answers_together():
    policy = build()
    robot = batch_for(policy.config, B=2)
    g = torch.Generator().manual_seed(5)
    qa = [("where is the red ball?", "(0.42, 0.61)"), ("is the drawer open?", "yes")]
    mixed = dict(robot)
    for k in CAMS:
        mixed[mixture_key(1, k)] = torch.randint(0, 256, (2, 1, 3, 32, 32), dtype=torch.uint8, generator=g)
    mixed[mixture_key(1, "task")] = [vl_task(q, a) for q, a in qa]
    loss, logs = policy.compute_loss(mixed)
    assert {"action_loss", "action_accuracy", "vl_loss"} <= set(logs)
    assert VL_PROMPT.format(question="is the drawer open?") == "In: is the drawer open?\nOut:"
    _, robot_logs = policy.compute_loss(robot)
    assert abs(logs["action_loss"] - robot_logs["action_loss"]) < 1e-4  # padding to the longer text changes nothing
    # the text answers are learnable through the same loss and come back from answer()
    first, last, _ = overfit(policy, mixed, steps=80, lr=3e-3)
    assert last < 0.1 * first
    policy.eval()
    images = {k: mixed[mixture_key(1, k)][:, 0] for k in CAMS}
    assert policy.answer(images, [q for q, _ in qa]) == [a for _, a in qa]


def test_film_makes_the_image_tokens_depend_on_the_instruction():
    """film=hashed: the Lite0 maps are modulated by the instruction before the projector (the identity at
    init); after a training step the same images give other tokens for other words; the VQA part is
    modulated by its question, never by its answer; refused without instructions or with the builtin tower."""
    policy = build(film="hashed")
    b = batch_for(policy.config, B=2)
    images = {k: b[k][:1].expand(2, -1, -1, -1, -1) for k in CAMS}  # one scene, two instructions
    two = ["reach the red ball", "reach the blue ball"]
    plain = build()
    assert torch.allclose(policy.image_tokens(images, two), plain.image_tokens(images))  # identity at init
    loss, _ = policy.compute_loss(b)
    loss.backward()
    with torch.no_grad():
        for p in policy.film.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tokens = policy.image_tokens(images, two)
    assert not torch.allclose(tokens[0], tokens[1])
    seen = []
    policy.image_tokens = lambda imgs, tasks=None: seen.append(list(tasks)) or RT2Policy.image_tokens(policy, imgs, tasks)
    mixed = dict(b)
    for k in CAMS:
        mixed[mixture_key(1, k)] = b[k]
    mixed[mixture_key(1, "task")] = [vl_task("what colour is the ball?", "red")] * 2
    policy.compute_loss(mixed)
    assert seen == [b["task"], ["what colour is the ball?"] * 2]
    with pytest.raises(ValueError, match="needs each sample's instruction"):
        RT2Policy.image_tokens(policy, images)
    with pytest.raises(ValueError, match="film is 'hashed'.*vision_tower 'lite0'"):
        RT2Config(**{**SMALL, "film": "hashed", "vision_tower": "builtin"})
    with pytest.raises(ValueError, match="film is 'bert'"):
        RT2Config(**{**SMALL, "film": "bert"})


# --- LoRA ------------------------------------------------------------------------------------------------
def test_lora_trains_the_adapters_and_the_action_rows_only():
    policy = build(finetune="lora", lora_rank=4)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any(n.startswith("projector") for n in trainable)
    assert not any("text_model.layers" in n and "lora_" not in n for n in trainable)
    emb = policy.vlm.model.get_input_embeddings().weight
    before = emb.detach().clone()
    b = batch_for(policy.config)
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0)
    policy.compute_loss(b)[0].backward()
    opt.step()
    ids = list(policy.action_block.ids)
    others = [i for i in range(emb.shape[0]) if i not in ids]
    assert torch.equal(emb[others], before[others]) and not torch.equal(emb[ids], before[ids])


# --- bad input ---------------------------------------------------------------------------------------------
def test_bad_input_names_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="unknown VLM class 'llava'"):
        RT2Config(vlm_family="llava")
    with pytest.raises(FileNotFoundError, match="not a directory; expected a local model directory"):
        RT2Policy(RT2Config(**{**SMALL, "vlm_weights": str(tmp_path / "nowhere")}), features(), STATS)
    # a directory whose weights do not match its config.json
    vlm = build_vlm(VLMConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=1, vision_heads=2,
                              text_width=64, text_depth=1, text_heads=2, context_length=128))
    vlm.save_pretrained(tmp_path / "vlm")
    from safetensors.torch import load_file, save_file
    weights = load_file(tmp_path / "vlm" / "model.safetensors")
    key = next(k for k in weights if k.endswith("mlp.up_proj.weight"))
    weights[key] = torch.zeros(weights[key].shape[0] + 1, weights[key].shape[1])
    save_file(weights, tmp_path / "vlm" / "model.safetensors")
    with pytest.raises(ValueError, match=r"mismatched tensors \(1\)"):
        RT2Policy(RT2Config(**{**SMALL, "vlm_weights": str(tmp_path / "vlm")}), features(), STATS)
    (tmp_path / "vlm" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights; expected one of"):
        RT2Policy(RT2Config(**{**SMALL, "vlm_weights": str(tmp_path / "vlm")}), features(), STATS)
    policy = build(context_length=64).eval()
    obs = obs_of(batch_for(policy.config))
    obs["task"] = ["reach the red ball " * 20] * 3
    with pytest.raises(ValueError, match="exceed the model's context of 64 tokens.*instruction"):
        policy.predict_action_chunk(obs)
    with pytest.raises(ValueError, match="'quantile'"):
        RT2Config(normalization={"action": "mean_std"})
    with pytest.raises(ValueError, match="vision_tower 'lite0' feeds projected features"):
        RT2Config(vlm_family="paligemma")
    with pytest.raises(KeyError, match="needs at least one camera"):
        RT2Policy(RT2Config(**SMALL), {"action": Feature("float32", (A,))}, STATS)


def test_checkpoint_acts_like_the_policy_it_saved(tmp_path):
    policy = build(finetune="lora", lora_rank=4, terminate_token=True, horizon=2).eval()
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    b = batch_for(policy.config)
    a, d = policy.predict_action_chunk_with_done(obs_of(b))
    a2, d2 = loaded.predict_action_chunk_with_done(obs_of(b))
    assert torch.equal(a, a2) and torch.equal(d, d2)
