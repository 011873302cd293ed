"""perception/vlm.py on CPU: load time (SmolLM2 conversion vs cached copy) and encode / forward /
generate latency for the tiny and the smollm2-grafted SmolVLM, beside transformers' own path.

Peers in the same run: ``SmolVLMProcessor`` (without image splitting, the same token layout, a test
checks it) for ``encode``, and the bare ``SmolVLMForConditionalGeneration`` called on the processor's
output for ``forward`` / ``generate``. Inputs are what a robot step gives: one uint8 96x96 frame
(the tabletop suite's camera size, resized to the model's 224 px) and an RT-2-style prompt.

    .venv/bin/python benchmarks/bench_vlm.py [--calls 20] [--threads 1] [--no-convert] [--no-write]

``--no-convert`` skips the first-use conversion row (it converts into a temporary cache directory,
about a minute). The table goes to docs/benchmarks.md between ``<!-- BEGIN bench_vlm -->`` and
``<!-- END bench_vlm -->``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from policystack.perception.vlm import VLMConfig, build_vlm, smollm2_dir  # noqa: E402

PROMPT = "In: What action should the robot take to pick up the red block and put it in the bowl?\nOut:"
SIZE = 96


def seconds(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


@torch.no_grad()
def time_calls(fn, calls: int, warmup: int = 2) -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    frames = [torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8, generator=g) for _ in range(calls + warmup)]
    for f in frames[:warmup]:
        fn(f)
    out = []
    for f in frames[warmup:]:
        t0 = time.perf_counter()
        fn(f)
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1e3


def processor_for(vlm):
    """transformers' own SmolVLM processor for this model: no image splitting, the model's image size."""
    from transformers import SmolVLMImageProcessor, SmolVLMProcessor
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    s = vlm.image_size
    image_processor = SmolVLMImageProcessor(do_image_splitting=False, size={"longest_edge": s},
                                            max_image_size={"longest_edge": s})
    return SmolVLMProcessor(image_processor=image_processor, tokenizer=vlm.tokenizer,
                            video_processor=SmolVLMVideoProcessor(), image_seq_len=vlm.tokens_per_image)


def latency_rows(name: str, vlm, calls: int) -> list[str]:
    proc = processor_for(vlm)
    model = vlm.model

    def hf_inputs(frame):
        out = proc(text=["<image>" + PROMPT], images=[[frame[0].permute(1, 2, 0).numpy()]], return_tensors="pt")
        out.pop("token_type_ids", None)  # the byte tokenizer returns them; SmolVLM takes none
        return out

    def ours(frame):
        return vlm.encode([PROMPT], frame)

    n_tokens = vlm.encode([PROMPT], torch.zeros(1, 3, SIZE, SIZE, dtype=torch.uint8)).input_ids.shape[1]
    actions = vlm.add_tokens([f"<act_{i}>" for i in range(256)])
    rows = []

    def row(what, ms):
        rows.append(f"| {name} | {what} | {len(ms)} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} | "
                    f"{ms.mean():.1f} |")

    row("`encode` (ours: torch resize + normalise, ids by concatenation)", time_calls(ours, calls))
    row("`SmolVLMProcessor` (peer)", time_calls(hf_inputs, calls))
    row("`forward` (ours, from uint8 frame)", time_calls(lambda f: vlm(vlm.encode([PROMPT], f)), calls))
    row("bare model forward on the processor's output (peer)",
        time_calls(lambda f: model(**hf_inputs(f)), calls))
    row("`generate` 8 tokens (ours)",
        time_calls(lambda f: vlm.generate([PROMPT], f, max_new_tokens=8, stop_at_eos=False), calls))
    row("bare `model.generate` 8 tokens on the processor's output (peer)",
        time_calls(lambda f: model.generate(**hf_inputs(f), max_new_tokens=8, min_new_tokens=8, do_sample=False),
                   calls))
    row("`generate` 7 action tokens, constrained to 256 added ids (RT-2 use)",
        time_calls(lambda f: vlm.generate([PROMPT], f, max_new_tokens=7, allowed_token_ids=actions,
                                          stop_at_eos=False), calls))
    params = sum(p.numel() for p in vlm.parameters())
    rows.append(f"| {name} | ({params / 1e6:.1f}M params, {vlm.tokens_per_image} image tokens, "
                f"{n_tokens} prompt tokens with the image) | | | | |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20, help="timed calls per latency row")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine two threads contend with other jobs)")
    ap.add_argument("--no-convert", action="store_true", help="skip timing the first-use GGUF conversion")
    ap.add_argument("--no-write", action="store_true", help="print the tables only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]

    load = []
    if not args.no_convert:
        with tempfile.TemporaryDirectory() as tmp:
            s, _ = seconds(lambda: smollm2_dir(tmp))
        load.append(f"| SmolLM2-135M-Instruct GGUF -> cached safetensors (first use only, `smollm2_dir`) | {s:.1f} |")
    smollm2_dir()  # the user's cache, converted once if absent (not timed)
    from transformers import LlamaForCausalLM

    s, _ = seconds(lambda: LlamaForCausalLM.from_pretrained(smollm2_dir(), local_files_only=True))
    load.append(f"| bare `LlamaForCausalLM.from_pretrained` of the cached copy (peer: the text model alone) | {s:.2f} |")
    s, smol = seconds(lambda: build_vlm(VLMConfig(weights="smollm2")))
    load.append(f"| `build_vlm(VLMConfig(weights='smollm2'))` from the cache (tokenizer, 135M weights, graft, "
                f"random vision tower, resize) | {s:.2f} |")
    s, tiny = seconds(lambda: build_vlm(VLMConfig()))
    load.append(f"| `build_vlm(VLMConfig())` (tiny, random init) | {s:.2f} |")

    rows = latency_rows("tiny", tiny, args.calls) + latency_rows("smollm2", smol, max(args.calls // 2, 5))
    load_after = os.getloadavg()[0]
    table = "\n".join([
        "## Vision-language model wrapper on CPU (`benchmarks/bench_vlm.py`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, no GPU, torch {torch.__version__}, "
        f"{args.threads} torch thread(s); 1-minute load average {load_before:.1f} before and {load_after:.1f} after "
        "(other jobs shared the cores: compare rows of one run only). Models: SmolVLM family at the default "
        "`VLMConfig` (224 px, patch 16, pixel shuffle 2 -> 49 image tokens; vision tower 256 wide x 4 layers); "
        "tiny = 256-wide 4-layer Llama text model with a byte tokenizer, smollm2 = SmolLM2-135M-Instruct grafted.",
        "",
        "| load step | seconds |",
        "|---|---:|",
        *load,
        "",
        "Batch 1, one new random uint8 96x96 frame per call, the RT-2 prompt "
        "\"In: What action should the robot take to ...?\\nOut:\", greedy decoding.",
        "",
        "| model | call | calls | p50 ms | p99 ms | mean ms |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
    ])
    print(table)
    if not args.no_write:
        write_section("bench_vlm", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
