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
   BC inference process), one run per rate, with a speech load switched off and on every
   ``--window`` s in the same run (on a shared machine the other load drifts; interleaving puts both
   sides under the same drift). The load is the announcer's process set-up (niceness 10, 1 synthesis
   thread, off the loop's CPU) saying announcements back to back -- far more than a daemon's few per
   episode.

    python benchmarks/bench_speech.py [--duration 120] [--window 5] [--episodes 10] [--no-write]

Writes its tables between ``<!-- BEGIN bench_speech -->`` and ``<!-- END bench_speech -->`` in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
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
    from policystack.robot.config import load_robot_config

    loop_cpu = load_robot_config("sim").cpu  # where bench_daemon's loop row pins the loop; daemon run does this
    cfg = SpeechConfig(backend=backend, output="wav", out_dir=Path(out_dir), keep=5, avoid_cpu=loop_cpu)
    speaker, sink = start_speaking(cfg, [])
    ann = Announcer(speaker, sink)
    i = 0
    while True:
        if ann.pending() == 0:
            ann.say(Announcement(f"k{i % 2}", TEXTS[i % len(TEXTS)]))
            i += 1
        time.sleep(0.01)


def interleaved_row(rate: float, duration: float, ckpt: Path, tmp: Path, backend: str, window_s: float) -> dict:
    """One loop run of ``duration`` s with the speech load switched off and on (SIGSTOP / SIGCONT)
    every ``window_s``: each tick counts for the state the load was in (the first 0.25 s after a
    switch counts for neither), so slow changes of the machine's other load hit both sides alike."""
    speech = subprocess.Popen([sys.executable, __file__, "--child", "speech", "--backend", backend,
                               "--out", str(tmp / "load-wav")])
    time.sleep(5.0)  # import + voice load + warm-up
    os.kill(speech.pid, signal.SIGSTOP)
    marks = [(0, False)]  # (loop tick, speech on from there)
    due = [time.monotonic() + window_s]

    def switch(tick: int) -> None:
        if time.monotonic() >= due[0]:
            on = not marks[-1][1]
            os.kill(speech.pid, signal.SIGCONT if on else signal.SIGSTOP)
            marks.append((tick, on))
            due[0] += window_s

    try:
        d = loop_row(rate, duration, ckpt, tmp, each_chunk=switch)
    finally:
        os.kill(speech.pid, signal.SIGCONT)
        speech.kill()
        speech.wait()
    z = np.load(d["npz"])
    late, body, period = z["late"] * 1e6, z["body"] * 1e6, 1e6 / rate
    state = np.full(len(late), -1)
    guard = int(0.25 * rate)
    for (start, on), (end, _) in zip(marks, marks[1:] + [(len(late), None)]):
        state[min(start + guard, end):end] = int(on)
    out = {"rate": rate, "rt_refused": d["rt_refused"], "windows": len(marks)}
    for name, k in (("off", 0), ("on", 1)):
        sel = state == k
        out[name] = {"ticks": int(sel.sum()), "p50": float(np.percentile(late[sel], 50)),
                     "p99": float(np.percentile(late[sel], 99)), "max": float(late[sel].max()),
                     "overruns": int((late[sel] + body[sel] > period).sum()),
                     "body_p99": float(np.percentile(body[sel], 99))}
    print("loop", json.dumps(out), flush=True)
    return out


def tables(backends: list[dict], events: list[dict], loops: list[dict], duration: float, window_s: float, backend: str,
           load: tuple[float, float]) -> str:
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
              "(sim, BC with a decision per chunk, one 96x96 camera, policy worker on 1 torch thread): from the event (its telemetry stamp) to the "
              "first sample in the sink, queueing behind the announcement before it included; in brackets from "
              "the moment the announcer took it up.", "",
              "| backend | episode start p50 / max (ms) | result p50 / max (ms) | decision p50 / max (ms) | announcements |",
              "|---|---|---|---|---|"]

    def cell(d: dict) -> str:
        return "-" if not d["n"] else f"{d['p50']:.0f} / {d['max']:.0f} ({d['own_p50']:.0f}), n={d['n']}"

    for r in events:
        lines.append(f"| {r['backend']} | {cell(r['episode'])} | {cell(r['result'])} | {cell(r['decision'])} | {r['n']} |")
    lines += ["", f"Control-loop timing with speech off and on: bench_daemon's daemon-loop row ({duration:g} s per rate, "
              f"beside a CPU-bound BC inference process with torch on all {os.cpu_count()} cores, as bench_daemon runs it) with the speech load switched off "
              f"and on every {window_s:g} s (SIGSTOP / SIGCONT) in the same run; each tick counts for the state the "
              "load was in (the first 0.25 s after a switch for neither). The load is the announcer's process set-up "
              "(niceness 10, 1 synthesis thread, off the loop's CPU) saying announcements back to back -- far more "
              "than a daemon's few per episode. Overrun = lateness + body > one period.", "",
              "| rate | speech | ticks | period error p50 (us) | p99 (us) | max (us) | overruns | body p99 (us) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in loops:
        for name in ("off", "on"):
            d = r[name]
            label = "off" if name == "off" else f"on ({backend}, back to back)"
            lines.append(f"| {r['rate']:g} Hz | {label} | {d['ticks']} | {d['p50']:.1f} | {d['p99']:.1f} | "
                         f"{d['max']:.0f} | {d['overruns']} | {d['body_p99']:.0f} |")
    refused = sorted({x for r in loops for x in r["rt_refused"]})
    lines += ["", f"SCHED_FIFO + pinning: {'refused: ' + '; '.join(refused) if refused else 'granted'}. "
              "Run: `python benchmarks/bench_speech.py`."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=120.0, help="seconds per loop run (one per rate)")
    p.add_argument("--episodes", type=int, default=10, help="daemon episodes per backend")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="piper", help="the speech load of the loop rows")
    p.add_argument("--window", type=float, default=5.0, help="seconds between switching the speech load off / on")
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
        ckpt = make_checkpoint(tmp / "ckpt")
        loops = [interleaved_row(rate, a.duration, ckpt, tmp, a.backend, a.window) for rate in (500.0, 1000.0)]
    out = tables(backends, events, loops, a.duration, a.window, a.backend, (load0, os.getloadavg()[0]))
    print(out)
    if not a.no_write:
        write_section("bench_speech", out)


if __name__ == "__main__":
    main()
