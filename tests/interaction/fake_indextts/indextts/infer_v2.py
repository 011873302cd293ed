"""Fake ``indextts.infer_v2`` (IndexTTS-2): the real signatures, see the package docstring."""

from indextts import _fake


class IndexTTS2:
    def __init__(
            self, cfg_path="checkpoints/config.yaml", model_dir="checkpoints", use_fp16=False, device=None,
            use_cuda_kernel=None, use_deepspeed=False, use_accel=False, use_torch_compile=False,
            use_qwen_emo=True, aux_paths=None
    ):
        _fake.construct(self, "2", dict(cfg_path=cfg_path, model_dir=model_dir, use_fp16=use_fp16, device=device,
                                        use_qwen_emo=use_qwen_emo, aux_paths=aux_paths))

    def infer(self, spk_audio_prompt, text, output_path,
              emo_audio_prompt=None, emo_alpha=1.0,
              emo_vector=None,
              use_emo_text=False, emo_text=None, use_random=False, interval_silence=200,
              verbose=False, max_text_tokens_per_segment=120, stream_return=False, more_segment_before=0,
              **generation_kwargs):
        kw = dict(spk_audio_prompt=spk_audio_prompt, text=text, output_path=output_path,
                  emo_audio_prompt=emo_audio_prompt, emo_alpha=emo_alpha, emo_vector=emo_vector,
                  use_emo_text=use_emo_text, emo_text=emo_text, use_random=use_random,
                  interval_silence=interval_silence, max_text_tokens_per_segment=max_text_tokens_per_segment,
                  stream_return=stream_return, **generation_kwargs)
        gen = _fake.generate(self, "2", kw)
        return gen if stream_return else list(gen)[0]
