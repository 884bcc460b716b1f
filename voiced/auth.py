"""Credentials: what the transport awaits before every connection to put in its handshake.

A ``Credentials`` object gives the headers of one connection. The API key is the first kind;
an ephemeral client secret minted per connection or a token broker's secret is another class with
the same two methods, and the transport does not change. Secrets never appear in a ``repr``, a
log line or an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Credentials(Protocol):
    """Headers for the next connection."""

    async def headers(self) -> list[tuple[bytes, bytes]]:
        """The handshake headers of the next connection (awaited before each one).

        Raises:
            TransportError: they cannot be had now (``AuthRejected`` when a person must act).
        """

    def describe(self) -> str:
        """Where the secret comes from, for logs and ``check-config`` (never the secret)."""


@dataclass(frozen=True)
class ApiKey:
    """An API key sent as a bearer token on every connection."""

    key: str = field(repr=False)
    source: str = "auth.api_key"
    """Where it came from, e.g. ``OPENAI_API_KEY``."""

    async def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Authorization", f"Bearer {self.key}".encode())]

    def describe(self) -> str:
        return f"API key from {self.source}"
