"""Status and turn measurements, built from events: what ``/status`` shows, and what ``/metrics``
and state events read. Pure: no trio, no I/O.

``TurnMeter`` times a turn from the moments the session passes it (the press that ends listening,
the commit on the wire, the first reply audio, its first sample played) and gives the latencies
when the turn ends. ``Status`` is fed every event the session publishes and keeps the figures;
nothing else keeps a copy. Devices and the socket keep their own counters (``statistics()``),
which are read when a snapshot is taken.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voiced.events import ConnectionChanged, Event, StateChanged, TurnEnded
from voiced.turn import State


class TurnMeter:
    """The latencies of the current turn, from the moments it is told of (trio times)."""

    def __init__(self) -> None:
        self._turn = 0
        self._marks: dict[str, float] = {}

    def started(self, turn: int) -> None:
        """A new turn began: forget the last one's moments."""
        self._turn, self._marks = turn, {}

    def mark(self, name: str, at: float, turn: int | None = None) -> None:
        """The first time ``name`` happened in this turn (``pressed``, ``commit_sent``,
        ``first_audio``, ``first_play``); a moment of another ``turn`` is ignored."""
        if turn is None or turn == self._turn:
            self._marks.setdefault(name, at)

    def latencies(self) -> dict[str, float]:
        """Milliseconds between the moments, each present when both ends were seen in order:
        ``commit`` (pressed → commit_sent), ``first_audio`` (commit_sent → first_audio),
        ``first_play`` (first_audio → first_play)."""
        out = {}
        for name, start, end in (
            ("commit", "pressed", "commit_sent"),
            ("first_audio", "commit_sent", "first_audio"),
            ("first_play", "first_audio", "first_play"),
        ):
            a, b = self._marks.get(start), self._marks.get(end)
            if a is not None and b is not None and b >= a:
                out[name] = round((b - a) * 1000, 1)
        return out


@dataclass
class Status:
    """What the daemon is doing, from the events it published."""

    url: str
    model: str
    state: State = State.IDLE
    turns: int = 0
    connected: bool = False
    ready: bool = False
    """Connected and the session configuration acknowledged: a turn can start."""
    last_error: str | None = None
    last_turn: TurnEnded | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    """How many turns ended each way (``completed``, ``too_short``...)."""

    def apply(self, event: Event) -> None:
        """Take in one published event."""
        if isinstance(event, StateChanged):
            self.state = event.new
            self.turns = max(self.turns, event.turn)
        elif isinstance(event, TurnEnded):
            self.last_turn = event
            self.outcomes[event.outcome] = self.outcomes.get(event.outcome, 0) + 1
        elif isinstance(event, ConnectionChanged):
            self.connected, self.ready = event.connected, event.ready
            if event.connected:
                self.last_error = None
            elif event.error is not None:
                self.last_error = event.error

    def to_json(
        self,
        *,
        devices: Mapping[str, Callable[[], Mapping[str, object]]],
        link: Mapping[str, int],
        dropped: Mapping[str, int],
    ) -> dict[str, Any]:
        """The snapshot ``/status`` shows.

        Args:
            devices: each device's ``statistics`` by role (``input``, ``output``).
            link: the socket's counters.
            dropped: events dropped per sink.
        """
        last = self.last_turn
        return {
            "state": str(self.state),
            "turns": self.turns,
            "connected": self.connected,
            "ready": self.ready,
            "realtime": {"url": self.url, "model": self.model},
            "audio": {role: dict(stats()) for role, stats in devices.items()},
            "last_error": self.last_error,
            "last_turn": None
            if last is None
            else {
                "turn": last.turn,
                "outcome": str(last.outcome),
                "reason": last.reason,
                "latencies_ms": last.latencies,
            },
            "outcomes": dict(self.outcomes),
            "connection": dict(link),
            "sinks": {name: {"dropped": n} for name, n in dropped.items()},
        }
