"""The ``file`` sink: final transcripts, finished turns and state changes appended to a file as
JSON lines, one ``voiced.envelope`` object per line (README.md, "Events and transcripts").

Settings: ``path`` (relative: under the state directory when one is given), ``fsync`` (default
true: each batch of records is on disk before the next; false: written to the OS at once, not
fsynced), ``max_bytes`` (default 10 MB; 0: never rotate) and ``backups`` (default 5): when the file
would pass ``max_bytes`` it becomes ``path.1`` (``path.1`` becomes ``path.2`` ..., the oldest
dropped) and a new file starts. A new file is created with mode 0640 (less with a stricter umask).

Every record is written whole by one ``os.write``, so a kill at any moment leaves lines that all
parse. The writes run in a worker thread: a slow disk never holds up the daemon. When the file
cannot be written (a full disk, a read-only or vanished folder) the sink says so once (the log,
and ``/status`` ``plugin_errors``), keeps the records in memory (up to ``MAX_PENDING``; those beyond
it are dropped, and counted), tries again with a backoff, and writes them in order once it
can; then the error is cleared.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import trio

from voiced import Daemon, PluginSpec, Transcript, hookimpl
from voiced.backoff import Backoff
from voiced.envelope import envelope
from voiced.events import DaemonState, Event, TurnEnded

from ._file_writer import JsonLinesFile, folder_problem

log = logging.getLogger("voiced.plugins.file")

MAX_PENDING = 10_000
"""Records kept in memory while the file cannot be written; newer ones are dropped (counted)."""
BATCH = 256
"""Records handed to the worker thread at once."""
KINDS: tuple[type[Event], ...] = (Transcript, TurnEnded, DaemonState)
"""What the file gets: final transcripts (live deltas are not written), turn ends, states."""


@dataclass(frozen=True)
class FileConfig:
    path: str
    """The JSON-lines file to append to (created, with its folders, if missing). Relative:
    under the state directory when one is given (``state_dir``, ``$STATE_DIRECTORY``)."""
    fsync: bool = True
    """fsync after each batch of records; false: written to the OS at once, not fsynced."""
    max_bytes: int = 10_000_000
    """Rotate before the file would pass this size (bytes); 0: never."""
    backups: int = 5
    """Rotated files kept (``path.1`` the newest); 0: a full file is dropped."""

    def __post_init__(self) -> None:
        from voiced.yamlconf import FieldError

        if not self.path or self.path.endswith("/"):
            raise FieldError("must name a file", field="path")
        if self.max_bytes < 0:
            raise FieldError("must be 0 (never rotate) or a size in bytes", field="max_bytes")
        if not 0 <= self.backups <= 1000:
            raise FieldError("must be between 0 and 1000", field="backups")
        # A relative path is checked when the sink starts: the state directory it goes under
        # is not known here.
        if Path(self.path).is_absolute() and (problem := folder_problem(Path(self.path))):
            raise FieldError(problem, field="path")


class FileSink:
    """The sink (``PluginSpec.create`` passes the config only).

    Args:
        config: the settings.
        backoff: the retry delays while the file cannot be written (tests pass short ones).
    """

    def __init__(self, config: FileConfig, *, backoff: Backoff | None = None) -> None:
        self.config = config
        self._backoff = backoff or Backoff(start=0.5, cap=30.0)
        self._pending: deque[bytes] = deque()  # lines not yet handed to the thread
        self._in_flight = 0  # lines the thread is writing now
        self._failing: str | None = None  # the error reported, while failing
        self._closing = trio.Event()  # the subscription ended: write what is left, then stop
        self._news = trio.Event()  # something to write, or closing
        self._idle = trio.Event()  # nothing pending or in flight
        self._idle.set()
        self.dropped = 0
        """Records dropped since the start because too many were waiting for a failing file."""
        self.kept = 0
        """Records that waited in memory during the current (or last) failure, dropped ones
        included."""

    @property
    def pending(self) -> int:
        """Records not written yet."""
        return len(self._pending) + self._in_flight

    async def drained(self) -> None:
        """Wait until every record received so far is written (or the sink has stopped)."""
        await self._idle.wait()

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        path = daemon.resolve(self.config.path)
        file = JsonLinesFile(
            path,
            fsync=self.config.fsync,
            max_bytes=self.config.max_bytes,
            backups=self.config.backups,
        )
        events = daemon.subscribe(*KINDS, durable=True)
        async with events, trio.open_nursery() as nursery:
            nursery.start_soon(self._write, daemon, file)
            task_status.started()
            async for event in events:
                if isinstance(event, Transcript) and not event.final:
                    continue
                record = envelope(event, daemon.device_id)
                if record is not None:
                    self._add(json.dumps(record, ensure_ascii=False).encode() + b"\n")
            self._closing.set()
            self._news.set()

    def _add(self, line: bytes) -> None:
        if self._failing is not None:
            self.kept += 1
        if len(self._pending) + self._in_flight >= MAX_PENDING:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "file sink: %d record(s) dropped so far: %d are waiting for %s already",
                    self.dropped,
                    MAX_PENDING,
                    self.config.path,
                )
            return
        self._pending.append(line)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._news.set()

    async def _write(self, daemon: Daemon, file: JsonLinesFile) -> None:
        """Hand the records to the worker thread, in order; on a failure, report it once and
        try again later."""
        first = True  # open the file at once, so a problem shows before the first record
        try:
            while True:
                if not self._pending and not first:
                    self._idle.set()
                    if self._closing.is_set():
                        break
                    await self._news.wait()
                    self._news = trio.Event()
                    continue
                first = False
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                self._in_flight = len(batch)
                try:
                    outcome = await trio.to_thread.run_sync(
                        file.write, batch, abandon_on_cancel=True
                    )
                finally:
                    self._in_flight = 0
                self._pending.extendleft(reversed(batch[outcome.written :]))
                if outcome.error is None:
                    self._backoff.succeeded(trio.current_time())
                    if self._failing is not None:
                        log.info(
                            "file sink: writing %s again (%d record(s) were kept; %d dropped "
                            "since the start)",
                            file.path,
                            self.kept,
                            self.dropped,
                        )
                        self._failing = None
                        daemon.report(None)
                    continue
                why = f"file sink: cannot write {file.path}: {_reason(outcome.error)}"
                retry = self._backoff.failed(trio.current_time(), why)
                if why != self._failing:
                    if self._failing is None:
                        self.kept = len(self._pending)
                    log.error("%s (records are kept in memory until it can)", why)
                    self._failing = why
                    daemon.report(why)
                if self._closing.is_set():
                    log.error(
                        "file sink: stopping with %d record(s) not written to %s",
                        len(self._pending),
                        file.path,
                    )
                    break
                with trio.move_on_after(retry.delay):
                    await self._closing.wait()  # stopping: one last try at once
            await trio.to_thread.run_sync(file.close, abandon_on_cancel=True)
        finally:
            self._idle.set()


def _reason(error: OSError) -> str:
    """An error's text, naming the file it is about when that is not the sink's file."""
    text = error.strerror or str(error)
    return f"{text} ({error.filename})" if error.filename else text


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec(
        "file", "transcripts, turns and states as JSON lines in a file", FileConfig, FileSink
    )
