"""Status and turn measurements (pure): tables of events in, figures out."""

from __future__ import annotations

import json

import pytest

from voiced.devices.null import NullMicrophone, NullSpeaker
from voiced.events import (
    ConnectionChanged,
    DaemonState,
    DeviceChanged,
    Event,
    StateChanged,
    Transcript,
    TurnEnded,
)
from voiced.status import Status, TurnMeter
from voiced.turn import Outcome, State

Mark = tuple[str, float, int | None]


@pytest.mark.parametrize(
    ("marks", "expected"),
    [
        (
            [
                ("pressed", 1.0, None),
                ("commit_sent", 1.05, 7),
                ("first_audio", 1.5, 7),
                ("first_play", 1.62, None),
            ],
            {"commit": 50.0, "first_audio": 450.0, "first_play": 120.0},
        ),
        # A moment of another turn (a late reply of the last one) is ignored.
        (
            [
                ("pressed", 1.0, 7),
                ("commit_sent", 1.01, 7),
                ("first_audio", 1.1, 6),
                ("first_audio", 1.3, 7),
            ],
            {"commit": 10.0, "first_audio": 290.0},
        ),
        # Only the first of a name counts.
        (
            [
                ("pressed", 1.0, 7),
                ("pressed", 1.2, 7),
                ("commit_sent", 1.25, 7),
                ("commit_sent", 1.4, None),
            ],
            {"commit": 250.0},
        ),
        # Missing ends give no figure.
        (
            [("pressed", 1.0, 7), ("first_audio", 2.0, 7), ("first_play", 2.5, 7)],
            {"first_play": 500.0},
        ),
        ([("commit_sent", 1.0, 7)], {}),
        ([], {}),
        # Out of order: no figure.
        (
            [
                ("pressed", 2.0, 7),
                ("commit_sent", 1.5, 7),
                ("first_audio", 1.9, 7),
                ("first_play", 1.8, 7),
            ],
            {"first_audio": 400.0},
        ),
        # Equal moments are in order: zero.
        ([("pressed", 3.0, 7), ("commit_sent", 3.0, 7)], {"commit": 0.0}),
    ],
)
def test_turn_meter(marks: list[Mark], expected: dict[str, float]) -> None:
    meter = TurnMeter()
    meter.started(6)
    meter.mark("pressed", 0.0, 6)  # the last turn's: forgotten when the next starts
    meter.mark("commit_sent", 0.5)
    meter.started(7)
    for name, at, turn in marks:
        meter.mark(name, at, turn)
    assert meter.latencies() == expected


def snapshot(status: Status, dropped: dict[str, int] | None = None) -> dict[str, object]:
    out = status.to_json(devices={}, link={}, dropped=dropped or {})
    assert json.loads(json.dumps(out)) == out  # JSON as it is
    return out


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([], {"state": "idle", "turns": 0}),
        ([StateChanged(State.IDLE, State.LISTENING, 1)], {"state": "listening", "turns": 1}),
        (
            [
                StateChanged(State.IDLE, State.LISTENING, 3),
                StateChanged(State.SPEAKING, State.IDLE, 2),
            ],
            {"state": "idle", "turns": 3},
        ),
        (
            [
                StateChanged(State.LISTENING, State.THINKING, 1),
                StateChanged(State.THINKING, State.SPEAKING, 1),
            ],
            {"state": "speaking", "turns": 1},
        ),
    ],
)
def test_state_and_turns(events: list[Event], expected: dict[str, object]) -> None:
    status = Status("ws://sim/v1/realtime", "gpt-realtime", "API key from auth.api_key")
    for event in events:
        status.apply(event)
    out = snapshot(status)
    assert {k: out[k] for k in expected} == expected
    assert out["realtime"] == {
        "url": "ws://sim/v1/realtime",
        "model": "gpt-realtime",
        "auth": "API key from auth.api_key",
    }


def test_outcomes_and_last_turn() -> None:
    status = Status("u", "m")
    assert snapshot(status)["last_turn"] is None
    events: list[Event] = [
        TurnEnded(1, Outcome.COMPLETED, {"commit": 12.0, "first_audio": 300.5}),
        TurnEnded(2, Outcome.TOO_SHORT, reason="less than 100 ms"),
        Transcript("user", "hi", 3, "item_1", 0.0),  # not about outcomes
        TurnEnded(3, Outcome.COMPLETED),
        TurnEnded(4, Outcome.LOST, reason="connection closed"),
    ]
    for event in events:
        status.apply(event)
    out = snapshot(status)
    assert out["outcomes"] == {"completed": 2, "too_short": 1, "lost": 1}
    assert out["last_turn"] == {
        "turn": 4,
        "outcome": "lost",
        "reason": "connection closed",
        "latencies_ms": {},
    }
    status.apply(TurnEnded(5, Outcome.COMPLETED, {"commit": 8.5}))
    assert snapshot(status)["last_turn"] == {
        "turn": 5,
        "outcome": "completed",
        "reason": None,
        "latencies_ms": {"commit": 8.5},
    }


@pytest.mark.parametrize(
    ("events", "connected", "ready", "last_error"),
    [
        ([], False, False, None),
        ([ConnectionChanged(True)], True, False, None),
        ([ConnectionChanged(True), ConnectionChanged(True, ready=True)], True, True, None),
        (
            [ConnectionChanged(True, ready=True), ConnectionChanged(False, error="reset")],
            False,
            False,
            "reset",
        ),
        # Closed on purpose to renew: the last error stays what it was.
        (
            [ConnectionChanged(False, error="timed out"), ConnectionChanged(False)],
            False,
            False,
            "timed out",
        ),
        # Connected again: the error is over.
        ([ConnectionChanged(False, error="refused"), ConnectionChanged(True)], True, False, None),
        # A device's trouble is not the connection's.
        ([ConnectionChanged(True), DeviceChanged("microphone", "null", "gone")], True, False, None),
    ],
)
def test_connection(
    events: list[Event], connected: bool, ready: bool, last_error: str | None
) -> None:
    status = Status("u", "m")
    for event in events:
        status.apply(event)
    out = snapshot(status)
    assert (out["connected"], out["ready"], out["last_error"]) == (connected, ready, last_error)


def test_snapshot_reads_devices_link_and_sinks_when_taken() -> None:
    status = Status("u", "m")
    microphone, speaker = NullMicrophone(), NullSpeaker()
    devices = {"input": microphone.statistics, "output": speaker.statistics}
    link = {"connects": 2, "events_sent": 40, "events_received": 97}
    speaker.volume = 0.5  # read when the snapshot is taken, not when the devices were given
    out = status.to_json(devices=devices, link=link, dropped={"stdout": 0, "file": 3})
    assert json.loads(json.dumps(out)) == out
    assert out["audio"] == {
        "input": {"name": "null", "dropped_frames": 0},
        "output": {"name": "null", "volume": 0.5},
    }
    assert out["connection"] == link
    assert out["sinks"] == {"stdout": {"dropped": 0}, "file": {"dropped": 3}}
    link["connects"] = 3  # a copy: later changes show in the next snapshot only
    assert out["connection"]["connects"] == 2


# --------------------------------------------------------------------------- what is shown


def test_what_the_daemon_shows_follows_connection_devices_turns_and_failures() -> None:
    status = Status("ws://x", "m")
    assert status.shown == DaemonState("offline", "connecting")
    seen = []
    events: list[Event] = [
        ConnectionChanged(True),  # connected, not ready yet: still offline
        ConnectionChanged(True, ready=True),
        StateChanged(State.IDLE, State.LISTENING, 1),
        StateChanged(State.LISTENING, State.THINKING, 1),
        TurnEnded(1, Outcome.FAILED, {}, "server error"),
        StateChanged(State.THINKING, State.IDLE, 1),
        StateChanged(State.IDLE, State.LISTENING, 2),  # a new press clears the error
        DeviceChanged("microphone", "usb", "unplugged"),
        DeviceChanged("microphone", "usb", None),
        ConnectionChanged(False, error="gone"),
    ]
    for event in events:
        if (shown := status.apply(event)) is not None:
            seen.append((shown.state, shown.reason))
    assert seen == [
        ("idle", None),
        ("listening", None),
        ("thinking", None),
        ("error", "turn 1 failed: server error"),
        ("listening", None),
        ("error", "microphone: unplugged"),
        ("listening", None),
        ("offline", "gone"),
    ]
    assert status.to_json(devices={}, link={}, dropped={})["shown"] == {
        "state": "offline",
        "reason": "gone",
    }
