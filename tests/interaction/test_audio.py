"""Where speech goes: WAV files (atomic, pruned) and a player process on the sound device. There is no
sound device here, so the player is a stand-in program reading the PCM stream (the boundary)."""

from __future__ import annotations

import os
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from policystack.interaction import audio
from policystack.interaction.audio import PlayerSink, WavSink, find_player, open_sink
from policystack.interaction.speaker import SpeechError


def samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n).astype(np.int16)


def read_wav(path: str | Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2")


def test_wav_sink_writes_each_utterance_whole_and_keeps_the_newest(tmp_path):
    sink = WavSink(tmp_path / "out", keep=2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.wav").write_bytes(b"a user's file")
    written = []
    for i in range(3):
        sink.begin(f"Episode {i}: pick up the red cube!", 22050)
        a, b = samples(1000, i), samples(500, i + 10)
        sink.write(a)
        sink.write(b)
        path = sink.end()
        rate, got = read_wav(path)
        assert rate == 22050 and np.array_equal(got, np.concatenate([a, b]))
        assert Path(path).name.endswith(f"-{i + 1:04d}-episode-{i}-pick-up-the-red.wav")
        written.append(path)
        os.utime(path, (1000 + i, 1000 + i))  # distinct times, oldest first
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    # the oldest went, the user's file stayed, no temporary files are left
    assert left == sorted(["mine.wav"] + [Path(p).name for p in written[1:]])


def test_wav_sink_abort_writes_nothing(tmp_path):
    sink = WavSink(tmp_path / "out")
    sink.begin("cut short", 16000)
    sink.write(samples(100))
    sink.abort()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def fake_player(tmp_path: Path, body: str = "") -> Path:
    """A stand-in for aplay/paplay: records its arguments and the raw PCM it is fed."""
    exe = tmp_path / "player"
    exe.write_text(f"""#!{sys.executable}
import sys
out = {str(tmp_path / 'played')!r}
open(out + '.args', 'w').write(' '.join(sys.argv[1:]))
{body}
data = sys.stdin.buffer.read()
open(out + '.pcm', 'ab').write(data)
""")
    exe.chmod(0o755)
    return exe


def test_player_sink_streams_raw_pcm_at_the_utterances_rate(tmp_path):
    exe = fake_player(tmp_path)
    sink = open_sink("device", player=f"{exe} --rate={{rate}} -")
    assert isinstance(sink, PlayerSink)
    a, b = samples(3000), samples(50000, 1)  # more than a pipe's buffer: written while it plays
    sink.begin("hello", 16000)
    sink.write(a)
    sink.write(b)
    assert sink.end() == str(exe)
    assert (tmp_path / "played.args").read_text() == "--rate=16000 -"
    assert np.array_equal(np.frombuffer((tmp_path / "played.pcm").read_bytes(), "<i2"), np.concatenate([a, b]))


@pytest.mark.parametrize("body, message", [
    ("sys.stderr.write('no such device'); sys.exit(1)", r"(exited while playing|failed) \(code 1\): no such device"),
    ("sys.stdin.buffer.read(); sys.exit(3)", r"failed \(code 3\)"),
])
def test_a_failing_player_is_a_speech_error_naming_it(tmp_path, body, message):
    exe = fake_player(tmp_path, body)
    sink = PlayerSink([str(exe)])
    sink.begin("hello", 16000)
    with pytest.raises(SpeechError, match=f"audio player .*player {message}"):
        for _ in range(20):
            sink.write(samples(20000))
        sink.end()


def test_player_that_does_not_start(tmp_path):
    sink = PlayerSink([str(tmp_path / "missing-player")])
    with pytest.raises(SpeechError, match="missing-player' does not start"):
        sink.begin("hello", 16000)


def test_find_player_looks_for_a_sound_server_or_an_alsa_device(tmp_path, monkeypatch):
    for name in ("paplay", "aplay"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(audio.glob, "glob", lambda pattern: [])  # no ALSA playback device
    assert find_player({}) is None
    assert find_player({"PULSE_SERVER": "unix:/run/pulse"})[0] == "paplay"
    run = tmp_path / "run"
    (run / "pulse").mkdir(parents=True)
    (run / "pulse" / "native").touch()
    assert find_player({"XDG_RUNTIME_DIR": str(run)})[0] == "paplay"
    monkeypatch.setattr(audio.glob, "glob", lambda pattern: ["/dev/snd/pcmC0D0p"])
    cmd = find_player({})
    assert cmd[0] == "aplay" and "{rate}" in cmd


def test_open_sink_without_a_device(tmp_path, monkeypatch):
    monkeypatch.setattr(audio, "find_player", lambda env=None: None)
    lines: list[str] = []
    sink = open_sink("auto", tmp_path / "wav", log=lines.append)
    assert isinstance(sink, WavSink) and lines == [f"no sound device: speech goes to WAV files in {tmp_path / 'wav'}"]
    with pytest.raises(SpeechError, match="output=device: no sound device found .* give player=COMMAND or output=wav"):
        open_sink("device")
    with pytest.raises(ValueError, match="output='speaker': expected one of auto, device, wav"):
        open_sink("speaker")
    assert isinstance(open_sink("wav", tmp_path, player="aplay -"), WavSink)  # wav means files, player or not
