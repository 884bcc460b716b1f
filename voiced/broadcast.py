"""Fan-out of events to the sinks: each subscription names the kinds it wants, gets a bounded
queue of its own, and says whether it may drop.

Memory channels distribute items, they do not broadcast them, so each subscriber has its own
queue. Publishing never waits: a slow sink never stalls audio. When a queue is full the new event
is dropped and counted (logged once per sink, shown in ``/status``), except that a transcript is
never dropped for a *durable* subscriber (one that stores what it gets, like an outbox): it is
queued beyond the bound, because losing it is worse than the memory it takes for a while.
"""

from __future__ import annotations

import logging
from collections import deque

import trio

from voiced.events import Event, Transcript

log = logging.getLogger("voiced.broadcast")

SINK_BUFFER = 256
"""Events queued per sink before it drops: minutes of transcripts at any speaking pace."""


class Subscription(trio.abc.ReceiveChannel[Event]):
    """A subscriber's queue of events: iterate it (or ``receive``) until the daemon ends it.

    Attributes:
        name: the subscriber, for logs and ``/status``.
        kinds: the event types it wants (empty: every event).
        durable: transcripts are never dropped for it.
        dropped: events dropped because it was not keeping up.
    """

    def __init__(self, name: str, kinds: tuple[type[Event], ...], durable: bool, size: int) -> None:
        self.name = name
        self.kinds = kinds
        self.durable = durable
        self.dropped = 0
        self._size = size
        self._queue: deque[Event] = deque()
        self._ended = False  # the daemon is done: what is queued is the last
        self.closed = False
        """The subscriber closed it: it gets nothing more."""
        self._lot = trio.lowlevel.ParkingLot()

    def offer(self, event: Event) -> None:
        """Queue ``event`` if it is wanted and fits (or must be kept); never waits."""
        if self.closed or self._ended or (self.kinds and not isinstance(event, self.kinds)):
            return
        if len(self._queue) >= self._size and not (self.durable and isinstance(event, Transcript)):
            self.dropped += 1
            if self.dropped == 1:
                log.warning("%s is not keeping up: dropping its events (logged once)", self.name)
            return
        self._queue.append(event)
        self._lot.unpark()

    def end(self) -> None:
        """No more events: the subscriber reads what is queued, then its iteration stops."""
        self._ended = True
        self._lot.unpark_all()

    async def receive(self) -> Event:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._queue:
            if self.closed:
                raise trio.ClosedResourceError
            if self._ended:
                raise trio.EndOfChannel
            await self._lot.park()
        event = self._queue.popleft()
        # Yield without a cancel point: an event taken off the queue is never lost.
        await trio.lowlevel.cancel_shielded_checkpoint()
        return event

    def close(self) -> None:
        self.closed = True
        self._queue.clear()
        self._lot.unpark_all()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class Broadcast:
    """Every event to every subscriber that wants it, never waiting."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []

    def subscribe(
        self,
        name: str,
        *kinds: type[Event],
        durable: bool = False,
        size: int = SINK_BUFFER,
    ) -> Subscription:
        """A new queue that gets every event of ``kinds`` (all, if none) published from now on.

        Args:
            name: the subscriber, for logs and ``/status``.
            kinds: the event types wanted.
            durable: never drop a transcript for it (see the module docstring).
            size: events queued before it drops.
        """
        subscription = Subscription(name, kinds, durable, size)
        self._subscriptions.append(subscription)
        return subscription

    def publish(self, event: Event) -> None:
        for subscription in self._subscriptions:
            subscription.offer(event)
        if any(s.closed for s in self._subscriptions):  # its reader went away (an SSE client)
            self._subscriptions = [s for s in self._subscriptions if not s.closed]

    def dropped(self) -> dict[str, int]:
        """Events dropped per subscriber name (a plugin's subscriptions added up)."""
        out: dict[str, int] = {}
        for subscription in self._subscriptions:
            out[subscription.name] = out.get(subscription.name, 0) + subscription.dropped
        return out

    def close(self) -> None:
        """End every subscription (they read what is queued, then stop)."""
        for subscription in self._subscriptions:
            subscription.end()
        self._subscriptions.clear()
