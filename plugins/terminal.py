"""The ``terminal`` input: press Enter to start talking, Enter again to send.

With no terminal on standard input (in the background, under systemd) it does nothing and says
so once; the daemon keeps running and takes commands from its other inputs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from dataclasses import dataclass

import trio

from voiced import Command, Daemon, Event, PluginSpec, State, StateChanged, TurnCommand, hookimpl

log = logging.getLogger("voiced.terminal")


@dataclass(frozen=True)
class TerminalConfig:
    """No settings: ``terminal: {}`` turns it on."""


class TerminalInput:
    def __init__(self, config: TerminalConfig, fd: int | None = None) -> None:
        self.config = config
        self.fd = sys.stdin.fileno() if fd is None else fd

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if not os.isatty(self.fd):
            log.info("no terminal on standard input: use the other inputs (e.g. HTTP)")
            task_status.started()
            return
        # FdStream makes the descriptor non-blocking, and a terminal's stdin shares its open file
        # with stdout: put the flags back however this ends.
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        stream = trio.lowlevel.FdStream(os.dup(self.fd))
        try:
            async with stream, trio.open_nursery() as nursery:
                nursery.start_soon(_prompt, daemon.subscribe(StateChanged))
                log.info(PROMPTS[State.IDLE])
                task_status.started()
                while data := await stream.receive_some():
                    for _ in range(data.count(b"\n")):
                        await daemon.commands.send(TurnCommand(Command.TOGGLE, "terminal"))
                nursery.cancel_scope.cancel()
        finally:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags)


PROMPTS = {
    State.IDLE: "press Enter to talk",
    State.LISTENING: "listening... press Enter to send",
    State.THINKING: "thinking...",
    State.SPEAKING: "speaking... press Enter to interrupt and talk",
}


async def _prompt(events: trio.abc.ReceiveChannel[Event]) -> None:
    """Tell the person at the terminal what Enter will do now."""
    async with events:
        async for event in events:
            if isinstance(event, StateChanged):
                log.info(PROMPTS[event.new])


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec(
        "terminal", "Enter in the terminal toggles talking", TerminalConfig, TerminalInput,
        input=True,
    )  # fmt: skip
