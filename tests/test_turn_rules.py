"""Tests for the push-to-talk rules that `voiced.turn` owns beyond the plain turn: readiness,
typed outcomes, earcons, the stuck-button deadline, session expiry and renewal, transcripts
matched to their turn, and the protocol cases (several output items, missing response ids).

Pure and synchronous, through the same checking driver as ``test_turn.py``.
"""

from __future__ import annotations

import math

import pytest

from tests.test_turn import (
    IDLE,
    LISTENING,
    SPEAKING,
    THINKING,
    Changed,
    Turn,
    created,
    delta,
    done,
    error,
)
from voiced import protocol as p
from voiced.actions import (
    EndPlayback,
    Notice,
    Play,
    Played,
    Reconnect,
    Send,
    StopPlayback,
    Transcribed,
    TurnOver,
)
from voiced.turn import Command, Outcome, TurnCommand, TurnController

# --------------------------------------------------------------------------- readiness


@pytest.mark.parametrize("command", [Command.START, Command.TOGGLE])
def test_a_press_before_the_session_is_ready_is_refused_with_the_reason(command: Command):
    t = Turn(ready=False)
    assert t.do(command) == [
        Notice("warning", f"{command} refused: not connected to the realtime server yet")
    ]
    assert t.chimes == ["error"]
    assert (t.state, t.ctl.turns, t.ended) == (IDLE, 0, [])
    t.event(p.SessionUpdated("session.updated", {}))
    t.event(p.SessionUpdated("session.updated", {}))  # a later update is not news
    assert t.readied == 1
    assert t.do(command) == [Changed(IDLE, LISTENING)]


def test_a_refusal_names_why_the_connection_went() -> None:
    t = Turn()
    t.connection_lost("cannot reach wss://example: refused")
    assert t.start() == [
        Notice(
            "warning",
            "start refused: not connected to the realtime server (cannot reach wss://example: refused)",
        )
    ]


def test_commit_and_cancel_are_not_refused_while_offline() -> None:
    """Only starting is refused: nothing is recording, so a commit is just ignored."""
    t = Turn(ready=False)
    assert t.commit() == [Notice("info", "commit ignored: nothing is being recorded (idle)")]
    assert t.cancel() == []


# --------------------------------------------------------------------------- outcomes


def _outcome_of(drive: str) -> tuple[list[tuple[int, Outcome]], list[str]]:
    t = Turn()
    if drive == "completed":
        t.speak()
        t.event(done("resp_1"))
        t.playback_done(1)
    elif drive == "cancel-listening":
        t.start()
        t.audio(300)
        t.cancel()
    elif drive == "cancel-speaking":
        t.speak()
        t.cancel(Played("item_1", 100))
    elif drive == "barge-in":
        t.speak()
        t.start(Played("item_1", 100))
    elif drive == "too-short":
        t.start()
        t.audio(40)
        t.commit()
    elif drive == "failed-create":
        t.think()
        t.event(error("rate_limit_exceeded", "slow down", "response_1"))
    elif drive == "failed-response":
        t.speak()
        t.event(done("resp_1", "failed", "boom"))
        t.playback_done(1)
    elif drive == "lost":  # the link drops mid-answer and is not back in time to ask again
        t.speak()
        t.connection_lost()
        t._check(t.ctl.tick(t.now + 10.0))
    return t.ended, t.chimes


@pytest.mark.parametrize(
    ("drive", "ended", "chimes"),
    [
        ("completed", [(1, Outcome.COMPLETED)], ["listening", "commit"]),
        ("cancel-listening", [(1, Outcome.CANCELLED)], ["listening"]),
        ("cancel-speaking", [(1, Outcome.CANCELLED)], ["listening", "commit"]),
        ("barge-in", [(1, Outcome.INTERRUPTED)], ["listening", "commit", "listening"]),
        ("too-short", [(1, Outcome.TOO_SHORT)], ["listening", "too_short"]),
        ("failed-create", [(1, Outcome.FAILED)], ["listening", "commit", "error"]),
        ("failed-response", [(1, Outcome.FAILED)], ["listening", "commit", "error"]),
        ("lost", [(1, Outcome.LOST)], ["listening", "commit", "error"]),
    ],
)
def test_every_turn_ends_with_one_typed_outcome_and_its_earcons(
    drive: str, ended: list[tuple[int, Outcome]], chimes: list[str]
):
    assert _outcome_of(drive) == (ended, chimes)


def test_turn_over_comes_before_the_state_change_and_says_why() -> None:
    ctl = TurnController()
    ctl.server_event(p.SessionUpdated("session.updated", {}))
    ctl.command(TurnCommand(Command.START, "gpio"), 0.0)
    ctl.audio_sent(4800 * 3)
    actions = ctl.command(TurnCommand(Command.CANCEL, "http"), 1.0)
    over = [a for a in actions if isinstance(a, TurnOver)]
    assert over == [TurnOver(1, Outcome.CANCELLED, "cancelled by http")]
    assert actions.index(over[0]) < next(
        i for i, a in enumerate(actions) if type(a).__name__ == "Changed"
    )


def test_a_session_expiry_mid_answer_says_so_and_asks_again() -> None:
    t = Turn().speak()
    expired = error("session_expired", "Your session hit the maximum duration of 60 minutes.", None)
    # The server ending the session is news, not a failure of the turn.
    assert t.event(expired) == [
        Notice(
            "info",
            "the server ended the session: Your session hit the maximum duration of 60 minutes.",
        )
    ]
    assert t.state is SPEAKING
    actions = t.connection_lost("ended (1001)")
    said = "the session expired: Your session hit the maximum duration of 60 minutes."
    assert Notice("warning", f"{said}; asking again when the link is back") in actions
    assert t.ended == []  # not lost: asked again on the fresh session
    t.event(p.SessionUpdated("session.updated", {}))
    assert t.sent[-2:] == [
        p.InputAudioBufferCommit(event_id="commit_1"),
        p.ResponseCreate(event_id="response_1"),
    ]


# --------------------------------------------------------------------------- stuck button


def test_listening_ends_at_the_stuck_button_deadline_with_a_commit() -> None:
    t = Turn(max_turn_s=60.0)
    assert t.ctl.deadline == math.inf
    t.now = 100.0
    t.start()
    assert t.ctl.deadline == 160.0
    t.audio(2000)
    assert t._check(t.ctl.tick(159.99)) == []
    actions = t._check(t.ctl.tick(160.0))
    assert actions[0] == Notice(
        "warning", "still listening after 60 s (a stuck button?): sending what was heard"
    )
    assert actions[1:] == [
        Send(p.InputAudioBufferCommit(event_id="commit_1")),
        Send(p.ResponseCreate(event_id="response_1")),
        Changed(LISTENING, THINKING),
    ]
    assert t.ctl.deadline == 175.0  # now the server's silence limit (see below)


def test_the_stuck_button_limit_can_cancel_instead() -> None:
    t = Turn(max_turn_s=5.0, on_max_turn="cancel")
    t.start()
    t.audio(2000)
    actions = t._check(t.ctl.tick(5.0))
    assert actions == [
        Notice("warning", "still listening after 5 s (a stuck button?): cancelled"),
        Send(p.InputAudioBufferClear(event_id="clear_1")),
        Changed(LISTENING, IDLE),
    ]
    assert t.ended == [(1, Outcome.CANCELLED)]


def test_the_deadline_counts_from_each_new_turn() -> None:
    t = Turn(max_turn_s=10.0).speak()
    t.now = 50.0
    t.start(Played("item_1", 10))  # barge-in: a new turn, a new deadline
    assert t.ctl.deadline == 60.0


# --------------------------------------------------------------------------- renewal


def test_renewal_while_idle_reconnects_at_once_and_refuses_presses_until_ready() -> None:
    t = Turn()
    assert t.ctl.renew() == [Reconnect()]
    assert t.start() == [Notice("warning", "start refused: renewing the session")]
    assert t.connection_lost("closed to renew") == []  # idle: nothing lost
    t.event(p.SessionUpdated("session.updated", {}))
    assert t.start() == [Changed(IDLE, LISTENING)]


def test_renewal_waits_for_the_turn_in_flight() -> None:
    t = Turn().speak()
    assert t.ctl.renew() == []
    t.event(done("resp_1"))
    actions = t.ctl.playback_done(1)
    assert actions[-1] == Reconnect()
    assert t.state is IDLE


def test_renewal_waits_for_a_cancelled_response_to_end() -> None:
    t = Turn().think()
    t.event(created("resp_1"))
    t.cancel()
    assert t.ctl.renew() == []  # resp_1 is still being cancelled on the server
    assert t.ctl.server_event(done("resp_1", "cancelled", "client_cancelled")) == [Reconnect()]


# --------------------------------------------------------------------------- transcripts


def test_transcripts_are_matched_to_their_turn_by_id() -> None:
    t = Turn().speak()
    t.event(p.InputAudioBufferCommitted("input_audio_buffer.committed", "item_u1"))
    t.event(done("resp_1"))
    t.playback_done(1)
    t.start()  # turn 2 begins before turn 1's transcripts arrive
    user = p.InputTranscriptionCompleted(
        "conversation.item.input_audio_transcription.completed", "item_u1", "hello"
    )
    agent = p.OutputTranscriptDone(
        "response.output_audio_transcript.done", "resp_1", "item_1", "hi there"
    )
    assert t.event(user) == [Transcribed("user", "hello", 1, "item_u1")]
    assert t.event(agent) == [Transcribed("agent", "hi there", 1, "item_1", response_id="resp_1")]


def test_transcript_deltas_are_matched_to_their_turn_and_marked_not_final() -> None:
    t = Turn().speak()
    t.event(p.InputAudioBufferCommitted("input_audio_buffer.committed", "item_u1"))
    t.event(done("resp_1"))
    t.playback_done(1)
    t.start()
    user = p.TranscriptDelta(
        "conversation.item.input_audio_transcription.delta", "item_u1", None, "hel"
    )
    agent = p.TranscriptDelta("response.output_audio_transcript.delta", "item_1", "resp_1", "hi")
    assert t.event(user) == [Transcribed("user", "hel", 1, "item_u1", final=False)]
    assert t.event(agent) == [Transcribed("agent", "hi", 1, "item_1", False, "resp_1")]


def test_a_failed_transcription_is_a_warning() -> None:
    t = Turn()
    failed = p.InputTranscriptionFailed(
        "conversation.item.input_audio_transcription.failed", "item_u1", "bad audio"
    )
    assert t.event(failed) == [Notice("warning", "transcription of item_u1 failed: bad audio")]


# --------------------------------------------------------------------------- protocol cases


def test_a_reply_of_two_items_plays_both_and_ends_once() -> None:
    """A preamble item, then the answer item, in one response: both play, gapless."""
    t = Turn().think()
    t.event(created("resp_1"))
    pre, answer = delta("resp_1", "item_pre", 300), delta("resp_1", "item_ans", 1000)
    assert t.event(pre) == [Changed(THINKING, SPEAKING), Play(pre, 1)]
    assert t.event(answer) == [Play(answer, 1)]
    assert t.event(done("resp_1")) == [EndPlayback(1)]
    assert t.playback_done(1) == [Changed(SPEAKING, IDLE)]


def test_a_barge_in_during_the_second_item_truncates_that_item() -> None:
    t = Turn().think()
    t.event(created("resp_1"))
    t.event(delta("resp_1", "item_pre", 300))
    t.event(delta("resp_1", "item_ans", 800))
    assert t.start(Played("item_ans", 250)) == [
        StopPlayback(1),
        Send(p.ResponseCancel("resp_1", event_id="cancel_1")),
        Send(p.ConversationItemTruncate("item_ans", 250, event_id="truncate")),
        Changed(SPEAKING, LISTENING),
    ]


def test_response_events_without_id_or_status_are_followed() -> None:
    t = Turn().think()
    assert t.event(p.ResponseCreated("response.created", None)) == []
    reply = delta("resp_x", "item_1", 200)
    assert t.event(reply) == [Changed(THINKING, SPEAKING), Play(reply, 1)]  # named by its audio
    assert t.event(p.ResponseDone("response.done", None, None, None)) == [EndPlayback(1)]
    assert t.playback_done(1) == [Changed(SPEAKING, IDLE)]
    assert t.ended == [(1, Outcome.COMPLETED)]


def test_a_response_done_without_id_ends_a_cancelled_response() -> None:
    t = Turn().think()
    t.event(p.ResponseCreated("response.created", None))
    t.start()  # barge-in: the response has no name, cancel "the one in progress"
    t.audio(300)
    t.commit()
    assert t.event(p.ResponseDone("response.done", None, None, None)) == [
        Send(p.ResponseCreate(event_id="response_2"))
    ]


def test_a_response_done_before_any_create_is_not_believed() -> None:
    t = Turn()
    assert t.event(p.ResponseDone("response.done", None, "completed", None)) == []
    assert t.event(delta("resp_1")) == []
    assert (t.state, t.ended) == (IDLE, [])
    assert t.ignored == ["the end of a response never created", "audio of a response never created"]


def test_events_of_a_response_never_created_are_not_believed_mid_turn() -> None:
    """Thinking: a done, audio and a transcript for some other response change nothing; the
    turn's own response then plays and ends as usual."""
    t = Turn().think()
    assert t.event(done("resp_other")) == []
    assert t.event(delta("resp_other")) == []
    stray = p.OutputTranscriptDone("response.output_audio_transcript.done", "resp_other", "i", "x")
    assert t.event(stray) == []
    user = p.InputTranscriptionCompleted(
        "conversation.item.input_audio_transcription.completed", "item_never", "hi"
    )
    assert t.event(user) == []
    assert (t.state, t.ended) == (THINKING, [])
    t.event(created("resp_1"))
    assert t.event(done("resp_other")) == []  # still not ours
    t.event(delta("resp_1"))
    assert t.state is SPEAKING
    t.event(done("resp_1"))
    t.playback_done()
    assert t.ended == [(1, Outcome.COMPLETED)]
    assert t.ignored == [
        "the end of a response never created",
        "audio of a response never created",
        "a transcript of a response never created",
        "a transcript of audio never committed",
        "the end of a response never created",
    ]


def test_a_barge_in_during_the_first_item_truncates_that_item_though_the_next_arrived() -> None:
    """The server sends faster than real time: the answer item may have arrived while the
    preamble still plays. The truncate names the item that was playing, not the last received."""
    t = Turn().think()
    t.event(created("resp_1"))
    t.event(delta("resp_1", "item_pre", 300))
    t.event(delta("resp_1", "item_ans", 800))
    actions = t.start(Played("item_pre", 160))
    assert Send(p.ConversationItemTruncate("item_pre", 160, event_id="truncate")) in actions


def test_a_barge_in_before_anything_played_truncates_the_first_item_at_zero() -> None:
    t = Turn().think()
    t.event(created("resp_1"))
    t.event(delta("resp_1", "item_pre", 300))
    t.event(delta("resp_1", "item_ans", 800))
    actions = t.start(None)
    assert Send(p.ConversationItemTruncate("item_pre", 0, event_id="truncate")) in actions


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("setup", "command", "verdict"),
    [
        ("idle", Command.START, ("accepted", "listening")),
        ("idle", Command.TOGGLE, ("accepted", "listening")),
        ("idle", Command.COMMIT, ("conflict", "nothing is being recorded (idle)")),
        ("idle", Command.CANCEL, ("conflict", "nothing to cancel (idle)")),
        ("listening", Command.START, ("conflict", "already listening")),
        ("listening", Command.COMMIT, ("accepted", "sending what was heard")),
        ("listening", Command.TOGGLE, ("accepted", "sending what was heard")),
        ("listening", Command.CANCEL, ("accepted", "cancelled")),
        ("speaking", Command.START, ("accepted", "listening")),
        ("speaking", Command.COMMIT, ("conflict", "nothing is being recorded (speaking)")),
        ("speaking", Command.CANCEL, ("accepted", "cancelled")),
        (
            "offline",
            Command.START,
            ("unavailable", "not connected to the realtime server (gone)"),
        ),
    ],
)
def test_every_command_gets_a_verdict_that_says_what_became_of_it(
    setup: str, command: Command, verdict: tuple[str, str]
):
    t = Turn()
    if setup == "listening":
        t.start()
        t.audio(300)
    elif setup == "speaking":
        t.speak()
    elif setup == "offline":
        t.connection_lost("gone")
    t.verdicts.clear()
    t.do(command, Played("item_1", 10))
    assert [(v.kind, v.reason) for v in t.verdicts] == [verdict]


def test_a_commit_without_reply_sends_the_audio_and_ends_the_turn() -> None:
    t = Turn()
    t.start()
    t.audio(500)
    assert t.do(Command.COMMIT, reply=False) == [
        Send(p.InputAudioBufferCommit(event_id="commit_1")),
        Changed(LISTENING, IDLE),
    ]
    assert not any(isinstance(e, p.ResponseCreate) for e in t.sent)
    assert t.ended == [(1, Outcome.COMPLETED)]
    assert t.chimes == ["listening", "commit"]
    t.start()  # the next turn starts at once: nothing is in flight
    t.audio(300)
    assert t.commit()[1] == Send(p.ResponseCreate(event_id="response_2"))


def test_every_response_s_usage_is_reported_for_its_turn_even_after_a_barge_in() -> None:
    t = Turn().speak()
    t.start(Played("item_1", 100))  # turn 1 is over; its response ends later
    usage = p.Usage(input_text=10, input_audio=50, input_cached=4, output_text=7, output_audio=90)
    t.event(p.ResponseDone("response.done", "resp_1", "cancelled", "client_cancelled", usage))
    assert [(s.turn, s.usage) for s in t.spent] == [(1, usage)]


# --------------------------------------------------------------------------- a stalled server


def test_a_server_silent_while_thinking_ends_the_turn_lost_and_reconnects() -> None:
    t = Turn(silence_s=15.0)
    t.now = 100.0
    t.think()
    assert t.ctl.deadline == 115.0
    t.ctl.heard(110.0)  # any word from the server: it is alive
    assert t.ctl.deadline == 125.0
    assert t._check(t.ctl.tick(124.9)) == []
    t.create_outstanding = False  # the fresh session has no response in flight
    assert t._check(t.ctl.tick(125.0)) == [
        Notice("error", "lost: the server said nothing for 15 s while answering; reconnecting"),
        Changed(THINKING, IDLE),
        Reconnect(),
    ]
    assert t.ended == [(1, Outcome.LOST)]
    assert t.chimes[-1] == "error"
    assert t.ctl.deadline == math.inf
    assert t.start()[0] == Notice("warning", "start refused: renewing the session")


def test_a_server_silent_mid_reply_stops_the_speaker_first() -> None:
    t = Turn(silence_s=15.0)
    t.speak()
    t.ctl.heard(3.0)
    t.create_outstanding = False
    actions = t._check(t.ctl.tick(18.0))
    assert actions[0] == StopPlayback(1)
    assert actions[-2:] == [Changed(SPEAKING, IDLE), Reconnect()]
    assert t.ended == [(1, Outcome.LOST)]


def test_once_the_answer_is_in_silence_is_fine() -> None:
    """After response.done the rest is played here: the server may say nothing for ever."""
    t = Turn(silence_s=15.0)
    t.speak()
    t.event(done("resp_1"))
    assert t.ctl.deadline == math.inf
    assert t._check(t.ctl.tick(1000.0)) == []
    assert t.state is SPEAKING
