"""How the simulator reads and refuses credentials, on the socket and on the REST endpoint alike.

A request presents its key as ``Authorization: Bearer <key>`` (OpenAI, and every client secret)
or as ``api-key: <key>`` (Azure, protocol §8). A refusal names the key only masked, the way the
real error does. No trio, no sockets.
"""

from __future__ import annotations

from collections.abc import Mapping

from voiced.sim.schema import Problem

_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)


def credential(headers: Mapping[str, str]) -> str:
    """The key a request presents (header names lower-cased): ``Authorization: Bearer`` when
    that header is there, else Azure's ``api-key``; empty when there is none."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, key = authorization.partition(" ")
        return key.strip() if scheme.lower() == "bearer" else ""
    return headers.get("api-key", "").strip()


def mask_key(key: str) -> str:
    """Show a key the way the real error does, never in full."""
    return f"{key[:5]}***{key[-2:]}" if len(key) >= 8 else "***"


def key_problem(key: str) -> Problem:
    """Why ``key`` (empty: none was given) is refused: no code when missing, else
    ``invalid_api_key`` with the key masked."""
    if not key:
        return Problem(None, _NO_KEY)
    message = (
        f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    return Problem("invalid_api_key", message)
