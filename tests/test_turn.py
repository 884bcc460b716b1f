"""Tests for `voiced.turn`: the pure push-to-talk state machine.

Plain and synchronous: commands, server events (the protocol's own dataclasses) and playback news
go in, and the exact list of actions that comes out is asserted. The ``Turn`` driver below checks
two things on every step of every scenario: each client event the controller asks to send is
encoded by the real ``RealtimeProtocol`` and accepted by the SDK's strict models, and no second
``response.create`` is ever sent while the previous one has not ended.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.sdkcheck import assert_valid_client_event
from voiced import actions as a
from voiced import protocol as p
from voiced.actions import (
    Chime,
    EndPlayback,
    Notice,
    Play,
    Played,
    Resend,
    Send,
    StopPlayback,
    TurnOver,
)
from voiced.audio import BYTES_PER_MS, MIN_COMMIT_MS, bytes_of
from voiced.turn import Command, Outcome, State, TurnCommand, TurnController

IDLE, LISTENING, THINKING, SPEAKING = State.IDLE, State.LISTENING, State.THINKING, State.SPEAKING

COMMIT_EMPTY = (
    "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
    "but buffer only has 0.00ms of audio."
)
NOT_ACTIVE = "Cancellation failed: no active response found"
SERVER_ERROR = "The server had an error while processing your request."


def check_sent(actions: list[Action]) -> list[Action]:
    """Fail unless every ``Send`` in ``actions`` is a valid GA client event on the wire."""
    for action in actions:
        if isinstance(action, Send):
            assert_valid_client_event(json.loads(p.RealtimeProtocol().send(action.event)))
    return actions


def delta(
    response_id: str = "resp_1", item_id: str = "item_1", ms: float = 40
) -> p.OutputAudioDelta:
    return p.OutputAudioDelta(
        "response.output_audio.delta", response_id, item_id, bytes(bytes_of(ms))
    )


def created(response_id: str = "resp_1") -> p.ResponseCreated:
    return p.ResponseCreated("response.created", response_id)


def done(
    response_id: str = "resp_1", status: str = "completed", reason: str | None = None
) -> p.ResponseDone:
    return p.ResponseDone("response.done", response_id, status, reason)


def error(
    code: str | None, message: str, event_id: str | None, error_type: str = "invalid_request_error"
) -> p.ErrorEvent:
    return p.ErrorEvent("error", error_type, code, message, None, event_id)


@dataclass
class Changed:
    """``voiced.actions.Changed`` without its turn number (checked in the driver instead)."""

    old: State
    new: State


Action = a.Action | Changed


class Turn:
    """Drives a ``TurnController`` and checks every action list it returns (see module doc).

    It carries out what the session would: a ``Truncate`` becomes the ``Send`` of the truncate
    at the speaker's position given; earcons, turn endings, readiness, verdicts and usage are
    collected in ``chimes``, ``ended``, ``readied``, ``verdicts``, ``spent`` and ``ignored`` (asserted where
    they matter) instead of being returned; every ``Changed`` must
    carry the controller's turn number, and is returned without it.
    """

    def __init__(self, *, ready: bool = True, **options: Any) -> None:
        self.ctl = TurnController(**options)
        if ready:
            assert self.ctl.server_event(p.SessionUpdated("session.updated", {})) == [a.Ready()]
        self.create_outstanding = False  # a response.create was sent and has not ended yet
        self.sent: list[p.ClientEvent] = []
        self.chimes: list[str] = []
        self.ended: list[tuple[int, Outcome]] = []
        self.readied = 0  # Ready actions seen after the first
        self.verdicts: list[a.Verdict] = []
        self.spent: list[a.Spent] = []
        self.ignored: list[str] = []  # why each server event was not believed
        self.now = 0.0

    @property
    def state(self) -> State:
        return self.ctl.state

    def _check(self, actions: list[a.Action], played: Played | None = None) -> list[Action]:
        out: list[Action] = []
        action: Action
        for action in actions:
            if isinstance(action, a.Truncate):
                assert out, "read the position after a stop"
                assert isinstance(out[0], StopPlayback), "read the position after a stop"
                action = Send(action.event(played))
            if isinstance(action, Chime):
                self.chimes.append(action.name)
            elif isinstance(action, TurnOver):
                self.ended.append((action.turn, action.outcome))
            elif isinstance(action, a.Ready):
                self.readied += 1
            elif isinstance(action, a.Verdict):
                self.verdicts.append(action)
            elif isinstance(action, a.Spent):
                self.spent.append(action)
            elif isinstance(action, a.Ignored):
                self.ignored.append(action.why)
            elif isinstance(action, a.Changed):
                assert action.turn == self.ctl.turns
                out.append(Changed(action.old, action.new))
            else:
                out.append(action)
        check_sent(out)
        for action in out:
            if isinstance(action, Send):
                self.sent.append(action.event)
                if isinstance(action.event, p.ResponseCreate):
                    assert not self.create_outstanding, "two responses in flight"
                    self.create_outstanding = True
        return out

    def do(
        self, command: Command, played: Played | None = None, *, reply: bool = True
    ) -> list[Action]:
        actions = self.ctl.command(TurnCommand(command, "test", reply=reply), self.now)
        assert isinstance(actions[0], a.Verdict), "every command gets its verdict first"
        return self._check(actions, played)

    def start(self, played: Played | None = None) -> list[Action]:
        return self.do(Command.START, played)

    def commit(self) -> list[Action]:
        return self.do(Command.COMMIT)

    def cancel(self, played: Played | None = None) -> list[Action]:
        return self.do(Command.CANCEL, played)

    def toggle(self, played: Played | None = None) -> list[Action]:
        return self.do(Command.TOGGLE, played)

    def audio(self, ms: float) -> None:
        self.ctl.audio_sent(bytes_of(ms))

    def event(self, event: p.ServerEvent) -> list[Action]:
        if isinstance(event, p.ResponseDone) or (
            isinstance(event, p.ErrorEvent) and (event.event_id or "").startswith("response_")
        ):
            self.create_outstanding = False  # the server ended (or refused) the response
        return self._check(self.ctl.server_event(event))

    def playback_done(self, turn: int = 1) -> list[Action]:
        return self._check(self.ctl.playback_done(turn))

    def connection_lost(self, why: str = "gone") -> list[Action]:
        self.create_outstanding = False
        return self._check(self.ctl.connection_lost(why))

    # ---------------------------------------------------------------- reaching a state

    def think(self, ms: float = 500) -> Turn:
        self.start()
        self.audio(ms)
        self.commit()
        assert self.state is THINKING
        return self

    def speak(self, ms: float = 1000) -> Turn:
        self.think()
        assert self.event(created("resp_1")) == []
        self.event(delta("resp_1", "item_1", ms))
        assert self.state is SPEAKING
        return self


def commit_actions(turn: int, *, create: bool = True) -> list[Action]:
    out: list[Action] = [Send(p.InputAudioBufferCommit(event_id=f"commit_{turn}"))]
    if create:
        out.append(Send(p.ResponseCreate(event_id=f"response_{turn}")))
    return [*out, Changed(LISTENING, THINKING)]


# --------------------------------------------------------------------------- a plain turn


def test_start_listen_commit():
    t = Turn()
    assert (t.state, t.ctl.turns) == (IDLE, 0)
    assert t.start() == [Changed(IDLE, LISTENING)]
    assert (t.state, t.ctl.turns) == (LISTENING, 1)
    assert t.start() == []  # already listening: nothing, not a new turn
    assert t.ctl.turns == 1
    for _ in range(6):  # 6 frames of 20 ms: the controller adds them up
        t.audio(20)
    assert t.commit() == [
        Send(p.InputAudioBufferCommit(event_id="commit_1")),
        Send(p.ResponseCreate(event_id="response_1")),
        Changed(LISTENING, THINKING),
    ]
    assert (t.state, t.ctl.turns) == (THINKING, 1)


@pytest.mark.parametrize("frames", [[4800], [2400, 2400], [960] * 5, [4798, 2]])
def test_commit_of_exactly_100_ms_commits(frames: list[int]):
    t = Turn()
    t.start()
    for nbytes in frames:
        t.ctl.audio_sent(nbytes)
    assert sum(frames) == MIN_COMMIT_MS * BYTES_PER_MS
    assert t.commit() == commit_actions(1)


TOO_SHORT = re.compile(r"^too short: (\d+(?:\.\d+)?) ms < 100 ms, discarded$")


@pytest.mark.parametrize("ms", [0, 20, 50, 99.9], ids=["0ms", "20ms", "50ms", "99.9ms"])
def test_commit_under_100_ms_clears_instead(ms: float):
    t = Turn()
    t.start()
    t.audio(ms)
    actions = t.commit()
    assert len(actions) == 3
    assert actions[0] == Send(p.InputAudioBufferClear(event_id="clear_1"))
    notice = actions[1]
    assert isinstance(notice, Notice)
    assert notice.level == "warning"
    assert TOO_SHORT.match(notice.message), notice.message
    assert actions[2] == Changed(LISTENING, IDLE)
    assert not any(isinstance(a, Send) and isinstance(a.event, p.ResponseCreate) for a in actions)
    assert not any(isinstance(e, p.InputAudioBufferCommit) for e in t.sent)
    assert t.state is IDLE
    # The next press is a fresh turn that commits normally.
    t.start()
    t.audio(200)
    assert t.commit() == commit_actions(2)


@pytest.mark.parametrize(("ms", "said"), [(0, "0"), (50, "50")])
def test_too_short_notice_names_the_duration(ms: float, said: str):
    t = Turn()
    t.start()
    t.audio(ms)
    assert t.commit()[1] == Notice("warning", f"too short: {said} ms < 100 ms, discarded")


@pytest.mark.parametrize("ms", [50, 99.9, 99.95], ids=["50ms", "99.9ms", "99.95ms"])
def test_too_short_notice_figure_is_below_the_minimum(ms: float):
    """The figure must not round up to the minimum ("too short: 100 ms < 100 ms")."""
    t = Turn()
    t.start()
    t.audio(ms)
    notice = t.commit()[1]
    assert isinstance(notice, Notice)
    said = TOO_SHORT.match(notice.message)
    assert said is not None, notice.message
    assert float(said.group(1)) < MIN_COMMIT_MS, notice.message


def test_audio_counts_only_from_the_latest_start():
    t = Turn().think()
    t.audio(3000)  # not listening: the session would not send it; it must not count either way
    t.start()  # barge-in: a new turn starts with an empty buffer
    actions = t.commit()
    assert actions[0] == Send(p.InputAudioBufferClear(event_id="clear_2"))
    assert actions[1] == Notice("warning", "too short: 0 ms < 100 ms, discarded")


@pytest.mark.parametrize("state", [IDLE, THINKING, SPEAKING])
def test_commit_when_not_listening_is_ignored(state: State):
    t = Turn()
    if state is THINKING:
        t.think()
    elif state is SPEAKING:
        t.speak()
    assert t.commit() == [Notice("info", f"commit ignored: nothing is being recorded ({state})")]
    assert t.state is state


def test_toggle_starts_from_idle_and_commits_from_listening():
    t = Turn()
    assert t.toggle() == [Changed(IDLE, LISTENING)]
    t.audio(300)
    assert t.toggle() == commit_actions(1)
    # From thinking, toggle is a barge-in (a new turn), not a commit.
    assert t.toggle() == [
        Send(p.ResponseCancel(event_id="cancel_1")),
        Changed(THINKING, LISTENING),
    ]
    assert t.ctl.turns == 2
    t.audio(30)
    actions = t.toggle()
    assert actions[0] == Send(p.InputAudioBufferClear(event_id="clear_2"))
    assert actions[-1] == Changed(LISTENING, IDLE)
    assert t.toggle() == [Changed(IDLE, LISTENING)]
    assert t.ctl.turns == 3


def test_toggle_while_speaking_is_a_barge_in():
    t = Turn().speak(1000)
    assert t.toggle(Played("item_1", 250)) == [
        StopPlayback(1),
        Send(p.ResponseCancel("resp_1", event_id="cancel_1")),
        Send(p.ConversationItemTruncate("item_1", 250, event_id="truncate")),
        Changed(SPEAKING, LISTENING),
    ]
    assert t.ctl.turns == 2


# --------------------------------------------------------------------------- the reply


def test_reply_is_played_then_ends_with_playback():
    t = Turn().think()
    assert t.event(created("resp_1")) == []
    assert t.state is THINKING
    first, second, third = delta(ms=40), delta(ms=40), delta(ms=20)
    assert t.event(first) == [Changed(THINKING, SPEAKING), Play(first, 1)]
    assert t.event(second) == [Play(second, 1)]
    assert t.event(third) == [Play(third, 1)]
    passive = p.OtherEvent("response.output_audio.done", {"type": "response.output_audio.done"})
    assert t.event(passive) == []
    assert t.event(done("resp_1")) == [EndPlayback(1)]
    assert t.state is SPEAKING  # until the speaker has played it all
    assert t.playback_done(0) == []
    assert t.playback_done(1) == [Changed(SPEAKING, IDLE)]
    assert t.playback_done(1) == []
    assert t.state is IDLE
    assert t.ended == [(1, Outcome.COMPLETED)]
    assert t.chimes == ["listening", "commit"]
    # The next turn creates its response at once: nothing is in flight any more.
    assert t.start() == [Changed(IDLE, LISTENING)]
    t.audio(200)
    assert t.commit() == commit_actions(2)


def test_reply_without_audio_returns_to_idle():
    t = Turn().think()
    t.event(created("resp_1"))
    assert t.event(done("resp_1")) == [Changed(THINKING, IDLE)]


def test_events_of_unknown_responses_are_ignored():
    t = Turn().think()
    assert t.event(delta("resp_1")) == []  # before response.created: not ours yet
    assert t.event(created("resp_1")) == []
    assert t.event(created("resp_2")) == []  # a second created does not replace the first
    assert t.event(delta("resp_2")) == []
    assert t.event(done("resp_2")) == []
    assert t.state is THINKING
    first = delta("resp_1")
    assert t.event(first) == [Changed(THINKING, SPEAKING), Play(first, 1)]


def test_session_events_change_nothing():
    t = Turn()
    for event in (
        p.SessionCreated("session.created", {}),
        p.SessionUpdated("session.updated", {}),
        p.InputAudioBufferCleared("input_audio_buffer.cleared"),
        created("resp_1"),
        done("resp_1"),
        delta("resp_1"),
    ):
        assert t.event(event) == []
        assert t.state is IDLE


# --------------------------------------------------------------------------- barge-in


def test_barge_in_while_thinking_before_created_defers_the_next_create():
    t = Turn().think()
    assert t.start() == [
        Send(p.ResponseCancel(event_id="cancel_1")),  # no id yet: "the one in progress"
        Changed(THINKING, LISTENING),
    ]
    assert t.ctl.turns == 2
    assert t.event(created("resp_1")) == []
    assert t.event(delta("resp_1")) == []  # the cancelled response is never played
    t.audio(400)
    # The commit goes out, but response.create waits for the first response to end.
    assert t.commit() == commit_actions(2, create=False)
    assert t.event(delta("resp_1")) == []
    assert t.state is THINKING
    assert t.event(done("resp_1", "cancelled", "client_cancelled")) == [
        Send(p.ResponseCreate(event_id="response_2"))
    ]
    assert t.event(delta("resp_1")) == []
    assert t.event(created("resp_2")) == []
    reply = delta("resp_2", "item_2")
    assert t.event(reply) == [Changed(THINKING, SPEAKING), Play(reply, 2)]
    assert t.event(done("resp_2")) == [EndPlayback(2)]
    assert t.playback_done(2) == [Changed(SPEAKING, IDLE)]


def test_barge_in_and_commit_before_created_then_created():
    t = Turn().think()
    t.start()
    t.audio(400)
    assert t.commit() == commit_actions(2, create=False)
    assert t.event(created("resp_1")) == []  # created after the second commit: still cancelled
    assert t.event(delta("resp_1")) == []
    assert t.state is THINKING
    assert t.event(done("resp_1", "cancelled", "client_cancelled")) == [
        Send(p.ResponseCreate(event_id="response_2"))
    ]


def test_barge_in_while_thinking_after_created_cancels_by_id():
    t = Turn().think()
    t.event(created("resp_1"))
    assert t.start() == [
        Send(p.ResponseCancel("resp_1", event_id="cancel_1")),
        Changed(THINKING, LISTENING),
    ]
    for _ in range(3):
        assert t.event(delta("resp_1")) == []
    t.audio(300)
    assert t.commit() == commit_actions(2, create=False)
    assert t.event(delta("resp_1")) == []
    assert t.event(done("resp_1", "cancelled", "client_cancelled")) == [
        Send(p.ResponseCreate(event_id="response_2"))
    ]


def test_second_barge_in_after_created_does_not_cancel_again():
    t = Turn().think()
    t.event(created("resp_1"))
    t.start()
    t.audio(300)
    t.commit()
    assert t.start() == [Changed(THINKING, LISTENING)]  # resp_1 is already being cancelled
    assert t.ctl.turns == 3
    # The commit of turn 2 was called off by the barge-in: no create when resp_1 ends.
    assert t.event(done("resp_1", "cancelled", "client_cancelled")) == []
    t.audio(300)
    assert t.commit() == commit_actions(3)


def test_second_barge_in_before_created_does_not_cancel_again():
    t = Turn().think()
    t.start()  # cancels the unnamed response in progress
    t.audio(300)
    t.commit()
    assert t.start() == [Changed(THINKING, LISTENING)]  # the same response: no second cancel
    cancels = [e for e in t.sent if isinstance(e, p.ResponseCancel)]
    assert cancels == [p.ResponseCancel(event_id="cancel_1")]


@pytest.mark.parametrize(
    ("received_ms", "played", "end_ms"),
    [
        ([1000], Played("item_1", 300), 300),
        ([1000], Played("item_1", 0), 0),
        ([1000], Played("item_1", 1000), 1000),
        ([1000], Played("item_1", 5000), 1000),  # never past what was received
        ([250, 250], Played("item_1", 10_000), 500),
        ([20.8], Played("item_1", 21), 20),  # whole milliseconds received (998 bytes)
        ([1000], Played("item_other", 300), 0),  # the speaker is on another item
        ([1000], None, 0),
    ],
)
def test_barge_in_while_speaking_truncates_at_the_played_ms(
    received_ms: list[float], played: Played | None, end_ms: int
):
    t = Turn().think()
    t.event(created("resp_1"))
    for ms in received_ms:
        t.event(delta("resp_1", "item_1", ms))
    assert t.state is SPEAKING
    assert t.start(played) == [
        StopPlayback(1),
        Send(p.ResponseCancel("resp_1", event_id="cancel_1")),
        Send(p.ConversationItemTruncate("item_1", end_ms, event_id="truncate")),
        Changed(SPEAKING, LISTENING),
    ]
    assert t.ctl.turns == 2
    for _ in range(3):
        assert t.event(delta("resp_1", "item_1")) == []  # late audio of the cancelled reply
    assert t.event(done("resp_1", "cancelled", "client_cancelled")) == []
    assert t.playback_done(1) == []
    assert t.state is LISTENING
    t.audio(300)
    assert t.commit() == commit_actions(2)


def test_barge_in_truncates_the_latest_item_of_the_response():
    t = Turn().think()
    t.event(created("resp_1"))
    t.event(delta("resp_1", "item_1", 800))
    t.event(delta("resp_1", "item_2", 100))
    actions = t.start(Played("item_2", 400))
    assert Send(p.ConversationItemTruncate("item_2", 100, event_id="truncate")) in actions


def test_barge_in_while_playback_drains_truncates_without_cancel():
    t = Turn().speak(1000)
    assert t.event(done("resp_1")) == [EndPlayback(1)]
    assert t.start(Played("item_1", 600)) == [
        StopPlayback(1),
        Send(p.ConversationItemTruncate("item_1", 600, event_id="truncate")),
        Changed(SPEAKING, LISTENING),
    ]
    assert t.playback_done(1) == []  # the stopped reply reports nothing more
    assert t.state is LISTENING
    t.audio(300)
    assert t.commit() == commit_actions(2)  # nothing in flight: create at once


# --------------------------------------------------------------------------- cancel


def _idle(t: Turn) -> None:
    pass


def _listening(t: Turn) -> None:
    t.start()
    t.audio(500)


def _thinking(t: Turn) -> None:
    t.think()


def _thinking_created(t: Turn) -> None:
    t.think()
    t.event(created("resp_1"))


def _speaking(t: Turn) -> None:
    t.speak(1000)


def _draining(t: Turn) -> None:
    t.speak(1000)
    t.event(done("resp_1"))


def _listening_after_barge_in(t: Turn) -> None:
    t.speak(1000)
    t.start(Played("item_1", 100))


def _thinking_with_create_pending(t: Turn) -> None:
    t.think()
    t.start()
    t.audio(300)
    t.commit()


SETUPS: dict[str, tuple[Callable[[Turn], None], State]] = {
    "idle": (_idle, IDLE),
    "listening": (_listening, LISTENING),
    "thinking": (_thinking, THINKING),
    "thinking-created": (_thinking_created, THINKING),
    "speaking": (_speaking, SPEAKING),
    "speaking-done": (_draining, SPEAKING),
    "listening-after-barge-in": (_listening_after_barge_in, LISTENING),
    "thinking-create-pending": (_thinking_with_create_pending, THINKING),
}

CANCEL: dict[str, list[Action]] = {
    "idle": [],
    "listening": [Send(p.InputAudioBufferClear(event_id="clear_1")), Changed(LISTENING, IDLE)],
    "thinking": [Send(p.ResponseCancel(event_id="cancel_1")), Changed(THINKING, IDLE)],
    "thinking-created": [
        Send(p.ResponseCancel("resp_1", event_id="cancel_1")),
        Changed(THINKING, IDLE),
    ],
    "speaking": [
        StopPlayback(1),
        Send(p.ResponseCancel("resp_1", event_id="cancel_1")),
        Send(p.ConversationItemTruncate("item_1", 700, event_id="truncate")),
        Changed(SPEAKING, IDLE),
    ],
    "speaking-done": [
        StopPlayback(1),
        Send(p.ConversationItemTruncate("item_1", 700, event_id="truncate")),
        Changed(SPEAKING, IDLE),
    ],
    "listening-after-barge-in": [
        Send(p.InputAudioBufferClear(event_id="clear_2")),
        Changed(LISTENING, IDLE),
    ],
    "thinking-create-pending": [Changed(THINKING, IDLE)],  # resp_1 is already being cancelled
}


@pytest.mark.parametrize("name", list(SETUPS))
def test_cancel_in_each_state(name: str):
    setup, state = SETUPS[name]
    t = Turn()
    setup(t)
    assert t.state is state
    turns = t.ctl.turns
    assert t.cancel(Played("item_1", 700)) == CANCEL[name]
    assert (t.state, t.ctl.turns) == (IDLE, turns)
    # Whatever was cancelled, its audio never plays and a later turn works.
    assert t.event(delta("resp_1")) == []
    t.event(done("resp_1", "cancelled", "client_cancelled"))
    assert t.start() == [Changed(IDLE, LISTENING)]
    t.audio(300)
    assert t.commit() == commit_actions(turns + 1)


def test_cancel_while_thinking_defers_the_next_create():
    t = Turn().think()
    t.cancel()
    t.start()
    t.audio(300)
    assert t.commit() == commit_actions(2, create=False)
    assert t.event(created("resp_1")) == []
    assert t.event(delta("resp_1")) == []
    assert t.event(done("resp_1", "cancelled", "client_cancelled")) == [
        Send(p.ResponseCreate(event_id="response_2"))
    ]


# --------------------------------------------------------------------------- server errors


def test_refused_response_create_ends_the_turn():
    t = Turn().think()
    refusal = error("rate_limit_exceeded", "Rate limit reached.", "response_1")
    assert t.event(refusal) == [
        Notice("error", "server error (rate_limit_exceeded): Rate limit reached."),
        Changed(THINKING, IDLE),
    ]
    # No response.done will come for it: the next turn creates at once.
    t.start()
    t.audio(300)
    assert t.commit() == commit_actions(2)


def test_refused_commit_calls_off_the_response():
    t = Turn().think()
    refusal = error("input_audio_buffer_commit_empty", COMMIT_EMPTY, "commit_1")
    assert t.event(refusal) == [
        Notice("error", f"server error (input_audio_buffer_commit_empty): {COMMIT_EMPTY}"),
        Send(p.ResponseCancel(event_id="cancel_1")),
        # The server keeps the audio of a refused commit: it must not reach the next turn.
        Send(p.InputAudioBufferClear(event_id="clear_1")),
        Changed(THINKING, IDLE),
    ]
    assert t.ended == [(1, Outcome.FAILED)]
    assert t.chimes[-1] == "error"
    assert t.event(created("resp_1")) == []
    assert t.event(delta("resp_1")) == []
    assert t.event(done("resp_1", "cancelled", "client_cancelled")) == []  # expected: no notice
    assert t.state is IDLE
    t.start()
    t.audio(300)
    assert t.commit() == commit_actions(2)


@pytest.mark.parametrize("name", list(SETUPS))
def test_unrelated_error_is_only_a_warning(name: str):
    setup, state = SETUPS[name]
    t = Turn()
    setup(t)
    for event, said in [
        (
            error("response_cancel_not_active", NOT_ACTIVE, "cancel_1"),
            f"server error (response_cancel_not_active): {NOT_ACTIVE}",
        ),
        (error(None, SERVER_ERROR, None, "server_error"), f"server error: {SERVER_ERROR}"),
        (
            error("invalid_value", "Invalid value: 'verse'.", "hello_1"),
            "server error (invalid_value): Invalid value: 'verse'.",
        ),
    ]:
        assert t.event(event) == [Notice("warning", said)]
        assert t.state is state


def test_failed_response_while_thinking_ends_the_turn():
    t = Turn().think()
    t.event(created("resp_1"))
    assert t.event(done("resp_1", "failed", SERVER_ERROR)) == [
        Notice("error", f"response failed: {SERVER_ERROR}"),
        Changed(THINKING, IDLE),
    ]
    t.start()
    t.audio(300)
    assert t.commit() == commit_actions(2)


def test_failed_response_while_speaking_ends_after_playback():
    t = Turn().speak()
    assert t.event(done("resp_1", "failed", None)) == [
        Notice("error", "response failed"),
        EndPlayback(1),
    ]
    assert t.playback_done(1) == [Changed(SPEAKING, IDLE)]


def test_refused_create_of_a_cancelled_turn_releases_the_waiting_create():
    """Turn 1's create is refused after turn 2 committed and waits for it to end: the refusal
    ends turn 1's response (no response.done will come), so turn 2's create must go out now."""
    t = Turn().think()
    t.start()  # barge-in before response.created: unnamed cancel
    t.audio(300)
    assert t.commit() == commit_actions(2, create=False)
    actions = t.event(error(None, SERVER_ERROR, "response_1", "server_error"))
    assert Send(p.ResponseCreate(event_id="response_2")) in actions
    assert not [a for a in actions if isinstance(a, Notice) and a.level == "error"]
    assert t.state is THINKING


def test_stale_commit_error_of_an_earlier_turn_leaves_the_current_turn_alone():
    """An error for turn 1's commit that arrives once turn 2 is thinking is not turn 2's."""
    t = Turn().think()
    t.start()
    t.audio(300)
    t.commit()
    actions = t.event(error("input_audio_buffer_commit_empty", COMMIT_EMPTY, "commit_1"))
    assert not [a for a in actions if isinstance(a, Send | Changed)]
    assert t.state is THINKING
    assert t.event(done("resp_1", "cancelled", "client_cancelled")) == [
        Send(p.ResponseCreate(event_id="response_2"))
    ]


# --------------------------------------------------------------------------- connection lost


GONE = "connection ended: gone"
KEEP = f"{GONE}; keeping what is heard until the link is back"
AGAIN = f"{GONE}; asking again when the link is back"
# What a lost connection does in each state, and what the turn does once the link is back.
LOST: dict[str, tuple[list[Action], State, list[Action]]] = {
    "idle": ([], IDLE, []),
    "listening": ([Notice("warning", KEEP)], LISTENING, [Resend(1)]),
    "thinking": (
        [Notice("warning", AGAIN)],
        THINKING,
        [Resend(1), *commit_actions(1)[:2]],
    ),
    "thinking-created": (
        [Notice("warning", AGAIN)],
        THINKING,
        [Resend(1), *commit_actions(1)[:2]],
    ),
    "speaking": (
        [StopPlayback(1), Changed(SPEAKING, THINKING), Notice("warning", AGAIN)],
        THINKING,
        [Resend(1), *commit_actions(1)[:2]],
    ),
    "speaking-done": ([], SPEAKING, []),  # the whole answer is here: it plays out
    "listening-after-barge-in": ([Notice("warning", KEEP)], LISTENING, [Resend(2)]),
    "thinking-create-pending": (
        [Notice("warning", AGAIN)],
        THINKING,
        [Resend(2), *commit_actions(2)[:2]],
    ),
}


@pytest.mark.parametrize("name", list(SETUPS))
def test_a_lost_connection_loses_nothing_heard(name: str):
    """The turn is kept across the outage: what is being heard is sent again once the link is
    back, and a turn whose answer was cut off (or never came) is asked again."""
    setup, _ = SETUPS[name]
    now_lost, held_state, resumed = LOST[name]
    t = Turn()
    setup(t)
    turns = t.ctl.turns
    assert t.connection_lost() == now_lost
    assert t.state is held_state
    assert t.ended == ([(1, Outcome.INTERRUPTED)] if turns == 2 else [])  # a barge-in's
    if held_state is not LISTENING:
        assert t.start()[0] == Notice(
            "warning", "start refused: not connected to the realtime server (gone)"
        )  # no new turn until reconnected
    assert t.event(delta("resp_1")) == []  # nothing of the old connection is believed
    assert t.event(p.SessionUpdated("session.updated", {})) == resumed
    assert t.ctl.turns == turns
    if held_state is LISTENING:
        t.audio(300)  # the person speaks on
        assert t.commit() == commit_actions(turns)
    if held_state is not IDLE and name != "speaking-done":
        assert t.event(created("resp_9")) == []
        reply = delta("resp_9", "item_9")
        assert t.event(reply) == [Changed(THINKING, SPEAKING), Play(reply, turns)]
        t.event(done("resp_9"))
    if held_state is not IDLE:
        assert t.playback_done(turns) == [Changed(SPEAKING, IDLE)]
        assert t.ended[-1] == (turns, Outcome.COMPLETED)
    assert t.start() == [Changed(IDLE, LISTENING)]  # and the next turn works as ever


@pytest.mark.parametrize("name", [n for n, (_, s, _) in LOST.items() if s in (LISTENING, THINKING)])
def test_a_held_turn_is_lost_when_the_link_is_not_back_in_time(name: str):
    setup, _ = SETUPS[name]
    _, state, _ = LOST[name]
    t = Turn(hold_s=30.0, retry_window_s=10.0)
    setup(t)
    t.connection_lost()
    limit = 30.0 if state is LISTENING else 10.0
    assert t._check(t.ctl.tick(limit - 0.01)) == []
    actions = t._check(t.ctl.tick(limit))
    assert actions == [
        Notice("warning", f"lost: the link was not back within {limit:g} s"),
        Changed(state, IDLE),
    ]
    assert t.ended[-1] == (t.ctl.turns, Outcome.LOST)
    assert t.chimes[-1] == "error"
    assert t.event(p.SessionUpdated("session.updated", {})) == []  # nothing left to resume
