"""Credentials: what the transport awaits before every connection to put in its handshake.

A ``Credentials`` object gives the headers of one connection. The API key is the first kind;
an ephemeral client secret minted per connection or a token broker's secret is another class with
the same two methods, and the transport does not change. Secrets never appear in a ``repr``, a
log line or an exception.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from voiced.config import Config
from voiced.errors import ConfigError

log = logging.getLogger("voiced.auth")

CREDENTIAL = "openai_api_key"
"""The systemd credential (``LoadCredential=openai_api_key:...``) read when nothing else is set."""


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


def find_api_key(config: Config) -> ApiKey | None:
    """The API key, from the first source that has one: ``auth.api_key`` (usually
    ``${OPENAI_API_KEY}``), ``auth.api_key_file``, then the systemd credential; None if none.

    Raises:
        ConfigError: ``api_key_file`` cannot be read or is empty.
    """
    auth = config.auth
    if auth.api_key:
        _warn_if_readable(config, auth.api_key)
        return ApiKey(auth.api_key, "auth.api_key")
    if auth.api_key_file:
        return ApiKey(_read_key(Path(auth.api_key_file), config), f"file {auth.api_key_file}")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (path := Path(directory) / CREDENTIAL).is_file():
        return ApiKey(_read_key(path, config), f"systemd credential {CREDENTIAL}")
    return None


def _read_key(path: Path, config: Config) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"cannot read the API key from {path}: {why}",
            file=config.source,
            key="auth.api_key_file",
        ) from None  # never chain: nothing of the file may reach a traceback
    key = lines[0].strip() if lines else ""
    if not key:
        raise ConfigError(f"{path} holds no API key", file=config.source, key="auth.api_key_file")
    return key


def _warn_if_readable(config: Config, key: str) -> None:
    """Warn when the config file itself holds the key and others may read it."""
    if config.source is None:
        return
    try:
        path = Path(config.source)
        readable = path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH)
        holds = readable and key in path.read_text()
    except OSError:
        return
    if holds:
        log.warning(
            "%s holds the API key and others can read it: `chmod 600 %s`, or keep the key in "
            "OPENAI_API_KEY, auth.api_key_file or a systemd credential",
            path,
            path,
        )
