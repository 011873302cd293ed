"""eSpeak NG (``apt-get install espeak-ng``): formant synthesis in a child process, tiny and fast.

Each utterance runs ``espeak-ng --stdout -v VOICE -s WPM -p PITCH`` with the text on its stdin (never
on the command line) and reads the WAV it streams on stdout: the header, then samples as they come.
The voice is checked once at start (``SpeechError`` naming it when espeak-ng does not know it)."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

from policystack.interaction.speaker import Speaker, SpeechError, Style

READ_BYTES = 8192  # ~0.19 s at 22.05 kHz


@dataclass
class EspeakOptions:
    voice: str = "en-us"  # an espeak-ng voice (espeak-ng --voices lists them)
    wpm: int = 165  # words per minute, divided by Style.duration
    pitch: int = 50  # 0-99
    executable: str = "espeak-ng"

    def __post_init__(self):
        if not 80 <= self.wpm <= 450:
            raise ValueError(f"wpm={self.wpm}: expected 80-450 words per minute")
        if not 0 <= self.pitch <= 99:
            raise ValueError(f"pitch={self.pitch}: expected 0-99")


def read_wav_header(f: IO[bytes], where: str) -> int:
    """Read a streamed WAV's header up to its samples; the sample rate (mono 16-bit PCM expected)."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
        raise SpeechError(f"{where}: no WAV header on its output ({head[:12]!r})")
    rate = 0
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            raise SpeechError(f"{where}: its WAV output ended before the samples")
        kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if kind == b"data":
            break
        body = f.read(size + (size & 1))
        if kind == b"fmt ":
            if len(body) < 16:
                raise SpeechError(f"{where}: its WAV output ended inside the fmt chunk")
            fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if (fmt, channels, bits) != (1, 1, 16):
                raise SpeechError(f"{where}: WAV format {fmt}, {channels} channels, {bits} bits; expected PCM mono 16-bit")
    if not rate:
        raise SpeechError(f"{where}: its WAV output has no fmt chunk")
    return rate


class EspeakSpeaker(Speaker):
    name = "espeak"
    config_class = EspeakOptions

    def __init__(self, config: EspeakOptions):
        self.config = config
        self.exe = shutil.which(config.executable)
        if self.exe is None:
            raise SpeechError(f"espeak: program {config.executable!r} not found on PATH "
                              "(apt-get install espeak-ng, or executable=/path/to/espeak-ng)")
        self.sample_rate = self._probe()

    def _command(self, style: Style | None) -> list[str]:
        wpm = round(self.config.wpm / (style.duration if style else 1.0))
        return [self.exe, "--stdout", "-v", self.config.voice, "-s", str(max(80, min(450, wpm))),
                "-p", str(self.config.pitch)]

    def _probe(self) -> int:
        """Speak "." once: checks the program and the voice, and reads the sample rate."""
        try:
            out = subprocess.run(self._command(None), input=b".", capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SpeechError(f"espeak: {self.exe} does not run: {e}") from None
        if out.returncode != 0:
            raise SpeechError(f"espeak: {self.exe} -v {self.config.voice} failed (code {out.returncode}): "
                              f"{out.stderr.decode(errors='replace').strip()[-300:]} (espeak-ng --voices lists the voices)")
        return read_wav_header(io.BytesIO(out.stdout), f"espeak ({self.exe})")

    def stream(self, text: str, style: Style | None = None) -> Iterator[np.ndarray]:
        proc = subprocess.Popen(self._command(style), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            proc.stdin.write(text.encode())
            proc.stdin.close()
            read_wav_header(proc.stdout, f"espeak ({self.exe})")
            odd = b""
            while data := proc.stdout.read(READ_BYTES):
                data, odd = odd + data, b""
                if len(data) % 2:
                    data, odd = data[:-1], data[-1:]
                yield np.frombuffer(data, dtype="<i2").astype(np.int16)
            code = proc.wait(timeout=10)
            if code != 0:
                err = proc.stderr.read().decode(errors="replace").strip()[-300:]
                raise SpeechError(f"espeak: {self.exe} exited with code {code} mid-utterance" + (f": {err}" if err else ""))
        except BrokenPipeError:
            raise SpeechError(f"espeak: {self.exe} exited before reading the text (code {proc.wait()})") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
