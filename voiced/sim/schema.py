"""What a client event may contain, and the ``error`` events the simulator answers with.

The real server rejects a misspelt key anywhere in an event with ``unknown_parameter`` and names its
dotted path; the SDK's pydantic models cannot show that (they allow extra keys), so the simulator is
where voiced's typos surface. This module holds the key trees of the client events (GA nesting,
protocol §3/§4), the required parameters, and :class:`Problem`, the value every validation step
returns instead of raising. No trio, no sockets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

Shape: TypeAlias = "dict[str, Shape | None]"
"""Allowed keys of a JSON object; ``None`` marks a value the simulator does not look inside."""

_FORMAT: Shape = {"type": None, "rate": None}

SESSION_SHAPE: Shape = {
    "type": None,
    "model": None,
    "instructions": None,
    "output_modalities": None,
    "max_output_tokens": None,
    "tools": None,
    "tool_choice": None,
    "truncation": None,
    "include": None,
    "tracing": None,
    "prompt": None,
    "reasoning": None,
    "parallel_tool_calls": None,
    "audio": {
        "input": {
            "format": _FORMAT,
            "transcription": dict.fromkeys(
                ("model", "language", "prompt", "languages", "keywords", "delay")
            ),
            "noise_reduction": {"type": None, "strength": None},
            "turn_detection": dict.fromkeys(
                (
                    "type",
                    "threshold",
                    "prefix_padding_ms",
                    "silence_duration_ms",
                    "idle_timeout_ms",
                    "create_response",
                    "interrupt_response",
                    "eagerness",
                )
            ),
        },
        "output": {"format": _FORMAT, "voice": None, "speed": None},
    },
}

_RESPONSE_SHAPE: Shape = {
    **dict.fromkeys(
        (
            "output_modalities",
            "instructions",
            "conversation",
            "input",
            "max_output_tokens",
            "metadata",
            "tools",
            "tool_choice",
            "prompt",
            "reasoning",
            "parallel_tool_calls",
        )
    ),
    "audio": {"output": {"format": _FORMAT, "voice": None}},
}

EVENT_SHAPES: dict[str, Shape] = {
    "session.update": {"session": SESSION_SHAPE},
    "input_audio_buffer.append": {"audio": None},
    "input_audio_buffer.commit": {},
    "input_audio_buffer.clear": {},
    "response.create": {"response": _RESPONSE_SHAPE},
    "response.cancel": {"response_id": None},
    "conversation.item.create": {"item": None, "previous_item_id": None},
    "conversation.item.truncate": {"item_id": None, "content_index": None, "audio_end_ms": None},
    "conversation.item.delete": {"item_id": None},
    "conversation.item.retrieve": {"item_id": None},
    "output_audio_buffer.clear": {},
}
"""Every client event type of the GA protocol, with the keys it may carry besides ``type`` and
``event_id``."""

REQUIRED: dict[str, tuple[str, ...]] = {
    "session.update": ("session",),
    "input_audio_buffer.append": ("audio",),
    "conversation.item.create": ("item",),
    "conversation.item.truncate": ("item_id", "content_index", "audio_end_ms"),
    "conversation.item.delete": ("item_id",),
    "conversation.item.retrieve": ("item_id",),
}


@dataclass(frozen=True)
class Problem:
    """Why a client event was refused; becomes one ``error`` server event."""

    code: str | None
    message: str
    param: str | None = None
    type: str = "invalid_request_error"

    def event(self, client_event_id: str | None = None) -> dict[str, Any]:
        """The ``error`` event (without its ``event_id``, which is stamped on sending)."""
        return {
            "type": "error",
            "error": {
                "type": self.type,
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "event_id": client_event_id,
            },
        }


def describe(value: object) -> str:
    """JSON type of ``value`` with its article, as the real server's messages word it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def invalid_type(param: str, expected: str, value: object) -> Problem:
    return Problem(
        "invalid_type",
        f"Invalid type for '{param}': expected {expected}, but got {describe(value)} instead.",
        param,
    )


def invalid_value(param: str, value: object, supported: tuple[str, ...] = ()) -> Problem:
    hint = ""
    if supported:
        hint = " Supported values are: " + ", ".join(f"'{v}'" for v in supported) + "."
    return Problem("invalid_value", f"Invalid value: '{value}'.{hint}", param)


def find_unknown(value: Mapping[str, Any], shape: Shape, prefix: str = "") -> Problem | None:
    """The first key of ``value`` (recursively) that ``shape`` does not allow.

    A nested object given as ``null`` is fine here (it clears a setting); one given as another
    JSON type is an ``invalid_type``.
    """
    for key, item in value.items():
        path = f"{prefix}{key}"
        if key not in shape:
            return Problem("unknown_parameter", f"Unknown parameter: '{path}'.", path)
        child = shape[key]
        if child is None or item is None:
            continue
        if not isinstance(item, dict):
            return invalid_type(path, "an object", item)
        found = find_unknown(item, child, f"{path}.")
        if found is not None:
            return found
    return None


def check_event(event: Mapping[str, Any]) -> Problem | None:
    """Validate the envelope of a client event: its ``type``, its keys, its required parameters."""
    kind = event.get("type")
    if not isinstance(kind, str) or kind not in EVENT_SHAPES:
        if "type" not in event:
            return Problem("invalid_value", "Missing required parameter: 'type'.", "type")
        return invalid_value("type", kind, tuple(EVENT_SHAPES))
    event_id = event.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        return invalid_type("event_id", "a string", event_id)
    shape: Shape = {"type": None, "event_id": None, **EVENT_SHAPES[kind]}
    found = find_unknown(event, shape)
    if found is not None:
        return found
    for name in REQUIRED.get(kind, ()):
        if event.get(name) is None:
            return Problem(
                "missing_required_parameter", f"Missing required parameter: '{name}'.", name
            )
    return None
