"""The plugins of a running daemon: what each one sees of it (``Handle``, the plugin API's
``Daemon``), starting them, and replacing those whose section changed on a reload (``Plugged``).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from voiced.broadcast import Subscription
from voiced.config import Config
from voiced.events import Event, PluginChanged
from voiced.pipeline import Pipeline
from voiced.plugins import Loaded
from voiced.saved import SavedState, resolve, state_dir
from voiced.turn import TurnCommand

log = logging.getLogger("voiced")

SINK_GRACE = 5.0
"""Seconds a sink gets to write out what is queued when it stops (shutdown, reload)."""


@dataclass
class Handle:
    """What one plugin sees of the daemon (``voiced.plugin_api.Daemon``)."""

    commands: trio.MemorySendChannel[TurnCommand]
    pipeline: Pipeline
    name: str
    saved: SavedState
    config: Config
    subscriptions: list[Subscription] = dataclasses.field(default_factory=list)

    def end(self) -> None:
        """The plugin is being replaced: its subscriptions end once what is queued is read."""
        for subscription in self.subscriptions:
            subscription.end()

    @property
    def device_id(self) -> str:
        return device_id(self.config)

    @property
    def state_dir(self) -> Path:
        return state_dir(self.config.state_dir)

    def resolve(self, path: str) -> Path:
        return resolve(path, self.config.state_dir)

    def report(self, error: str | None) -> None:
        try:
            self.pipeline.inbound.send_nowait(PluginChanged(self.name, error))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            log.warning(
                "plugin %s: %s (not shown: the daemon is busy or stopping)", self.name, error
            )

    def subscribe(self, *kinds: type[Event], durable: bool = False) -> Subscription:
        subscription = self.pipeline.broadcast.subscribe(self.name, *kinds, durable=durable)
        self.subscriptions.append(subscription)
        return subscription

    def status(self) -> dict[str, Any]:
        return self.pipeline.status()

    async def set_volume(self, volume: float) -> None:
        if not 0.0 <= volume <= 1.0:
            raise ValueError(f"volume must be between 0.0 and 1.0, got {volume}")
        self.pipeline.player.speaker.volume = volume
        log.info("volume %.2f (set by %s)", volume, self.name)
        # The configured volume of the time, so that a later change of the config wins.
        await self.saved.save(volume=volume, volume_configured=self.config.audio.output.volume)


async def run_plugin(loaded: Loaded, handle: Handle, *, task_status: trio.TaskStatus[None]) -> None:
    """Start a plugin; once it is up, a failure is logged and the daemon carries on."""
    started = False

    def ready() -> None:
        nonlocal started
        started = True
        task_status.started()

    async with handle.commands:
        try:
            await loaded.plugin.run(handle, task_status=_Started(ready))
        except Exception as exc:
            if not started:
                raise
            log.error("plugin %s failed and is stopped: %s", loaded.spec.name, exc, exc_info=exc)


class _Started:
    """A ``task_status`` that records that the plugin reported ready."""

    def __init__(self, on_started: Callable[[], None]) -> None:
        self._on_started = on_started

    def started(self, value: None = None) -> None:
        self._on_started()


def device_id(config: Config) -> str:
    """This kiosk's name in its events: ``device_id``, else the host name."""
    return config.device_id or socket.gethostname()


async def start_plugins(
    nursery: trio.Nursery,
    plugins: Sequence[Loaded],
    pipe: Pipeline,
    saved: SavedState,
    config: Config,
) -> list[Handle]:
    handles = []
    for loaded in plugins:
        handle = Handle(pipe.commands.clone(), pipe, loaded.spec.name, saved, config)
        await nursery.start(run_plugin, loaded, handle)
        handles.append(handle)
    return handles


class Plugged:
    """The running plugins and the config they run with. A reload restarts only the plugins
    whose section changed (stopped, then started again: a sink drains first, and misses only
    what is published in the moment between)."""

    def __init__(self, pipe: Pipeline, saved: SavedState, nursery: trio.Nursery) -> None:
        self._pipe, self._saved, self._nursery = pipe, saved, nursery
        self.config = Config.default()
        self._running: dict[str, Running] = {}

    async def start(self, config: Config, plugins: Sequence[Loaded]) -> list[str]:
        """Run ``plugins`` with ``config``: stop those gone or changed, start those new or
        changed (sinks before inputs). Returns the names started.

        Raises:
            VoicedError: a plugin failed to start.
        """
        old, self.config = self.config, config
        wanted = {loaded.spec.name: loaded for loaded in plugins}
        for name, running in list(self._running.items()):
            same = name in wanted and old.plugins.get(name) == config.plugins.get(name)
            if not same or old.device_id != config.device_id:
                await running.stop()
                del self._running[name]
        fresh = [p for p in wanted.values() if p.spec.name not in self._running]
        fresh.sort(key=lambda loaded: not (loaded.spec.sink or not loaded.spec.input))
        for loaded in fresh:
            handle = Handle(
                self._pipe.commands.clone(), self._pipe, loaded.spec.name, self._saved, config
            )
            sink = loaded.spec.sink or not loaded.spec.input
            running = Running(handle, sink)
            await self._nursery.start(running.run, loaded)
            self._running[loaded.spec.name] = running
        return [loaded.spec.name for loaded in fresh]

    def stop_inputs(self) -> None:
        """Shutting down: inputs stop now; sinks stop when their events end."""
        for running in self._running.values():
            if not running.sink:
                running.scope.cancel()


@dataclass
class Running:
    """One running plugin."""

    handle: Handle
    sink: bool
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)

    async def run(self, loaded: Loaded, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with self.scope:
                await run_plugin(loaded, self.handle, task_status=task_status)
        finally:
            self.done.set()

    async def stop(self) -> None:
        """Stop it and wait until it has: an input at once, a sink once it has written what it
        had (at most ``SINK_GRACE`` seconds)."""
        if self.sink:
            self.handle.end()
            self.scope.deadline = trio.current_time() + SINK_GRACE
        else:
            self.scope.cancel()
        await self.done.wait()
