"""The simulator's fault switches, and the garbage frames one of them sends. Sans-IO.

:class:`SimFaults` holds every switch. The server copies it when a connection starts, so a test
(or ``voiced sim``'s flags) sets what each new connection does; ``refuse_connections`` alone is
read from the live object and counts down there, one per connection attempt. :func:`garbage`
gives the frames of ``garbage_every``: a client must survive each of them and go on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

NESTED_LEVELS = 100_000
"""How deep the deeply nested garbage frame is: far past any JSON parser's recursion limit."""
GARBAGE_KINDS = (
    "not_json",
    "array",
    "no_type",
    "unknown_type",
    "missing_fields",
    "binary",
    "nested",
)
"""The garbage frames, in the order they rotate."""


@dataclass
class SimFaults:
    """Fault switches, read when each connection starts; tests flip them between connections."""

    handshake_status: int | None = None
    """Reject the HTTP upgrade with this status (e.g. 401), like a proxy or gateway would."""
    expire_after: float | None = None
    """Seconds (trio clock) after connecting: send ``session_expired``, then close 1001; the
    session's ``expires_at`` says so (None: an hour, and the session is never ended)."""
    fail_event: str | None = None
    """Answer client events of this type (all, or the first ``fail_count``) with a
    ``server_error`` carrying the event's ``event_id``, instead of handling them (they are still
    recorded), like the real server's transient internal errors. Nothing changes: a failed
    ``input_audio_buffer.commit`` leaves its audio in the buffer, as on the real server, so the
    next commit holds both turns unless the client sends ``input_audio_buffer.clear`` first."""
    fail_count: int | None = None
    """Fail only the first this many ``fail_event`` events of each connection (None: all)."""
    preamble_ms: int = 0
    """When > 0, every response speaks two items: a preamble (output_index 0, this much of a
    quiet tone, transcript "one moment"), then the answer (output_index 1, the echo)."""
    omit_response_fields: bool = False
    """Leave ``id`` and ``status`` out of the ``response`` of ``response.created`` and
    ``response.done`` (the SDK types both optional; a client must still handle the events)."""
    mint_status: int | None = None
    """Answer every client-secret request that has the right key with this HTTP status and an
    OpenAI-style error (e.g. 429, 500) instead of minting; read at each request."""
    mint_code: str | None = None
    """The ``error.code`` of the ``mint_status`` answer (e.g. ``insufficient_quota``,
    ``rate_limit_exceeded``; None: null)."""
    drop_after_deltas: int | None = None
    """Abort the connection right after sending this many ``response.output_audio.delta``
    events of a response (each response counts from 0): the TCP stream is reset, with no
    WebSocket close frame, as when a proxy or the network drops a reply mid-stream."""
    drop_after_appends: int | None = None
    """Abort the connection (a reset, no close frame) right after receiving this many
    ``input_audio_buffer.append`` events on it: a link lost while the user speaks."""
    stall_after_deltas: int | None = None
    """After sending this many deltas of a response, send nothing more for it, ever (not even
    when it is cancelled), as a stuck server does. The socket stays open: pings are answered,
    and other client events still are too."""
    silent_open: bool = False
    """Accept the WebSocket, then never send ``session.created`` (nor anything else): client
    messages are read and dropped, pings are answered."""
    garbage_every: int | None = None
    """After every this many server events, also send one garbage frame (:func:`garbage`),
    rotating through :data:`GARBAGE_KINDS`; garbage is not recorded in the session's ``sent``."""
    refuse_connections: int = 0
    """Refuse the next this many connection attempts: reset the TCP stream at once, before the
    HTTP request is read. Read from ``Simulator.faults`` itself and counted down there, one per
    attempt (so "refused for a while" is one number); a connection's copy does not count."""

    def __post_init__(self) -> None:
        counts = {
            "drop_after_deltas": self.drop_after_deltas,
            "drop_after_appends": self.drop_after_appends,
            "stall_after_deltas": self.stall_after_deltas,
            "garbage_every": self.garbage_every,
        }
        for name, value in counts.items():
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.refuse_connections < 0:
            raise ValueError(f"refuse_connections must be >= 0, got {self.refuse_connections}")


def garbage(index: int) -> str | bytes:
    """The ``index``-th garbage frame (they rotate through :data:`GARBAGE_KINDS`): a text frame,
    or for ``binary`` a binary frame. Built on demand: the nested one is 600 kB."""
    kind = GARBAGE_KINDS[index % len(GARBAGE_KINDS)]
    event_id = f"event_garbage_{index + 1:04d}"
    if kind == "not_json":
        return '{"type": "response.output_audio.delta", "delta": "AAAA'  # cut short
    if kind == "array":
        return json.dumps([{"type": "response.done"}, 1, None])
    if kind == "no_type":
        return json.dumps({"event_id": event_id, "response": {"id": "resp_garbage"}})
    if kind == "unknown_type":
        return json.dumps({"type": "response.garbage.unknown", "event_id": event_id})
    if kind == "missing_fields":
        # A known type that names no response, no item and carries no audio.
        return json.dumps({"type": "response.output_audio.delta", "event_id": event_id})
    if kind == "binary":
        return b"\x00\xffnot an event\x81"
    return '{"a":' * NESTED_LEVELS + "0" + "}" * NESTED_LEVELS
