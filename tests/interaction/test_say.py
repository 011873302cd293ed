"""``policystack say``: one JSON line and a WAV file; errors name what is wrong, with exit codes
2 (bad arguments) and 1 (a backend that cannot start)."""

from __future__ import annotations

import json

import pytest

from policystack.cli import main as cli
from policystack.interaction.announcer import EXIT_NO_SPEECH
from policystack.interaction.announcer import main as follow_main

from .test_audio import read_wav


def test_say_writes_a_wav_and_reports_its_timing(tmp_path, capsys):
    assert cli(["say", "Pick up the red cube. Then stop.", "output=wav", f"out_dir={tmp_path}", "duration=1.2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "piper" and out["where"].startswith(str(tmp_path))
    rate, audio = read_wav(out["where"])
    assert len(audio) / rate == pytest.approx(out["audio_s"], abs=1e-3) and out["audio_s"] > 1.0
    assert 0 < out["first_sample_s"] <= out["synth_s"] + 0.05 and 0 < out["real_time_factor"] < 5


def test_say_errors(tmp_path, capsys):
    assert cli(["say", "hi", "voce=x"]) == 2
    assert "unknown argument 'voce'; valid: voice, length_scale" in capsys.readouterr().err
    assert cli(["say", "  "]) == 2
    assert "nothing to say" in capsys.readouterr().err
    assert cli(["say", "hi", "emotion=joy:1"]) == 2
    assert "emotion='joy:1': expected name:weight pairs" in capsys.readouterr().err
    assert cli(["say", "hi", "duration=slow"]) == 2
    assert "duration='slow': expected a number" in capsys.readouterr().err
    assert cli(["say", "hi", f"voice={tmp_path / 'nope.onnx'}", "output=wav", f"out_dir={tmp_path}"]) == 1
    assert f"policystack say: piper: voice model (.onnx) {tmp_path / 'nope.onnx'} not found" in capsys.readouterr().err
    assert cli(["say", "--help"]) == 0 and "policystack say --follow" in capsys.readouterr().out


def test_follow_needs_the_token_and_a_working_speaker(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("POLICYSTACK_DAEMON_TOKEN", raising=False)
    assert cli(["say", "--follow", "output=wav", f"out_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip() == ("[speech] speech off: $POLICYSTACK_DAEMON_TOKEN is not set: the daemon "
                                               "and its workers share a token through it")
    monkeypatch.setenv("POLICYSTACK_DAEMON_TOKEN", "a-token-of-at-least-16-chars")
    assert follow_main(["backend=espeak", "executable=no-such-espeak", "output=wav", f"out_dir={tmp_path}"]) \
        == EXIT_NO_SPEECH
    assert capsys.readouterr().err.strip().splitlines() == [
        "[speech] speech off: espeak: program 'no-such-espeak' not found on PATH (apt-get install espeak-ng, or "
        "executable=/path/to/espeak-ng)"]
    assert follow_main(["telemetry=not-an-address", "output=wav", f"out_dir={tmp_path}"]) == EXIT_NO_SPEECH
    assert "cannot follow the daemon's telemetry at not-an-address" in capsys.readouterr().err
