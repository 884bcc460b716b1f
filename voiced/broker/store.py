"""The broker's devices and mints, in one SQLite file (``broker.devices_file``).

``devices`` holds each device's name, the SHA-256 of its token (never the token), when it was
added and when it was revoked. ``mints`` holds each mint request that passed the checks: the
device, when, the TTL, and the secret's ``expires_at`` once upstream minted it (NULL when it
did not). The rate limit counts those rows, inside a write transaction, so several broker
processes sharing the file on one host share each device's limit; ``list-devices`` counts the
ones that minted. The file is in WAL mode with a busy timeout, so those processes wait for each
other instead of failing, and is created mode 0600.

`Store` is synchronous and safe to call from several threads (one connection, one lock): the
server calls it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from voiced.broker.policy import WINDOW_S, wait_s
from voiced.errors import UsageError

TOKEN_PREFIX = "vdt_"
"""Every device token starts so, which makes one easy to spot (and to scan for)."""
BUSY_TIMEOUT_S = 5.0
"""How long a write waits for another process's transaction before it fails."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A device name: it appears in logs and tables, so it is kept to what needs no quoting."""
SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS mints (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL REFERENCES devices (name),
    at REAL NOT NULL,
    ttl INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS mints_by_device ON mints (device, at);
"""


class RateLimited(Exception):
    """The device has made its ``mints_per_minute`` requests; it may ask again after ``wait``
    seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limited for {wait:.1f} s")
        self.wait = wait


@dataclass(frozen=True)
class Device:
    """A registered device, found by its token."""

    name: str
    revoked_at: float | None
    """Unix seconds; None while it may mint."""


@dataclass(frozen=True)
class DeviceRecord:
    """A row of ``list-devices``."""

    name: str
    created_at: float
    revoked_at: float | None
    last_mint: float | None
    """When it last got a secret (Unix seconds); None if never."""
    mints: int
    """How many secrets it got."""


def new_token() -> str:
    """A fresh device token: 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What is stored of a token: its SHA-256, in hex.

    A fast hash is right here, unlike for passwords: a token is 256 random bits, so there is
    nothing to guess and no dictionary to try, and a slow hash would only slow every request.
    Looking a token up by its hash also takes no secret-dependent time worth measuring: an
    attacker controls the token, not its hash.
    """
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """The devices file, open. Use `Store.open`, and close it (it is a context manager)."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self.path = path
        self._db = connection
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open the devices file at ``path``, creating it (mode 0600) and its tables if needed.

        Raises:
            sqlite3.Error: it is not an SQLite file, or cannot be opened or written.
            OSError: its directory cannot be created.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        # An empty file is an empty database; SQLite gives its -wal and -shm the same mode.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode
            db.execute("PRAGMA foreign_keys = ON")
            db.executescript(f"BEGIN IMMEDIATE;{SCHEMA}COMMIT;")
        except BaseException:
            db.close()
            raise
        return cls(db, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def add_device(self, name: str, now: float) -> str:
        """Register a device; returns its new token, which is stored only as its hash.

        Raises:
            UsageError: the name is not a valid name, or a device has it already.
        """
        if not NAME.fullmatch(name):
            raise UsageError(
                f"{name!r} is not a device name: use 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        token = new_token()
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO devices (name, token_sha256, created_at) VALUES (?, ?, ?)",
                    (name, token_hash(token), now),
                )
        except sqlite3.IntegrityError:
            raise UsageError(
                f"a device named {name} exists already: choose another name "
                "(a revoked device keeps its name)"
            ) from None
        return token

    def revoke_device(self, name: str, now: float) -> bool:
        """Revoke a device: its token mints nothing from now on. False if it was already.

        Raises:
            UsageError: no device has that name.
        """
        with self._lock:
            changed = self._db.execute(
                "UPDATE devices SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                (now, name),
            ).rowcount
            if changed:
                return True
            found = self._db.execute("SELECT 1 FROM devices WHERE name = ?", (name,)).fetchone()
        if found is None:
            raise UsageError(f"no device named {name} (`voiced broker list-devices` lists them)")
        return False

    def find(self, token: str) -> Device | None:
        """The device whose token this is, revoked or not; None if none is."""
        with self._lock:
            row = self._db.execute(
                "SELECT name, revoked_at FROM devices WHERE token_sha256 = ?", (token_hash(token),)
            ).fetchone()
        return None if row is None else Device(row[0], row[1])

    def devices(self) -> list[DeviceRecord]:
        """Every device, by name, with its mints."""
        with self._lock:
            rows = self._db.execute(
                "SELECT d.name, d.created_at, d.revoked_at, MAX(m.at), COUNT(m.id) "
                "FROM devices AS d "
                "LEFT JOIN mints AS m ON m.device = d.name AND m.expires_at IS NOT NULL "
                "GROUP BY d.name ORDER BY d.name"
            ).fetchall()
        return [DeviceRecord(*row) for row in rows]

    def active(self) -> int:
        """How many devices may mint (are not revoked)."""
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM devices WHERE revoked_at IS NULL"
            ).fetchone()
        return int(count)

    def reserve(self, device: str, now: float, ttl_s: int, limit: int) -> int:
        """Count a mint request against the device's rate limit; returns its row's id.

        The count and the new row are one write transaction, so requests racing each other,
        in this process or another, never pass the limit together.

        Raises:
            RateLimited: the device has made ``limit`` requests in the last minute.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT at FROM mints WHERE device = ? AND at > ?", (device, now - WINDOW_S)
                ).fetchall()
                wait = wait_s([at for (at,) in rows], now, limit)
                if wait is not None:
                    raise RateLimited(wait)
                cursor = self._db.execute(
                    "INSERT INTO mints (device, at, ttl) VALUES (?, ?, ?)", (device, now, ttl_s)
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def minted(self, mint: int, expires_at: int) -> None:
        """Record that the request ``mint`` (from `reserve`) got a secret."""
        with self._lock:
            self._db.execute("UPDATE mints SET expires_at = ? WHERE id = ?", (expires_at, mint))
