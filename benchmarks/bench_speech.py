"""Speech: real-time factor per backend, time from a daemon event to the first audio sample, and the
control loop's timing with speech on against off.

1. Backends (one process, one after another, each warmed up): every announcement text below said
   ``--repeats`` times; real-time factor = synthesis time / audio length, and the time from asking to
   the first piece of audio. Piper runs as the announcer runs it (onnxruntime on 1 thread), and, as
   the peer, the way ``PiperVoice.load`` sets it up (onnxruntime's default: every core).
2. Event -> first audio sample: ``policystack daemon run`` (sim, the tests' small BC policy, a
   decision per chunk) with ``speech=BACKEND speech.output=wav``; the announcer's stats give, per
   announcement, the event's time (the telemetry message's stamp: episode starts and results are
   published the moment they happen) and the moment its first sample reached the sink.
3. Loop timing: bench_daemon's daemon-loop row (sim driver, interpolation, safety, beside a CPU-bound
   BC inference process) without and with speech: the speech process is the announcer's set-up
   (niceness 10, 1 synthesis thread) saying announcements back to back for the whole row -- far more
   than a daemon's few announcements per episode.

    python benchmarks/bench_speech.py [--duration 30] [--pairs 2] [--episodes 10] [--no-write]

Writes its tables between ``<!-- BEGIN bench_speech -->`` and ``<!-- END bench_speech -->`` in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402
from bench_daemon import loop_row, make_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-speech-token-0123456789"
TEXTS = ["Episode 3. Pick up the red cube and put it in the bowl.", "Episode 3 succeeded.",
         "Holding: no fresh command from the policy.", "Emergency stop.",
         "Run over: 8 of 10 episodes succeeded.",
         "The cube is behind the bowl, so I will go around the bowl on the left and grasp it from above."]


def backend_rows(repeats: int) -> list[dict]:
    from policystack.interaction.speaker import make_speaker

    rows = []
    cores = os.cpu_count() or 1
    variants = [("piper", [], "piper, 1 thread (the announcer's)"),
                ("piper", [f"threads={cores}"], f"piper, {cores} threads (onnxruntime's default, as PiperVoice.load)")]
    if shutil.which("espeak-ng"):
        variants.append(("espeak", [], "espeak-ng"))
    for backend, options, name in variants:
        t0 = time.perf_counter()
        speaker = make_speaker(backend, options)
        load = time.perf_counter() - t0
        speaker.synthesize("Ready.")
        first, synth, audio = [], 0.0, 0.0
        for _ in range(repeats):
            for text in TEXTS:
                t0 = time.perf_counter()
                n = 0
                for piece in speaker.stream(text):
                    if n == 0:
                        first.append(time.perf_counter() - t0)
                    n += len(piece)
                synth += time.perf_counter() - t0
                audio += n / speaker.sample_rate
        rows.append({"name": name, "load_s": load, "rtf": synth / audio, "audio_s": audio,
                     "first_p50": float(np.percentile(first, 50)), "first_max": float(np.max(first)),
                     "n": len(first)})
        print("backend", json.dumps(rows[-1]), flush=True)
        speaker.close()
    return rows


def event_rows(ckpt: Path, tmp: Path, episodes: int) -> list[dict]:
    rows = []
    backends = ["piper"] + (["espeak"] if shutil.which("espeak-ng") else [])
    env = {**os.environ, "POLICYSTACK_DAEMON_TOKEN": TOKEN,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "interaction"), str(ROOT),
                                          os.environ.get("PYTHONPATH", "")])}
    for backend in backends:
        stats = tmp / f"stats-{backend}.jsonl"
        cmd = [sys.executable, "-m", "policystack.cli", "daemon", "run", "robot=sim", f"checkpoint={ckpt}",
               "task=Reach", f"episodes={episodes}", "max_steps=30", "image_size=96", "port=0",
               "import=speech_test_policies", f"speech={backend}", "speech.output=wav",
               f"speech.out_dir={tmp / ('wav-' + backend)}", f"speech.stats={stats}", "speech.queue=8"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        said = [json.loads(line) for line in stats.read_text().splitlines()]
        row = {"backend": backend, "n": len(said)}
        for kind in ("episode", "result", "decision"):
            lat = [(s["t_first_sample"] - s["t_event"]) * 1e3 for s in said if s["kind"] == kind]
            own = [(s["t_first_sample"] - s["t_start"]) * 1e3 for s in said if s["kind"] == kind]
            row[kind] = {"n": len(lat), "p50": float(np.percentile(lat, 50)) if lat else None,
                         "max": float(np.max(lat)) if lat else None,
                         "own_p50": float(np.percentile(own, 50)) if own else None}
        rows.append(row)
        print("events", json.dumps(row), flush=True)
    return rows


def child_speech(backend: str, out_dir: str) -> None:
    """The announcer's process set-up, saying announcements back to back until killed."""
    from policystack.interaction.announcer import Announcement, Announcer, SpeechConfig, start_speaking

    speaker, sink = start_speaking(SpeechConfig(backend=backend, output="wav", out_dir=Path(out_dir), keep=5), [])
    ann = Announcer(speaker, sink)
    i = 0
    while True:
        if ann.pending() == 0:
            ann.say(Announcement(f"k{i % 2}", TEXTS[i % len(TEXTS)]))
            i += 1
        time.sleep(0.01)


def loop_rows(ckpt: Path, tmp: Path, duration: float, backend: str, pairs: int) -> list[tuple[str, float, dict]]:
    rows = []
    for rate in [500.0] * pairs + [1000.0] * pairs:
        rows.append(("off", rate, loop_row(rate, duration, ckpt, tmp)))
        print("loop off", rate, json.dumps(rows[-1][2]), flush=True)
        speech = subprocess.Popen([sys.executable, __file__, "--child", "speech", "--backend", backend,
                                   "--out", str(tmp / "load-wav")])
        time.sleep(3.0)  # import + voice load + warm-up
        try:
            rows.append((f"on ({backend}, back to back)", rate, loop_row(rate, duration, ckpt, tmp)))
        finally:
            speech.kill()
            speech.wait()
        print("loop on", rate, json.dumps(rows[-1][2]), flush=True)
    return rows


def tables(backends: list[dict], events: list[dict], loops: list, duration: float, load: tuple[float, float]) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [f"Speech on this machine ({os.cpu_count()} cores, {cpu}, Python {platform.python_version()}; 1-minute "
             f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end: other work shares the CPUs). "
             "Audio goes to WAV files (no sound device here).", "",
             f"Backends: {len(TEXTS)} announcement texts, each said {backends[0]['n'] // len(TEXTS)} times after a "
             "warm-up. Real-time factor = synthesis time / audio length (lower is faster); first piece = from "
             "asking to the first sentence's audio.", "",
             "| backend | load (s) | real-time factor | first piece p50 (ms) | max (ms) | audio synthesized (s) |",
             "|---|---|---|---|---|---|"]
    for r in backends:
        lines.append(f"| {r['name']} | {r['load_s']:.2f} | {r['rtf']:.3f} | {r['first_p50'] * 1e3:.0f} | "
                     f"{r['first_max'] * 1e3:.0f} | {r['audio_s']:.1f} |")
    lines += ["", "Event -> first audio sample through `policystack daemon run ... speech=BACKEND speech.output=wav` "
              "(sim, BC with a decision per chunk, one 96x96 camera): from the event (its telemetry stamp) to the "
              "first sample in the sink, queueing behind the announcement before it included; in brackets from "
              "the moment the announcer took it up.", "",
              "| backend | episode start p50 / max (ms) | result p50 / max (ms) | decision p50 / max (ms) | announcements |",
              "|---|---|---|---|---|"]

    def cell(d: dict) -> str:
        return "-" if not d["n"] else f"{d['p50']:.0f} / {d['max']:.0f} ({d['own_p50']:.0f}), n={d['n']}"

    for r in events:
        lines.append(f"| {r['backend']} | {cell(r['episode'])} | {cell(r['result'])} | {cell(r['decision'])} | {r['n']} |")
    lines += ["", f"Control-loop timing with speech off and on (bench_daemon's daemon-loop row, {duration:g} s each, "
              "beside a CPU-bound BC inference process, as bench_daemon runs it; rows alternate off / on):", "",
              "| speech | rate | period error p50 (us) | p99 (us) | max (us) | missed deadlines | body p99 (us) |",
              "|---|---|---|---|---|---|---|"]
    for name, rate, d in loops:
        lines.append(f"| {name} | {rate:g} Hz | {d['p50']:.1f} | {d['p99']:.1f} | {d['max']:.0f} | "
                     f"{d['misses']} / {d['ticks']} | {d['body_p99']:.0f} |")
    refused = sorted({r for _, _, d in loops for r in d["rt_refused"]})
    lines += ["", f"SCHED_FIFO + pinning: {'refused: ' + '; '.join(refused) if refused else 'granted'}. "
              "Run: `python benchmarks/bench_speech.py`."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=30.0, help="seconds per loop row")
    p.add_argument("--episodes", type=int, default=10, help="daemon episodes per backend")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="piper", help="the speech load of the loop rows")
    p.add_argument("--pairs", type=int, default=2, help="off/on loop row pairs per rate")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", choices=["speech"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child == "speech":
        return child_speech(a.backend, a.out)
    os.environ.setdefault("MUJOCO_GL", "egl")
    load0 = os.getloadavg()[0]
    backends = backend_rows(a.repeats)
    with tempfile.TemporaryDirectory(prefix="bench-speech-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as td:
        tmp = Path(td)
        sys.path.insert(0, str(ROOT / "tests" / "robot"))
        from daemon_test_policies import make_checkpoint as small_checkpoint

        sys.path.insert(0, str(ROOT / "tests" / "interaction"))
        from speech_test_policies import make_deciding_checkpoint

        events = event_rows(make_deciding_checkpoint(small_checkpoint(tmp / "deciding", image_size=96)), tmp, a.episodes)
        loops = loop_rows(make_checkpoint(tmp / "ckpt"), tmp, a.duration, a.backend, a.pairs)
    out = tables(backends, events, loops, a.duration, (load0, os.getloadavg()[0]))
    print(out)
    if not a.no_write:
        write_section("bench_speech", out)


if __name__ == "__main__":
    main()
