"""The ``stdout`` sink: what was said, on standard output.

``format: text`` (the default): one line per final transcript, ``user: ...`` or ``agent: ...``.
With ``deltas: true`` the live pieces come first, as they arrive, on a line of their own that
starts ``user> `` or ``agent> `` (a piece of another transcript, or the final line, ends it);
then the final ``role: text`` line as without deltas.

``format: json``: one ``voiced.envelope`` object per line (README.md, "Events and
transcripts"): final transcripts, turn ends and state changes; with ``deltas: true`` the live
transcript pieces too (``"final": false``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Literal

import trio

from voiced import Daemon, PluginSpec, Transcript, hookimpl
from voiced.envelope import envelope
from voiced.events import DaemonState, Event, TurnEnded


@dataclass(frozen=True)
class StdoutConfig:
    format: Literal["text", "json"] = "text"
    """``text``: ``user: ...`` / ``agent: ...`` lines; ``json``: one envelope per line."""
    deltas: bool = False
    """Print the live pieces of transcripts as they arrive too."""


class StdoutSink:
    def __init__(self, config: StdoutConfig) -> None:
        self.config = config
        self._open_item: str | None = None  # the transcript whose live line is unfinished
        self._failing: str | None = None

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        json_lines = self.config.format == "json"
        kinds: tuple[type[Event], ...] = (
            (Transcript, TurnEnded, DaemonState) if json_lines else (Transcript,)
        )
        events = daemon.subscribe(*kinds)
        task_status.started()
        async with events:
            async for event in events:
                if isinstance(event, Transcript) and not (event.final or self.config.deltas):
                    continue
                if json_lines:
                    text = json.dumps(envelope(event, daemon.device_id), ensure_ascii=False)
                    self._print(daemon, text + "\n")
                elif isinstance(event, Transcript):
                    self._print(daemon, self._text(event))
            if self._open_item is not None:
                self._print(daemon, "\n")

    def _text(self, event: Transcript) -> str:
        """What a transcript adds to the text output."""
        ending = "\n" if self._open_item is not None else ""
        if event.final:
            self._open_item = None
            return f"{ending}{event.role}: {event.text}\n"
        if event.item_id == self._open_item:
            return event.text
        self._open_item = event.item_id
        return f"{ending}{event.role}> {event.text}"

    def _print(self, daemon: Daemon, text: str) -> None:
        # One short line at a time: a blocking write here is a terminal's pace.
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (OSError, ValueError) as exc:  # a closed pipe, a closed stream
            why = f"stdout sink: cannot write to standard output: {exc}"
            if why != self._failing:
                self._failing = why
                daemon.report(why)
            return
        if self._failing is not None:
            self._failing = None
            daemon.report(None)


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec(
        "stdout",
        "transcripts (or every event, as JSON lines) to standard output",
        StdoutConfig,
        StdoutSink,
    )
