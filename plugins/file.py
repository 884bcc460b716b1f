"""The ``file`` sink: every final transcript as one JSON line appended to a file.

Each line: ``{"time": ISO-8601 UTC, "turn": N, "role": "user"|"agent", "text": ...,
"item_id": ...}``.
Lines are flushed as they are written, so ``tail -f`` and log shippers see each one at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import trio

from voiced import Daemon, PluginSpec, Transcript, hookimpl


@dataclass(frozen=True)
class FileConfig:
    path: str
    """The JSON-lines file to append to (created if missing; its directory must exist)."""


class FileSink:
    def __init__(self, config: FileConfig) -> None:
        self.path = trio.Path(config.path)

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from voiced.errors import PluginError

        try:
            out = await self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise PluginError(f"file sink: cannot open {self.path}: {exc}") from exc
        events = daemon.subscribe(Transcript)
        task_status.started()
        async with out, events:
            async for event in events:
                if isinstance(event, Transcript) and event.final:
                    await out.write(json.dumps(_record(event), ensure_ascii=False) + "\n")
                    await out.flush()


def _record(event: Transcript) -> dict[str, object]:
    return {
        "time": datetime.fromtimestamp(event.at, UTC).isoformat(timespec="milliseconds"),
        "turn": event.turn,
        "role": event.role,
        "text": event.text,
        "item_id": event.item_id,
    }


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec("file", "transcripts as JSON lines in a file", FileConfig, FileSink)
