"""What a plugin is given and what it gives back: the whole plugin-author API besides the hook.

A plugin's ``run(daemon, task_status=...)`` is started with ``nursery.start`` and must call
``task_status.started()`` once it is ready (its port bound, its subscription made). An input sends
``TurnCommand``s on ``daemon.commands``; a sink reads the events it wants from
``daemon.subscribe(Transcript, ...)``, which ends when the daemon shuts down. Plugins never touch
the WebSocket or the audio devices. ``voiced.testing.FakeDaemon`` stands in for the daemon in a
plugin's tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from voiced.events import Event
from voiced.turn import TurnCommand


class Daemon(Protocol):
    """The daemon as a plugin sees it."""

    commands: trio.MemorySendChannel[TurnCommand]
    """This plugin's own clone of the command channel; closed for it when it finishes."""

    @property
    def device_id(self) -> str:
        """This kiosk's name in its events (``device_id``, else the host name)."""

    @property
    def state_dir(self) -> Path:
        """Where to keep what must outlive the daemon (an outbox); may not exist yet."""

    def report(self, error: str | None) -> None:
        """Say that this plugin fails now (``error``: why, for ``/status`` and the sinks) or
        works again (None). Never waits. Say each change once; the daemon logs nothing for it."""

    def resolve(self, path: str) -> Path:
        """A path from the plugin's config: relative ones under the state directory when one
        was given (``state_dir`` or ``$STATE_DIRECTORY``), else the working directory."""

    def subscribe(
        self, *kinds: type[Event], durable: bool = False
    ) -> trio.abc.ReceiveChannel[Event]:
        """A bounded queue of the events of ``kinds`` (every event, if none) from now on.

        A reader that does not keep up loses events (counted in ``/status``), never stalls the
        daemon; with ``durable`` a transcript is never dropped, for a sink that stores what it
        gets (an outbox). The queue ends when the daemon shuts down.
        """

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the daemon's state (what ``GET /status`` shows)."""

    async def set_volume(self, volume: float) -> None:
        """Set the speaker's volume (0.0 to 1.0) now; it is kept across restarts.

        Raises:
            ValueError: the volume is outside 0.0 to 1.0.
        """


class Plugin(Protocol):
    """A running plugin."""

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled (inputs) or until the event channel ends (sinks)."""


@dataclass(frozen=True)
class PluginSpec:
    """A plugin's self-description, returned by its ``voiced_plugin`` hook.

    Attributes:
        name: its entry-point name, which is also its section under ``plugins:``.
        description: one line, for ``voiced plugins``.
        config: a frozen dataclass; the section is validated into it (unknown keys are errors).
        create: builds the plugin from its validated config.
        input: it sends commands (not started by ``voiced ask``, which drives turns itself);
            inputs are stopped first at shutdown.
        sink: an input that also keeps events it must not lose (an outbox): it is stopped with
            the sinks instead, once the pipeline has drained and its events have ended.
    """

    name: str
    description: str
    config: type[Any]
    create: Callable[[Any], Plugin]
    input: bool = False
    sink: bool = False
