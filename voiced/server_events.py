"""Sans-IO server events of the OpenAI Realtime protocol (GA): the typed events voiced reads, and
how each is parsed from its JSON. ``voiced.protocol`` re-exports them and owns the parsing entry
point (``RealtimeProtocol.receive``). No trio, no socket. Malformed fields raise
``RemoteProtocolError``; documented events voiced has no use for are kept whole (``OtherEvent``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from voiced.errors import RemoteProtocolError

# Plain, not frozen, dataclasses: on CPython 3.11 a frozen one costs twice as much to define,
# and this module is on every start-up path (bench/README.md). Treat instances as immutable.

Json: TypeAlias = dict[str, Any]

# --------------------------------------------------------------------------- server events


@dataclass
class ServerEvent:
    """Base of the events the server sends."""

    type: str


@dataclass
class SessionCreated(ServerEvent):
    session: Json


@dataclass
class SessionUpdated(ServerEvent):
    session: Json


@dataclass
class InputAudioBufferCommitted(ServerEvent):
    item_id: str


@dataclass
class InputAudioBufferCleared(ServerEvent):
    pass


@dataclass
class InputTranscriptionCompleted(ServerEvent):
    item_id: str
    transcript: str


@dataclass
class InputTranscriptionFailed(ServerEvent):
    item_id: str
    message: str


@dataclass
class ResponseCreated(ServerEvent):
    response_id: str | None
    """None when the server leaves it out (the SDK types it optional)."""


@dataclass
class OutputAudioDelta(ServerEvent):
    response_id: str
    item_id: str
    audio: bytes


@dataclass
class TranscriptDelta(ServerEvent):
    """The next piece of a transcript: the user's (``response_id`` None) or the agent's."""

    item_id: str
    response_id: str | None
    delta: str


@dataclass
class OutputTranscriptDone(ServerEvent):
    response_id: str
    item_id: str
    transcript: str


@dataclass
class ConversationItemTruncated(ServerEvent):
    item_id: str
    audio_end_ms: int


@dataclass
class Usage:
    """The tokens a response used (``response.done``'s ``usage``), for cost accounting."""

    input_text: int = 0
    input_audio: int = 0
    input_cached: int = 0
    """Of the input tokens, those served from the cache (cheaper)."""
    output_text: int = 0
    output_audio: int = 0

    @property
    def input(self) -> int:
        return self.input_text + self.input_audio

    @property
    def output(self) -> int:
        return self.output_text + self.output_audio


@dataclass
class ResponseDone(ServerEvent):
    response_id: str | None
    """None when the server leaves it out: then it is the response in flight."""
    status: str | None
    """``completed``, ``cancelled``, ``failed`` or ``incomplete``; None when left out."""
    reason: str | None
    """``status_details.reason``, or the error message of a failed response."""
    usage: Usage | None = None
    """The tokens it used, when the server said."""


@dataclass
class ErrorEvent(ServerEvent):
    error_type: str
    code: str | None
    message: str
    param: str | None
    event_id: str | None
    """The ``event_id`` of the client event that caused it, when it had one."""


@dataclass
class OtherEvent(ServerEvent):
    """A documented server event voiced has no use for (kept whole, for logs)."""

    data: Json


# Documented GA server events that voiced reads but does not act on.
PASSIVE = frozenset(
    {
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.deleted",
        "conversation.item.retrieved",
        "conversation.item.created",
        "conversation.created",
        "conversation.item.input_audio_transcription.segment",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.timeout_triggered",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_audio.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "rate_limits.updated",
    }
)


SHOWN = 80
"""Characters of a malformed value an error message shows (a frame can be megabytes)."""


def _shown(value: object) -> str:
    """``repr(value)``, cut to `SHOWN` characters."""
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[: SHOWN - 3]}..."


def _str(data: Json, key: str, kind: str | None = None) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        where = kind or data.get("type")
        raise RemoteProtocolError(f"{where}: expected a string {key!r}, got {_shown(value)}")
    return value


def _opt_str(data: Json, key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _sub(data: Json, key: str) -> Json:
    value = data.get(key)
    if not isinstance(value, dict):
        raise RemoteProtocolError(
            f"{data.get('type')}: expected an object {key!r}, got {_shown(value)}"
        )
    return value


def _int(data: Json, key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RemoteProtocolError(
            f"{data.get('type')}: expected an integer {key!r}, got {_shown(value)}"
        )
    return value


def _audio_delta(t: str, d: Json) -> ServerEvent:
    try:
        audio = base64.b64decode(_str(d, "delta"), validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise RemoteProtocolError(f"{t}: delta is not base64: {exc}") from exc
    return OutputAudioDelta(t, _str(d, "response_id"), _str(d, "item_id"), audio)


def _response_done(t: str, d: Json) -> ServerEvent:
    response = _sub(d, "response")
    details = response.get("status_details")
    details = details if isinstance(details, dict) else {}
    error = details.get("error")
    # Optional and only shown: one that is not a string is no reason, never an error.
    reason = _opt_str(details, "reason")
    if reason is None and isinstance(error, dict):
        reason = _opt_str(error, "message")
    rid, status = _opt_str(response, "id"), _opt_str(response, "status")
    return ResponseDone(t, rid, status, reason, _usage(response.get("usage")))


def _usage(data: object) -> Usage | None:
    """``usage`` as far as it is there; a malformed one is no usage, never an error."""
    if not isinstance(data, dict):
        return None

    def count(part: object, key: str) -> int:
        value = part.get(key) if isinstance(part, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    given, made = data.get("input_token_details"), data.get("output_token_details")
    return Usage(
        input_text=count(given, "text_tokens"),
        input_audio=count(given, "audio_tokens"),
        input_cached=count(given, "cached_tokens"),
        output_text=count(made, "text_tokens"),
        output_audio=count(made, "audio_tokens"),
    )


def _error(t: str, d: Json) -> ServerEvent:
    err = _sub(d, "error")
    return ErrorEvent(
        t,
        error_type=_opt_str(err, "type") or "error",
        code=_opt_str(err, "code"),
        message=_opt_str(err, "message") or "(no message)",
        param=_opt_str(err, "param"),
        event_id=_opt_str(err, "event_id"),
    )


PARSERS: Mapping[str, Callable[[str, Json], ServerEvent]] = {
    "session.created": lambda t, d: SessionCreated(t, _sub(d, "session")),
    "session.updated": lambda t, d: SessionUpdated(t, _sub(d, "session")),
    "input_audio_buffer.committed": lambda t, d: InputAudioBufferCommitted(t, _str(d, "item_id")),
    "input_audio_buffer.cleared": lambda t, d: InputAudioBufferCleared(t),
    "conversation.item.input_audio_transcription.completed": lambda t, d: (
        InputTranscriptionCompleted(t, _str(d, "item_id"), _str(d, "transcript"))
    ),
    "conversation.item.input_audio_transcription.failed": lambda t, d: InputTranscriptionFailed(
        t, _str(d, "item_id"), _opt_str(_sub(d, "error"), "message") or "(no message)"
    ),
    "conversation.item.truncated": lambda t, d: ConversationItemTruncated(
        t, _str(d, "item_id"), _int(d, "audio_end_ms")
    ),
    "response.created": lambda t, d: ResponseCreated(t, _opt_str(_sub(d, "response"), "id")),
    "response.output_audio.delta": _audio_delta,
    "conversation.item.input_audio_transcription.delta": lambda t, d: TranscriptDelta(
        t, _str(d, "item_id"), None, _opt_str(d, "delta") or ""
    ),
    "response.output_audio_transcript.delta": lambda t, d: TranscriptDelta(
        t, _str(d, "item_id"), _str(d, "response_id"), _str(d, "delta")
    ),
    "response.output_audio_transcript.done": lambda t, d: OutputTranscriptDone(
        t, _str(d, "response_id"), _str(d, "item_id"), _str(d, "transcript")
    ),
    "response.done": _response_done,
    "error": _error,
}
