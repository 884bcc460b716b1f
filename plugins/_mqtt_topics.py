"""The MQTT plugin's topics, all under one prefix (default ``voiced/<device_id>``). Pure: no I/O.

======================== ========= =====================================================
topic                    retained  payload
======================== ========= =====================================================
``<prefix>/transcript``  no        a final transcript's envelope (JSON), via the outbox
``<prefix>/turn``        no        a finished turn's envelope (JSON), via the outbox
``<prefix>/state``       yes       what the daemon shows: the ``state`` envelope (JSON)
``<prefix>/availability`` yes      ``online``; ``offline`` on a clean stop or as the will
``<prefix>/last/user``   yes       the last user transcript's envelope (JSON)
``<prefix>/last/agent``  yes       the last agent transcript's envelope (JSON)
``<prefix>/volume``      yes       the speaker's volume, ``0.0`` to ``1.0`` (text)
``<prefix>/cmd``         (in)      commands: ``start``, ``commit``, ``cancel``, ``toggle``, volume
``<prefix>/cmd/result``  no        what became of each command (JSON)
======================== ========= =====================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNSAFE = re.compile(r"[+#/\x00]")


def topic_safe(name: str) -> str:
    """``name`` usable as one topic level: no wildcards, separators or NUL (each becomes ``_``)."""
    return _UNSAFE.sub("_", name) or "_"


def default_prefix(device_id: str) -> str:
    return f"voiced/{topic_safe(device_id)}"


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a topic prefix, or None."""
    if not prefix:
        return "must not be empty"
    if "+" in prefix or "#" in prefix or "\x00" in prefix:
        return "must not contain the wildcards + or # (it names topics to publish on)"
    if prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        return "must not start or end with / or have an empty level"
    if len(prefix.encode()) > 1000:
        return "is too long"
    return None


@dataclass(frozen=True)
class Topics:
    prefix: str

    @property
    def transcript(self) -> str:
        return f"{self.prefix}/transcript"

    @property
    def turn(self) -> str:
        return f"{self.prefix}/turn"

    @property
    def state(self) -> str:
        return f"{self.prefix}/state"

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    @property
    def volume(self) -> str:
        return f"{self.prefix}/volume"

    @property
    def cmd(self) -> str:
        return f"{self.prefix}/cmd"

    @property
    def result(self) -> str:
        return f"{self.prefix}/cmd/result"

    def last(self, role: str) -> str:
        """The retained last transcript of ``role`` (``user`` or ``agent``)."""
        return f"{self.prefix}/last/{role}"

    def of(self, kind: str) -> str:
        """Where an outbox row of ``kind`` (``transcript`` or ``turn``) is published."""
        return f"{self.prefix}/{kind}"


ONLINE = b"online"
OFFLINE = b"offline"
