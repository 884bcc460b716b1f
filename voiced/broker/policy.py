"""What a device may ask the broker for, and the broker's refusals: pure logic, no I/O.

A ``POST /v1/token`` body is ``{"model"?, "voice"?, "instructions"?, "ttl_s"?}``: a field left
out (or null) takes the first value ``broker.allowed`` lists; a value it does not list is
refused (403 ``not_allowed``); ``ttl_s`` defaults to ``broker.max_ttl_s`` and is clamped to
``[10, max_ttl_s]``. Every refusal is a `Refusal`, whose body has the shape of OpenAI's REST
errors, so a device reads the broker's answers as it reads OpenAI's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from voiced.config import MIN_TTL_S, AllowedConfig

MAX_BODY = 64 * 1024
"""Bytes of a ``POST /v1/token`` body taken; a longer one is refused (413) and not read further."""
WINDOW_S = 60.0
"""The rate limit's window: ``mints_per_minute`` counts the mint requests of the last minute."""
FIELDS = ("model", "voice", "instructions", "ttl_s")
"""What a request body may hold."""
_SHOWN = 64
"""Characters of a refused value echoed back in the message."""


class Refusal(Exception):
    """An answer other than 200, in OpenAI's error shape. Its message never holds a secret.

    Args:
        status: the HTTP status.
        code: the error ``code`` (``invalid_device_token``, ``not_allowed``, ...).
        message: what is wrong, for the device's operator.
        kind: the error ``type``.
        param: the request field at fault, if one is.
        retry_after: seconds to wait, sent as ``Retry-After`` (429).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.kind = kind
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "code", "param"}}``."""
        error = {"message": self.message, "type": self.kind, "code": self.code, "param": self.param}
        return {"error": error}


@dataclass(frozen=True)
class Grant:
    """What one mint is for: what the device asked, or the defaults, once allowed."""

    model: str
    voice: str
    instructions: str = field(repr=False)
    """Shown nowhere: it may be long, and the operator's business."""
    ttl_s: int

    def upstream_body(self) -> dict[str, Any]:
        """The body of ``POST {openai_url}/realtime/client_secrets`` for this grant."""
        return {
            "expires_after": {"anchor": "created_at", "seconds": self.ttl_s},
            "session": {
                "type": "realtime",
                "model": self.model,
                "instructions": self.instructions,
                "audio": {"output": {"voice": self.voice}},
            },
        }


def parse_body(body: bytes) -> dict[str, Any]:
    """The request, from a ``POST /v1/token`` body; an empty body asks for the defaults.

    Raises:
        Refusal: 400 ``invalid_json``: not JSON, or not a JSON object.
    """
    if not body.strip():
        return {}
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise Refusal(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(request, dict):
        raise Refusal(400, "invalid_json", "the body must be a JSON object")
    return request


def grant(request: dict[str, Any], allowed: AllowedConfig, max_ttl_s: int) -> Grant:
    """Check a request against what is allowed, and fill in what it left out.

    Raises:
        Refusal: 400 ``unknown_parameter`` or ``invalid_type`` for a malformed request; 403
            ``not_allowed`` for a model, voice or instructions ``allowed`` does not list.
    """
    for name in request:
        if name not in FIELDS:
            shown = _shown(str(name))
            message = f"unknown parameter {shown}: send {', '.join(FIELDS)}"
            raise Refusal(400, "unknown_parameter", message, param=shown)
    model = _choose(request, "model", allowed.models)
    voice = _choose(request, "voice", allowed.voices)
    instructions = _choose(request, "instructions", allowed.instructions)
    ttl = request.get("ttl_s")
    if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool)):
        raise Refusal(400, "invalid_type", "ttl_s must be a whole number of seconds", param="ttl_s")
    return Grant(model, voice, instructions, clamp_ttl(ttl, max_ttl_s))


def clamp_ttl(ttl_s: int | None, max_ttl_s: int) -> int:
    """The lifetime a secret is minted for: ``ttl_s`` within ``[10, max_ttl_s]``; none asked
    for is ``max_ttl_s``."""
    if ttl_s is None:
        return max_ttl_s
    return max(MIN_TTL_S, min(ttl_s, max_ttl_s))


def wait_s(recent: Sequence[float], now: float, limit: int) -> float | None:
    """How long before one more request fits the rate limit, or None if it fits now.

    Args:
        recent: the times (Unix seconds) of the requests counted so far, in any order.
        now: the time of this request.
        limit: requests allowed in any `WINDOW_S`.
    """
    window = sorted(t for t in recent if t > now - WINDOW_S)
    if len(window) < limit:
        return None
    # The request fits once all but limit - 1 of these have left the window.
    return max(window[len(window) - limit] + WINDOW_S - now, 0.0)


def retry_after(wait: float) -> int:
    """``Retry-After`` in whole seconds (at least 1) for a wait of ``wait`` seconds."""
    return max(1, math.ceil(wait))


def _choose(request: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = request.get(name)
    if value is None:
        return allowed[0]
    if not isinstance(value, str):
        raise Refusal(400, "invalid_type", f"{name} must be a string", param=name)
    if value in allowed:
        return value
    if name == "instructions":  # never echoed: the text may be long, or not the device's to show
        message = "these instructions are not allowed"
    else:
        message = f"{name} {_shown(value)} is not allowed"
    raise Refusal(403, "not_allowed", message, param=name)


def _shown(value: str) -> str:
    return value if len(value) <= _SHOWN else f"{value[:_SHOWN]}..."


def utc(unix: float) -> str:
    """A time for people and logs: ``2025-06-01T12:00:00Z``."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
