"""The one documented JSON form of what the daemon tells the world: transcripts, finished turns
and what the daemon shows (its state). Every sink that writes or sends events (the file, MQTT,
``stdout --format json``) writes this, so a consumer parses one shape wherever it reads.

Common fields: ``v`` (the envelope's version, 1), ``id`` (the event's own id: the same in every
sink and on every resend, so a subscriber can drop a duplicate), ``kind`` (``transcript``,
``turn`` or ``state``), ``time`` (ISO-8601 UTC, milliseconds), ``device_id``, ``session_id``
(the realtime session, when known). Then, by kind:

- ``transcript``: ``turn``, ``role`` (``user``/``agent``), ``text``, ``final`` (false: a live
  delta, the next piece of the text), ``item_id``, ``response_id``;
- ``turn``: ``turn``, ``outcome`` (completed, interrupted, cancelled, too_short, failed, lost),
  ``reason``, ``latencies_ms`` (``commit``, ``first_audio``, ``first_play``), ``usage`` (tokens:
  ``input_text``, ``input_audio``, ``input_cached``, ``output_text``, ``output_audio``; or null);
- ``state``: ``state`` (idle, listening, thinking, speaking, error, offline), ``reason``.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from voiced.events import DaemonState, Event, Transcript, TurnEnded

VERSION = 1


def envelope(event: Event, device_id: str) -> dict[str, Any] | None:
    """The envelope of ``event``, or None for events that have none (internal news)."""
    if isinstance(event, Transcript):
        return {
            **_head(event.id, "transcript", event.at, device_id, event.session_id),
            "turn": event.turn,
            "role": event.role,
            "text": event.text,
            "final": event.final,
            "item_id": event.item_id,
            "response_id": event.response_id,
        }
    if isinstance(event, TurnEnded):
        return {
            **_head(event.id, "turn", event.at, device_id, event.session_id),
            "turn": event.turn,
            "outcome": str(event.outcome),
            "reason": event.reason,
            "latencies_ms": dict(event.latencies),
            "usage": None if event.usage is None else dataclasses.asdict(event.usage),
        }
    if isinstance(event, DaemonState):
        return {
            **_head(event.id, "state", event.at, device_id, None),
            "state": event.state,
            "reason": event.reason,
        }
    return None


def _head(
    event_id: str, kind: str, at: float, device_id: str, session_id: str | None
) -> dict[str, Any]:
    return {
        "v": VERSION,
        "id": event_id,
        "kind": kind,
        "time": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
        "device_id": device_id,
        "session_id": session_id,
    }
