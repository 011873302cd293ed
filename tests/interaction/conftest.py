"""Shared pieces of the speech tests: the real piper speaker (loaded once) and a stand-in for an
external synthesizer program that dies mid-sentence (the boundary a crashing espeak-ng is)."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from policystack.interaction.speaker import make_speaker


@pytest.fixture(scope="session")
def piper():
    return make_speaker("piper")


def wav_header(rate: int = 16000) -> bytes:
    """The header espeak-ng streams on --stdout (sizes unknown: 0x7fffffff)."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 0x7FFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt \
        + b"data" + struct.pack("<I", 0x7FFFFFFF)


@pytest.fixture()
def crashing_espeak(tmp_path) -> Path:
    """A program that answers espeak-ng's start-up probe (".") and, for anything longer, streams a
    header and 3000 samples of 1, then kills itself with SIGSEGV."""
    exe = tmp_path / "espeak-crashing"
    exe.write_text(f"""#!{sys.executable}
import os, signal, sys
text = sys.stdin.read()
sys.stdout.buffer.write({wav_header()!r} + b"\\x01\\x00" * 3000)
sys.stdout.flush()
if len(text) > 1:
    os.kill(os.getpid(), signal.SIGSEGV)
""")
    exe.chmod(0o755)
    return exe
