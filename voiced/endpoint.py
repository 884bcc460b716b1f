"""Which realtime server voiced talks to, with which credentials and session settings.

``choose_url`` picks the server (``realtime.url``, else OpenAI when credentials are configured,
else the simulator built into voiced), ``open_endpoint`` runs that simulator for as long as it is
needed, and ``session_update`` is the configuration sent first on every connection.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from voiced import protocol as p
from voiced.auth import ApiKey, find_credentials
from voiced.config import Config
from voiced.errors import ConfigError
from voiced.stages.transport import Endpoint

log = logging.getLogger("voiced")

OPENAI_URL = "wss://api.openai.com/v1/realtime"


def choose_url(config: Config) -> str:
    """``realtime.url``, or when unset: OpenAI if credentials are configured, else ``sim``.

    Raises:
        ConfigError: a real server is configured but no credentials are, or the URL does not
            fit ``auth.mode``.
    """
    url, mode = config.realtime.url, config.auth.mode
    if mode == "azure" and url is None:
        raise ConfigError(
            "required for auth.mode azure: wss://<resource>.openai.azure.com/openai/v1/realtime",
            file=config.source,
            key="realtime.url",
        )
    if mode == "broker" and url == "sim":
        raise ConfigError(
            "the built-in simulator cannot take the broker's secrets: with auth.mode broker, "
            "leave realtime.url unset (OpenAI) or name the server the broker mints for",
            file=config.source,
            key="realtime.url",
        )
    has_credentials = find_credentials(config, url or OPENAI_URL) is not None
    if url is None:
        url = OPENAI_URL if has_credentials or mode == "broker" else "sim"
    if url != "sim" and not has_credentials:
        raise ConfigError(_missing(config), file=config.source, key=_secret_key(config))
    return url


def _secret_key(config: Config) -> str:
    return "auth.device_token" if config.auth.mode == "broker" else "auth.api_key"


def _missing(config: Config) -> str:
    if config.auth.mode == "broker":
        return (
            f"no device token for the broker at {config.auth.broker_url}: set "
            "auth.device_token or auth.device_token_file (from `voiced broker add-device`), "
            "or a systemd credential voiced_device_token"
        )
    return (
        f"realtime.url is {config.realtime.url} but no API key is configured: set "
        "OPENAI_API_KEY (or auth.api_key, auth.api_key_file, a systemd credential "
        "openai_api_key), or use realtime.url: sim"
    )


def describe_auth(config: Config) -> str:
    """``auth.mode`` and where its secret comes from, never the secret (for check-config)."""
    url = choose_url(config)
    if url == "sim":
        return f"{config.auth.mode}, with the simulator's own key"
    credentials = find_credentials(config, url)
    assert credentials is not None  # choose_url checked it
    return f"{config.auth.mode}: {credentials.describe()}"


def session_update(config: Config) -> p.SessionUpdate:
    """The session configuration voiced sends first on every connection."""
    rt = config.realtime
    t = rt.transcription
    return p.SessionUpdate(
        voice=rt.voice,
        instructions=rt.instructions,
        transcription=p.Transcription(t.model, t.language, t.prompt) if t else None,
    )


@asynccontextmanager
async def open_endpoint(config: Config) -> AsyncIterator[Endpoint]:
    """The endpoint to connect to, running the embedded simulator for as long as it is needed.

    Raises:
        ConfigError: a real server is configured but no API key is.
    """
    url = choose_url(config)
    timeout, model = config.realtime.connect_timeout, config.realtime.model
    if url != "sim":
        credentials = find_credentials(config, url)
        assert credentials is not None  # choose_url checked it
        log.info("realtime: %s, model %s, %s", url, model, credentials.describe())
        yield Endpoint(url, model, credentials, timeout)
        return
    from voiced.sim import Simulator  # only the simulator's users pay for importing it

    why = "realtime.url: sim" if config.realtime.url else "no API key is configured"
    token = secrets.token_urlsafe(16)  # the loopback server takes only this process's token
    async with trio.open_nursery() as nursery:
        port = await nursery.start(Simulator(api_key=token, pace=0.0, record=False).serve)
        sim_url = f"ws://127.0.0.1:{port}/v1/realtime"
        log.info("realtime: the simulator built into voiced at %s (%s)", sim_url, why)
        credentials = find_credentials(config, sim_url, ApiKey(token, "the simulator"))
        assert credentials is not None  # a key was given
        yield Endpoint(sim_url, model, credentials, timeout)
        nursery.cancel_scope.cancel()
