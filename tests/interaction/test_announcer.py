"""The announcer: what each telemetry change says, the bounded queue that never blocks, failures that
are one log line each, and following a real signed telemetry stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from policystack.interaction.announcer import (
    Announcement,
    Announcer,
    SpeechConfig,
    announcements,
    follow,
    parse_speech_args,
    speak,
)
from policystack.interaction.audio import WavSink
from policystack.interaction.speaker import Speaker, Style, make_speaker

from .test_audio import read_wav

TOKEN = b"announcer-test-token-0123456789"


def doc(state="RUNNING", episode=0, instruction="pick up the red cube", faults=(), hold=(1, "startup"),
        result=None, successes=0, decision="", done=0) -> dict:
    """A telemetry document as the supervisor publishes it (the keys the announcer reads)."""
    return {"state": state, "episode": episode, "instruction": instruction, "episodes_done": done,
            "successes": successes, "loop": {"faults": list(faults)}, "decision": decision,
            "hold": {"gen": hold[0], "reason": hold[1]}, "last_result": result}


def said(prev, cur) -> list[tuple[str, str]]:
    return [(a.kind, a.text) for a in announcements(prev, cur, 0.0)]


def result(index, reason="timeout", success=False) -> dict:
    return {"index": index, "success": success, "steps": 10, "reason": reason, "dataset_episode": None}


# --- what is said -------------------------------------------------------------------------------------
def test_episode_start_says_the_instruction():
    assert said(doc("HOLD", -1), doc()) == [("episode", "Episode 0. Pick up the red cube.")]
    assert said(doc("IDLE", -1), doc(episode=3, instruction="Open the drawer!")) == [("episode", "Episode 3. Open the drawer!")]
    assert said(doc(), doc()) == []  # nothing changed


def test_results_judged_and_unjudged():
    before = doc(hold=(2, "startup"))
    after = doc("HOLD", hold=(3, "episode 0 ended: success"), result=result(0, "success", True), successes=1, done=1)
    assert said(before, after) == [("result", "Episode 0 succeeded.")]  # the episode-end hold is not said again
    assert said(before, doc("HOLD", result=result(0, "worker_stalled")))[0][1] == "Episode 0: the policy worker stalled."
    # a real robot has no success check: a timeout is just the end of the episode
    assert said(before, doc("HOLD", result=result(0), successes=None)) == [("result", "Episode 0 is over.")]
    # the next episode's start in the same document comes after the result
    assert said(before, doc(episode=1, instruction="touch the ball", result=result(0))) == [
        ("result", "Episode 0: time is up."), ("episode", "Episode 1. Touch the ball.")]


def test_holds_and_their_reasons():
    run = doc(faults=())
    assert said(run, doc(faults=("stale",))) == [("hold", "Holding: no fresh command from the policy.")]
    assert said(run, doc(faults=("workspace", "nan"))) == [
        ("hold", "Holding: the policy sent an invalid action."), ("hold", "Holding: the target is outside the workspace.")]
    # not at an episode's start (no chunk yet: stale), nor between episodes
    assert said(doc("HOLD", -1), doc(faults=("stale",))) == [("episode", "Episode 0. Pick up the red cube.")]
    assert said(doc("HOLD"), doc("HOLD", faults=("stale",))) == []
    homing = doc("HOLD", hold=(5, "homing failed: not within [0.05] of [0.0] after 10 s (error [0.3])"))
    assert said(doc("HOLD", hold=(4, "home reached in 1.2 s")), homing) == [("hold", "Holding: homing failed.")]
    assert said(doc("IDLE", hold=(0, "")), doc("IDLE", hold=(1, "startup"))) == []


def test_estop_is_urgent_and_a_stopping_loop_is_not_an_estop():
    a = announcements(doc(), doc(faults=("estop", "stale")), 0.0)
    assert [(x.kind, x.text, x.urgent) for x in a] == [("estop", "Emergency stop.", True),
                                                        ("hold", "Holding: no fresh command from the policy.", False)]
    assert said(doc(faults=("estop",)), doc()) == [("estop", "Emergency stop released.")]
    stopped = doc("STOPPED", faults=("estop",), successes=2, done=3)
    assert said(doc("HOLD"), stopped) == [("stopped", "Run over: 2 of 3 episodes succeeded.")]
    assert said(doc("HOLD"), doc("STOPPED", successes=None, done=3)) == [("stopped", "Run over after 3 episodes.")]


def test_a_policys_decision_is_said_when_it_changes():
    assert said(doc(), doc(decision="Yield to the pedestrian, then go.")) == [
        ("decision", "Yield to the pedestrian, then go.")]
    assert said(doc(decision="Go."), doc(decision="Go.")) == []
    assert said(doc(decision="Go."), doc(decision="")) == []


def test_the_first_document_says_only_the_running_episode():
    assert said(None, doc(result=result(0), faults=("estop",), decision="x")) == [
        ("episode", "Episode 0. Pick up the red cube.")]
    assert said(None, doc("HOLD")) == []
    assert said({}, {"state": "RUNNING"}) == [("episode", "Episode -1.")]  # an older daemon: keys missing


# --- the queue -----------------------------------------------------------------------------------------
class GatedSpeaker(Speaker):
    """A stand-in for a TTS engine whose pace the test holds: every piece waits for ``gate``."""

    name = "gated"
    config_class = object
    sample_rate = 1000

    def __init__(self, pieces: int = 2):
        self.pieces, self.gate, self.started = pieces, threading.Semaphore(0), threading.Event()

    def stream(self, text: str, style: Style | None = None) -> Iterator[np.ndarray]:
        for _ in range(self.pieces):
            self.started.set()
            assert self.gate.acquire(timeout=30), "the test never opened the gate"
            yield np.full(100, 7, np.int16)


def texts(ann: Announcer) -> list[str]:
    return [t["text"] for t in ann.timings]


def test_say_never_blocks_and_a_full_queue_drops_the_oldest(tmp_path):
    sp = GatedSpeaker()
    ann = Announcer(sp, WavSink(tmp_path), max_queue=3)
    ann.say(Announcement("episode", "first"))
    assert sp.started.wait(10)  # "first" is being said; the speaker is stuck
    t0 = time.monotonic()
    for i in range(10):
        ann.say(Announcement(f"kind{i}", f"later {i}"))
    assert time.monotonic() - t0 < 5.0  # (generous: a blocking say would hang here until the gate opens)
    assert ann.pending() == 4 and ann.dropped == 7
    for _ in range(20):
        sp.gate.release()
    assert ann.close(timeout=30)
    assert texts(ann) == ["first", "later 7", "later 8", "later 9"]


def test_a_new_announcement_replaces_a_queued_one_of_its_kind(tmp_path):
    sp = GatedSpeaker()
    ann = Announcer(sp, WavSink(tmp_path), max_queue=4)
    ann.say(Announcement("episode", "Episode 0."))
    assert sp.started.wait(10)
    for k in range(3):
        ann.say(Announcement("decision", f"plan {k}"))
    ann.say(Announcement("result", "Episode 0 succeeded."))
    for _ in range(20):
        sp.gate.release()
    assert ann.close(timeout=30)
    assert texts(ann) == ["Episode 0.", "plan 2", "Episode 0 succeeded."] and ann.dropped == 2


def test_an_estop_goes_first_and_cuts_the_sentence_short(tmp_path):
    sp = GatedSpeaker(pieces=3)
    ann = Announcer(sp, WavSink(tmp_path), max_queue=4)
    ann.say(Announcement("episode", "Episode 0. A long instruction."))
    assert sp.started.wait(10)
    ann.say(Announcement("result", "Episode 0: time is up."))
    ann.say(Announcement("estop", "Emergency stop.", urgent=True))
    for _ in range(20):
        sp.gate.release()
    assert ann.close(timeout=30)
    assert texts(ann) == ["Episode 0. A long instruction.", "Emergency stop.", "Episode 0: time is up."]
    assert [t["interrupted"] for t in ann.timings] == [True, False, False]
    assert [t["where"] == "" for t in ann.timings] == [True, False, False]  # the cut sentence left no file
    assert len(list(tmp_path.glob("*.wav"))) == 2


def test_a_crashing_backend_is_one_line_per_failure_then_speech_goes_off(tmp_path, crashing_espeak):
    lines: list[str] = []
    ann = Announcer(make_speaker("espeak", [f"executable={crashing_espeak}"]), WavSink(tmp_path / "wav"),
                    max_queue=8, log=lines.append, max_failures=3)
    for i in range(5):
        ann.say(Announcement(f"k{i}", f"Announcement number {i}."))
    assert ann.close(timeout=60)
    assert len(lines) == 4 and ann.failed == 3 and ann.gave_up and ann.spoken == 0
    assert lines[0].startswith("espeak failed while saying 'Announcement number 0.': SpeechError: ")
    assert "exited with code -11 mid-utterance" in lines[0]
    assert lines[3] == "espeak failed 3 times in a row: speech is off from here on"
    ann.say(Announcement("late", "nobody hears this"))  # after giving up: dropped, no new line
    assert len(lines) == 4 and not (tmp_path / "wav").exists()


def test_speak_into_a_wav_file_with_its_timings(tmp_path, piper):
    sink = WavSink(tmp_path)
    t = speak(piper, sink, Announcement("say", "Success. Well done.", t_event=time.time()))
    rate, audio = read_wav(t["where"])
    assert rate == 22050 and len(audio) / rate == pytest.approx(t["audio_s"])
    assert t["t_event"] <= t["t_start"] <= t["t_first_sample"] <= t["t_end"] and 0 < t["synth_s"] < t["t_end"] - t["t_start"] + 1e-3
    assert not t["interrupted"] and t["backend"] == "piper"


def test_stats_file_has_one_json_line_per_utterance(tmp_path, piper):
    ann = Announcer(piper, WavSink(tmp_path / "wav"), stats=str(tmp_path / "stats.jsonl"))
    ann.say(Announcement("a", "One."))
    ann.say(Announcement("b", "Two."))
    assert ann.close(timeout=60)
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["One.", "Two."] and all(r["audio_s"] > 0.2 for r in rows)


# --- options ------------------------------------------------------------------------------------------
def test_parse_speech_args_splits_and_checks_both_sides():
    cfg, rest = parse_speech_args(["backend=espeak", "output=wav", "wpm=200", "queue=2"])
    assert cfg.backend == "espeak" and cfg.output == "wav" and cfg.queue == 2 and rest == ["wpm=200"]
    with pytest.raises(ValueError, match="unknown argument 'wmp'; valid: voice, wpm, pitch, executable .*speech options: backend"):
        parse_speech_args(["backend=espeak", "wmp=200"])
    with pytest.raises(ValueError, match="output='speakers'"):
        parse_speech_args(["output=speakers"])
    with pytest.raises(ValueError, match="queue=0: expected 1-1000"):
        SpeechConfig(queue=0)


# --- following a telemetry stream ---------------------------------------------------------------------
class Recording(Announcer):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.heard: list[tuple[str, str]] = []

    def say(self, a: Announcement) -> None:
        self.heard.append((a.kind, a.text))
        super().say(a)


def test_follow_reads_signed_telemetry_and_ignores_what_it_cannot_trust(tmp_path, piper):
    import zmq

    from policystack.robot.transport import Encoder

    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    lines: list[str] = []
    ann = Recording(piper, WavSink(tmp_path / "wav"), max_queue=8, log=lines.append)
    stop = threading.Event()
    follower = threading.Thread(target=follow, args=(f"tcp://127.0.0.1:{port}", TOKEN, ann, None, stop, lines.append))
    follower.start()
    enc, forged = Encoder(TOKEN), Encoder(b"not-the-daemons-token-0123")
    try:
        end = time.monotonic() + 30
        while not ann.heard and time.monotonic() < end:  # until the subscription is up: the first doc is heard
            pub.send(enc.encode("telemetry", status=json.dumps(doc())))
            time.sleep(0.05)
        for _ in range(3):  # a forged document, three times: ignored, one line
            pub.send(forged.encode("telemetry", status=json.dumps(doc(faults=("estop",)))))
        pub.send(enc.encode("telemetry", status="{not json"))
        for d in (doc(result=result(0, "success", True), successes=1, done=1, episode=1, instruction="touch the ball"),
                  doc(episode=1, decision="Approach from the left."),
                  doc("STOPPED", episode=1, successes=1, done=1)):
            time.sleep(0.05)
            pub.send(enc.encode("telemetry", status=json.dumps(d)))
        follower.join(30)
        assert not follower.is_alive()  # STOPPED ends it
    finally:
        stop.set()
        pub.close(0)
        ctx.term()
    assert ann.close(timeout=60)
    assert ann.heard == [("episode", "Episode 0. Pick up the red cube."), ("result", "Episode 0 succeeded."),
                         ("episode", "Episode 1. Touch the ball."), ("decision", "Approach from the left."),
                         ("stopped", "Run over: 1 of 1 episodes succeeded.")]
    assert len(lines) == 2 and "telemetry rejected: auth: bad HMAC" in lines[0] and "JSONDecodeError" in lines[1]
