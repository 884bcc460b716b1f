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

from voiced.events import (
    ConnectionChanged,
    DaemonState,
    DaemonStateName,
    DeviceChanged,
    Event,
    PluginChanged,
    StateChanged,
    TurnEnded,
)
from voiced.protocol import Usage
from voiced.turn import Outcome, State


class TurnMeter:
    """The latencies of the current turn, from the moments it is told of (trio times)."""

    def __init__(self) -> None:
        self._turn = 0
        self._marks: dict[str, float] = {}
        self.usage: Usage | None = None
        """The tokens the current turn's reply used, once the server said."""

    def started(self, turn: int) -> None:
        """A new turn began: forget the last one's moments."""
        self._turn, self._marks, self.usage = turn, {}, None

    def spent(self, turn: int, usage: Usage) -> None:
        """The reply of ``turn`` used ``usage``."""
        if turn == self._turn:
            self.usage = usage

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


SHOWN: dict[State, DaemonStateName] = {
    State.IDLE: "idle",
    State.LISTENING: "listening",
    State.THINKING: "thinking",
    State.SPEAKING: "speaking",
}


@dataclass
class Status:
    """What the daemon is doing, from the events it published."""

    url: str
    model: str
    auth: str = ""
    """How voiced authenticates (``Credentials.describe()``: never a secret)."""
    state: State = State.IDLE
    turns: int = 0
    connected: bool = False
    ready: bool = False
    """Connected and the session configuration acknowledged: a turn can start."""
    last_error: str | None = None
    fatal: bool = False
    """The last connection failure needs a person (see ``ConnectionChanged.fatal``)."""
    last_turn: TurnEnded | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    """How many turns ended each way (``completed``, ``too_short``...)."""
    device_errors: dict[str, str] = field(default_factory=dict)
    """Why each failing device fails, by ``microphone`` / ``speaker``."""
    plugin_errors: dict[str, str] = field(default_factory=dict)
    """Why each failing plugin fails (a sink that cannot write), by name."""
    ignored: dict[str, int] = field(default_factory=dict)
    """Server events not believed (they contradicted the turn in flight), by why."""
    shown: DaemonState = field(init=False)
    """What the daemon shows a person now."""

    def __post_init__(self) -> None:
        self.shown = self._shown()

    def apply(self, event: Event) -> DaemonState | None:
        """Take in one published event; the new ``DaemonState`` when what is shown changed."""
        self._take(event)
        shown = self._shown()
        if shown == self.shown:
            return None
        self.shown = shown
        return shown

    def _shown(self) -> DaemonState:
        if not self.ready:
            if self.fatal and self.last_error:  # a person must act: more than being offline
                return DaemonState("error", self.last_error)
            return DaemonState("offline", self.last_error or "connecting")
        if self.device_errors:
            device, error = next(iter(self.device_errors.items()))
            return DaemonState("error", f"{device}: {error}")
        if self.state is not State.IDLE:
            return DaemonState(SHOWN[self.state])
        last = self.last_turn
        if last is not None and last.outcome in (Outcome.FAILED, Outcome.LOST):
            return DaemonState("error", f"turn {last.turn} {last.outcome}: {last.reason}")
        return DaemonState("idle")

    def _take(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            self.state = event.new
            self.turns = max(self.turns, event.turn)
        elif isinstance(event, TurnEnded):
            self.last_turn = event
            self.outcomes[event.outcome] = self.outcomes.get(event.outcome, 0) + 1
        elif isinstance(event, ConnectionChanged):
            self.connected, self.ready = event.connected, event.ready
            self.fatal = event.fatal
            if event.connected:
                self.last_error = None
            elif event.error is not None:
                self.last_error = event.error
        elif isinstance(event, PluginChanged):
            if event.error is None:
                self.plugin_errors.pop(event.name, None)
            else:
                self.plugin_errors[event.name] = event.error
        elif isinstance(event, DeviceChanged):
            if event.error is None:
                self.device_errors.pop(event.device, None)
            else:
                self.device_errors[event.device] = event.error

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
            "shown": {"state": self.shown.state, "reason": self.shown.reason},
            "turns": self.turns,
            "connected": self.connected,
            "ready": self.ready,
            "realtime": {"url": self.url, "model": self.model, "auth": self.auth},
            "audio": {role: dict(stats()) for role, stats in devices.items()},
            "last_error": self.last_error,
            "fatal": self.fatal,
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
            "device_errors": dict(self.device_errors),
            "plugin_errors": dict(self.plugin_errors),
            "ignored": dict(self.ignored),
        }
