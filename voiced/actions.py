"""What the turn controller asks the session to do: its actions, carried out in order.

Each is a plain value; ``voiced.turn`` decides them, ``voiced.session`` carries them out and holds
no rule of its own. Reply audio, stops and ends of playback are keyed by turn number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from voiced import protocol as p

if TYPE_CHECKING:
    from voiced.turn import Outcome, State

# Plain, not frozen, dataclasses: on CPython 3.11 a frozen one costs twice as much to define,
# and this module is on every start-up path (bench/README.md). Treat instances as immutable.


@dataclass
class Send:
    """Send this client event, in order with the audio already handed over."""

    event: p.ClientEvent


@dataclass
class Play:
    """Hand this reply audio of ``turn`` to the speaker."""

    delta: p.OutputAudioDelta
    turn: int


@dataclass
class EndPlayback:
    """The reply of ``turn`` is complete: the speaker reports when it has played all of it."""

    turn: int


@dataclass
class StopPlayback:
    """Stop the speaker now and drop the rest of the reply of ``turn`` (and of any before)."""

    turn: int


@dataclass
class Played:
    """How much of an assistant item came out of the speaker, for a barge-in truncate."""

    item_id: str
    ms: int


@dataclass
class Truncate:
    """Read the speaker's position (after the stop before this), and truncate the item that was
    playing there.

    Attributes:
        received_ms: milliseconds received of each assistant item of the reply, in order: a
            reply can hold several (a preamble, then the answer), the server sends them faster
            than they play, and it rejects a truncate past an item's end.
    """

    received_ms: dict[str, int]

    def event(self, played: Played | None) -> p.ConversationItemTruncate:
        """The truncate, given the speaker's position (None: it played nothing): the item that
        was playing, at what came out of it; else the reply's first item, at 0."""
        if played is not None and played.item_id in self.received_ms:
            ms = min(played.ms, self.received_ms[played.item_id])
            return p.ConversationItemTruncate(played.item_id, ms, event_id="truncate")
        first = next(iter(self.received_ms))
        return p.ConversationItemTruncate(first, 0, event_id="truncate")


@dataclass
class Changed:
    """The state changed, during ``turn``."""

    old: State
    new: State
    turn: int


@dataclass
class Notice:
    """Something an operator should read: ``level`` is ``info``, ``warning`` or ``error``."""

    level: Literal["info", "warning", "error"]
    message: str


@dataclass
class Chime:
    """Play this earcon: ``listening``, ``commit``, ``error`` or ``too_short``."""

    name: Literal["listening", "commit", "error", "too_short"]


@dataclass
class TurnOver:
    """``turn`` ended this way; ``reason`` says why when it did not complete."""

    turn: int
    outcome: Outcome
    reason: str | None = None


@dataclass
class Transcribed:
    """A transcript of one side of ``turn``: final, or the next piece of one."""

    role: Literal["user", "agent"]
    text: str
    turn: int
    item_id: str
    final: bool = True
    response_id: str | None = None


@dataclass
class Verdict:
    """What becomes of a command, for the input that sent it (the first action of each).

    Attributes:
        kind: ``accepted`` (carried out), ``conflict`` (not in this state: a commit while
            idle) or ``unavailable`` (not now: the session is not ready).
        reason: why, in words for a person.
    """

    kind: Literal["accepted", "conflict", "unavailable"]
    reason: str


@dataclass
class Spent:
    """The reply of ``turn`` used these tokens (every response, cancelled ones too)."""

    turn: int
    usage: p.Usage


@dataclass
class Ready:
    """The session is configured: turns can start (news for the sinks and ``/status``)."""


@dataclass
class Reconnect:
    """Close the connection and open a fresh session now (the daemon is idle)."""


@dataclass
class Resend:
    """Send again every sample heard in ``turn`` (the link was lost; this is a fresh session)."""

    turn: int


@dataclass
class Ignored:
    """A server event was not believed: it contradicts the turn in flight (``why``). Counted in
    ``/status`` and ``/metrics``; ``first`` when it is the first of its kind (logged then)."""

    why: str
    event: str
    """The event's type."""
    first: bool


Action = (
    Send
    | Play
    | EndPlayback
    | StopPlayback
    | Truncate
    | Changed
    | Notice
    | Chime
    | TurnOver
    | Transcribed
    | Verdict
    | Spent
    | Ready
    | Reconnect
    | Resend
    | Ignored
)
