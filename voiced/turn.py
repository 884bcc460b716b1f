"""The push-to-talk turn controller: a pure state machine, no I/O, and every push-to-talk rule.

idle → listening (start) → thinking (commit) → speaking (first reply audio) → idle (reply played),
with barge-in from thinking or speaking straight back to listening. Feed it commands, server events,
playback news, the connection's news and the time; read back the ``Action``s it wants carried out,
in order. The rules:

- a start is refused while the session is not ready (not connected, or not configured yet), with
  the reason; a toggle is resolved here, once, into a start or a commit;
- a commit of less than 100 ms of audio sends ``input_audio_buffer.clear``, never a commit;
- a commit is always followed by ``response.create``, and never two responses are in flight: when
  the previous one was cancelled but is not done yet, the create waits for its ``response.done``;
- a barge-in (start while thinking or speaking) stops the speaker, then reads its position,
  cancels the response if it is not done, truncates the item that was playing at what came out,
  and drops the cancelled response's audio from then on;
- a server ``error`` answering the commit clears the input buffer (the server keeps the audio);
- listening ends by itself at the stuck-button deadline (``max_turn_s``): commit, or cancel;
- every turn ends with one typed ``Outcome``, and transcripts are matched to their turn by id;
- a ``session_expired`` error is the server ending the session, not a failure of the turn.

Reply audio, stops and ends of playback are keyed by turn number, which only grows: response ids
start again on every connection, turn numbers never do.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from voiced import protocol as p
from voiced.actions import (
    Action,
    Changed,
    Chime,
    EndPlayback,
    Ignored,
    Notice,
    Play,
    Ready,
    Reconnect,
    Resend,
    Send,
    Spent,
    StopPlayback,
    Transcribed,
    Truncate,
    TurnOver,
    Verdict,
)
from voiced.audio import BYTES_PER_MS, MIN_COMMIT_MS

# Plain, not frozen, dataclasses: on CPython 3.11 a frozen one costs twice as much to define,
# and this module is on every start-up path (bench/README.md). Treat instances as immutable.

RECENT_IDS = 32
"""Item and response ids remembered to match late transcripts to their turn."""


class State(enum.StrEnum):
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


class Command(enum.StrEnum):
    START = "start"
    COMMIT = "commit"
    CANCEL = "cancel"
    TOGGLE = "toggle"


class Outcome(enum.StrEnum):
    """How a turn ended."""

    COMPLETED = "completed"
    """The reply was played to its end."""
    INTERRUPTED = "interrupted"
    """A new press barged in on the reply."""
    CANCELLED = "cancelled"
    """A cancel command (or the stuck-button limit, so configured) ended it."""
    TOO_SHORT = "too_short"
    """Less than 100 ms was heard: nothing was sent."""
    FAILED = "failed"
    """The server refused the commit or the response, or the response failed."""
    LOST = "lost"
    """The connection ended (or the session expired) before the turn did."""


@dataclass
class TurnCommand:
    """What an input asks for.

    Attributes:
        command: start, commit, cancel or toggle.
        source: the input's name, for logs.
        at: the trio time the daemon received it (set on the way in); latencies count from it.
        reply: a commit asks for a spoken answer; false only sends what was heard.
        on_verdict: called with what became of it (accepted, conflict, unavailable), so an
            input can answer honestly (an HTTP status); it must not block.
    """

    command: Command
    source: str = ""
    at: float | None = None
    reply: bool = True
    on_verdict: Callable[[Verdict], None] | None = field(default=None, compare=False, repr=False)


class TurnController:
    """The push-to-talk state machine. Not thread-safe; one task owns it.

    Args:
        max_turn_s: seconds of listening before the stuck-button limit ends it.
        on_max_turn: what the limit does: ``commit`` what was heard, or ``cancel`` it.
        silence_s: seconds the server may say nothing while an answer is awaited; then the
            link is taken as stalled: the turn ends ``lost`` and a fresh session is opened.
        hold_s: a turn whose link drops while listening keeps its audio this long for the
            link to come back; then it is sent (and committed, if the press ended meanwhile).
        retry_window_s: a turn whose answer the lost link cut off is asked again on the next
            connection if that is ready within this many seconds.
    """

    def __init__(
        self,
        *,
        max_turn_s: float = 60.0,
        on_max_turn: Literal["commit", "cancel"] = "commit",
        silence_s: float = 15.0,
        hold_s: float = 30.0,
        retry_window_s: float = 10.0,
    ) -> None:
        self.turns = 0
        """Turns started (each ``start`` from idle or barge-in)."""
        self.ready = False
        """The session is configured (``session.updated``) and a turn can start."""
        self._max_turn_s = max_turn_s
        self._on_max_turn = on_max_turn
        self._silence_s = silence_s
        self._hold_s = hold_s
        self._retry_window_s = retry_window_s
        self._now = 0.0  # the latest trio time this controller was told
        self._offline = "not connected to the realtime server yet"  # why not ready
        self._fatal: str | None = None  # the fatal failure last chimed for, until ready again
        self._expired: str | None = None  # the server said the session expired
        self._renew = False  # a fresh session is wanted as soon as the daemon is idle
        self._turn_of: dict[str, int] = {}  # item or response id → turn, for transcripts
        self._ignored_seen: set[str] = set()  # kinds of events not believed, logged once each
        self._reset()

    def _reset(self) -> None:
        self.state = State.IDLE
        self._listen_until = math.inf  # the stuck-button limit, while listening
        self._silence_until = math.inf  # the server's silence limit, while an answer is awaited
        self._held_until = math.inf  # while the turn waits for the link: how long it may
        self._held = False  # the turn waits for the link: its audio is resent once ready
        self._held_for = 0.0  # how long it may wait
        self._held_reply = True  # a held commit asks for an answer
        self._outcome = Outcome.COMPLETED  # how the current turn ends unless something happens
        self._reason: str | None = None
        self._buffered = 0  # bytes of audio appended in the current listening phase
        self._in_flight = False  # a response.create was sent and its response.done not seen
        self._created = False  # response.created arrived for the response in flight
        self._response_id: str | None = None  # the response in flight, once known
        self._response_turn = 0  # the turn the response in flight answers
        self._cancel_unnamed = False  # a cancel was sent before the response had an id
        self._cancelled: set[str] = set()
        self._create_pending = False  # a commit is waiting for the previous response to end
        self._items: dict[str, int] = {}  # bytes received of each item of the reply spoken
        self._commit_id: str | None = None  # event id of the current turn's commit
        self._create_id: str | None = None  # event id of the response.create in flight

    @property
    def deadline(self) -> float:
        """Trio time at which ``tick`` must be called: the stuck-button limit while listening,
        the server's silence limit while an answer is awaited, the limit on waiting for the
        link while a turn is held."""
        return min(self._listen_until, self._silence_until, self._held_until)

    # ------------------------------------------------------------------ inputs

    def command(self, cmd: TurnCommand, now: float) -> list[Action]:
        """Handle an input's command, received at trio time ``now``. The first action is always
        its ``Verdict``."""
        self._now = now
        kind = cmd.command
        if kind is Command.TOGGLE:
            kind = Command.COMMIT if self.state is State.LISTENING else Command.START
        if kind is Command.START:
            if self.state is State.LISTENING:
                return [Verdict("conflict", "already listening")]
            if not self.ready:
                said = f"{cmd.command} refused: {self._offline}"
                return [
                    Verdict("unavailable", self._offline),
                    Notice("warning", said),
                    Chime("error"),
                ]
            return [Verdict("accepted", "listening"), *self._start(cmd, now)]
        if kind is Command.COMMIT:
            if self.state is not State.LISTENING:
                said = f"nothing is being recorded ({self.state})"
                return [Verdict("conflict", said), Notice("info", f"commit ignored: {said}")]
            return [Verdict("accepted", "sending what was heard"), *self._commit(cmd.reply)]
        if self.state is State.IDLE:
            return [Verdict("conflict", "nothing to cancel (idle)")]
        cancelled = self._cancel(Outcome.CANCELLED, f"cancelled by {cmd.source or 'an input'}")
        return [Verdict("accepted", "cancelled"), *cancelled]

    def tick(self, now: float) -> list[Action]:
        """The time is ``now``: end listening that reached its deadline (a stuck button), an
        answer the server stopped sending (a stalled link), or a turn that waited too long for
        the link to come back."""
        self._now = now
        if now >= self._held_until:
            self._held_until = math.inf
            if self._held:
                return self._give_up()
        if now >= self._silence_until:
            self._silence_until = math.inf
            if self._awaiting():
                return self._stalled()
        if now >= self._listen_until:
            self._listen_until = math.inf
            if self.state is State.LISTENING:
                return self._stuck()
        return []

    def _stuck(self) -> list[Action]:
        said = f"still listening after {self._max_turn_s:g} s (a stuck button?)"
        if self._on_max_turn == "cancel":
            return [Notice("warning", f"{said}: cancelled"), *self._cancel(Outcome.CANCELLED, said)]
        return [Notice("warning", f"{said}: sending what was heard"), *self._commit()]

    def heard(self, now: float) -> None:
        """The server said something at ``now``: while an answer is awaited, it is alive."""
        self._now = now
        if self._awaiting():
            self._silence_until = now + self._silence_s

    def _awaiting(self) -> bool:
        return (
            self.ready
            and self.state in (State.THINKING, State.SPEAKING)
            and (self._in_flight or self._create_pending)
        )

    def _give_up(self) -> list[Action]:
        """The link did not come back in time for the held turn."""
        said = f"the link was not back within {self._held_for:g} s"
        self._outcome, self._reason = Outcome.LOST, said
        actions: list[Action] = [Notice("warning", f"lost: {said}")]
        actions += self._end()
        self._reset()
        return actions

    def _stalled(self) -> list[Action]:
        """The server went silent mid-answer: end the turn as lost, open a fresh session."""
        said = f"the server said nothing for {self._silence_s:g} s while answering"
        actions: list[Action] = [StopPlayback(self.turns)] if self.state is State.SPEAKING else []
        actions.append(Notice("error", f"lost: {said}; reconnecting"))
        self._outcome, self._reason = Outcome.LOST, said
        actions += self._end()
        self._reset()
        return [*actions, *self.renew()]

    def audio_sent(self, nbytes: int) -> None:
        """Account for audio handed to the encoder while listening."""
        self._buffered += nbytes

    def server_event(self, event: p.ServerEvent) -> list[Action]:
        """Handle a server event; audio deltas come back as ``Play`` unless cancelled."""
        if isinstance(event, p.OutputAudioDelta):
            return self._delta(event)
        if isinstance(event, p.ResponseCreated):
            if self._in_flight and not self._created:
                self._created = True
                self._name_response(event.response_id)
            return []
        if isinstance(event, p.ResponseDone):
            return self._response_done(event)
        if isinstance(event, p.ErrorEvent):
            return self._error(event)
        if isinstance(event, p.SessionUpdated):
            ready, self.ready = self.ready, True
            self._fatal = None
            if ready:
                return []
            return [Ready(), *self._resume()] if self._held else [Ready()]
        if isinstance(event, p.InputAudioBufferCommitted):
            self._remember(event.item_id, self.turns)
            return []
        if isinstance(event, p.InputTranscriptionCompleted):
            turn = self._turn_of.get(event.item_id)
            if turn is None:
                return [self._ignored("a transcript of audio never committed", event)]
            return [Transcribed("user", event.transcript, turn, event.item_id)]
        if isinstance(event, p.OutputTranscriptDone):
            turn = self._agent_turn(event.response_id)
            if turn is None:
                return [self._ignored("a transcript of a response never created", event)]
            text, item, rid = event.transcript, event.item_id, event.response_id
            return [Transcribed("agent", text, turn, item, response_id=rid)]
        if isinstance(event, p.TranscriptDelta):
            of = event.response_id
            role: Literal["user", "agent"] = "user" if of is None else "agent"
            turn = self._turn_of.get(event.item_id) if of is None else self._agent_turn(of)
            if turn is None:
                return [self._ignored(f"a transcript of {role} audio never sent or created", event)]
            return [Transcribed(role, event.delta, turn, event.item_id, False, of)]
        if isinstance(event, p.InputTranscriptionFailed):
            return [Notice("warning", f"transcription of {event.item_id} failed: {event.message}")]
        return []

    def playback_done(self, turn: int) -> list[Action]:
        """The speaker has played every sample of the reply of ``turn``."""
        if self.state is State.SPEAKING and turn == self._response_turn:
            return self._end()
        return []

    def connection_lost(
        self, why: str, *, fatal: bool = False, now: float | None = None
    ) -> list[Action]:
        """The connection ended at ``now``. Nothing heard is lost: a turn being heard keeps its
        audio for the link to come back (``hold_s``), a turn whose answer was cut off is asked
        again (within ``retry_window_s``), an answer all received plays out. A ``fatal`` failure
        (a person must act) sounds the error earcon once, however often it is retried."""
        if now is not None:
            self._now = now
        heard = self._fatal
        self._fatal = why if fatal else None
        if fatal and why != heard:
            return [Chime("error"), *self._lost(why)]
        return self._lost(why)

    def _lost(self, why: str) -> list[Action]:
        self.ready = False
        self._renew = False  # the next connection is a fresh session anyway
        expired, self._expired = self._expired, None
        self._offline = f"not connected to the realtime server ({expired or why})"
        said = expired or f"connection ended: {why}"
        old = self.state
        if old is State.IDLE:
            self._reset()
            return []
        cut = self._in_flight or self._create_pending  # an answer was awaited
        self._forget_response()  # the old session's response is gone with it
        if self._held:
            return []  # held already: it keeps waiting, within its limit
        if old is State.SPEAKING and not cut:
            return []  # the whole answer is here: it plays out
        if old is State.LISTENING:
            self._hold(self._hold_s)
            said = f"{said}; keeping what is heard until the link is back"
            return [Notice("warning", said)]
        # The answer was cut off, or never came: ask again once the link is back.
        actions: list[Action] = []
        if old is State.SPEAKING:
            actions += [StopPlayback(self.turns), *self._to(State.THINKING)]
        self._hold(self._retry_window_s)
        said = f"{said}; asking again when the link is back"
        return [*actions, Notice("warning", said)]

    def _hold(self, seconds: float) -> None:
        self._held, self._held_for = True, seconds
        self._held_until = self._now + seconds
        self._silence_until = math.inf

    def _forget_response(self) -> None:
        """Forget the response of a lost session."""
        self._in_flight = self._created = self._cancel_unnamed = self._create_pending = False
        self._response_id = None
        self._cancelled.clear()

    def renew(self) -> list[Action]:
        """A fresh session is wanted (before the old one expires): now if idle, else after the
        turn in flight."""
        if self.state is State.IDLE and not self._in_flight:
            self._renew = False
            self.ready = False
            self._offline = "renewing the session"
            return [Reconnect()]
        self._renew = True
        return []

    # ------------------------------------------------------------------ rules

    def _to(self, new: State) -> list[Action]:
        old, self.state = self.state, new
        return [Changed(old, new, self.turns)] if old is not new else []

    def _over(self) -> list[Action]:
        """End the current turn with its outcome (the state is changed by the caller)."""
        actions: list[Action] = [TurnOver(self.turns, self._outcome, self._reason)]
        if self._outcome in (Outcome.FAILED, Outcome.LOST):
            actions.append(Chime("error"))
        self._outcome, self._reason = Outcome.COMPLETED, None
        self._listen_until = self._silence_until = self._held_until = math.inf
        self._held = False
        return actions

    def _end(self) -> list[Action]:
        """End the current turn and go idle (renewing the session if that was waiting)."""
        actions = [*self._over(), *self._to(State.IDLE)]
        if self._renew and not self._in_flight:
            actions += self.renew()
        return actions

    def _start(self, cmd: TurnCommand, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.state is not State.IDLE:
            actions = self._interrupt()
            self._outcome, self._reason = Outcome.INTERRUPTED, f"barge-in from {cmd.source}"
            actions += self._over()
        self.turns += 1
        self._buffered = 0
        self._listen_until = now + self._max_turn_s
        return [*actions, *self._to(State.LISTENING), Chime("listening")]

    def _commit(self, reply: bool = True) -> list[Action]:
        ms = self._buffered / BYTES_PER_MS
        if ms < MIN_COMMIT_MS:
            said = f"too short: {int(ms)} ms < {MIN_COMMIT_MS} ms, discarded"
            self._outcome, self._reason = Outcome.TOO_SHORT, said
            return [
                Send(p.InputAudioBufferClear(event_id=f"clear_{self.turns}")),
                Notice("warning", said),
                *self._end(),
                Chime("too_short"),
            ]
        self._listen_until = math.inf
        if self._held:  # the link is away: commit with the audio once it is back
            self._held_reply = reply
            return [*self._to(State.THINKING), Chime("commit")]
        self._commit_id = f"commit_{self.turns}"
        actions: list[Action] = [Send(p.InputAudioBufferCommit(event_id=self._commit_id))]
        if not reply:  # dictation: what was heard is sent, and that is the whole turn
            return [*actions, Chime("commit"), *self._end()]
        if self._in_flight:
            self._create_pending = True
        else:
            actions.append(self._create())
        self._silence_until = self._now + self._silence_s
        return [*actions, *self._to(State.THINKING), Chime("commit")]

    def _resume(self) -> list[Action]:
        """The link is back for the held turn: send its audio again, then commit it (and ask
        for the answer) unless it is still being heard."""
        self._held, self._held_until = False, math.inf
        actions: list[Action] = [Resend(self.turns)]
        if self.state is State.LISTENING:
            return actions
        self._commit_id = f"commit_{self.turns}"
        actions.append(Send(p.InputAudioBufferCommit(event_id=self._commit_id)))
        if not self._held_reply:
            return [*actions, *self._end()]
        self._silence_until = self._now + self._silence_s
        return [*actions, self._create()]

    def _create(self) -> Send:
        self._in_flight = True
        self._created = False
        self._response_id = None
        self._response_turn = self.turns
        self._cancel_unnamed = False
        self._create_pending = False
        self._create_id = f"response_{self.turns}"
        return Send(p.ResponseCreate(event_id=self._create_id))

    def _cancel(self, outcome: Outcome, why: str) -> list[Action]:
        self._outcome, self._reason = outcome, why
        if self.state is State.LISTENING:
            send = Send(p.InputAudioBufferClear(event_id=f"clear_{self.turns}"))
            return [send, *self._end()]
        return [*self._interrupt(), *self._end()]

    def _interrupt(self) -> list[Action]:
        """Stop the reply being thought or spoken (barge-in or cancel)."""
        actions: list[Action] = []
        self._create_pending = False
        if self.state is State.SPEAKING:
            actions.append(StopPlayback(self.turns))
            if self._items:
                received = {item: n // BYTES_PER_MS for item, n in self._items.items()}
                actions.append(Truncate(received))
        if (
            self._in_flight
            and not self._cancel_unnamed
            and self._response_id not in self._cancelled
        ):
            if self._response_id is None:
                self._cancel_unnamed = True
            else:
                self._cancelled.add(self._response_id)
            actions.insert(
                1 if actions else 0,
                Send(p.ResponseCancel(self._response_id, event_id=f"cancel_{self.turns}")),
            )
        return actions

    def _agent_turn(self, response_id: str) -> int | None:
        """The turn a response answers; None for one never created."""
        if self._in_flight and self._created and self._response_id is None:
            self._name_response(response_id)  # response.created carried no id
        return self._turn_of.get(response_id)

    def _ignored(self, why: str, event: p.ServerEvent) -> Ignored:
        first = why not in self._ignored_seen
        self._ignored_seen.add(why)
        return Ignored(why, event.type, first)

    def _name_response(self, response_id: str | None) -> None:
        """The response in flight is called ``response_id`` (learnt late when created had none)."""
        if response_id is None:
            return
        self._response_id = response_id
        self._remember(response_id, self._response_turn)
        if self._cancel_unnamed:
            self._cancelled.add(response_id)

    def _delta(self, event: p.OutputAudioDelta) -> list[Action]:
        if self._in_flight and self._created and self._response_id is None:
            self._name_response(event.response_id)  # response.created carried no id
        if event.response_id in self._cancelled:
            return []  # audio of a cancelled response still coming: expected, never played
        if event.response_id != self._response_id:
            return [self._ignored("audio of a response never created", event)]
        if self.state is State.THINKING and self._response_turn == self.turns:
            self._items = {}
            actions: list[Action] = [*self._to(State.SPEAKING)]
        elif self.state is State.SPEAKING:
            actions = []
        else:
            return []
        # A reply may hold several items (a preamble, then the answer), each counted.
        self._items[event.item_id] = self._items.get(event.item_id, 0) + len(event.audio)
        return [*actions, Play(event, self.turns)]

    def _response_done(self, event: p.ResponseDone) -> list[Action]:
        rid = event.response_id
        # Ours: the response in flight, once created (or cancelled before we learnt its name).
        ours = self._in_flight and (self._created or self._cancel_unnamed)
        if not ours or (rid is not None and self._response_id not in (None, rid)):
            return [self._ignored("the end of a response never created", event)]
        if self._response_id is None:
            self._name_response(rid)
        self._in_flight = False
        if not self._awaiting():
            self._silence_until = math.inf  # what is left to play is played here
        actions: list[Action] = []
        if event.usage is not None:
            actions.append(Spent(self._response_turn, event.usage))
        cancelled = self._cancel_unnamed or (rid or self._response_id) in self._cancelled
        self._cancelled.discard(rid or "")
        status = event.status or ("cancelled" if cancelled else "completed")
        if status not in ("completed", "cancelled") or (status == "cancelled" and not cancelled):
            why = f": {event.reason}" if event.reason else ""
            said = f"response {status}{why}"
            actions.append(Notice("error", said))
            if self._response_turn == self.turns:
                self._outcome, self._reason = Outcome.FAILED, said
        if self._create_pending:
            actions.append(self._create())
        elif self.state is State.SPEAKING and not cancelled:
            actions.append(EndPlayback(self.turns))
        elif self.state is State.THINKING:
            actions += self._end()  # a response with no audio at all
        elif self.state is State.IDLE and self._renew:
            actions += self.renew()
        return actions

    def _error(self, event: p.ErrorEvent) -> list[Action]:
        code = f" ({event.code})" if event.code else ""
        said = f"server error{code}: {event.message}"
        if event.code == "session_expired":
            self._expired = f"the session expired: {event.message}"
            return [Notice("info", f"the server ended the session: {event.message}")]
        failed = event.event_id
        if failed is not None and failed == self._create_id and self._in_flight:
            # The create was refused: no response.done will come for it.
            self._in_flight = False
            self._create_id = None
            if self._cancel_unnamed or self._response_id in self._cancelled:
                # Its turn was already given up (barge-in): release a create that waits on it.
                return [
                    Notice("warning", said),
                    *([self._create()] if self._create_pending else []),
                ]
            if self.state is State.THINKING:
                self._outcome, self._reason = Outcome.FAILED, said
                return [Notice("error", said), *self._end()]
        elif failed is not None and failed == self._commit_id and self.state is State.THINKING:
            # The server keeps the audio of a commit it refused: clear it, or the next turn's
            # reply would answer both. The response.create that followed is called off.
            self._outcome, self._reason = Outcome.FAILED, said
            return [
                Notice("error", said),
                *self._interrupt(),
                Send(p.InputAudioBufferClear(event_id=f"clear_{self.turns}")),
                *self._end(),
            ]
        return [Notice("warning", said)]

    def _remember(self, some_id: str, turn: int) -> None:
        self._turn_of[some_id] = turn
        while len(self._turn_of) > RECENT_IDS:
            del self._turn_of[next(iter(self._turn_of))]
