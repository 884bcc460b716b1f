"""What the daemon tells its sinks: transcripts, state changes, finished turns, the connection
and the devices.

A sink subscribes to the kinds it wants on a bounded channel of its own
(``voiced.broadcast.Broadcast``); ``/status`` is built from the same events (``voiced.status``).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from voiced.protocol import Usage
from voiced.turn import Outcome, State

# Plain, not frozen, dataclasses: on CPython 3.11 a frozen one costs twice as much to define,
# and this module is on every start-up path (bench/README.md). Treat instances as immutable.


def new_id() -> str:
    """A unique event id: it travels with the event to every sink, so a subscriber that gets an
    event twice (an outbox resending after a crash) sees it is the same one."""
    return uuid.uuid4().hex


@dataclass
class Transcript:
    """A transcript of one side of a turn: final, or a live piece of one (``final`` false).

    Attributes:
        role: ``user`` (what the microphone heard) or ``agent`` (what the reply said).
        text: the transcript (a delta: the next piece of it).
        turn: the turn it belongs to (1-based, counted since the daemon started).
        item_id: the conversation item on the server.
        at: wall-clock time (Unix seconds) it arrived.
        final: the whole transcript, not a delta.
        response_id: the response it belongs to (agent transcripts), when known.
        session_id: the realtime session it came from, when known.
        id: the event's own id (see ``new_id``).
    """

    role: Literal["user", "agent"]
    text: str
    turn: int
    item_id: str
    at: float
    final: bool = True
    response_id: str | None = None
    session_id: str | None = None
    id: str = field(default_factory=new_id, compare=False)


@dataclass
class StateChanged:
    """The turn controller moved from ``old`` to ``new`` during ``turn``."""

    old: State
    new: State
    turn: int


@dataclass
class TurnEnded:
    """A turn is over.

    Attributes:
        turn: which.
        outcome: ``completed`` (the reply was played), ``interrupted`` (a barge-in),
            ``cancelled``, ``too_short``, ``failed`` (a server error or failed response) or
            ``lost`` (the connection ended or the session expired).
        latencies: milliseconds, each present when measured: ``commit`` (the press that ended
            listening → the commit on the wire), ``first_audio`` (commit on the wire → first reply
            audio received), ``first_play`` (first reply audio received → its first sample
            reached the speaker).
        reason: why it did not complete, when it did not.
        usage: the tokens its reply used, when the server said so before the turn ended.
    """

    turn: int
    outcome: Outcome
    latencies: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    usage: Usage | None = None
    session_id: str | None = None
    at: float = field(default_factory=time.time, compare=False)
    id: str = field(default_factory=new_id, compare=False)


@dataclass
class TokensUsed:
    """A reply of ``turn`` used these tokens: every response, cancelled ones too (what the
    kiosk costs)."""

    turn: int
    usage: Usage


@dataclass
class ConnectionChanged:
    """The link to the realtime server came up, became ready for turns (the session is
    configured), or went down (``error`` says why; None when closed on purpose to renew)."""

    connected: bool
    ready: bool = False
    error: str | None = None
    fatal: bool = False
    """A person must act (a rejected key or device, no quota): voiced retries only now and
    then until it works."""


@dataclass
class DeviceChanged:
    """The microphone or the speaker failed (``error`` says why) or works again (None)."""

    device: Literal["microphone", "speaker"]
    name: str
    error: str | None


@dataclass
class PluginChanged:
    """A plugin failed (``error`` says why: a full disk, a broker away) or works again (None)."""

    name: str
    error: str | None


DaemonStateName = Literal["idle", "listening", "thinking", "speaking", "error", "offline"]


@dataclass
class DaemonState:
    """What the daemon shows a person (an LED, a display), changed.

    ``offline``: not ready for a turn (``reason`` says why); ``error``: a device is failing, or
    the last turn failed or was lost (until the next press); else the turn's state.
    """

    state: DaemonStateName
    reason: str | None = None
    at: float = field(default_factory=time.time, compare=False)
    id: str = field(default_factory=new_id, compare=False)


Event = (
    Transcript
    | StateChanged
    | TurnEnded
    | TokensUsed
    | ConnectionChanged
    | DeviceChanged
    | PluginChanged
    | DaemonState
)
