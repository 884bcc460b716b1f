"""The ``terminal`` input through a real pseudo-terminal: the test types on the master side."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from voiced.events import Event, StateChanged
from voiced.turn import Command, State, TurnCommand
from voiced_plugins.terminal import TerminalConfig, TerminalInput


class Handle:
    """The plugin's view of the daemon: real channels, fed by the test."""

    def __init__(self, commands: trio.MemorySendChannel[TurnCommand]) -> None:
        self.commands = commands
        self.events, self._events = trio.open_memory_channel[Event](8)

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        return self._events

    def status(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


async def test_enter_toggles(pty: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:
    master, slave = pty
    caplog.set_level(logging.INFO, logger="voiced.terminal")
    flags = fcntl.fcntl(slave, fcntl.F_GETFL)
    send, receive = trio.open_memory_channel[TurnCommand](8)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = Handle(send)
            await nursery.start(TerminalInput(TerminalConfig(), fd=slave).run, handle)
            os.write(master, b"\n")
            assert await receive.receive() == TurnCommand(Command.TOGGLE, "terminal")
            # The person is told what Enter does next.
            await handle.events.send(StateChanged(State.IDLE, State.LISTENING, 1))
            await handle.events.send(StateChanged(State.LISTENING, State.THINKING, 1))
            await trio.testing.wait_all_tasks_blocked()
            assert caplog.messages[-2:] == ["listening... press Enter to send", "thinking..."]
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
