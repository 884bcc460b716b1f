"""The ``stdout`` sink: one line per final transcript, ``user: ...`` or ``agent: ...``."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import trio

from voiced import Daemon, PluginSpec, Transcript, hookimpl


@dataclass(frozen=True)
class StdoutConfig:
    """No settings: ``stdout: {}`` turns it on."""


class StdoutSink:
    def __init__(self, config: StdoutConfig) -> None:
        self.config = config

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        events = daemon.subscribe(Transcript)
        task_status.started()
        async with events:
            async for event in events:
                if isinstance(event, Transcript) and event.final:
                    # One short line at a time: a blocking write here is a terminal's pace.
                    sys.stdout.write(f"{event.role}: {event.text}\n")
                    sys.stdout.flush()


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec("stdout", "transcripts to standard output", StdoutConfig, StdoutSink)
