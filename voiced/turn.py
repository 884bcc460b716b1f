"""The push-to-talk turn controller: a pure state machine, no I/O.

idle → listening (start) → thinking (commit) → speaking (first reply audio) → idle (reply played),
with barge-in from thinking or speaking straight back to listening. Feed it commands, server events
and playback news; read back the ``Action``s it wants carried out, in order. Every rule of
push-to-talk lives here:

- a commit of less than 100 ms of audio sends ``input_audio_buffer.clear``, never a commit;
- a commit is always followed by ``response.create``, and never two responses are in flight: when
  the previous one was cancelled but is not done yet, the create waits for its ``response.done``;
- ``start`` while the agent thinks or speaks is a barge-in: stop playback, ``response.cancel``
  (if the response is not done), ``conversation.item.truncate`` at the milliseconds actually
  played, and reply audio of the cancelled response is dropped from then on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from voiced import protocol as p
from voiced.audio import BYTES_PER_MS, MIN_COMMIT_MS

# Plain, not frozen, dataclasses: on CPython 3.11 a frozen one costs twice as much to define,
# and this module is on every start-up path (bench/README.md). Treat instances as immutable.


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


@dataclass
class TurnCommand:
    """What an input asks for. ``source`` names the input, for logs; ``at`` is the trio time
    the daemon received it (set on the way in), from which latencies are measured."""

    command: Command
    source: str = ""
    at: float | None = None


# --------------------------------------------------------------------------- actions


@dataclass
class Send:
    """Send this client event, in order with the audio already handed over."""

    event: p.ClientEvent


@dataclass
class Play:
    """Hand this reply audio to playback."""

    delta: p.OutputAudioDelta


@dataclass
class EndPlayback:
    """The response's audio is complete: playback reports when it has played all of it."""

    response_id: str


@dataclass
class StopPlayback:
    """Stop the speaker now and drop the rest of this response's audio."""

    response_id: str | None


@dataclass
class Changed:
    """The state changed."""

    old: State
    new: State


@dataclass
class Notice:
    """Something an operator should read: ``level`` is ``info``, ``warning`` or ``error``."""

    level: str
    """``info``; ``warning``; ``error`` when the turn failed because of it."""
    message: str


Action = Send | Play | EndPlayback | StopPlayback | Changed | Notice


@dataclass
class Played:
    """How much of an assistant item came out of the speaker, for a barge-in truncate."""

    item_id: str
    ms: int


class TurnController:
    """The push-to-talk state machine. Not thread-safe; one task owns it."""

    def __init__(self) -> None:
        self.turns = 0
        """Turns started (each ``start`` from idle or barge-in)."""
        self._reset()

    def _reset(self) -> None:
        self.state = State.IDLE
        self._buffered = 0  # bytes of audio appended in the current listening phase
        self._in_flight = False  # a response.create was sent and its response.done not seen
        self._response_id: str | None = None  # the response in flight, once created
        self._cancel_unnamed = False  # a cancel was sent before the response had an id
        self._cancelled: set[str] = set()
        self._create_pending = False  # a commit is waiting for the previous response to end
        self._item_id: str | None = None  # assistant item of the response being spoken
        self._item_bytes = 0  # reply bytes received for that item
        self._speaking_response: str | None = None
        self._commit_id: str | None = None  # event id of the current turn's commit
        self._create_id: str | None = None  # event id of the response.create in flight

    @property
    def listening(self) -> bool:
        """Whether captured audio should be sent now (the gate)."""
        return self.state is State.LISTENING

    # ------------------------------------------------------------------ inputs

    def command(self, cmd: TurnCommand, played: Played | None = None) -> list[Action]:
        """Handle an input's command.

        Args:
            cmd: the command.
            played: the speaker's position (item and milliseconds played), for a barge-in.
        """
        kind = cmd.command
        if kind is Command.TOGGLE:
            kind = Command.COMMIT if self.state is State.LISTENING else Command.START
        if kind is Command.START:
            return self._start(played)
        if kind is Command.COMMIT:
            return self._commit()
        return self._cancel(played)

    def audio_sent(self, nbytes: int) -> None:
        """Account for audio handed to the encoder while listening."""
        self._buffered += nbytes

    def server_event(self, event: p.ServerEvent) -> list[Action]:
        """Handle a server event; audio deltas come back as ``Play`` unless cancelled."""
        if isinstance(event, p.OutputAudioDelta):
            return self._delta(event)
        if isinstance(event, p.ResponseCreated):
            if self._in_flight and self._response_id is None:
                self._response_id = event.response_id
                if self._cancel_unnamed:
                    self._cancelled.add(event.response_id)
            return []
        if isinstance(event, p.ResponseDone):
            return self._response_done(event)
        if isinstance(event, p.ErrorEvent):
            return self._error(event)
        return []

    def playback_done(self, response_id: str) -> list[Action]:
        """Playback has played every sample of ``response_id``."""
        if self.state is State.SPEAKING and response_id == self._speaking_response:
            return self._to(State.IDLE)
        return []

    def connection_lost(self) -> list[Action]:
        """The connection ended: whatever was in flight is gone with it."""
        actions: list[Action] = []
        if self.state is State.SPEAKING:
            actions.append(StopPlayback(self._speaking_response))
        old = self.state
        if old is not State.IDLE:
            actions.append(Notice("warning", f"turn lost while {old}: connection ended"))
        self._reset()
        return actions + ([Changed(old, State.IDLE)] if old is not State.IDLE else [])

    # ------------------------------------------------------------------ rules

    def _to(self, new: State) -> list[Action]:
        old, self.state = self.state, new
        return [Changed(old, new)] if old is not new else []

    def _start(self, played: Played | None) -> list[Action]:
        if self.state is State.LISTENING:
            return []
        actions = self._interrupt(played) if self.state is not State.IDLE else []
        self.turns += 1
        self._buffered = 0
        return actions + self._to(State.LISTENING)

    def _commit(self) -> list[Action]:
        if self.state is not State.LISTENING:
            return [Notice("info", f"commit ignored: nothing is being recorded ({self.state})")]
        ms = self._buffered / BYTES_PER_MS
        if ms < MIN_COMMIT_MS:
            return [
                Send(p.InputAudioBufferClear(event_id=f"clear_{self.turns}")),
                Notice("warning", f"too short: {int(ms)} ms < {MIN_COMMIT_MS} ms, discarded"),
                *self._to(State.IDLE),
            ]
        self._commit_id = f"commit_{self.turns}"
        actions: list[Action] = [Send(p.InputAudioBufferCommit(event_id=self._commit_id))]
        if self._in_flight:
            self._create_pending = True
        else:
            actions.append(self._create())
        return actions + self._to(State.THINKING)

    def _create(self) -> Send:
        self._in_flight = True
        self._response_id = None
        self._cancel_unnamed = False
        self._create_pending = False
        self._create_id = f"response_{self.turns}"
        return Send(p.ResponseCreate(event_id=self._create_id))

    def _cancel(self, played: Played | None) -> list[Action]:
        if self.state is State.IDLE:
            return []
        if self.state is State.LISTENING:
            send = Send(p.InputAudioBufferClear(event_id=f"clear_{self.turns}"))
            return [send, *self._to(State.IDLE)]
        return self._interrupt(played) + self._to(State.IDLE)

    def _interrupt(self, played: Played | None) -> list[Action]:
        """Stop the reply being thought or spoken (barge-in or cancel)."""
        actions: list[Action] = []
        self._create_pending = False
        if self.state is State.SPEAKING:
            actions.append(StopPlayback(self._speaking_response))
            if self._item_id is not None:
                heard = played.ms if played is not None and played.item_id == self._item_id else 0
                # Never claim more than was received: the server rejects a truncate past the end.
                end_ms = min(heard, self._item_bytes // BYTES_PER_MS)
                actions.append(
                    Send(p.ConversationItemTruncate(self._item_id, end_ms, event_id="truncate"))
                )
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

    def _delta(self, event: p.OutputAudioDelta) -> list[Action]:
        if event.response_id in self._cancelled or event.response_id != self._response_id:
            return []  # audio of a cancelled (or unknown) response is never played
        if self.state is State.THINKING:
            self._speaking_response = event.response_id
            self._item_id, self._item_bytes = event.item_id, 0
            actions: list[Action] = [*self._to(State.SPEAKING), Play(event)]
        elif self.state is State.SPEAKING:
            actions = [Play(event)]
        else:
            return []
        if event.item_id != self._item_id:
            self._item_id, self._item_bytes = event.item_id, 0
        self._item_bytes += len(event.audio)
        return actions

    def _response_done(self, event: p.ResponseDone) -> list[Action]:
        if not self._in_flight or (
            self._response_id is not None and event.response_id != self._response_id
        ):
            return []
        self._in_flight = False
        actions: list[Action] = []
        cancelled = event.response_id in self._cancelled or self._cancel_unnamed
        self._cancelled.discard(event.response_id)
        if event.status not in ("completed", "cancelled") or (
            event.status == "cancelled" and not cancelled
        ):
            why = f": {event.reason}" if event.reason else ""
            actions.append(Notice("error", f"response {event.status}{why}"))
        if self._create_pending:
            actions.append(self._create())
        elif self.state is State.SPEAKING and not cancelled:
            actions.append(EndPlayback(event.response_id))
        elif self.state is State.THINKING:
            actions += self._to(State.IDLE)  # a response with no audio at all
        return actions

    def _error(self, event: p.ErrorEvent) -> list[Action]:
        code = f" ({event.code})" if event.code else ""
        said = f"server error{code}: {event.message}"
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
                return [Notice("error", said), *self._to(State.IDLE)]
        elif failed is not None and failed == self._commit_id and self.state is State.THINKING:
            # The response.create that followed has no new input to answer: call it off.
            return [Notice("error", said), *self._interrupt(None), *self._to(State.IDLE)]
        return [Notice("warning", said)]
