"""Asking an HTTP service for a client secret: OpenAI's ``POST /v1/realtime/client_secrets``, or
a token broker's ``POST /v1/token``. Both answer ``{"value": "ek_...", "expires_at": ...}``.

The one place an HTTP answer becomes a ``TransportError`` that says what the operator must do:
401 and 403 are the credentials (fatal), 429 ``insufficient_quota`` is money (fatal), another
429 or a 5xx or no answer is transient, and 400, 404 and 422 are the request (a config problem).
The secret is never logged, shown in a ``repr`` or put in an exception; neither are the headers.
httpx is imported here only, so the daemon pays for it only in the modes that mint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from voiced.errors import (
    AuthRejected,
    QuotaExhausted,
    RequestRejected,
    ServerUnreachable,
    TransportError,
)

REQUEST_RULE = {"not_allowed", "invalid_request_error"}
"""Error codes of a 403 that mean the request, not the credentials, is wrong."""


@dataclass(frozen=True)
class ClientSecret:
    """A short-lived secret that opens Realtime sessions until ``expires_at``."""

    value: str = field(repr=False)
    expires_at: int
    """Unix seconds."""


async def request_secret(
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    *,
    what: str,
    time_limit: float,
    client: httpx.AsyncClient | None = None,
) -> ClientSecret:
    """POST ``body`` to ``url`` and read the secret it answers with.

    Args:
        url: the endpoint.
        headers: the credentials to send (never shown anywhere).
        body: the JSON request.
        what: who answers, for messages (``OpenAI``, ``the token broker``).
        time_limit: seconds for each step of the request (connect, write, read).
        client: a client to reuse; None opens one for this request.

    Raises:
        TransportError: the secret could not be had (see the module docstring).
    """
    try:
        if client is None:
            async with httpx.AsyncClient() as own:
                answer = await own.post(url, json=body, headers=headers, timeout=time_limit)
        else:
            answer = await client.post(url, json=body, headers=headers, timeout=time_limit)
    except httpx.HTTPError as exc:
        why = "timed out" if isinstance(exc, httpx.TimeoutException) else str(exc)
        # Never chained: the request (and its headers) would ride along in a traceback.
        raise ServerUnreachable(
            f"cannot reach {what} at {url}: {why or type(exc).__name__}"
        ) from None
    if answer.status_code != 200:
        raise refusal(answer.status_code, _error(answer), what=what, url=url)
    try:
        data = answer.json()
        return ClientSecret(str(data["value"]), int(data["expires_at"]))
    except (ValueError, TypeError, KeyError):
        raise ServerUnreachable(f"{what} at {url} answered without a client secret") from None


def refusal(status: int, error: dict[str, Any], *, what: str, url: str) -> TransportError:
    """The ``TransportError`` for a non-200 answer whose body's ``error`` is ``error``."""
    code = error.get("code") if isinstance(error.get("code"), str) else None
    message = str(error.get("message") or f"HTTP {status}")
    said = f"{what} answered HTTP {status}{f' ({code})' if code else ''}: {message}"
    if status == 429 and code == "insufficient_quota":
        return QuotaExhausted(f"{said}: add credit to the account")
    if status == 401 or (status == 403 and code not in REQUEST_RULE):
        return AuthRejected(f"{said}: check the credentials")
    if status in (400, 403, 404, 422):
        return RequestRejected(f"{said}: check the configuration ({url})")
    return ServerUnreachable(said)


def _error(answer: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-style error body; empty when there is none."""
    try:
        error = answer.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}
