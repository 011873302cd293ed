"""The shared body of the two fake versions (see __init__)."""

from __future__ import annotations

import os
import re

import torch

SAMPLE_RATE = 22050
SAMPLES_PER_CHAR = 400  # a stand-in for the length of speech
CALLS: list[dict] = []  # every constructor and infer call, in order, for the tests to read
FAIL_AFTER_SEGMENTS: list[int | None] = [None]  # raise inside infer after this many segments


def construct(obj, version: str, kwargs: dict) -> None:
    cfg = kwargs["cfg_path"]
    if not os.path.isfile(cfg):  # the real one: OmegaConf.load(cfg_path)
        raise FileNotFoundError(cfg)
    w2v = os.path.join(kwargs["model_dir"], "hf_cache", "w2v-bert-2.0")
    if kwargs.get("aux_paths") is None and not os.path.isdir(w2v):
        raise RuntimeError("the fake would download here (ensure_models_available)")
    obj.qwen_emo = kwargs.get("use_qwen_emo")
    CALLS.append({"call": "init", "version": version, "kwargs": dict(kwargs),
                  "hub_offline": os.environ.get("HF_HUB_OFFLINE")})


def segments(text: str, max_tokens: int) -> list[str]:
    parts = [p for p in re.split(r"(?<=[.!?])\s+", text.strip()) if p]
    return parts or [text]


def generate(obj, version: str, kwargs: dict):
    CALLS.append({"call": "infer", "version": version, "kwargs": dict(kwargs)})
    if kwargs.get("use_emo_text") and not obj.qwen_emo:  # the real one raises this too
        raise RuntimeError("use_emo_text=True requires QwenEmotion, but it was not loaded at init")
    if not os.path.isfile(kwargs["spk_audio_prompt"]):
        raise FileNotFoundError(kwargs["spk_audio_prompt"])
    factor = kwargs.get("duration_factor", 1.0)
    silence = torch.zeros(1, int(SAMPLE_RATE * kwargs.get("interval_silence", 200) / 1000))
    wavs = []
    for i, seg in enumerate(segments(kwargs["text"], kwargs.get("max_text_tokens_per_segment", 120))):
        if FAIL_AFTER_SEGMENTS[0] is not None and i >= FAIL_AFTER_SEGMENTS[0]:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        n = int(len(seg) * SAMPLES_PER_CHAR * factor)
        t = torch.arange(n, dtype=torch.float32) / SAMPLE_RATE
        wav = torch.clamp(32767 * 0.3 * torch.sin(2 * torch.pi * 220 * t), -32767.0, 32767.0)[None]
        wavs.append(wav)
        if kwargs.get("stream_return"):
            yield wav
            yield silence
    if kwargs.get("stream_return"):
        return
    out = []
    for w in wavs:
        out += [w, silence]
    wav = torch.cat(out[:-1], dim=1) if out else torch.zeros(1, 0)
    yield (SAMPLE_RATE, wav.type(torch.int16).numpy().T)
