"""IndexTTS2 (github.com/index-tts/index-tts) for users who have it and its weights locally.

What its ``IndexTTS2.infer`` offers, exposed as options here:

- zero-shot voice cloning: ``voice`` is the speaker's reference recording (``spk_audio_prompt``);
- emotion: a second recording (``emo_voice`` -> ``emo_audio_prompt``, weighed by ``emo_alpha``), an
  8-way emotion vector (``emo_vector=happy:0.6,calm:0.2``, and per utterance ``Style.emotion``), or a description in words read by its QwenEmotion model (``emo_text``;
  ``emo_text=auto``: from the spoken text itself); ``use_random`` samples the emotion references;
- duration: ``duration_factor`` (0.5-2.0, > 1 slower; times ``Style.duration``) of IndexTTS-2.5
  (``version=2.5``). IndexTTS-2's release does not enable its duration control (its README): with
  ``version=2`` ``duration_factor`` must stay 1 and ``Style.duration`` is ignored;
- streaming: ``stream_return=True`` yields each text segment (``max_text_tokens_per_segment``) as it
  is done, so the first words play while the rest is synthesized.

Weights never download here: ``model_dir`` must hold ``config.yaml``, the checkpoints it names, and
the auxiliary models IndexTTS keeps in ``model_dir/hf_cache/`` (w2v-bert-2.0, campplus, BigVGAN; the
MaskGCT semantic codec for version 2), which IndexTTS's own ``ensure_models_available(model_dir)``
fetches once on a machine with internet. Missing any: ``SpeechError`` naming it, before IndexTTS is
imported. The hub is switched to offline mode (``HF_HUB_OFFLINE=1``) while the model loads.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from policystack.interaction.speaker import EMOTIONS, Speaker, SpeechError, Style, parse_emotion, to_int16

SAMPLE_RATE = 22050  # IndexTTS2's BigVGAN output
MODULES = {"2": "indextts.infer_v2", "2.5": "indextts.infer_v2_5"}
# what each version loads from model_dir/hf_cache (IndexTTS falls back to downloading anything missing)
AUX_FILES = {
    "w2v_bert": "hf_cache/w2v-bert-2.0",
    "semantic_codec": "hf_cache/semantic_codec_model.safetensors",
    "campplus": "hf_cache/campplus_cn_common.bin",
    "bigvgan": "hf_cache/bigvgan",
}
AUX_NEEDED = {"2": ("w2v_bert", "semantic_codec", "campplus", "bigvgan"), "2.5": ("w2v_bert", "campplus", "bigvgan")}


@dataclass
class IndexTTSOptions:
    model_dir: str = ""  # IndexTTS's checkpoints directory (config.yaml, weights, hf_cache/)
    voice: str = ""  # the speaker's reference recording (wav): IndexTTS2 speaks in this voice
    version: str = "2"  # "2" (indextts.infer_v2) or "2.5" (indextts.infer_v2_5: multilingual, duration)
    lang: str = "EN"  # 2.5 only: EN, ZH, JA, ES, ...
    device: str = ""  # "": IndexTTS's choice (cuda:0, xpu, mps, else cpu)
    half: bool = False  # fp16 (version 2) / bf16 (2.5)
    emo_voice: str = ""  # a recording whose emotion to take (emo_audio_prompt)
    emo_alpha: float = 1.0  # how much of it (0-1)
    emo_vector: str = ""  # default emotion vector, "happy:0.6,calm:0.2" (Style.emotion overrides it)
    emo_text: str = ""  # an emotion described in words (QwenEmotion, in model_dir); "auto": the text's own
    use_random: bool = False
    duration_factor: float = 1.0  # 2.5: > 1 slower, times Style.duration
    interval_silence_ms: int = 200  # silence between segments
    max_text_tokens_per_segment: int = 120

    def __post_init__(self):
        if not self.model_dir or not self.voice:
            raise ValueError("indextts needs model_dir= (IndexTTS's checkpoints directory) and voice= (a reference "
                             "recording of the voice to speak in, .wav)")
        if self.version not in MODULES:
            raise ValueError(f"version={self.version!r}: expected one of {', '.join(MODULES)}")
        if not 0.5 <= self.duration_factor <= 2.0:
            raise ValueError(f"duration_factor={self.duration_factor}: IndexTTS-2.5 takes 0.5-2.0")
        if self.version == "2" and self.duration_factor != 1.0:
            raise ValueError(f"duration_factor={self.duration_factor}: IndexTTS-2's release does not enable "
                             "duration control; use version=2.5 or leave duration_factor=1")
        if not 0.0 <= self.emo_alpha <= 1.0:
            raise ValueError(f"emo_alpha={self.emo_alpha}: expected 0-1")
        parse_emotion(self.emo_vector, "emo_vector")


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "USE_MODELSCOPE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", USE_MODELSCOPE="false")
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class IndexTTSSpeaker(Speaker):
    name = "indextts"
    config_class = IndexTTSOptions

    def __init__(self, config: IndexTTSOptions):
        self.config = c = config
        self.sample_rate = SAMPLE_RATE
        model_dir = Path(c.model_dir)
        if not (model_dir / "config.yaml").is_file():
            raise SpeechError(f"indextts: no IndexTTS weights in model_dir={model_dir} ({model_dir / 'config.yaml'} "
                              "not found; the index-tts README says how to get the checkpoints)")
        aux = {k: model_dir / AUX_FILES[k] for k in AUX_NEEDED[c.version]}
        missing = [str(p) for p in aux.values() if not p.exists() or (p.is_dir() and not any(p.iterdir()))]
        if missing:
            raise SpeechError(f"indextts: auxiliary models missing: {', '.join(missing)} (IndexTTS's "
                              "indextts.utils.model_download.ensure_models_available(model_dir) fetches them "
                              "once, on a machine with internet; policystack never downloads)")
        for what, path in (("voice", c.voice), ("emo_voice", c.emo_voice)):
            if path and not Path(path).is_file():
                raise SpeechError(f"indextts: {what}={path} not found (expected a .wav recording)")
        try:
            module = importlib.import_module(MODULES[c.version])
        except ImportError as e:
            raise SpeechError(f"indextts: cannot import {MODULES[c.version]} ({e}); install IndexTTS from "
                              "github.com/index-tts/index-tts") from None
        accepts = inspect.signature(module.IndexTTS2).parameters
        kw = {"cfg_path": str(model_dir / "config.yaml"), "model_dir": str(model_dir),
              ("use_fp16" if c.version == "2" else "use_bf16"): c.half}
        if c.device:
            kw["device"] = c.device
        if "use_qwen_emo" in accepts:
            kw["use_qwen_emo"] = bool(c.emo_text)
        if "aux_paths" in accepts:  # given, IndexTTS does not go looking (or downloading) itself
            kw["aux_paths"] = {k: str(p) for k, p in aux.items()}
        try:
            with _hub_offline():
                self.tts = module.IndexTTS2(**kw)
        except Exception as e:
            raise SpeechError(f"indextts: IndexTTS2 failed to load from {model_dir}: {type(e).__name__}: {e}") from None
        self._infer_args = set(inspect.signature(self.tts.infer).parameters)
        self._emotion = parse_emotion(c.emo_vector, "emo_vector")

    def _kwargs(self, text: str, style: Style | None) -> dict:
        c = self.config
        kw = dict(spk_audio_prompt=c.voice, text=text, output_path=None, emo_alpha=c.emo_alpha,
                  use_random=c.use_random, interval_silence=c.interval_silence_ms,
                  max_text_tokens_per_segment=c.max_text_tokens_per_segment, stream_return=True)
        emotion = (style.emotion if style and style.emotion else None) or self._emotion
        if emotion:
            kw["emo_vector"] = [float(emotion.get(e, 0.0)) for e in EMOTIONS]
        elif c.emo_text:
            kw.update(use_emo_text=True, emo_text=None if c.emo_text == "auto" else c.emo_text)
        elif c.emo_voice:
            kw["emo_audio_prompt"] = c.emo_voice
        if c.version == "2.5":
            duration = c.duration_factor * (style.duration if style else 1.0)
            kw.update(lang=c.lang, duration_factor=min(2.0, max(0.5, duration)))
        return {k: v for k, v in kw.items() if k in self._infer_args}

    def stream(self, text: str, style: Style | None = None) -> Iterator[np.ndarray]:
        out = self.tts.infer(**self._kwargs(text, style))
        if isinstance(out, tuple):  # a release without streaming: (sample_rate, int16 [n, 1])
            yield to_int16(out[1], 1.0)
            return
        for wav in out or ():  # torch [1, n] per segment and the silence after it, in int16 units
            yield to_int16(wav, 1.0)
