"""The built-in plugins, each driven through ``voiced.testing.FakeDaemon`` as a third-party plugin's
tests would be; and the fake itself.

Real parts: the fake's command channel and broadcast are the daemon's own kinds, the file sink
writes a real file, and the terminal is a pseudo-terminal. The HTTP input has its own tests
(``tests/test_http.py``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from voiced.events import (
    ConnectionChanged,
    DaemonState,
    DeviceChanged,
    Event,
    StateChanged,
    Transcript,
    TurnEnded,
)
from voiced.plugin_api import Daemon
from voiced.status import Status
from voiced.testing import FakeDaemon, default_status
from voiced.turn import Command, Outcome, State, TurnCommand
from voiced_plugins.file import FileConfig, FileSink
from voiced_plugins.stdout import StdoutConfig, StdoutSink
from voiced_plugins.terminal import PROMPTS, TerminalConfig, TerminalInput

USER = Transcript("user", "what time is it?", 1, "item_u1", 1_700_000_000.125)
AGENT = Transcript("agent", "Il est midi, déjà.", 1, "item_a1", 1_700_000_001.5)
NOT_TRANSCRIPTS: list[Event] = [
    StateChanged(State.IDLE, State.LISTENING, 1),
    TurnEnded(1, Outcome.COMPLETED, {"commit": 12.0}),
    ConnectionChanged(True, True),
    DeviceChanged("speaker", "default", "unplugged"),
]


# ---------------------------------------------------------------------- stdout


async def test_stdout_prints_final_transcripts_only(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeDaemon()
    with trio.fail_after(10):
        async with fake.running(StdoutSink(StdoutConfig())):
            fake.publish(USER)
            for event in NOT_TRANSCRIPTS:
                fake.publish(event)
            fake.publish(AGENT)
    assert capsys.readouterr().out == "user: what time is it?\nagent: Il est midi, déjà.\n"
    # Transcripts only are queued for it: other events cannot crowd them out.
    assert [s.kinds for s in fake.subscriptions] == [(Transcript,)]


# ---------------------------------------------------------------------- file


async def test_file_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "transcripts.jsonl"
    path.write_text('{"earlier": true}\n', encoding="utf-8")
    fake = FakeDaemon()
    with trio.fail_after(10):
        async with fake.running(FileSink(FileConfig(str(path)))):
            fake.publish(USER)
            for event in NOT_TRANSCRIPTS:
                fake.publish(event)
            fake.publish(AGENT)
    assert [s.kinds for s in fake.subscriptions] == [(Transcript, TurnEnded, DaemonState)]
    assert fake.subscriptions[0].durable
    text = path.read_text(encoding="utf-8")
    assert "déjà" in text  # written as UTF-8, not \u escapes
    assert text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    assert records[0] == {"earlier": True}  # appended to, never truncated
    assert [(r["kind"], r.get("role"), r.get("state")) for r in records[1:]] == [
        ("transcript", "user", None),
        ("state", None, "listening"),  # what the fake showed for the StateChanged
        ("turn", None, None),
        ("state", None, "error"),  # the unplugged speaker
        ("transcript", "agent", None),
    ]
    assert records[1] == {
        "v": 1,
        "id": USER.id,
        "kind": "transcript",
        "time": "2023-11-14T22:13:20.125+00:00",
        "device_id": "test-kiosk",
        "session_id": None,
        "turn": 1,
        "role": "user",
        "text": "what time is it?",
        "final": True,
        "item_id": "item_u1",
        "response_id": None,
    }


async def test_file_creates_missing_folders(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "t.jsonl"
    fake = FakeDaemon()
    with trio.fail_after(10):
        async with fake.running(FileSink(FileConfig(str(path)))):
            fake.publish(USER)
    assert json.loads(path.read_text(encoding="utf-8"))["id"] == USER.id
    assert fake.reports == []


# ---------------------------------------------------------------------- terminal


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


async def test_terminal_prompt_follows_the_state(
    pty: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="voiced.terminal")
    fake = FakeDaemon()
    steps = [State.LISTENING, State.THINKING, State.SPEAKING, State.LISTENING, State.IDLE]
    with trio.fail_after(10):
        async with fake.running(TerminalInput(TerminalConfig(), fd=pty[1]), input=True):
            assert caplog.messages == [PROMPTS[State.IDLE]]
            old = State.IDLE
            for new in steps:
                fake.publish(StateChanged(old, new, 1))
                for event in NOT_TRANSCRIPTS[1:]:  # other events say nothing
                    fake.publish(event)
                await trio.testing.wait_all_tasks_blocked()
                assert caplog.messages[-1] == PROMPTS[new]
                old = new
    assert caplog.messages == [PROMPTS[State.IDLE], *(PROMPTS[s] for s in steps)]
    (subscription,) = fake.subscriptions
    assert subscription.kinds == (StateChanged,)


# ---------------------------------------------------------------------- the fake itself


async def test_fake_filters_kinds_and_ends_subscriptions() -> None:
    fake = FakeDaemon()
    transcripts = fake.subscribe(Transcript)
    everything = fake.subscribe()
    fake.publish(USER)
    for event in NOT_TRANSCRIPTS:
        fake.publish(event)
    fake.end()
    fake.publish(AGENT)  # after the end: nobody gets it
    with trio.fail_after(10):
        assert [e async for e in transcripts] == [USER]
        got = [e async for e in everything]
    # Every event, and (as the daemon does) what it shows a person whenever that changed.
    assert [e for e in got if not isinstance(e, DaemonState)] == [USER, *NOT_TRANSCRIPTS]
    assert [e.state for e in got if isinstance(e, DaemonState)] == ["listening", "error"]


async def test_fake_drops_like_the_daemon() -> None:
    fake = FakeDaemon(name="slow", sink_buffer=2)
    lossy = fake.subscribe(Transcript)
    for _ in range(5):
        fake.publish(USER)
    assert fake.status()["sinks"] == {"slow": {"dropped": 3}}
    durable = fake.subscribe(durable=True)
    changed = StateChanged(State.IDLE, State.LISTENING, 1)
    for _ in range(5):
        fake.publish(USER)
        fake.publish(changed)  # not a transcript: dropped once the queue is full
    # The durable one also dropped the first DaemonState news ("listening"), not a transcript.
    assert (lossy.dropped, durable.dropped) == (8, 5)
    fake.end()
    with trio.fail_after(10):
        assert [e async for e in lossy] == [USER, USER]
        assert [e async for e in durable] == [USER, changed, USER, USER, USER, USER]


async def test_fake_status_follows_events_like_the_daemon() -> None:
    fake = FakeDaemon(
        status=Status(url="fake", model="fake").to_json(devices={}, link={}, dropped={})
    )
    real = Status(url="fake", model="fake")
    events: list[Event] = [
        ConnectionChanged(True, False),
        ConnectionChanged(True, True),
        StateChanged(State.IDLE, State.LISTENING, 1),
        StateChanged(State.LISTENING, State.THINKING, 1),
        TurnEnded(1, Outcome.FAILED, {"commit": 3.5}, "server error"),
        StateChanged(State.THINKING, State.IDLE, 1),
        ConnectionChanged(False, error="gone"),
        ConnectionChanged(False),
    ]
    for event in events:
        fake.publish(event)
        real.apply(event)
        assert fake.status() == real.to_json(devices={}, link={}, dropped={})
    assert fake.status()["last_error"] == "gone"
    # What the test sets stays until an event changes it.
    fake.status_values["realtime"] = {"url": "wss://kiosk.example", "model": "m"}
    fake.status_values["turns"] = 9
    fake.publish(StateChanged(State.IDLE, State.LISTENING, 2))
    assert fake.status()["realtime"] == {"url": "wss://kiosk.example", "model": "m"}
    assert (fake.status()["turns"], fake.status()["state"]) == (2, "listening")  # changed
    # status() is a snapshot: changing it changes nothing.
    fake.status()["turns"] = 0
    assert fake.status_values["turns"] == 2


def test_fake_default_status_is_shaped_like_the_daemons() -> None:
    status = default_status()
    real = Status(url="x", model="y").to_json(devices={}, link={}, dropped={})
    assert status.keys() == real.keys()
    assert (status["state"], status["connected"], status["ready"]) == ("idle", True, True)


async def test_fake_commands_and_volume() -> None:
    fake = FakeDaemon()
    assert fake.commands_received == []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def later() -> None:
                await fake.commands.send(TurnCommand(Command.START, "x"))

            nursery.start_soon(later)
            assert await fake.next_command() == TurnCommand(Command.START, "x")  # waits for it
        await fake.commands.send(TurnCommand(Command.COMMIT, "x"))
        await fake.commands.send(TurnCommand(Command.CANCEL, "x"))
        assert [c.command for c in fake.commands_received] == ["start", "commit", "cancel"]
        assert await fake.next_command() == TurnCommand(Command.COMMIT, "x")
        assert await fake.next_command() == TurnCommand(Command.CANCEL, "x")
        await fake.commands.aclose()
        with pytest.raises(trio.EndOfChannel):
            await fake.next_command()
        await fake.set_volume(0.25)
        for bad in (-0.01, 1.01):
            with pytest.raises(ValueError, match=r"volume must be between 0\.0 and 1\.0"):
                await fake.set_volume(bad)
        assert fake.volume == 0.25


class _Stuck:
    """A sink that ignores the end of its subscription."""

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep_forever()


class _Fails:
    """A plugin that fails once running."""

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        events = daemon.subscribe()
        task_status.started()
        async for _ in events:
            raise RuntimeError("boom")


async def test_fake_running_reports_a_stuck_or_failing_plugin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60), pytest.raises(trio.TooSlowError, match="did not return within 5 s"):
        async with FakeDaemon().running(_Stuck()):
            pass

    async def publish_and_wait() -> None:
        fake = FakeDaemon()
        async with fake.running(_Fails()):
            fake.publish(USER)
            await trio.sleep_forever()  # the plugin's failure ends the block

    with trio.fail_after(60), pytest.raises(RuntimeError, match=r"^boom$"):
        await publish_and_wait()
