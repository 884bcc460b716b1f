"""Credentials: what the transport awaits before every connection to put in its handshake.

A ``Credentials`` object gives the headers of one connection, one class per ``auth.mode``:
``ApiKey`` (the key as a bearer token), ``AzureKey`` (the key in Azure's ``api-key`` header),
``Ephemeral`` (the key mints a short-lived client secret for each connection) and ``Brokered``
(a token broker mints it; the device holds only its device token). The transport does not know
which it has. Secrets never appear in a ``repr``, a log line or an exception.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from voiced.config import Config
from voiced.errors import ConfigError
from voiced.saved import resolve

log = logging.getLogger("voiced.auth")

CREDENTIAL = "openai_api_key"
"""The systemd credential (``LoadCredential=openai_api_key:...``) read when no key is set."""
DEVICE_CREDENTIAL = "voiced_device_token"
"""The systemd credential read for the device token when none is set."""


class Credentials(Protocol):
    """Headers for the next connection."""

    async def headers(self) -> list[tuple[bytes, bytes]]:
        """The handshake headers of the next connection (awaited before each one).

        Raises:
            TransportError: they cannot be had now (``fatal`` when a person must act).
        """

    def describe(self) -> str:
        """Where the secret comes from, for logs and ``check-config`` (never the secret)."""


@dataclass(frozen=True)
class ApiKey:
    """An API key sent as a bearer token on every connection."""

    key: str = field(repr=False)
    source: str = "auth.api_key"
    """Where it came from, e.g. ``auth.api_key``."""

    async def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"Authorization", f"Bearer {self.key}".encode())]

    def describe(self) -> str:
        return f"API key from {self.source}"


@dataclass(frozen=True)
class AzureKey:
    """An Azure OpenAI key, sent in the ``api-key`` header on every connection."""

    key: str = field(repr=False)
    source: str = "auth.api_key"

    async def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"api-key", self.key.encode())]

    def describe(self) -> str:
        return f"Azure API key from {self.source}"


@dataclass(frozen=True)
class Ephemeral:
    """A client secret minted with the API key before each connection, so the key itself never
    travels on the long-lived socket."""

    key: ApiKey
    mint_url: str
    """``.../v1/realtime/client_secrets``."""
    session: dict[str, Any]
    """The session configuration the secret is minted for."""
    ttl_s: int
    timeout: float

    async def headers(self) -> list[tuple[bytes, bytes]]:
        from voiced.client_secrets import request_secret

        body = {"expires_after": {"anchor": "created_at", "seconds": self.ttl_s}}
        secret = await request_secret(
            self.mint_url,
            {"Authorization": f"Bearer {self.key.key}"},
            {**body, "session": self.session},
            what="OpenAI",
            time_limit=self.timeout,
        )
        return [(b"Authorization", f"Bearer {secret.value}".encode())]

    def describe(self) -> str:
        return f"client secrets minted at {self.mint_url} ({self.key.describe()})"


@dataclass(frozen=True)
class Brokered:
    """A client secret asked of a token broker before each connection; the device holds only
    its own device token, which the broker can revoke."""

    token: str = field(repr=False)
    source: str
    """Where the device token came from."""
    broker_url: str
    ask: dict[str, Any]
    """What this device asks for: ``model``, ``voice``, ``instructions``, ``ttl_s``."""
    timeout: float

    async def headers(self) -> list[tuple[bytes, bytes]]:
        from voiced.client_secrets import request_secret

        secret = await request_secret(
            f"{self.broker_url.rstrip('/')}/v1/token",
            {"Authorization": f"Bearer {self.token}"},
            self.ask,
            what="the token broker",
            time_limit=self.timeout,
        )
        return [(b"Authorization", f"Bearer {secret.value}".encode())]

    def describe(self) -> str:
        via = f"device token from {self.source}"
        return f"client secrets from the broker at {self.broker_url} ({via})"


def find_credentials(config: Config, url: str, key: ApiKey | None = None) -> Credentials | None:
    """The credentials of ``auth.mode`` for connecting to ``url``; None when its secret (the
    API key, or the device token) is not configured anywhere. ``key`` stands in for the
    configured API key (the embedded simulator's own).

    Raises:
        ConfigError: a file named for a secret cannot be read or is empty.
    """
    auth, timeout = config.auth, config.realtime.connect_timeout
    if auth.mode == "broker":
        token, file = auth.device_token, auth.device_token_file
        found = find_secret(config, token, file, DEVICE_CREDENTIAL, "auth.device_token")
        if found is None:
            return None
        if auth.api_key:
            log.warning("auth.api_key is set but unused: in broker mode the broker holds the key")
        rt = config.realtime
        ask = {"model": rt.model, "voice": rt.voice, "instructions": rt.instructions}
        assert auth.broker_url is not None  # the config checked it
        return Brokered(*found, auth.broker_url, {**ask, "ttl_s": auth.ttl_s}, timeout)
    key = key or find_api_key(config)
    if key is None:
        return None
    if auth.mode == "azure":
        return AzureKey(key.key, key.source)
    if auth.mode == "ephemeral":
        return Ephemeral(key, mint_url(url), minted_session(config), auth.ttl_s, timeout)
    return key


def mint_url(url: str) -> str:
    """Where client secrets for the realtime WebSocket ``url`` are minted."""
    scheme, _, rest = url.partition("://")
    return f"{'https' if scheme == 'wss' else 'http'}://{rest.rstrip('/')}/client_secrets"


def minted_session(config: Config) -> dict[str, Any]:
    """The session configuration a client secret is minted for."""
    rt = config.realtime
    return {
        "type": "realtime",
        "model": rt.model,
        "instructions": rt.instructions,
        "audio": {"output": {"voice": rt.voice}},
    }


def find_api_key(config: Config) -> ApiKey | None:
    """The API key, from the first source that has one: ``auth.api_key`` (usually
    ``${OPENAI_API_KEY}``), ``auth.api_key_file``, then the systemd credential; None if none.

    Raises:
        ConfigError: ``api_key_file`` cannot be read or is empty.
    """
    auth = config.auth
    found = find_secret(config, auth.api_key, auth.api_key_file, CREDENTIAL, "auth.api_key")
    return ApiKey(*found) if found else None


def find_secret(
    config: Config, value: str | None, file: str | None, credential: str, key: str
) -> tuple[str, str] | None:
    """A secret and where it came from: ``value`` as written in the config (``key``), else the
    first line of ``file``, else the systemd credential named ``credential``; None if none.
    ``key`` (``auth.api_key``, ``broker.api_key``, ``auth.device_token``) names it in messages.

    Raises:
        ConfigError: ``file`` (or the credential) cannot be read or is empty.
    """
    if value:
        _warn_if_readable(config, value, key)
        return value, key
    if file:
        path = resolve(file, config.state_dir)
        return _read_secret(path, config, f"{key}_file"), f"file {file}"
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory and (path := Path(directory) / credential).is_file():
        return _read_secret(path, config, key), f"systemd credential {credential}"
    return None


def _read_secret(path: Path, config: Config, key: str) -> str:
    what = _what(key)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"cannot read {what} from {path}: {why}", file=config.source, key=key
        ) from None  # never chain: nothing of the file may reach a traceback
    secret = lines[0].strip() if lines else ""
    if not secret:
        raise ConfigError(
            f"{path} holds no {what.removeprefix('the ')}", file=config.source, key=key
        )
    return secret


def _warn_if_readable(config: Config, secret: str, key: str) -> None:
    """Warn when the config file itself holds the secret and others may read it."""
    if config.source is None:
        return
    try:
        path = Path(config.source)
        readable = path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH)
        holds = readable and secret in path.read_text()
    except OSError:
        return
    if holds:
        log.warning(
            "%s holds %s and others can read it: `chmod 600 %s`, or keep it in the "
            "environment, a file (%s_file) or a systemd credential",
            path,
            _what(key),
            path,
            key,
        )


def _what(key: str) -> str:
    return "the device token" if "device_token" in key else "the API key"
