"""How voiced's log lines look: for the journal, for a terminal, or as JSON for a collector.

Under systemd (stderr is the journal stream named by ``$JOURNAL_STREAM``) each line starts with
its syslog priority, ``<6>`` for info, which journald reads as the entry's level (``journalctl -p
warning`` then works), and carries no timestamp: journald adds its own. On a terminal a line has
a time; ``--log-format json`` makes each one a JSON object. No secret is ever logged, whatever the
format (tests/test_no_leaks.py).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Literal

LogFormat = Literal["text", "json"]

PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
"""Python levels as syslog priorities (debug, info, warning, err, crit)."""


def to_journal() -> bool:
    """Whether stderr is connected to the journal (``$JOURNAL_STREAM`` is ``device:inode`` of
    the stream systemd gave; a child that inherited the variable but not the stream is not)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``; a traceback's lines get the same priority."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601), ``level``, ``logger``, ``message``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter for ``log_format``, the journal's when stderr is the journal (text)."""
    if log_format == "json":
        return JsonFormatter()
    if to_journal():
        return JournalFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
