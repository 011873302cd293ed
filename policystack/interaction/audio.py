"""Where speech goes: the sound device when there is one, else WAV files.

- ``PlayerSink``: one player process per utterance, raw 16-bit mono PCM on its stdin, as it is
  synthesized (``paplay`` when a PulseAudio / PipeWire server is up, else ``aplay`` when ALSA has a
  playback device, or any ``player=`` command with ``{rate}`` for the sample rate). ``end`` returns
  once the player has played it all.
- ``WavSink``: one WAV file per utterance in ``out_dir`` (``<time>-<pid>-<n>-<words>.wav``, written
  atomically at its end), keeping the newest ``keep`` of its files (other files there are left alone).

``open_sink`` picks one: ``output=auto`` the device if one is found, else WAV files;
``output=device`` fails (``SpeechError``) without a device; ``output=wav`` always writes files.
"""

from __future__ import annotations

import glob
import io
import os
import re
import shlex
import shutil
import subprocess
import time
import wave
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from policystack.interaction.speaker import SpeechError
from policystack.io import atomic_write_bytes

OUTPUTS = ("auto", "device", "wav")
WAV_NAME = re.compile(r"\d{8}-\d{6}-\d+-\d{4,}-[a-z0-9-]+\.wav")  # what WavSink names its files


class AudioSink(ABC):
    """Takes one utterance at a time: ``begin``, ``write`` pieces, then ``end`` (or ``abort``)."""

    @abstractmethod
    def begin(self, text: str, sample_rate: int) -> None: ...

    @abstractmethod
    def write(self, samples: np.ndarray) -> None:
        """int16 [n] mono samples."""

    @abstractmethod
    def end(self) -> str:
        """Finish the utterance; where it went (a file, a player)."""

    @abstractmethod
    def abort(self) -> None:
        """Drop the utterance (the backend failed or it was interrupted)."""


class WavSink(AudioSink):
    def __init__(self, out_dir: str | Path, keep: int = 200):
        self.out_dir, self.keep = Path(out_dir), keep
        self._pieces: list[np.ndarray] = []
        self._n = 0

    def begin(self, text: str, sample_rate: int) -> None:
        self._pieces, self._rate = [], sample_rate
        self._n += 1
        words = "-".join(re.findall(r"[a-z0-9]+", text.lower())[:6]) or "speech"
        self._path = self.out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self._n:04d}-{words}.wav"

    def write(self, samples: np.ndarray) -> None:
        self._pieces.append(np.asarray(samples, dtype=np.int16))

    def end(self) -> str:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self._rate)
            w.writeframes(np.concatenate(self._pieces).astype("<i2").tobytes() if self._pieces else b"")
        try:
            atomic_write_bytes(self._path, buf.getvalue())
        except OSError as e:
            raise SpeechError(f"cannot write {self._path}: {e}") from None
        self._pieces = []
        ours = [p for p in self.out_dir.glob("*.wav") if WAV_NAME.fullmatch(p.name)]  # never a user's file
        old = sorted(ours, key=lambda p: p.stat().st_mtime)[:-self.keep]
        for p in old:
            p.unlink(missing_ok=True)
        return str(self._path)

    def abort(self) -> None:
        self._pieces = []

    def __str__(self) -> str:
        return f"WAV files in {self.out_dir.resolve()}"


class PlayerSink(AudioSink):
    """``command``: an argument list reading raw s16le mono PCM on stdin, ``{rate}`` in any argument."""

    def __init__(self, command: list[str]):
        self.command = command
        self._proc: subprocess.Popen | None = None

    def __str__(self) -> str:
        return f"the sound device ({self.command[0]})"

    def begin(self, text: str, sample_rate: int) -> None:
        cmd = [a.replace("{rate}", str(sample_rate)) for a in self.command]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            raise SpeechError(f"audio player {cmd[0]!r} does not start: {e}") from None
        self._rate, self._written = sample_rate, 0

    def _failed(self, what: str) -> SpeechError:
        p, self._proc = self._proc, None
        try:
            p.kill()
        except OSError:
            pass
        code = p.wait()
        err = p.stderr.read().decode(errors="replace").strip()[-300:]
        p.stderr.close()
        return SpeechError(f"audio player {self.command[0]} {what} (code {code}): {err}")

    def write(self, samples: np.ndarray) -> None:
        try:
            self._proc.stdin.write(np.asarray(samples, dtype="<i2").tobytes())
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self._failed("exited while playing") from None
        self._written += len(samples)

    def end(self) -> str:
        p = self._proc
        try:
            p.stdin.close()
        except BrokenPipeError:
            pass
        try:
            code = p.wait(timeout=self._written / self._rate + 10.0)
        except subprocess.TimeoutExpired:
            raise self._failed("did not finish playing") from None
        if code != 0:
            raise self._failed("failed")
        p.stderr.close()
        self._proc = None
        return self.command[0]

    def abort(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for f in (self._proc.stdin, self._proc.stderr):
                try:
                    f.close()
                except BrokenPipeError:
                    pass
            self._proc = None


def find_player(env: dict[str, str] | None = None) -> list[str] | None:
    """A player command for this machine's sound device, or None when there is none."""
    env = dict(os.environ if env is None else env)
    run = env.get("XDG_RUNTIME_DIR", "")
    server = env.get("PULSE_SERVER") or (run and (Path(run, "pulse", "native").exists()
                                                  or Path(run, "pipewire-0").exists()))
    if server and shutil.which("paplay"):
        return ["paplay", "--raw", "--format=s16le", "--rate={rate}", "--channels=1"]
    if glob.glob("/dev/snd/pcmC*D*p") and shutil.which("aplay"):
        return ["aplay", "-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", "{rate}", "-"]
    return None


def open_sink(output: str = "auto", out_dir: str | Path = "speech", player: str = "", keep: int = 200,
              log=None) -> AudioSink:
    """The sink for ``output`` (``auto`` / ``device`` / ``wav``); ``player``: a command line that
    overrides the player search (``{rate}`` for the sample rate)."""
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r}: expected one of {', '.join(OUTPUTS)}")
    cmd = shlex.split(player) if player else (find_player() if output != "wav" else None)
    if cmd is not None and output != "wav":
        return PlayerSink(cmd)
    if output == "device":
        raise SpeechError("output=device: no sound device found (no PulseAudio/PipeWire server with paplay, no "
                          "ALSA playback device in /dev/snd with aplay); give player=COMMAND or output=wav")
    if log is not None and output == "auto":
        log(f"no sound device: speech goes to WAV files in {Path(out_dir).resolve()}")
    return WavSink(out_dir, keep)
