"""The ``gpio`` plugin's LEDs: the single LED's pattern for each state the daemon shows
(``PATTERNS``), played by a trio task on trio's clock, and the per-state LEDs lit steadily, both
following the daemon's ``DaemonState`` events until it ends them.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any

import trio

from voiced import Daemon
from voiced.events import DaemonState

log = logging.getLogger("voiced.gpio")

Step = tuple[bool, float]
PATTERNS: dict[str, tuple[Step, ...]] = {
    "idle": ((False, math.inf),),
    "listening": ((True, math.inf),),
    "thinking": ((True, 0.5), (False, 0.5)),
    "speaking": ((True, 0.15), (False, 0.15)),
    "error": ((True, 0.1), (False, 0.1), (True, 0.1), (False, 0.1), (True, 0.1), (False, 1.0)),
    "offline": ((True, 0.1), (False, 0.2), (True, 0.1), (False, 1.6)),
}
"""What the single LED does in each state: (lit, seconds) steps, repeated."""


class Lights:
    """The single LED (patterns) and the per-state LEDs (steady)."""

    def __init__(self, led: Any | None, per_state: dict[str, Any]) -> None:
        self.led = led
        self.per_state = per_state

    async def play(self, state: str, *, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        """Show ``state`` until cancelled (through the scope given to ``task_status``)."""
        with trio.CancelScope() as scope:
            task_status.started(scope)
            for name, led in self.per_state.items():
                led.value = name == state
            if self.led is None:
                return
            pattern = PATTERNS.get(state, PATTERNS["idle"])
            if len(pattern) == 1:
                self.led.value = pattern[0][0]
                return
            for lit, seconds in itertools.cycle(pattern):
                self.led.value = lit
                await trio.sleep(seconds)

    def off(self) -> None:
        for led in [self.led, *self.per_state.values()]:
            if led is not None:
                led.off()


async def follow(events: trio.abc.ReceiveChannel[Any], lights: Lights, state: str) -> None:
    """Show each ``DaemonState`` as it comes, until the daemon ends the subscription."""
    async with events, trio.open_nursery() as nursery:
        showing: trio.CancelScope = await nursery.start(lights.play, state)
        async for event in events:
            if isinstance(event, DaemonState) and event.state != state:
                state = event.state
                log.debug("gpio: LEDs show %s", state)
                showing.cancel()
                showing = await nursery.start(lights.play, state)
        showing.cancel()
        lights.off()


def shown_now(daemon: Daemon) -> str:
    """What the daemon shows now (``/status``'s ``shown``); offline if it does not say."""
    shown = daemon.status().get("shown")
    return str(shown.get("state", "offline")) if isinstance(shown, dict) else "offline"
