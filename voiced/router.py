"""Fan-in of input commands into the session, fan-out of events to the sinks.

Memory channels distribute items, they do not broadcast them, so each sink gets a bounded channel
of its own. A full sink channel drops the event (counted, logged once per sink): a slow sink never
stalls audio. Commands enter through ``run_intake``, which first flushes the microphone so that
the command is ordered after every sample heard before it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import trio

from voiced import protocol as p
from voiced.audio import AudioFrame, EndOfReply
from voiced.devices.base import AudioSource
from voiced.events import Event
from voiced.stages.transport import Connected, Disconnected
from voiced.turn import TurnCommand

log = logging.getLogger("voiced.router")

SINK_BUFFER = 256
"""Events queued per sink before it drops: minutes of transcripts at any speaking pace."""


@dataclass(frozen=True)
class Shutdown:
    """Sent last into the session's inbound channel: finish, flush downstream, and return."""


Inbound = (
    AudioFrame | TurnCommand | p.ServerEvent | EndOfReply | Connected | Disconnected | Shutdown
)
"""Everything the session task reads, from every producer, in the order it happened."""


@dataclass
class _Subscriber:
    name: str
    channel: trio.MemorySendChannel[Event]
    dropped: int = 0


class Broadcast:
    """Every event to every subscriber, never waiting."""

    def __init__(self) -> None:
        self._subscribers: list[_Subscriber] = []

    def subscribe(self, name: str, size: int = SINK_BUFFER) -> trio.MemoryReceiveChannel[Event]:
        """A new bounded channel that gets every event published from now on."""
        send, receive = trio.open_memory_channel[Event](size)
        self._subscribers.append(_Subscriber(name, send))
        return receive

    def publish(self, event: Event) -> None:
        for sub in list(self._subscribers):
            try:
                sub.channel.send_nowait(event)
            except trio.WouldBlock:
                sub.dropped += 1
                if sub.dropped == 1:
                    log.warning("%s is not keeping up: dropping its events (logged once)", sub.name)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(sub)  # the sink finished; nothing left to tell it

    def dropped(self) -> dict[str, int]:
        """Events dropped per subscriber."""
        return {sub.name: sub.dropped for sub in self._subscribers}

    def close(self) -> None:
        """End every subscriber's channel (they drain what is queued, then stop)."""
        for sub in self._subscribers:
            sub.channel.close()
        self._subscribers.clear()


async def run_intake(
    commands: trio.abc.ReceiveChannel[TurnCommand],
    inbound: trio.MemorySendChannel[Inbound],
    source: AudioSource | None,
) -> None:
    """Forward commands to the session, each after the audio heard up to that instant.

    The source's flush puts the tail into the channel first; a command always follows it.
    """
    async with commands, inbound:
        async for command in commands:
            command = dataclasses.replace(command, at=trio.current_time())  # the press
            if source is not None:
                await source.flush()
            try:
                inbound.send_nowait(command)
            except trio.WouldBlock:
                await inbound.send(command)
