"""Where the daemon keeps what must outlive it, and what a person changed at run time and
expects to find again after a restart (the volume).

The state directory is ``state_dir`` from the config, else systemd's ``$STATE_DIRECTORY`` when
the service has one, else ``$XDG_STATE_HOME/voiced``, else ``~/.local/state/voiced``. Relative
paths in the config resolve against it when one was given (``state_dir`` or
``$STATE_DIRECTORY``), else against the working directory. The saved state is one small JSON
file in it, written atomically (a temporary file, then a rename); a missing or unreadable file
means nothing was changed yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import trio

from voiced.errors import VoicedError

log = logging.getLogger("voiced.saved")

FILE_NAME = "state.json"


def given_state_dir(configured: str | None) -> Path | None:
    """The state directory when one was given: ``state_dir``, else ``$STATE_DIRECTORY``."""
    if configured:
        return Path(configured)
    if directory := os.environ.get("STATE_DIRECTORY"):
        return Path(directory.split(":")[0])
    return None


def state_dir(configured: str | None = None) -> Path:
    """The state directory on this machine (see the module docstring)."""
    if (given := given_state_dir(configured)) is not None:
        return given
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "voiced"


def resolve(path: str | Path, configured: str | None = None) -> Path:
    """``path`` from the config: as is when absolute, else under the given state directory,
    else under the working directory."""
    base = given_state_dir(configured)
    return Path(path) if base is None else base / path


def saved_state_file(configured: str | None = None) -> Path:
    """Where the saved state lives on this machine."""
    return state_dir(configured) / FILE_NAME


class SavedState:
    """The saved state: read once at start, written on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: dict[str, Any] = {}
        try:
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                self.values = loaded
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("ignoring the saved state in %s: %s", path, exc)

    async def save(self, **changes: Any) -> None:
        """Record ``changes``; a failure to write is logged, never raised (it is not fatal)."""
        self.values.update(changes)
        text = json.dumps(self.values, indent=1)

        def write() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.replace(self.path)

        try:
            await trio.to_thread.run_sync(write)
        except OSError as exc:
            log.warning("could not save the state to %s: %s", self.path, exc)


LOCK_NAME = "daemon.lock"


@contextlib.contextmanager
def daemon_lock(configured: str | None = None) -> Iterator[None]:
    """Hold the state directory for this daemon: two daemons on one state directory would
    fight over the devices, the outboxes and the saved state.

    Raises:
        VoicedError: another daemon holds it (its pid is said).
    """
    directory = state_dir(configured)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / LOCK_NAME).open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VoicedError(
                f"another voiced (pid {_pid(lock)}) runs with the state directory {directory}: "
                "stop it first (systemctl stop voiced), or give this one its own state_dir"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)


def running_daemon(configured: str | None = None) -> int | None:
    """The pid of the daemon holding the state directory, or None when none does."""
    path = state_dir(configured) / LOCK_NAME
    try:
        with path.open() as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _pid(lock) or -1
    except OSError:
        return None
    return None


def _pid(lock: TextIO) -> int | None:
    lock.seek(0)
    text = lock.read().strip()
    return int(text) if text.isdigit() else None
