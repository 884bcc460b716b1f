"""The documented event envelope (`voiced.envelope`), and where relative paths and the state
directory resolve (`voiced.saved`). Pure: plain tests, no I/O beyond the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voiced.app import _resolved, device_id
from voiced.config import AudioConfig, AudioInputConfig, AudioOutputConfig, Config
from voiced.envelope import envelope
from voiced.events import (
    ConnectionChanged,
    DaemonState,
    StateChanged,
    TokensUsed,
    Transcript,
    TurnEnded,
)
from voiced.protocol import Usage
from voiced.saved import resolve, saved_state_file, state_dir
from voiced.turn import Outcome, State

HEAD = {"v", "id", "kind", "time", "device_id", "session_id"}


def test_a_transcript_s_envelope() -> None:
    event = Transcript("agent", "hello", 3, "item_9", 1_700_000_000.125, True, "resp_4", "sess_1")
    record = envelope(event, "kiosk-7")
    assert record == {
        "v": 1,
        "id": event.id,
        "kind": "transcript",
        "time": "2023-11-14T22:13:20.125+00:00",
        "device_id": "kiosk-7",
        "session_id": "sess_1",
        "turn": 3,
        "role": "agent",
        "text": "hello",
        "final": True,
        "item_id": "item_9",
        "response_id": "resp_4",
    }
    assert json.loads(json.dumps(record)) == record  # JSON as it is


def test_a_turn_s_envelope_carries_its_outcome_latencies_and_usage() -> None:
    usage = Usage(input_text=1, input_audio=2, input_cached=0, output_text=3, output_audio=4)
    event = TurnEnded(2, Outcome.LOST, {"commit": 40.5}, "connection ended", usage, "sess_1")
    record = envelope(event, "kiosk-7")
    assert record is not None
    assert record.keys() - HEAD == {"turn", "outcome", "reason", "latencies_ms", "usage"}
    assert (record["kind"], record["outcome"], record["reason"]) == (
        "turn",
        "lost",
        "connection ended",
    )
    assert record["latencies_ms"] == {"commit": 40.5}
    assert record["usage"] == {
        "input_text": 1, "input_audio": 2, "input_cached": 0, "output_text": 3, "output_audio": 4,
    }  # fmt: skip


def test_a_state_s_envelope() -> None:
    event = DaemonState("offline", "cannot reach the server")
    record = envelope(event, "kiosk-7")
    assert record is not None
    assert record.keys() == HEAD | {"state", "reason"}
    assert (record["kind"], record["state"], record["session_id"]) == ("state", "offline", None)


def test_each_event_keeps_its_own_id_in_every_envelope() -> None:
    """A resend (an outbox after a crash) carries the same id, so a subscriber can drop it."""
    first, second = Transcript("user", "a", 1, "i", 0.0), Transcript("user", "a", 1, "i", 0.0)
    assert first == second  # equal in what they say...
    one, again, other = (envelope(e, "k") for e in (first, first, second))
    assert one is not None
    assert again is not None
    assert other is not None
    assert one["id"] == again["id"] != other["id"]  # ...but each its own event


@pytest.mark.parametrize(
    "event",
    [
        StateChanged(State.IDLE, State.LISTENING, 1),
        ConnectionChanged(True),
        TokensUsed(1, Usage()),
    ],
)
def test_internal_news_has_no_envelope(event: object) -> None:
    assert envelope(event, "k") is None  # type: ignore[arg-type]


def test_device_id_defaults_to_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "kiosk-lobby")
    assert device_id(Config()) == "kiosk-lobby"
    assert device_id(Config(device_id="front-door")) == "front-door"


def test_state_directory_and_relative_paths(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    # No state directory given: relative paths stay relative (the working directory).
    assert state_dir() == tmp_path / "xdg" / "voiced"
    assert resolve("transcripts.jsonl") == Path("transcripts.jsonl")
    assert resolve("/var/log/t.jsonl") == Path("/var/log/t.jsonl")
    # systemd's StateDirectory= (the first of several).
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'svc'}:{tmp_path / 'other'}")
    assert state_dir() == tmp_path / "svc"
    assert resolve("transcripts.jsonl") == tmp_path / "svc" / "transcripts.jsonl"
    assert saved_state_file() == tmp_path / "svc" / "state.json"
    # state_dir in the config wins.
    assert resolve("t.jsonl", str(tmp_path / "mine")) == tmp_path / "mine" / "t.jsonl"
    assert saved_state_file(str(tmp_path / "mine")) == tmp_path / "mine" / "state.json"


def test_relative_wav_paths_of_the_audio_resolve_against_the_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    audio = AudioConfig(
        input=AudioInputConfig(backend="wav", path="in.wav"),
        output=AudioOutputConfig(backend="wav", path="/abs/out.wav"),
    )
    resolved = _resolved(Config(audio=audio))
    assert (resolved.input.path, resolved.output.path) == (str(tmp_path / "in.wav"), "/abs/out.wav")
