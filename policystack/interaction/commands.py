"""``policystack say``: speak a text, or the daemon's events.

    policystack say "Pick up the red cube." [backend=piper] [output=auto|device|wav] [out_dir=speech]
                    [duration=1.0] [emotion=happy:0.6] [BACKEND OPTION=VALUE ...]
    policystack say --follow [telemetry=tcp://127.0.0.1:5557] [server_key=F] [client_key=F] [options as above]

The text is the first argument (quote it); the rest are ``key=value``: ``duration`` (> 1 slower) and
``emotion`` (IndexTTS2: name:weight pairs of happy, angry, sad, afraid, disgusted, melancholic,
surprised, calm) shape this utterance; the speech options (``backend``, ``output``, ``out_dir``,
``player``, ``keep``, ...: policystack/interaction/announcer.py ``SpeechConfig``) and the backend's
own (piper: ``voice``, ``length_scale``, ``speaker_id``, ``threads``; espeak: ``voice``, ``wpm``,
``pitch``, ``executable``; indextts: ``model_dir``, ``voice``, ``version``, ``emo_vector``,
``duration_factor``, ...) pick how. Audio goes to the sound device when there is one, else to a WAV
file in ``out_dir``. Prints one JSON line: where it went, the audio's length, the time to the first
sample and the real-time factor.

``--follow`` speaks what a running daemon does (docs/interaction.md); it needs the daemon's token in
``$POLICYSTACK_DAEMON_TOKEN``. ``daemon run speech=BACKEND`` starts the same thing with the daemon.
"""

from __future__ import annotations

import json
import sys

STYLE_KEYS = ("duration", "emotion")


def _say(text: str, argv: list[str]) -> int:
    from policystack.interaction.announcer import Announcement, log_line, parse_speech_args, speak
    from policystack.interaction.audio import open_sink
    from policystack.interaction.speaker import SpeechError, Style, make_speaker, parse_emotion

    style_kv = {k: v for k, _, v in (a.partition("=") for a in argv) if k in STYLE_KEYS}
    try:
        duration = float(style_kv.get("duration", 1.0))
    except ValueError:
        raise ValueError(f"duration={style_kv['duration']!r}: expected a number") from None
    style = Style(duration, parse_emotion(style_kv.get("emotion", "")))
    cfg, options = parse_speech_args([a for a in argv if a.partition("=")[0] not in STYLE_KEYS])
    try:
        speaker = make_speaker(cfg.backend, options)
        sink = open_sink(cfg.output, cfg.out_dir, cfg.player, cfg.keep, log_line)
        t = speak(speaker, sink, Announcement("say", text, style=style))
    except SpeechError as e:
        print(f"policystack say: {e}", file=sys.stderr)
        return 1
    speaker.close()
    first = t["t_first_sample"] - t["t_start"] if t["t_first_sample"] else None
    print(json.dumps({"backend": cfg.backend, "where": t["where"], "audio_s": round(t["audio_s"], 3),
                      "first_sample_s": round(first, 3) if first is not None else None,
                      "synth_s": round(t["synth_s"], 3),
                      "real_time_factor": round(t["synth_s"] / t["audio_s"], 4) if t["audio_s"] else None}))
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        if argv[0] == "--follow":
            from policystack.interaction.announcer import main as follow_main

            return follow_main(argv[1:])
        if not argv[0].strip():
            raise ValueError("nothing to say: the first argument is the text")
        return _say(argv[0], argv[1:])
    except ValueError as e:
        print(f"policystack say: {e}", file=sys.stderr)
        return 2
