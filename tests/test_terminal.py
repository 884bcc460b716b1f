"""The ``terminal`` input through a real pseudo-terminal: the test types on the master side."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from voiced.turn import Command, TurnCommand
from voiced_plugins.terminal import TerminalConfig, TerminalInput


class Handle:
    """The plugin's view of the daemon: a real command channel (nothing else is used)."""

    def __init__(self, commands: trio.MemorySendChannel[TurnCommand]) -> None:
        self.commands = commands

    def subscribe(self) -> Any:
        raise AssertionError("the terminal input reads no events")

    def status(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


async def test_enter_toggles(pty: tuple[int, int]) -> None:
    master, slave = pty
    flags = fcntl.fcntl(slave, fcntl.F_GETFL)
    send, receive = trio.open_memory_channel[TurnCommand](8)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(TerminalInput(TerminalConfig(), fd=slave).run, Handle(send))
            os.write(master, b"\n")
            assert await receive.receive() == TurnCommand(Command.TOGGLE, "terminal")
            os.write(master, b"hello\n\n")  # anything typed before Enter is ignored
            assert await receive.receive() == TurnCommand(Command.TOGGLE, "terminal")
            assert await receive.receive() == TurnCommand(Command.TOGGLE, "terminal")
            nursery.cancel_scope.cancel()
    # The descriptor's flags are put back: the terminal's stdout shares them.
    assert fcntl.fcntl(slave, fcntl.F_GETFL) == flags


async def test_no_terminal_does_nothing(tmp_path: Any) -> None:
    path = tmp_path / "not-a-tty"
    path.write_text("\n\n")
    send, receive = trio.open_memory_channel[TurnCommand](8)
    with open(path) as file, trio.fail_after(10):  # noqa: ASYNC230 (a test fixture file)
        async with trio.open_nursery() as nursery:
            await nursery.start(TerminalInput(TerminalConfig(), fd=file.fileno()).run, Handle(send))
        send.close()
        assert [c async for c in receive] == []
