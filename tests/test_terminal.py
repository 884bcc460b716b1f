"""The ``terminal`` input through a real pseudo-terminal: the test types on the master side."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from voiced.events import StateChanged
from voiced.testing import FakeDaemon
from voiced.turn import Command, State, TurnCommand
from voiced_plugins.terminal import TerminalConfig, TerminalInput

TOGGLE = TurnCommand(Command.TOGGLE, "terminal")


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
    fake = FakeDaemon()
    with trio.fail_after(10):
        async with fake.running(TerminalInput(TerminalConfig(), fd=slave), input=True):
            os.write(master, b"\n")
            assert await fake.next_command() == TOGGLE
            # The person is told what Enter does next.
            fake.publish(StateChanged(State.IDLE, State.LISTENING, 1))
            fake.publish(StateChanged(State.LISTENING, State.THINKING, 1))
            await trio.testing.wait_all_tasks_blocked()
            assert caplog.messages[-2:] == ["listening... press Enter to send", "thinking..."]
            os.write(master, b"hello\n\n")  # anything typed before Enter is ignored
            assert await fake.next_command() == TOGGLE
            assert await fake.next_command() == TOGGLE
            await trio.testing.wait_all_tasks_blocked()
            assert fake.commands_received == [TOGGLE] * 3
    # The descriptor's flags are put back: the terminal's stdout shares them.
    assert fcntl.fcntl(slave, fcntl.F_GETFL) == flags


async def test_no_terminal_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "not-a-tty"
    path.write_text("\n\n")
    fake = FakeDaemon()
    with open(path) as file, trio.fail_after(10):  # noqa: ASYNC230 (a test fixture file)
        async with trio.open_nursery() as nursery:
            await nursery.start(TerminalInput(TerminalConfig(), fd=file.fileno()).run, fake)
        # The nursery is done: the input returned by itself, having read nothing.
    assert fake.commands_received == []
    assert fake.subscriptions == []
