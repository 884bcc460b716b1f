"""Serving the broker: hypercorn under trio, on a socket bound here, TLS when configured.

`serve` finds the API key (``broker.api_key``, ``broker.api_key_file``, the systemd credential
``openai_api_key``), opens the devices file, checks the certificate, binds the address (each a
clear `ConfigError` before anything serves), then serves until SIGINT or SIGTERM, when it stops
taking connections and gives the requests under way `SHUTDOWN_GRACE` seconds to finish. Every
mint goes upstream through one shared ``httpx.AsyncClient``.
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio

from voiced.auth import CREDENTIAL, find_secret
from voiced.broker.store import Store
from voiced.config import BrokerConfig, Config
from voiced.errors import ConfigError
from voiced.saved import resolve
from voiced.serving import listen

log = logging.getLogger("voiced.broker")

SHUTDOWN_GRACE = 5.0
"""Seconds the requests under way get to finish once the broker is told to stop."""


def broker_section(config: Config) -> BrokerConfig:
    """``broker:`` of the config.

    Raises:
        ConfigError: the file has no ``broker:`` section.
    """
    if config.broker is None:
        raise ConfigError(
            "there is no broker section: add `broker:` (with at least api_key) to run the broker",
            file=config.source,
            key="broker",
        )
    return config.broker


def open_devices(config: Config) -> Store:
    """The devices file of ``broker.devices_file`` (relative to the state directory), open;
    created if there is none.

    Raises:
        ConfigError: no ``broker:`` section, or the file cannot be opened or is not SQLite.
    """
    import sqlite3

    path = resolve(broker_section(config).devices_file, config.state_dir)
    try:
        return Store.open(path)
    except (OSError, sqlite3.Error) as exc:
        why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        raise ConfigError(
            f"cannot open the devices file {path}: {why}",
            file=config.source,
            key="broker.devices_file",
        ) from exc


async def serve(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the broker until ``shutdown_trigger`` returns (default: SIGINT or SIGTERM).

    Args:
        config: the configuration; its ``broker:`` section is what is served.
        clock: the wall clock in Unix seconds (see `voiced.broker.app.build_app`).
        shutdown_trigger: awaited; when it returns, the broker stops gracefully.
        task_status: gets the URL served, e.g. ``https://127.0.0.1:8788``, once it listens.

    Raises:
        ConfigError: no ``broker:`` section, no API key, the devices file, the certificate or
            the address is wrong.
    """
    if shutdown_trigger is None:
        async with _signals() as on_signal:
            await serve(config, clock=clock, shutdown_trigger=on_signal, task_status=task_status)
        return
    import httpx
    from hypercorn.config import Config as HyperConfig
    from hypercorn.config import Sockets
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    from voiced.broker.app import build_app

    broker = broker_section(config)
    found = find_secret(config, broker.api_key, broker.api_key_file, CREDENTIAL, "broker.api_key")
    if found is None:
        raise ConfigError(
            "no OpenAI API key: set api_key (e.g. '${OPENAI_API_KEY:-}'), api_key_file, or the "
            f"systemd credential {CREDENTIAL}",
            file=config.source,
            key="broker.api_key",
        )
    key, source = found
    hyper = HyperConfig()
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("voiced.broker.server")  # hypercorn's own chatter
    hyper.graceful_timeout = SHUTDOWN_GRACE
    hyper.include_server_header = False
    # HTTP/2's header codec (hpack, under hypercorn) logs every header it decodes at DEBUG,
    # device tokens too: TLS offers HTTP/1.1 only, and hpack is kept quiet for a client that
    # speaks HTTP/2 anyway (in the clear, with prior knowledge or an h2c upgrade).
    hyper.alpn_protocols = ["http/1.1"]
    logging.getLogger("hpack").setLevel(logging.WARNING)
    if broker.tls_cert is not None and broker.tls_key is not None:
        hyper.certfile = str(resolve(broker.tls_cert, config.state_dir))
        hyper.keyfile = str(resolve(broker.tls_key, config.state_dir))
        _check_tls(hyper, config)
    tls = bool(hyper.ssl_enabled)
    with open_devices(config) as store:
        devices = await trio.to_thread.run_sync(store.active)
        listener = await listen(broker.host, broker.port, key="broker", file=config.source)
        try:
            async with httpx.AsyncClient() as client:
                app = build_app(store, key, broker, client, clock=clock)
                secure, plain = ([listener], []) if tls else ([], [listener])
                run = partial(
                    worker_serve,
                    wrap_app(cast("Any", app), hyper.wsgi_max_body_size, "asgi"),
                    hyper,
                    sockets=Sockets(secure, plain, []),
                    shutdown_trigger=shutdown_trigger,
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(run)
                    url = _url(listener, tls)
                    count = f"{devices} device{'' if devices == 1 else 's'}"
                    log.info("broker listening on %s (%s)", url, count)
                    log.info("minting at %s with the API key from %s", app.mint_url, source)
                    if not devices:
                        log.warning("no devices yet: add one with `voiced broker add-device NAME`")
                    task_status.started(url)
        finally:
            listener.close()


def _check_tls(hyper: Any, config: Config) -> None:
    """Load the certificate and key once, so a wrong one is a `ConfigError` now."""
    for name, path in (("tls_cert", hyper.certfile), ("tls_key", hyper.keyfile)):
        try:
            Path(path).read_bytes()
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise ConfigError(
                f"cannot read {path}: {why}", file=config.source, key=f"broker.{name}"
            ) from None
    try:
        hyper.create_ssl_context()
    except ssl.SSLError as exc:
        raise ConfigError(
            f"cannot serve TLS with {hyper.certfile} and {hyper.keyfile}: {exc.reason or exc} "
            "(a PEM certificate chain, and its unencrypted PEM key)",
            file=config.source,
            key="broker.tls_cert",
        ) from None


def _url(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


@asynccontextmanager
async def _signals() -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A shutdown trigger that returns on the first SIGINT or SIGTERM; the receiver stays
    installed until the broker has stopped, so a second signal does not cut the grace short."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        first = trio.Event()

        async def watch() -> None:
            async for signum in signals:
                name = signal.Signals(signum).name
                log.info("%s: %s", name, "already stopping" if first.is_set() else "stopping")
                first.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            yield first.wait
            nursery.cancel_scope.cancel()
