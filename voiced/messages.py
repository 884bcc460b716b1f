"""What the daemon's tasks tell the session task: one inbound channel, in the order it happened.

The microphone's frames, the inputs' commands, the server's events, the transport's news and the
speaker's news all travel as messages; no task reads another's objects. A message that a task
sends is the only way the session learns of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from voiced import protocol as p
from voiced.audio import AudioFrame, EndOfReply
from voiced.errors import TransportError
from voiced.events import DeviceChanged, PluginChanged
from voiced.turn import TurnCommand

# Plain, not frozen, dataclasses: on CPython 3.11 a frozen one costs twice as much to define,
# and this module is on every start-up path (bench/README.md). Treat instances as immutable.


@dataclass
class Connected:
    """The server accepted the connection (``session.created`` arrived, the configuration is
    sent)."""

    session_id: str | None


@dataclass
class Disconnected:
    """The connection ended or could not be made; ``error`` None: closed on purpose to renew."""

    error: TransportError | None


@dataclass
class CommitSent:
    """An ``input_audio_buffer.commit`` was written to the socket at trio time ``at``."""

    at: float


@dataclass
class PlaybackStarted:
    """The first sample of the reply of ``turn`` reached the speaker at trio time ``at``."""

    turn: int
    at: float


@dataclass
class RenewSession:
    """A fresh session is wanted (before this one expires, or with new settings): reconnect
    once the daemon is idle; ``hello``, when given, configures this and every later session."""

    hello: p.SessionUpdate | None = None


@dataclass
class Alive:
    """Asks the session loop whether it still turns (systemd's watchdog): it calls ``answer``."""

    answer: Callable[[], None] = field(repr=False)


@dataclass
class Shutdown:
    """Sent last: finish, flush downstream, and return."""


Inbound = (
    AudioFrame
    | TurnCommand
    | p.ServerEvent
    | Connected
    | Disconnected
    | CommitSent
    | EndOfReply
    | PlaybackStarted
    | RenewSession
    | Alive
    | DeviceChanged
    | PluginChanged
    | Shutdown
)
"""Everything the session task reads, from every producer."""

TransportNews = p.ServerEvent | Connected | Disconnected | CommitSent | RenewSession
"""What the transport sends the session."""
PlaybackNews = EndOfReply | PlaybackStarted
"""What the speaker's task sends the session."""
