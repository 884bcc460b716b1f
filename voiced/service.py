"""The daemon under a service manager: what systemd is told, and when.

``READY=1`` once a turn can be taken, or once the connect timeout has passed without a session
(the daemon then runs degraded, and ``STATUS=`` says why: systemd must not wait, or kill a
daemon that is doing its job of waiting for the network). ``STATUS=`` again on every change of
what the daemon shows and after every turn. ``WATCHDOG=1`` only while the session loop, the one
task every message passes through, answers an ``Alive`` within a third of the watchdog period:
a wedged daemon stops the pings, and systemd restarts it.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from voiced.events import DaemonState, TurnEnded
from voiced.messages import Alive
from voiced.notify import Notifier
from voiced.pipeline import Pipeline

log = logging.getLogger("voiced.service")


def status_line(status: dict[str, Any]) -> str:
    """One line for ``systemctl status``: what is shown, and the last turn."""
    shown = status["shown"]
    line: str = shown["state"] + (f": {shown['reason']}" if shown["reason"] else "")
    last = status.get("last_turn")
    if last:
        line += f"; turn {last['turn']} {last['outcome']}"
        answered = last["latencies_ms"].get("first_audio")
        if answered is not None:
            line += f", answered in {answered:.0f} ms"
    return line


async def supervise(
    pipe: Pipeline,
    notifier: Notifier,
    *,
    ready_within: float,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Tell systemd about the daemon until cancelled (see the module docstring).

    Args:
        pipe: the running pipeline.
        notifier: where to tell it.
        ready_within: seconds to wait for the first session before saying ready, degraded.
    """
    events = pipe.broadcast.subscribe("systemd", DaemonState, TurnEnded)
    task_status.started()
    with trio.move_on_after(ready_within):
        await pipe.ready.wait()
    line = status_line(pipe.status())
    notifier.ready(line if pipe.status()["ready"] else f"degraded: {line}")
    async with trio.open_nursery() as nursery:
        if notifier.watchdog_s:
            nursery.start_soon(_watchdog, pipe, notifier, notifier.watchdog_s)
        async with events:
            async for _ in events:
                notifier.status(status_line(pipe.status()))


async def _watchdog(pipe: Pipeline, notifier: Notifier, period: float) -> None:
    """Ping while the session loop answers; stay silent (and say so once) while it does not."""
    quiet = False
    while True:
        await trio.sleep(period / 3)
        alive = trio.Event()
        with trio.move_on_after(period / 3):
            await pipe.inbound.send(Alive(alive.set))
            await alive.wait()
        if alive.is_set():
            notifier.watchdog()
            quiet = False
        elif not quiet:
            quiet = True
            log.error("the session loop did not answer in %.0f s: no watchdog ping", period / 3)
