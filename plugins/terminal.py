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

from voiced import Command, Daemon, PluginSpec, TurnCommand, hookimpl

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
            async with stream:
                log.info("press Enter to talk, Enter again to send")
                task_status.started()
                while data := await stream.receive_some():
                    for _ in range(data.count(b"\n")):
                        await daemon.commands.send(TurnCommand(Command.TOGGLE, "terminal"))
        finally:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags)


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec(
        "terminal", "Enter in the terminal toggles talking", TerminalConfig, TerminalInput,
        input=True,
    )  # fmt: skip
