"""The ``http`` input: a small local control API, served by hypercorn on trio.

``POST /start``, ``/commit``, ``/cancel``, ``/toggle`` send the command and answer with what became
of it: 202 accepted, 409 not in this state (a commit while idle), 503 not now (the realtime server
is not ready, or the daemon gave no verdict in time). ``POST /commit?reply=false`` (or the body
``{"reply": false}``) sends what was heard without asking for an answer. ``GET /volume`` reads and
``POST /volume`` sets the speaker's volume; ``GET /status`` is the daemon's status as JSON;
``GET /healthz`` answers 200 while connected to the realtime server and 503 (with the last error)
otherwise; ``GET /metrics`` is the Prometheus text format; ``GET /events`` streams what the daemon
shows, its turns and transcripts as Server-Sent Events. ``HEAD`` works wherever ``GET`` does.

It binds 127.0.0.1 unless told otherwise, and anywhere else only with a bearer token, which every
endpoint but ``/healthz`` then requires. Each client has a token-bucket rate limit (429 past it).
"""

from __future__ import annotations

import dataclasses
import errno
import hmac
import ipaddress
import json
import logging
import math
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import trio

from voiced import Command, Daemon, PluginSpec, TurnCommand, hookimpl
from voiced.actions import Verdict
from voiced.events import (
    ConnectionChanged,
    DaemonState,
    Event,
    StateChanged,
    TokensUsed,
    Transcript,
    TurnEnded,
)
from voiced.turn import Outcome

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

log = logging.getLogger("voiced.http")

MAX_BODY = 4096
"""Bytes of a request body taken; a longer one is refused (413) and not read further."""
VERDICT_TIMEOUT = 3.0
"""Seconds a command waits for the daemon's verdict before the answer is 503 (it is wedged)."""
KEEP_ALIVE_S = 15.0
"""Seconds between the comment lines that keep an idle ``/events`` stream open through proxies."""
EVENTS_QUEUE = 64
"""Events queued for one ``/events`` client; a client that lets it fill is dropped."""
MAX_EVENTS_CLIENTS = 16
"""``/events`` streams open at once; more are refused (503)."""
SHUTDOWN_GRACE = 2.0
"""Seconds the server gets at shutdown to end the streams and answer the requests in flight."""
RATE_CLIENTS = 1024
"""Clients the rate limiter remembers before it forgets those whose bucket is full again."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Histogram buckets (seconds) of the turn latencies: a 5 ms commit to a 5 s first answer."""
SHOWN_STATES = ("idle", "listening", "thinking", "speaking", "error", "offline")
STREAMED: dict[type[Event], str] = {
    DaemonState: "daemon_state",
    StateChanged: "state_changed",
    TurnEnded: "turn_ended",
    Transcript: "transcript",
}
"""The kinds ``/events`` carries, and the ``event:`` name of each."""
ENDPOINTS: dict[str, tuple[str, ...]] = {
    "/start": ("POST",),
    "/commit": ("POST",),
    "/cancel": ("POST",),
    "/toggle": ("POST",),
    "/volume": ("GET", "POST"),
    "/status": ("GET",),
    "/healthz": ("GET",),
    "/metrics": ("GET",),
    "/events": ("GET",),
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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


class RateLimit:
    """A token bucket per client: ``burst`` requests at once, refilled at ``rate`` per second.

    Args:
        rate: requests per second; 0 lets every request through.
        burst: the bucket's size.
        clock: the time in seconds (default: trio's clock).
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client → (tokens, when counted)

    def take(self, client: str) -> float:
        """Take a token for ``client``: 0.0 if it had one, else the seconds until it will."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > RATE_CLIENTS:
                self._forget(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget(self, now: float) -> None:
        """Forget the clients whose bucket has filled up again (as good as never seen)."""
        for client, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[client]


class HttpInput:
    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.bound: list[str] = []
        """The URLs actually bound, once running."""
        self.app: _App | None = None
        """The application, once running (its counters are for tests and ``/metrics``)."""

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from hypercorn.config import Config, Sockets
        from hypercorn.trio.run import worker_serve
        from hypercorn.utils import wrap_app

        listener = await _listen(self.config.host, self.config.port)
        try:
            config = Config()
            config.accesslog = None
            config.errorlog = logging.getLogger("voiced.http.server")  # hypercorn's own chatter
            config.graceful_timeout = SHUTDOWN_GRACE
            config.include_server_header = False
            events = daemon.subscribe(TurnEnded, TokensUsed, ConnectionChanged)
            app = self.app = _App(daemon, self.config, _Metrics(daemon))
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


async def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``.

    Raises:
        ConfigError: the address cannot be had (in use, not allowed, not on this machine).
    """
    from voiced.errors import ConfigError

    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        infos = await trio.socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        message = f"cannot listen on {where}: {exc.strerror or exc} (is the address right?)"
        raise ConfigError(message, key="plugins.http.host") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(100)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            hint, key = "choose another port, or 0 for a free one", "plugins.http.port"
        else:
            hint, key = "is the address one of this machine's?", "plugins.http.host"
        message = f"cannot listen on {where}: {exc.strerror or exc} ({hint})"
        raise ConfigError(message, key=key) from exc
    return sock


# ---------------------------------------------------------------------- metrics


class _Metrics:
    """The ``/metrics`` registry: counters and histograms fed by events, and the status read at
    scrape time. A registry of its own: never prometheus_client's global one."""

    def __init__(self, daemon: Daemon) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

        self.registry = registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=registry)  # process_*: CPU, memory, open files
        self.turns = Counter(
            "voiced_turns", "Turns ended, by outcome.", ["outcome"], registry=registry
        )
        for outcome in Outcome:
            self.turns.labels(str(outcome))
        self.latency = Histogram(
            "voiced_latency_seconds",
            "Turn latencies: commit (the press that ends listening to the commit on the wire), "
            "first_audio (commit to the first reply audio), first_play (that audio to the "
            "speaker).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for stage in ("commit", "first_audio", "first_play"):
            self.latency.labels(stage)
        self.tokens = Counter(
            "voiced_tokens", "Tokens the replies used.", ["direction", "kind"], registry=registry
        )
        for direction, kind in _TOKEN_KINDS:
            self.tokens.labels(direction, kind)
        self.renewals = Counter(
            "voiced_session_renewals", "Sessions renewed before they expired.", registry=registry
        )
        self.reconnects = Counter(
            "voiced_reconnects",
            "Connections to the realtime server that failed or were lost (each is retried).",
            registry=registry,
        )
        self.responses = Counter(
            "voiced_http_responses", "HTTP responses, by status code.", ["code"], registry=registry
        )
        self.dropped_clients = Counter(
            "voiced_http_events_clients_dropped",
            "/events clients dropped because they stopped reading.",
            registry=registry,
        )
        self.events_clients = 0
        self._status = _StatusCollector(daemon, self)
        registry.register(cast("Collector", self._status))

    async def follow(self, events: trio.abc.ReceiveChannel[Event]) -> None:
        async with events:
            async for event in events:
                self.take(event)

    def take(self, event: Event) -> None:
        if isinstance(event, TurnEnded):
            self.turns.labels(str(event.outcome)).inc()
            for stage, ms in event.latencies.items():
                self.latency.labels(stage).observe(ms / 1000)
        elif isinstance(event, TokensUsed):
            for direction, kind in _TOKEN_KINDS:
                used = getattr(event.usage, f"{direction}_{kind}")
                self.tokens.labels(direction, kind).inc(max(0, used))
        elif isinstance(event, ConnectionChanged) and not event.connected:
            (self.renewals if event.error is None else self.reconnects).inc()

    def scrape(self, accept: str) -> tuple[bytes, str]:
        """The exposition the scraper asked for (the text format unless it wants OpenMetrics),
        and its content type."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


_TOKEN_KINDS = (
    ("input", "text"),
    ("input", "audio"),
    ("input", "cached"),
    ("output", "text"),
    ("output", "audio"),
)
# fmt: off
_DEVICE_COUNTERS = (  # (status["audio"] role, its counter, the metric, its help, scale)
    ("input", "dropped_frames", "voiced_microphone_dropped_frames",
     "Microphone frames the pipeline did not take in time.", 1.0),
    ("input", "xruns", "voiced_microphone_xruns", "Microphone overruns.", 1.0),
    ("input", "reopens", "voiced_microphone_reopens", "Times the microphone was reopened.", 1.0),
    ("output", "underruns", "voiced_speaker_underruns", "Speaker underruns.", 1.0),
    ("output", "xruns", "voiced_speaker_xruns", "Speaker xruns.", 1.0),
    ("output", "dropped_ms", "voiced_speaker_dropped_seconds",
     "Reply audio dropped while the speaker was away.", 0.001),
    ("output", "reopens", "voiced_speaker_reopens", "Times the speaker was reopened.", 1.0),
)
# fmt: on


class _StatusCollector:
    """What the devices and the socket count themselves, read from ``daemon.status()`` at each
    scrape."""

    def __init__(self, daemon: Daemon, metrics: _Metrics) -> None:
        self._daemon = daemon
        self._metrics = metrics
        self._started = trio.current_time()

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self._daemon.status()
        link = status.get("connection", {})
        for key, about in (
            ("connects", "Connections made to the realtime server."),
            ("events_sent", "Events sent to the realtime server."),
            ("events_received", "Events received from the realtime server."),
        ):
            if key in link:
                yield CounterMetricFamily(f"voiced_{key}", about, value=link[key])
        yield GaugeMetricFamily(
            "voiced_connected",
            "Connected to the realtime server (1) or not.",
            value=float(bool(status.get("connected"))),
        )
        yield GaugeMetricFamily(
            "voiced_ready", "Ready for a turn (1) or not.", value=float(bool(status.get("ready")))
        )
        shown = (status.get("shown") or {}).get("state")
        state = GaugeMetricFamily(
            "voiced_state", "What the daemon shows: 1 for the current state.", labels=["state"]
        )
        for name in SHOWN_STATES:
            state.add_metric([name], float(name == shown))
        yield state
        audio = status.get("audio", {})
        for role, key, name, about, scale in _DEVICE_COUNTERS:
            value = audio.get(role, {}).get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield CounterMetricFamily(name, about, value=value * scale)
        volume = audio.get("output", {}).get("volume")
        if isinstance(volume, int | float):
            yield GaugeMetricFamily(
                "voiced_speaker_volume", "Speaker volume, 0 to 1.", value=volume
            )
        dropped = CounterMetricFamily(
            "voiced_sink_events_dropped",
            "Events dropped because a sink did not keep up.",
            labels=["sink"],
        )
        for sink, counts in status.get("sinks", {}).items():
            dropped.add_metric([sink], counts.get("dropped", 0))
        yield dropped
        yield GaugeMetricFamily(
            "voiced_uptime_seconds",
            "Seconds the daemon has been running (since its control API started).",
            value=trio.current_time() - self._started,
        )
        yield GaugeMetricFamily(
            "voiced_http_events_clients",
            "/events streams open.",
            value=self._metrics.events_clients,
        )


# ---------------------------------------------------------------------- the application


def _json(body: object) -> bytes:
    return json.dumps(body).encode() + b"\n"


def _event(event: Event) -> bytes:
    """One Server-Sent Event: its kind's name, and its fields as JSON."""
    data = dataclasses.asdict(event)
    if isinstance(event, TurnEnded):
        data["latencies_ms"] = data.pop("latencies")  # as /status calls them
    return f"event: {STREAMED[type(event)]}\ndata: {json.dumps(data)}\n\n".encode()


class _App:
    """The ASGI application."""

    def __init__(self, daemon: Daemon, config: HttpConfig, metrics: _Metrics) -> None:
        self.daemon = daemon
        self.metrics = metrics
        self.closing = trio.Event()
        """Set at shutdown: the streams end."""
        self.writers: trio.Nursery | None = None
        """Where the streams' writers run: outside the request, so a writer stuck on a client
        that does not read never holds the request (or the server) up."""
        self._token = config.bearer
        self._limit = RateLimit(config.rate_limit, config.burst)

    @property
    def events_clients(self) -> int:
        return self.metrics.events_clients

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        head = method == "HEAD"
        client = (scope.get("client") or ("unknown",))[0]
        headers: dict[bytes, bytes] = dict(scope["headers"])
        wait = self._limit.take(client)
        if wait:
            retry = str(max(1, math.ceil(wait))).encode()
            body = {"error": "too many requests", "retry_after_s": round(wait, 3)}
            await self._respond(send, 429, body, head, [(b"retry-after", retry)])
            return
        if self._token is not None and path != "/healthz":
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, credentials = given.partition(" ")
            credentials = credentials.strip() if scheme.lower() == "bearer" else ""
            if not hmac.compare_digest(credentials.encode(), self._token.encode()):
                challenge = b'Bearer realm="voiced"'
                if credentials:
                    challenge += b', error="invalid_token"'
                body = {"error": "send the token: Authorization: Bearer <token>"}
                await self._respond(send, 401, body, head, [(b"www-authenticate", challenge)])
                return
        methods = ENDPOINTS.get(path)
        if methods is None:
            listed = [f"{m} {p}" for p, ms in ENDPOINTS.items() for m in ms]
            body = {"error": f"no such endpoint: {path}", "endpoints": listed}
            await self._respond(send, 404, body, head)
            return
        if (method if not head else "GET") not in methods:
            allow = [*methods, "HEAD"] if "GET" in methods else list(methods)
            body = {"error": f"use {' or '.join(methods)} {path}"}
            await self._respond(send, 405, body, head, [(b"allow", ", ".join(allow).encode())])
            return
        if path == "/events":
            await self._events(scope, receive, send, head)
            return
        if path == "/metrics":
            accept = headers.get(b"accept", b"").decode("latin-1")
            text, content_type = self.metrics.scrape(accept)
            await self._respond(send, 200, text, head, content_type=content_type)
            return
        request = b""
        if method == "POST":
            length = headers.get(b"content-length", b"0")
            if not length.isdigit() or int(length) > MAX_BODY:
                await self._too_large(send)
                return
            while True:
                message = await receive()
                request += message.get("body", b"")
                if len(request) > MAX_BODY:
                    await self._too_large(send)
                    return  # the rest is never read
                if not message.get("more_body"):
                    break
        status, answer = await self._route(path, method, scope["query_string"], request)
        await self._respond(send, status, answer, head)

    async def _too_large(self, send: Send) -> None:
        body = {"error": f"the body is over {MAX_BODY} bytes"}
        await self._respond(send, 413, body, False, [(b"connection", b"close")])

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes | Mapping[str, Any],
        head: bool,
        headers: Iterable[tuple[bytes, bytes]] = (),
        *,
        content_type: str = "application/json",
    ) -> None:
        self.metrics.responses.labels(str(status)).inc()
        data = body if isinstance(body, bytes) else _json(body)
        start = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(data)).encode()),
            *headers,
        ]
        await send({"type": "http.response.start", "status": status, "headers": start})
        await send({"type": "http.response.body", "body": b"" if head else data})

    async def _route(
        self, path: str, method: str, query: bytes, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if path == "/volume":
            if method == "POST":
                return await self._set_volume(body)
            volume = self.daemon.status().get("audio", {}).get("output", {}).get("volume")
            if volume is None:
                return 503, {"error": "the speaker reports no volume"}
            return 200, {"volume": volume}
        if path == "/status":
            return 200, self.daemon.status()
        if path == "/healthz":
            status = self.daemon.status()
            ok = bool(status["connected"])
            return (200 if ok else 503), {"ok": ok, "error": status["last_error"]}
        return await self._command(Command(path[1:]), query, body)

    async def _set_volume(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            volume = json.loads(body)["volume"]
            if isinstance(volume, bool) or not isinstance(volume, int | float):
                raise TypeError(volume)
            await self.daemon.set_volume(float(volume))
        except (ValueError, KeyError, TypeError):
            return 400, {"error": 'send {"volume": 0.0-1.0}'}
        return 200, {"volume": float(volume)}

    async def _command(
        self, command: Command, query: bytes, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        replies: list[bool] = []
        for value in urllib.parse.parse_qs(query.decode("latin-1")).get("reply", []):
            if value.lower() not in ("true", "false"):
                return 400, {"error": "reply must be true or false"}
            replies.append(value.lower() == "true")
        if body.strip():
            try:
                given = json.loads(body)
            except ValueError:
                given = None
            if not isinstance(given, dict) or not isinstance(given.get("reply", True), bool):
                return 400, {"error": 'send no body, or {"reply": true|false}'}
            if "reply" in given:
                replies.append(given["reply"])
        if len(set(replies)) > 1:
            return 400, {"error": "reply is given twice, differently"}
        verdicts: list[Verdict] = []
        decided = trio.Event()

        def on_verdict(verdict: Verdict) -> None:
            verdicts.append(verdict)
            decided.set()

        sent = TurnCommand(command, "http", reply=all(replies), on_verdict=on_verdict)
        with trio.move_on_after(VERDICT_TIMEOUT):
            try:
                await self.daemon.commands.send(sent)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return 503, {"refused": str(command), "error": "the daemon is shutting down"}
            await decided.wait()
        if not verdicts:
            said = f"the daemon gave no answer within {VERDICT_TIMEOUT:g} s"
            log.error("%s %s", command, said)
            return 503, {"refused": str(command), "error": said}
        verdict = verdicts[0]
        if verdict.kind == "accepted":
            return 202, {"accepted": str(command), "reason": verdict.reason}
        status = 409 if verdict.kind == "conflict" else 503
        return status, {"refused": str(command), "error": verdict.reason}

    # ------------------------------------------------------------------ /events

    async def _events(self, scope: Scope, receive: Receive, send: Send, head: bool) -> None:
        if self.metrics.events_clients >= MAX_EVENTS_CLIENTS or self.writers is None:
            body = {"error": f"{MAX_EVENTS_CLIENTS} /events streams are open already"}
            await self._respond(send, 503, body, head)
            return
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
            ],
        }
        self.metrics.responses.labels("200").inc()
        if head:
            await send(start)
            await send({"type": "http.response.body", "body": b""})
            return
        subscription = self.daemon.subscribe(*STREAMED)
        chunks, to_write = trio.open_memory_channel[bytes](EVENTS_QUEUE)
        shown = self.daemon.status().get("shown") or {}
        now = DaemonState(shown.get("state", "offline"), shown.get("reason"))
        chunks.send_nowait(b"retry: 3000\n\n" + _event(now))  # what is shown now, first
        writer, written = trio.CancelScope(), trio.Event()
        self.metrics.events_clients += 1
        try:
            await send(start)
            self.writers.start_soon(_write, send, to_write, writer, written)
            clean = await self._stream(subscription, chunks, receive)
            chunks.close()
            if clean:  # the daemon is done: what is queued, then the end of the stream
                with trio.move_on_after(SHUTDOWN_GRACE / 2):
                    await written.wait()
        finally:
            self.metrics.events_clients -= 1
            chunks.close()
            writer.cancel()  # lands once the server has closed a connection nobody reads
            await trio.aclose_forcefully(subscription)
        # Returning ends the request: the server closes the connection if the end was not sent.

    async def _stream(
        self,
        subscription: trio.abc.ReceiveChannel[Event],
        chunks: trio.MemorySendChannel[bytes],
        receive: Receive,
    ) -> bool:
        """Queue the client's events until the daemon is done (True) or the client is gone or
        not reading (False)."""
        ended = False

        def queue(chunk: bytes) -> None:
            try:
                chunks.send_nowait(chunk)
            except trio.WouldBlock:
                self.metrics.dropped_clients.inc()
                log.warning("/events: a client stopped reading; its stream is closed")
                watch.cancel_scope.cancel()

        async def events() -> None:
            nonlocal ended
            async for event in subscription:
                queue(_event(event))
            ended = True
            watch.cancel_scope.cancel()

        async def keep_alive() -> None:
            while True:
                await trio.sleep(KEEP_ALIVE_S)
                queue(b": keep-alive\n\n")

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            watch.cancel_scope.cancel()

        async def closing() -> None:
            nonlocal ended
            await self.closing.wait()
            ended = True
            watch.cancel_scope.cancel()

        async with trio.open_nursery() as watch:
            for task in (events, keep_alive, gone, closing):
                watch.start_soon(task)
        return ended


async def _write(
    send: Send,
    chunks: trio.MemoryReceiveChannel[bytes],
    scope: trio.CancelScope,
    written: trio.Event,
) -> None:
    """Write a stream's chunks in order, then its end. hypercorn's send waits, shielded, while
    the client does not read: only closing the connection frees it, so it runs outside the
    request, which closes the connection by returning."""
    with scope:
        async with chunks:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        written.set()


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec(
        "http",
        "control API: POST /start /commit /cancel /toggle, GET /status /metrics /events",
        HttpConfig,
        HttpInput,
        input=True,
    )
