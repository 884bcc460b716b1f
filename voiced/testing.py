"""A stand-in for the daemon in a plugin's tests: ``FakeDaemon``, with no pipeline behind it.

It is what ``run(daemon, task_status=...)`` gets (``voiced.plugin_api.Daemon``), made of the
daemon's own parts where they matter: ``commands`` is a real trio memory channel whose far end the
fake reads, and ``subscribe`` is served by a real ``voiced.broadcast.Broadcast``, so kind filters,
bounded queues, drops and durable transcripts behave as in the daemon. The test publishes the
events, reads the commands, sets the status and sees the volume::

    import trio

    from voiced import Command, Transcript, TurnCommand
    from voiced.testing import FakeDaemon


    async def test_my_sink() -> None:
        fake = FakeDaemon()
        with trio.fail_after(5):
            async with fake.running(MySink(MyConfig())):
                fake.publish(Transcript("user", "hello", 1, "item_1", 0.0))
            # Leaving the block ended the subscriptions, as shutdown does, and the sink returned.
        ...  # check what it wrote


    async def test_my_input() -> None:
        fake = FakeDaemon()
        with trio.fail_after(5):
            async with fake.running(MyInput(MyConfig()), input=True):
                ...  # make the input act (a request, a key press)
                assert await fake.next_command() == TurnCommand(Command.START, "my_input")

The plugin can also be started by hand: ``await nursery.start(plugin.run, fake)``.

It imports only trio and voiced's light modules (no pytest), so a plugin's package can use it.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from voiced.broadcast import SINK_BUFFER, Broadcast, Subscription
from voiced.events import Event, PluginChanged
from voiced.plugin_api import Daemon, Plugin
from voiced.status import Status
from voiced.turn import State, TurnCommand

COMMAND_BUFFER = 32
"""Commands queued before a plugin's ``send`` waits, as in the daemon (``voiced.pipeline``)."""
SINK_GRACE = 5.0
"""Seconds a sink gets to return once its subscriptions end, as at the daemon's shutdown."""


def default_status() -> dict[str, Any]:
    """A ``/status`` snapshot of an idle daemon that is connected and ready for a turn."""
    status = Status(url="fake", model="fake", connected=True, ready=True)
    return status.to_json(devices={}, link={}, dropped={})


class FakeDaemon:
    """The daemon as a plugin sees it (``voiced.plugin_api.Daemon``), driven by the test.

    Args:
        name: the subscriber's name, for logs and the ``sinks`` part of the status.
        status: the initial status (default: ``default_status()``).
        command_buffer: commands queued before the plugin's ``send`` waits.
        sink_buffer: events queued per subscription before it drops (the daemon's: 256).

    Attributes:
        commands: the channel the plugin sends its ``TurnCommand``s on.
        status_values: what ``status()`` answers; set or change it freely. ``publish`` updates
            it the way the daemon's status takes in the same event.
        subscriptions: every subscription the plugin made, in order (its ``kinds``,
            ``durable`` and ``dropped`` can be checked).
        volume: the last volume the plugin set, or None.
    """

    def __init__(
        self,
        *,
        name: str = "plugin",
        status: dict[str, Any] | None = None,
        command_buffer: int = COMMAND_BUFFER,
        sink_buffer: int = SINK_BUFFER,
        device_id: str = "test-kiosk",
        state_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.device_id = device_id
        """The kiosk's name the plugin sees."""
        self._state_dir = state_dir
        self.commands, self._receive = trio.open_memory_channel[TurnCommand](command_buffer)
        self.status_values: dict[str, Any] = default_status() if status is None else status
        self.subscriptions: list[Subscription] = []
        self.volume: float | None = None
        self.reports: list[str | None] = []
        """What the plugin said of its health, in order (``report``)."""
        self._sink_buffer = sink_buffer
        self._broadcast = Broadcast()
        values = self.status_values
        self._status = Status(  # the daemon's own status logic, from where the test starts it
            url="fake",
            model="fake",
            state=State(values.get("state", State.IDLE)),
            turns=values.get("turns", 0),
            connected=values.get("connected", False),
            ready=values.get("ready", False),
            last_error=values.get("last_error"),
        )
        self._received: list[TurnCommand] = []
        self._returned = 0  # commands next_command has handed out

    # ------------------------------------------------------------------ the Daemon protocol

    def report(self, error: str | None) -> None:
        """Record what the plugin said of its health (``reports``), and publish it as the
        daemon does (a ``PluginChanged`` event, and ``/status``'s ``plugin_errors``)."""
        self.reports.append(error)
        self.publish(PluginChanged(self.name, error))

    @property
    def state_dir(self) -> Path:
        """The plugin's state directory: the one given, else a new temporary one, made the first
        time a plugin asks (pass a test's ``tmp_path`` to keep it apart and cleaned up)."""
        if self._state_dir is None:
            self._state_dir = Path(tempfile.mkdtemp(prefix="voiced-fake-"))
        return self._state_dir

    def resolve(self, path: str) -> Path:
        """``path`` under the state directory unless absolute (as with a state directory)."""
        return self.state_dir / path

    def subscribe(self, *kinds: type[Event], durable: bool = False) -> Subscription:
        """A bounded queue of the events of ``kinds`` (every event, if none) published from now.

        It ends (after what is queued) when ``end`` is called.
        """
        subscription = self._broadcast.subscribe(
            self.name, *kinds, durable=durable, size=self._sink_buffer
        )
        self.subscriptions.append(subscription)
        return subscription

    def status(self) -> dict[str, Any]:
        """A copy of ``status_values``, with the subscriptions' drop counts under ``sinks``."""
        status = copy.deepcopy(self.status_values)
        status["sinks"] = {name: {"dropped": n} for name, n in self._broadcast.dropped().items()}
        return status

    async def set_volume(self, volume: float) -> None:
        """Record ``volume`` in ``self.volume``.

        Raises:
            ValueError: the volume is outside 0.0 to 1.0 (as the daemon raises).
        """
        await trio.lowlevel.checkpoint()
        if not 0.0 <= volume <= 1.0:
            raise ValueError(f"volume must be between 0.0 and 1.0, got {volume}")
        self.volume = volume

    # ------------------------------------------------------------------ the test's side

    def publish(self, event: Event) -> None:
        """Give ``event`` to every subscription that wants it (never waits), and update
        ``status_values`` as the daemon's status would."""
        self._broadcast.publish(event)
        self._track(event)

    def end(self) -> None:
        """End every subscription: each reads what is queued, then stops (as at shutdown)."""
        self._broadcast.close()

    @property
    def commands_received(self) -> list[TurnCommand]:
        """Every command the plugin has sent so far, in order."""
        self._collect()
        return list(self._received)

    async def next_command(self) -> TurnCommand:
        """The next command the plugin sent that this has not returned yet; waits for one.

        Raises:
            trio.EndOfChannel: the plugin closed ``commands`` and every command was returned.
        """
        self._collect()
        if self._returned < len(self._received):
            await trio.lowlevel.checkpoint()
        else:
            self._received.append(await self._receive.receive())
        self._returned += 1
        return self._received[self._returned - 1]

    @asynccontextmanager
    async def running(
        self, plugin: Plugin, *, input: bool = False, grace: float = SINK_GRACE
    ) -> AsyncIterator[FakeDaemon]:
        """Run ``plugin`` for the body of the ``async with``, started and ready; yields the fake.

        On leaving the block, as at the daemon's shutdown, an input is cancelled and a sink has
        its subscriptions ended and is waited for. A failure of the plugin (at startup or
        later) or of the body is raised as itself, not in an exception group.

        Args:
            plugin: the plugin (what its ``PluginSpec.create`` returns).
            input: the plugin is an input (``PluginSpec.input``): cancel it on leaving.
            grace: seconds a sink gets to return once its subscriptions ended.

        Raises:
            trio.TooSlowError: a sink did not return within ``grace`` seconds.
        """
        try:
            async with trio.open_nursery() as nursery:
                done = trio.Event()
                try:
                    await nursery.start(_run, plugin, self, done)
                    yield self
                    if input:
                        nursery.cancel_scope.cancel()
                    else:
                        self.end()
                        with trio.move_on_after(grace):
                            await done.wait()
                        if not done.is_set():
                            nursery.cancel_scope.cancel()
                            raise trio.TooSlowError(
                                f"the sink did not return within {grace:g} s of its "
                                "subscriptions ending (the daemon would cut it off)"
                            )
                finally:
                    self.end()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    # ------------------------------------------------------------------ inside

    def _collect(self) -> None:
        """Take in the commands waiting in the channel."""
        while True:
            try:
                self._received.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    def _track(self, event: Event) -> None:
        """Change ``status_values`` where ``voiced.status.Status``, taking in ``event``,
        changes; publish what the daemon shows, when that changes (``DaemonState``)."""
        before = self._status.to_json(devices={}, link={}, dropped={})
        shown = self._status.apply(event)
        after = self._status.to_json(devices={}, link={}, dropped={})
        self.status_values.update({k: v for k, v in after.items() if v != before[k]})
        if shown is not None:
            self._broadcast.publish(shown)


async def _run(
    plugin: Plugin, daemon: FakeDaemon, done: trio.Event, *, task_status: trio.TaskStatus[None]
) -> None:
    try:
        await plugin.run(daemon, task_status=task_status)
    finally:
        done.set()


if TYPE_CHECKING:  # mypy checks that the fake fits the protocol a plugin sees

    def _fits(fake: FakeDaemon) -> Daemon:
        return fake
