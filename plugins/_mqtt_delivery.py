"""The MQTT sink's delivery: events into the outbox first, from the outbox to the broker in order,
out of the outbox once the broker has acknowledged them; and the sink's health for ``/status``.

One task (``pump``) does the outbox work, one thing at a time and each in a worker thread:
store what arrived (first, always), remove what was acknowledged, hand the next rows to the
client while connected. At most ``WINDOW`` messages are handed over and unacknowledged; the
client keeps those across a reconnect and resends them itself, in order, so each row is handed
over once per run. A row acknowledged but not yet removed when the process dies is sent again on
the next start: subscribers drop duplicates by the envelope's ``id``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, TypeVarTuple

import trio

from voiced.backoff import Backoff
from voiced.envelope import envelope
from voiced.events import DaemonState, Transcript, TurnEnded

from ._mqtt_outbox import Added, Outbox, Row
from ._mqtt_topics import Topics

log = logging.getLogger("voiced.mqtt")

WINDOW = 32
"""Outbox messages handed to the client and not yet acknowledged, at most."""
BATCH = 256
"""Events stored, or rows removed, in one transaction."""
LOG_DROPS_EVERY = 1000
"""Dropped events are logged at the first, then every this many."""

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass
class Figures:
    """What the sink has done since it started (for tests, benchmarks and its health)."""

    stored: int = 0
    """Events written to the outbox."""
    sent: int = 0
    """Outbox rows handed to the client (a row left from before a restart counts again)."""
    acked: int = 0
    """Rows the broker acknowledged (and so removed from the outbox)."""
    dropped_full: int = 0
    """Rows dropped undelivered because more than ``outbox_max`` were waiting."""
    dropped_old: int = 0
    """Rows dropped undelivered because they were older than ``outbox_max_age_s``."""
    waiting: int = 0
    """Rows in the outbox now."""
    connects: int = 0
    connected: bool = False

    def __post_init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_old

    def changed(self) -> None:
        self._lot.unpark_all()

    async def until(self, predicate: Callable[[Figures], bool]) -> None:
        """Wait until ``predicate(self)`` holds (checked after every change)."""
        while not predicate(self):
            await self._lot.park()


class Publisher(Protocol):
    @property
    def connected(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int: ...


def payload_of(event: Transcript | TurnEnded | DaemonState, device_id: str) -> bytes:
    """The event's envelope (``voiced.envelope``), compact JSON in UTF-8."""
    record = envelope(event, device_id)
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()


class Delivery:
    """Args:
    outbox: the outbox, opened.
    topics: where to publish.
    figures: the counters to keep.
    report: ``daemon.report``.
    """

    def __init__(
        self,
        outbox: Outbox,
        topics: Topics,
        figures: Figures,
        report: Callable[[str | None], None],
    ) -> None:
        self.outbox = outbox
        self.topics = topics
        self.figures = figures
        self.publisher: Publisher | None = None
        """The client, once started."""
        self.on_ack: Callable[[str], None] | None = None
        """Called with each acknowledged event's id, in the trio thread (benchmarks)."""
        self._report = report
        self._pending: list[tuple[str, str, bytes]] = []  # (event id, kind, payload), not stored
        self._inflight: dict[int, Row] = {}  # mid → row handed to the client, not acknowledged
        self._acked: list[int] = []  # rows to remove
        self._cursor = 0  # the last row handed to the client
        self._unsent = True  # rows after the cursor may exist
        self._prune = False  # drop what is too old (the broker is back)
        self._wake = trio.Event()
        self._broker_error: str | None = None
        self._db_error: str | None = None  # the outbox fails, why
        self._reported: str | None = None
        self._db_backoff = Backoff(start=0.5, cap=30.0)

    # ------------------------------------------------------------------ what arrives

    def opened(self, dropped_old: int) -> None:
        """The outbox was opened; ``dropped_old`` rows from before were too old."""
        self.figures.waiting = self.outbox.count
        self._dropped(Added([], dropped_old=dropped_old))
        if self.outbox.count:
            log.info("mqtt: %d event(s) from before wait in the outbox", self.outbox.count)

    def take(self, event: Transcript | TurnEnded, device_id: str) -> None:
        """Queue ``event`` for the outbox (never waits)."""
        kind = "transcript" if isinstance(event, Transcript) else "turn"
        self._pending.append((event.id, kind, payload_of(event, device_id)))
        if self._db_error is not None and len(self._pending) > self.outbox.max_rows:
            del self._pending[0]  # the outbox cannot be written: memory keeps as many
            self._dropped(Added([], dropped_full=1))
        self._wake.set()

    def connected(self) -> None:
        self.figures.connected = True
        self.figures.connects += 1
        if self._broker_error is not None:
            log.info("mqtt: connected again; %d event(s) to send", self.outbox.count)
        self._broker_error = None
        self._prune = True
        self._health()
        self.figures.changed()
        self._wake.set()

    def disconnected(self, why: str, news: bool) -> None:
        self.figures.connected = False
        self._broker_error = why
        if news:
            log.warning(
                "mqtt: %s; events wait in the outbox (%d now), trying again", why, self.outbox.count
            )
        self._health()
        self.figures.changed()

    def acked(self, mid: int) -> None:
        row = self._inflight.pop(mid, None)
        if row is None:
            return  # not an outbox message (a retained value, discovery)
        self._acked.append(row.seq)
        self.figures.acked += 1
        if self.on_ack is not None:
            self.on_ack(row.event_id)
        self.figures.changed()
        self._wake.set()

    # ------------------------------------------------------------------ the task

    async def pump(self) -> None:
        """Store, remove and send, until cancelled. A failing outbox (a full disk) is reported
        and retried with backoff; meanwhile events wait in memory (at most ``outbox_max``)."""
        while True:
            self._wake = trio.Event()
            try:
                busy = await self._step()
            except (sqlite3.Error, OSError) as exc:
                await trio.sleep(self._failed(exc))
                continue
            if self._db_error is not None:
                self._db_backoff.succeeded(trio.current_time())
                log.info("mqtt: the outbox works again")
                self._db_error = None
                self._health()
            if not busy:
                self.figures.changed()
                await self._wake.wait()

    async def flush(self) -> None:
        """Store what is pending and remove what was acknowledged (at shutdown: no retries)."""
        try:
            while self._pending:
                await self._store()
            while self._acked:
                await self._remove()
        except (sqlite3.Error, OSError) as exc:
            log.error("mqtt: at shutdown, the outbox %s failed: %s", self.outbox.path, exc)

    async def _step(self) -> bool:
        """Do the most urgent thing there is to do; False if there was nothing."""
        if self._pending:
            await self._store()
        elif self._acked:
            await self._remove()
        elif self._prune:
            self._prune = False
            self._dropped(Added([], dropped_old=await _in_thread(self.outbox.prune)))
        elif self._unsent and len(self._inflight) < WINDOW and self._can_send():
            await self._send()
        else:
            return False
        self.figures.waiting = self.outbox.count
        self.figures.changed()
        return True

    def _failed(self, exc: Exception) -> float:
        """An outbox call failed: report it (logged when news); the seconds to wait."""
        retry = self._db_backoff.failed(trio.current_time(), str(exc))
        self._db_error = f"the outbox {self.outbox.path} failed: {exc}"
        if retry.news:
            log.error("mqtt: %s; events wait in memory, trying again", self._db_error)
        self._health()
        return retry.delay

    def _can_send(self) -> bool:
        return self.publisher is not None and self.publisher.connected

    async def _store(self) -> None:
        batch = self._pending[:BATCH]
        added = await _in_thread(self.outbox.add, batch)
        del self._pending[: len(batch)]
        self.figures.stored += len(batch)
        self._unsent = True
        self._dropped(added)

    async def _remove(self) -> None:
        seqs = self._acked[:BATCH]
        await _in_thread(self.outbox.remove, seqs)
        del self._acked[: len(seqs)]

    async def _send(self) -> None:
        assert self.publisher is not None
        room = WINDOW - len(self._inflight)
        rows = await _in_thread(self.outbox.after, self._cursor, room)
        self._unsent = len(rows) == room
        for row in rows:
            mid = self.publisher.publish(self.topics.of(row.kind), row.payload)
            self._inflight[mid] = row
            self._cursor = row.seq
            self.figures.sent += 1
            if row.kind == "transcript":
                role = json.loads(row.payload).get("role")
                if role in ("user", "agent"):
                    self.publisher.publish(self.topics.last(role), row.payload, retain=True)

    # ------------------------------------------------------------------ health

    def _dropped(self, added: Added) -> None:
        if not (added.dropped_full or added.dropped_old):
            return
        before = self.figures.dropped
        self.figures.dropped_full += added.dropped_full
        self.figures.dropped_old += added.dropped_old
        after = self.figures.dropped
        if before == 0 or before // LOG_DROPS_EVERY != after // LOG_DROPS_EVERY:
            log.warning(
                "mqtt: %s (logged at the first, then every %d)", self._drops(), LOG_DROPS_EVERY
            )
        self._health()

    def _drops(self) -> str:
        f, o = self.figures, self.outbox
        why = []
        if f.dropped_full:
            why.append(f"{f.dropped_full} because more than outbox_max ({o.max_rows}) waited")
        if f.dropped_old:
            why.append(f"{f.dropped_old} older than outbox_max_age_s ({o.max_age_s:g} s)")
        return f"{f.dropped} event(s) dropped from the outbox undelivered: {', '.join(why)}"

    def _health(self) -> None:
        """Report the sink's problems (``/status``), once per change."""
        problems = [p for p in (self._broker_error, self._db_error) if p is not None]
        if self.figures.dropped:
            problems.append(self._drops())
        text = "; ".join(problems) or None
        if text != self._reported:
            self._reported = text
            self._report(text)


async def _in_thread(fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """``fn(*args)`` in a worker thread, shielded: an outbox call, once begun, is seen through
    (and its result taken in) even when the sink is being cancelled; each is short."""
    with trio.CancelScope(shield=True):
        result = await trio.to_thread.run_sync(fn, *args)
    return result
