"""Latency of the success detector's verdict (``DescriberPolicy.success_probability``: one forward pass,
the yes/no logits at the answer) against its peer, generating the answer in text with the same model
(``DescriberPolicy.answer``: greedy decoding until the end token), on the same frames, batch 1 (what
the daemon's detector process and eval do per frame) -> docs/benchmarks.md, section ``detector``.

    .venv/bin/python benchmarks/bench_detector.py --checkpoint runs/describer/checkpoints/last \\
        --data /tmp/endframes_heldout --frames 100 [--threads 1] [--no-write]

Both paths include the frozen Lite0 on the raw uint8 frames (no feature cache at inference). Also
reported: how often the generated text's first word agrees with the one-pass verdict at 0.5.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402


def percentiles(ts: list[float]) -> str:
    ms = np.asarray(ts) * 1e3
    return f"{np.percentile(ms, 50):.1f} / {np.percentile(ms, 90):.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="a describer checkpoint")
    ap.add_argument("--data", required=True, help="a `policystack endframes` dataset (its success examples)")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from policystack.datasets.vqa import split_vl_task
    from policystack.envs.vqa import SUCCESS_PREFIX, success_question
    from policystack.eval.commands import load_policy
    from policystack.eval.detector import success_examples

    det = load_policy(args.checkpoint, "describer").eval()
    ds, wanted = success_examples(args.data)
    picks = [wanted[i] for i in np.linspace(0, len(wanted) - 1, min(args.frames, len(wanted))).round().astype(int)]
    one_pass, generate, agree = [], [], 0
    for n, i in enumerate(picks):
        b = ds.get_batch([i])
        images = {k: b[k] for k in det.camera_keys}
        instruction = split_vl_task(b["task"][0])[0][len(SUCCESS_PREFIX):-1]
        t0 = time.perf_counter()
        p = float(det.success_probability(images, [instruction])[0])
        t1 = time.perf_counter()
        text = det.answer(images, [success_question(instruction)], max_new_tokens=4)[0]
        t2 = time.perf_counter()
        if n:  # the first call of each warms up
            one_pass.append(t1 - t0)
            generate.append(t2 - t1)
        agree += (text.split() or [""])[0] == ("yes" if p >= 0.5 else "no")
    md = (f"Success detector verdict per frame, batch 1, {args.threads} torch thread(s), checkpoint "
          f"`{args.checkpoint}` ({sum(p.numel() for p in det.parameters()) / 1e6:.1f}M parameters, cameras "
          f"{', '.join(det.camera_keys)}), {len(one_pass)} held-out frames of `{args.data}`; 2 CPU cores shared "
          "with other jobs, so compare the rows of this run, not absolute times.\n\n"
          "| path | p50 / p90 (ms) |\n|---|---|\n"
          f"| `success_probability` (one forward pass, yes/no logits) | {percentiles(one_pass)} |\n"
          f"| `answer` (greedy generation of the answer text, up to 4 tokens) | {percentiles(generate)} |\n\n"
          f"The generated answer's first word agreed with the one-pass verdict at 0.5 on {agree}/{len(picks)} frames.\n"
          f"Produced by `benchmarks/bench_detector.py --checkpoint {args.checkpoint} --data {args.data} "
          f"--frames {args.frames} --threads {args.threads}`.")
    print(md)
    if not args.no_write:
        print(f"wrote {write_section('detector', md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
