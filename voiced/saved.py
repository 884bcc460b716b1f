"""What a person changed at run time and expects to find again after a restart (the volume).

One small JSON file, written atomically (a temporary file, then a rename). Its directory is
systemd's ``$STATE_DIRECTORY`` when the service has one, else ``$XDG_STATE_HOME/voiced``, else
``~/.local/state/voiced``. A missing or unreadable file means nothing was changed yet.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger("voiced.saved")

FILE_NAME = "state.json"


def saved_state_file() -> Path:
    """Where the state lives on this machine."""
    if directory := os.environ.get("STATE_DIRECTORY"):
        return Path(directory.split(":")[0]) / FILE_NAME
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "voiced" / FILE_NAME


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
