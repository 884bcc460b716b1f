"""The MQTT sink's outbox: every event it must deliver, kept in a SQLite file in the state
directory from the moment it arrives until the broker has acknowledged it (PUBACK).

One table, ``outbox``: ``seq`` (arrival order; AUTOINCREMENT, so a number is never reused and
the order survives restarts), ``event_id`` (the envelope's ``id``), ``kind`` (``transcript`` or
``turn``: the topic under the prefix), ``payload`` (the envelope's JSON) and ``stored`` (Unix
seconds). It is bounded: past ``max_rows`` the oldest rows are dropped, and rows stored more than
``max_age_s`` ago are dropped whenever rows are added and when the broker comes back. Every drop is
counted and returned to the caller.

Durability: WAL mode; a batch of new rows is committed with ``synchronous=FULL`` (on disk, power cut
included, before it is published), a removal with ``NORMAL`` (a removal lost to a power cut only
means a resend, which a subscriber drops by ``id``). The file is created 0600: it holds transcripts.
A file that is not a database is moved aside (``.corrupt``) and a new one started, logged.

Every method blocks on SQLite: call them from a worker thread, one at a time (the sink does).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("voiced.mqtt")

FILE_NAME = "mqtt-outbox.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    stored REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_stored ON outbox (stored);
"""


@dataclass
class Row:
    """One event waiting in the outbox."""

    seq: int
    event_id: str
    kind: str
    payload: bytes


@dataclass
class Added:
    """What ``Outbox.add`` did."""

    rows: list[Row]
    """The rows added, in order (some may have been dropped again at once by ``max_rows``)."""
    dropped_full: int = 0
    dropped_old: int = 0


class Outbox:
    """Args:
    path: the SQLite file (its folder is created, 0700, if missing).
    max_rows: rows kept at most; the oldest go first.
    max_age_s: rows stored longer ago than this are dropped.

    Attributes:
        count: rows in the outbox now.
    """

    def __init__(self, path: Path, *, max_rows: int, max_age_s: float) -> None:
        self.path = path
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.count = 0
        self._db: sqlite3.Connection | None = None

    def open(self, now: float | None = None) -> int:
        """Open (or create) the file and drop what is too old.

        Returns:
            Rows dropped because they were older than ``max_age_s``.

        Raises:
            OSError, sqlite3.Error: the file cannot be created or opened.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise  # locked, read-only, no space: not the file's content
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error(
                "mqtt: the outbox %s is not a database (%s); moved to %s, starting a new one",
                self.path, exc, aside.name,
            )  # fmt: skip
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._db = self._connect()
        self.count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        return self.prune(time.time() if now is None else now)

    def _connect(self) -> sqlite3.Connection:
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the outbox is not open")
        return self._db

    def add(self, items: Sequence[tuple[str, str, bytes]], now: float | None = None) -> Added:
        """Store ``(event_id, kind, payload)`` items, in order, and enforce the bounds.

        The rows are on disk when this returns.
        """
        now = time.time() if now is None else now
        db = self._conn
        added = Added([])
        db.execute("PRAGMA synchronous=FULL")
        with db:  # one transaction
            db.execute("BEGIN IMMEDIATE")
            for event_id, kind, payload in items:
                cursor = db.execute(
                    "INSERT INTO outbox (event_id, kind, payload, stored) VALUES (?, ?, ?, ?)",
                    (event_id, kind, payload, now),
                )
                assert cursor.lastrowid is not None
                added.rows.append(Row(cursor.lastrowid, event_id, kind, payload))
            added.dropped_old = self._delete("stored < ?", now - self.max_age_s)
            excess = self.count + len(items) - added.dropped_old - self.max_rows
            if excess > 0:
                added.dropped_full = self._delete(
                    "seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", excess
                )
        self.count += len(items) - added.dropped_old - added.dropped_full
        return added

    def prune(self, now: float | None = None) -> int:
        """Drop the rows older than ``max_age_s``; how many."""
        db = self._conn
        cutoff = (time.time() if now is None else now) - self.max_age_s
        db.execute("PRAGMA synchronous=NORMAL")
        with db:
            db.execute("BEGIN IMMEDIATE")
            dropped = self._delete("stored < ?", cutoff)
        self.count -= dropped
        return dropped

    def _delete(self, where: str, value: float) -> int:
        return self._conn.execute(f"DELETE FROM outbox WHERE {where}", (value,)).rowcount

    def after(self, seq: int, limit: int) -> list[Row]:
        """The oldest ``limit`` rows after ``seq``, in order."""
        cursor = self._conn.execute(
            "SELECT seq, event_id, kind, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [Row(s, e, k, bytes(p)) for s, e, k, p in cursor]

    def remove(self, seqs: Iterable[int]) -> int:
        """Remove the rows ``seqs`` (delivered); those already gone are skipped. How many went."""
        db = self._conn
        db.execute("PRAGMA synchronous=NORMAL")
        removed = 0
        with db:
            db.execute("BEGIN IMMEDIATE")
            for seq in seqs:
                removed += db.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount
        self.count -= removed
        return removed

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
