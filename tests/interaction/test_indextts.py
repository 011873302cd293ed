"""The IndexTTS2 adapter at its boundary: a fake of IndexTTS's own module (its weights and GPU are not
here) with the real constructor / ``infer`` signatures (tests/interaction/fake_indextts)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from policystack.interaction.announcer import Announcement, Announcer
from policystack.interaction.audio import WavSink
from policystack.interaction.indextts import IndexTTSOptions, IndexTTSSpeaker
from policystack.interaction.speaker import EMOTIONS, SpeechError, Style, make_speaker

FAKE = Path(__file__).resolve().parent / "fake_indextts"


def _forget_indextts() -> None:
    for name in [m for m in sys.modules if m == "indextts" or m.startswith("indextts.")]:
        del sys.modules[name]


@pytest.fixture()
def fake(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    _forget_indextts()
    from indextts import _fake

    yield _fake
    _forget_indextts()  # the next test imports afresh (or not at all)


def model_dir(tmp_path: Path, version: str = "2") -> Path:
    d = tmp_path / f"checkpoints-{version}"
    (d / "hf_cache" / "w2v-bert-2.0").mkdir(parents=True)
    (d / "hf_cache" / "w2v-bert-2.0" / "config.json").write_text("{}")
    (d / "hf_cache" / "bigvgan").mkdir()
    (d / "hf_cache" / "bigvgan" / "bigvgan_generator.pt").write_bytes(b"w")
    for f in ("config.yaml", "hf_cache/campplus_cn_common.bin", "hf_cache/semantic_codec_model.safetensors"):
        (d / f).write_bytes(b"w")
    return d


def voice(tmp_path: Path) -> Path:
    p = tmp_path / "voice_01.wav"
    p.write_bytes(b"RIFF")
    return p


def speaker(tmp_path, version="2", **kw) -> IndexTTSSpeaker:
    return IndexTTSSpeaker(IndexTTSOptions(model_dir=str(model_dir(tmp_path, version)), voice=str(voice(tmp_path)),
                                           version=version, **kw))


def test_loads_offline_with_local_auxiliary_models_and_streams_segments(fake, tmp_path):
    s = speaker(tmp_path, half=True)
    init = fake.CALLS[0]
    assert init["version"] == "2" and init["hub_offline"] == "1"  # the hub was offline while it loaded
    kw = init["kwargs"]
    assert kw["cfg_path"].endswith("config.yaml") and kw["use_fp16"] is True and kw["use_qwen_emo"] is False
    assert set(kw["aux_paths"]) == {"w2v_bert", "semantic_codec", "campplus", "bigvgan"}
    assert all(Path(p).exists() for p in kw["aux_paths"].values())
    pieces = list(s.stream("Episode three. Pick up the red cube."))
    # two segments, each followed by its silence, as IndexTTS streams them
    assert [len(p) for p in pieces] == [len("Episode three.") * 400, 4410, len("Pick up the red cube.") * 400, 4410]
    assert all(p.dtype == np.int16 for p in pieces) and np.abs(pieces[0]).max() > 9000 and not pieces[1].any()
    call = fake.CALLS[1]["kwargs"]
    assert call["stream_return"] is True and call["output_path"] is None and call["spk_audio_prompt"].endswith(".wav")
    assert s.sample_rate == 22050


def test_emotion_vector_text_and_reference_are_passed_the_way_indextts_takes_them(fake, tmp_path):
    emo = tmp_path / "emo_sad.wav"
    emo.write_bytes(b"RIFF")
    s = speaker(tmp_path, emo_voice=str(emo), emo_alpha=0.7)
    s.synthesize("Hello.")
    assert fake.CALLS[-1]["kwargs"]["emo_audio_prompt"] == str(emo) and fake.CALLS[-1]["kwargs"]["emo_alpha"] == 0.7
    s.synthesize("Hello.", Style(emotion={"happy": 0.6, "calm": 0.2}))  # per utterance: a vector, in IndexTTS's order
    vec = fake.CALLS[-1]["kwargs"]["emo_vector"]
    assert vec == [0.6 if e == "happy" else 0.2 if e == "calm" else 0.0 for e in EMOTIONS]
    assert fake.CALLS[-1]["kwargs"]["emo_audio_prompt"] is None  # the vector wins over the reference
    s2 = speaker(tmp_path / "b", emo_text="auto")
    assert fake.CALLS[-1]["kwargs"]["use_qwen_emo"] is True  # QwenEmotion is loaded only when asked for
    s2.synthesize("Watch out!")
    assert fake.CALLS[-1]["kwargs"]["use_emo_text"] is True and fake.CALLS[-1]["kwargs"]["emo_text"] is None
    s3 = speaker(tmp_path / "c", emo_vector="afraid:0.5")
    s3.synthesize("Hm.")
    assert fake.CALLS[-1]["kwargs"]["emo_vector"][EMOTIONS.index("afraid")] == 0.5


def test_duration_control_of_indextts_2_5(fake, tmp_path):
    s = speaker(tmp_path, version="2.5", lang="EN", duration_factor=1.2)
    init = fake.CALLS[0]["kwargs"]
    assert init["use_bf16"] is False and "aux_paths" not in init  # 2.5 finds model_dir/hf_cache itself
    base = len(s.synthesize("Go."))
    slow = len(s.synthesize("Go.", Style(duration=1.5)))
    kw = fake.CALLS[-1]["kwargs"]
    assert kw["lang"] == "EN" and kw["duration_factor"] == pytest.approx(1.8)
    silence = 4410
    assert (slow - silence) / (base - silence) == pytest.approx(1.5, rel=0.01)  # the audio is 1.5x as long
    s.synthesize("Go.", Style(duration=4.0))
    assert fake.CALLS[-1]["kwargs"]["duration_factor"] == 2.0  # IndexTTS's range: 0.5-2.0


def test_indextts_2_has_no_duration_control(fake, tmp_path):
    with pytest.raises(ValueError, match="IndexTTS-2's release does not enable duration control"):
        IndexTTSOptions(model_dir="m", voice="v.wav", version="2", duration_factor=1.5)
    s = speaker(tmp_path)
    s.synthesize("Go.", Style(duration=1.5))
    assert "duration_factor" not in fake.CALLS[-1]["kwargs"]  # never smuggled into generation_kwargs


def test_a_release_without_streaming_still_speaks(fake, tmp_path, monkeypatch):
    from indextts import infer_v2

    class OldIndexTTS2(infer_v2.IndexTTS2):  # before stream_return (index-tts, September 2025)
        def infer(self, spk_audio_prompt, text, output_path, emo_audio_prompt=None, emo_alpha=1.0,
                  emo_vector=None, use_emo_text=False, emo_text=None, use_random=False, interval_silence=200,
                  verbose=False, max_text_tokens_per_segment=120, **generation_kwargs):
            return super().infer(spk_audio_prompt, text, output_path, emo_audio_prompt, emo_alpha, emo_vector,
                                 use_emo_text, emo_text, use_random, interval_silence, verbose,
                                 max_text_tokens_per_segment, False, **generation_kwargs)

    monkeypatch.setattr(infer_v2, "IndexTTS2", OldIndexTTS2)
    pieces = list(speaker(tmp_path).stream("One. Two."))
    assert len(pieces) == 1 and len(pieces[0]) == 4 * 400 + 4410 + 4 * 400


@pytest.mark.parametrize("breaks, message", [
    (lambda d, v: (d / "config.yaml").unlink(), "no IndexTTS weights in model_dir="),
    (lambda d, v: (d / "hf_cache" / "campplus_cn_common.bin").unlink(), "auxiliary models missing: .*campplus"),
    (lambda d, v: v.unlink(), "voice=.* not found"),
])
def test_missing_weights_or_voice_say_which_before_indextts_loads(fake, tmp_path, breaks, message):
    d, v = model_dir(tmp_path), voice(tmp_path)
    breaks(d, v)
    with pytest.raises(SpeechError, match=message):
        IndexTTSSpeaker(IndexTTSOptions(model_dir=str(d), voice=str(v)))
    assert fake.CALLS == []  # nothing was constructed, nothing could download


def test_not_installed_is_a_clear_error(tmp_path, monkeypatch):
    _forget_indextts()
    monkeypatch.setitem(sys.modules, "indextts", None)  # import indextts -> ImportError
    with pytest.raises(SpeechError, match="install IndexTTS from github.com/index-tts/index-tts"):
        speaker(tmp_path)


def test_options_are_checked(fake):
    with pytest.raises(ValueError, match="needs model_dir= .* and voice="):
        make_speaker("indextts", [])
    with pytest.raises(ValueError, match="version='3'"):
        IndexTTSOptions(model_dir="m", voice="v", version="3")
    with pytest.raises(ValueError, match="emo_vector='joy:1'"):
        IndexTTSOptions(model_dir="m", voice="v", emo_vector="joy:1")


def test_a_crash_mid_sentence_is_one_log_line_and_the_next_announcement_is_spoken(fake, tmp_path):
    s = speaker(tmp_path)
    lines: list[str] = []
    ann = Announcer(s, WavSink(tmp_path / "wav"), log=lines.append)
    fake.FAIL_AFTER_SEGMENTS[0] = 1  # the second segment dies on the GPU
    ann.say(Announcement("episode", "Episode one. Pick up the cube."))
    assert ann.close(timeout=60) is True
    assert len(lines) == 1 and "indextts failed while saying 'Episode one. Pick up the cube.'" in lines[0]
    assert "RuntimeError: CUDA error" in lines[0] and list((tmp_path / "wav").glob("*.wav")) == []
    fake.FAIL_AFTER_SEGMENTS[0] = None
    ann = Announcer(s, WavSink(tmp_path / "wav"), log=lines.append)
    ann.say(Announcement("episode", "Episode two."))
    assert ann.close(timeout=60) is True and ann.spoken == 1 and len(lines) == 1
    assert len(list((tmp_path / "wav").glob("*.wav"))) == 1
