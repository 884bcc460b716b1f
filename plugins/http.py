"""The ``http`` input: a small local control API, served by hypercorn on trio.

``POST /start``, ``/commit``, ``/cancel``, ``/toggle`` send the command and answer with what became
of it: 202 accepted, 409 not in this state (a commit while idle), 503 not now (the realtime server
is not ready, or the daemon gave no verdict in time). ``POST /commit?reply=false`` (or the body
``{"reply": false}``) sends what was heard without asking for an answer. ``GET /volume`` reads and
``POST /volume`` sets the speaker's volume; ``GET /status`` is the daemon's status as JSON;
``GET /healthz`` answers 200 while a turn can be taken (connected, no device failing), else 503
with why; ``GET /metrics`` is the Prometheus text format; ``GET /events`` streams what the daemon
shows, its turns and transcripts as Server-Sent Events. ``HEAD`` works wherever ``GET`` does.

It binds 127.0.0.1 unless told otherwise, and anywhere else only with a bearer token, which every
endpoint but ``/healthz`` then requires. Each client has a token-bucket rate limit (429 past it).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio

from voiced import Daemon, PluginSpec, hookimpl
from voiced.events import ConnectionChanged, TokensUsed, TurnEnded
from voiced.serving import listen

# Each tunable lives (documented) in the module that uses it; `X as X` re-exports it, so that
# voiced_plugins.http.X reads as it did before the split (the tests read them here).
from ._http_app import ENDPOINTS as ENDPOINTS
from ._http_app import MAX_BODY as MAX_BODY
from ._http_app import VERDICT_TIMEOUT as VERDICT_TIMEOUT
from ._http_app import App
from ._http_events import EVENTS_QUEUE as EVENTS_QUEUE
from ._http_events import KEEP_ALIVE_S as KEEP_ALIVE_S
from ._http_events import MAX_EVENTS_CLIENTS, SHUTDOWN_GRACE
from ._http_events import STREAMED as STREAMED
from ._http_limits import RATE_CLIENTS as RATE_CLIENTS
from ._http_limits import RateLimit
from ._http_metrics import _TOKEN_KINDS as _TOKEN_KINDS
from ._http_metrics import LATENCY_BUCKETS as LATENCY_BUCKETS
from ._http_metrics import SHOWN_STATES as SHOWN_STATES
from ._http_metrics import Metrics

log = logging.getLogger("voiced.http")


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    """Address to listen on. Anything but loopback needs ``token`` or ``token_file``."""
    port: int = 8787
    """TCP port, 0 to 65535 (0 picks a free one)."""
    token: str | None = field(default=None, repr=False)
    """Bearer token every endpoint but ``/healthz`` requires; None: none is asked for."""
    token_file: str | None = None
    """A file holding the token instead (e.g. a systemd credential)."""
    rate_limit: float = 20.0
    """Requests per second each client may make on average; 0 turns the limit off."""
    burst: int = 40
    """Requests a client may make at once before the rate applies."""
    bearer: str | None = field(default=None, init=False, repr=False, compare=False)
    """The token in force (from ``token`` or ``token_file``), once checked."""

    def __post_init__(self) -> None:
        from voiced.yamlconf import FieldError

        if not 0 <= self.port <= 65535:
            raise FieldError("must be between 0 and 65535 (0 picks a free port)", field="port")
        if self.rate_limit < 0:
            raise FieldError("must be 0 (no limit) or more requests per second", field="rate_limit")
        if self.burst < 1:
            raise FieldError("must be at least 1", field="burst")
        if self.token and self.token_file:
            raise FieldError("set token or token_file, not both", field="token_file")
        bearer = self.token or None
        if self.token_file:
            try:
                bearer = Path(self.token_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise FieldError(
                    f"cannot read {self.token_file}: {why}", field="token_file"
                ) from exc
            if not bearer:
                raise FieldError(f"{self.token_file} is empty", field="token_file")
        where = "token_file" if self.token_file else "token"
        if bearer is not None:
            if not (bearer.isascii() and bearer.isprintable()) or " " in bearer:
                raise FieldError("must be printable ASCII with no spaces", field=where)
            if len(bearer) < 16:
                raise FieldError(
                    "must be at least 16 characters (e.g. `openssl rand -hex 16`)", field=where
                )
        elif not _loopback(self.host):
            raise FieldError(
                f"required when host is {self.host or 'every address'!r}, which is not loopback: "
                "set token (or token_file), or keep host 127.0.0.1",
                field="token",
            )
        object.__setattr__(self, "bearer", bearer)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name (or "": every address) is not known to stay on this machine


class HttpInput:
    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.bound: list[str] = []
        """The URLs actually bound, once running."""
        self.app: App | None = None
        """The application, once running (its counters are for tests and ``/metrics``)."""

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from hypercorn.config import Config, Sockets
        from hypercorn.trio.run import worker_serve
        from hypercorn.utils import wrap_app

        listener = await listen(self.config.host, self.config.port, key="plugins.http")
        try:
            config = Config()
            config.accesslog = None
            config.errorlog = logging.getLogger("voiced.http.server")  # hypercorn's own chatter
            config.graceful_timeout = SHUTDOWN_GRACE
            config.include_server_header = False
            events = daemon.subscribe(TurnEnded, TokensUsed, ConnectionChanged)
            limit = RateLimit(self.config.rate_limit, self.config.burst)
            app = self.app = App(
                daemon, Metrics(daemon), self.config.bearer, limit, MAX_EVENTS_CLIENTS
            )
            stop = trio.Event()
            # hypercorn is given a socket bound here, so a bind failure is one clear error and
            # nothing leaks (left to itself it leaves the socket open, in nested groups).
            serve = partial(
                worker_serve,
                wrap_app(cast("Any", app), config.wsgi_max_body_size, "asgi"),
                config,
                sockets=Sockets([], [listener], []),
                shutdown_trigger=stop.wait,
            )
            async with trio.open_nursery() as outer:
                # The server runs shielded: cancelled (the daemon shutting down), it stops
                # gracefully instead, within SHUTDOWN_GRACE, so every stream ends cleanly.
                with trio.CancelScope(shield=True) as shield:

                    def wind_down() -> None:
                        app.closing.set()
                        stop.set()
                        shield.deadline = min(shield.deadline, trio.current_time() + SHUTDOWN_GRACE)

                    outer.start_soon(_on_cancel, wind_down)
                    async with trio.open_nursery() as inner:
                        app.writers = inner
                        inner.start_soon(app.metrics.follow, events)
                        self.bound = await inner.start(_serve_then_cancel, serve, inner)
                        log.info("control API on %s", " ".join(self.bound))
                        task_status.started()
                outer.cancel_scope.cancel()
        finally:
            listener.close()


async def _on_cancel(action: Callable[[], None]) -> None:
    try:
        await trio.sleep_forever()
    finally:
        action()


async def _serve_then_cancel(
    serve: Callable[..., Awaitable[None]],
    nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    await serve(task_status=task_status)
    nursery.cancel_scope.cancel()  # the server is done: so are the metrics and the streams


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec(
        "http",
        "control API: POST /start /commit /cancel /toggle, GET /status /metrics /events",
        HttpConfig,
        HttpInput,
        input=True,
    )
