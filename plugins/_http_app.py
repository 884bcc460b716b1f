"""The ``http`` plugin's ASGI application: each request's rate limit and bearer token, then its
routing (``ENDPOINTS``): the commands and the daemon's verdicts on them, ``/volume``, ``/status``
and ``/healthz`` here, ``/metrics`` from ``_http_metrics`` and the ``/events`` streams from
``_http_events``.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import trio

from voiced import Command, Daemon, TurnCommand
from voiced.actions import Verdict
from voiced.serving import lifespan

from ._http_events import Receive, Scope, Send, serve_events
from ._http_limits import RateLimit
from ._http_metrics import Metrics

log = logging.getLogger("voiced.http")

MAX_BODY = 4096
"""Bytes of a request body taken; a longer one is refused (413) and not read further."""
VERDICT_TIMEOUT = 3.0
"""Seconds a command waits for the daemon's verdict before the answer is 503 (it is wedged)."""
MAX_RETRY_AFTER = 86400.0
"""The longest wait a 429 answers with (seconds): a rate limit near 0 asks for more than a
float holds."""
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


def _json(body: object) -> bytes:
    return json.dumps(body).encode() + b"\n"


def _parsed(body: bytes) -> object:
    """The JSON value of a request body, or None when it is none (not JSON, not UTF-8, or nested
    deeper than the parser recurses)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


class App:
    """The ASGI application."""

    def __init__(
        self,
        daemon: Daemon,
        metrics: Metrics,
        token: str | None,
        limit: RateLimit,
        max_events_clients: int,
    ) -> None:
        self.daemon = daemon
        self.metrics = metrics
        self.closing = trio.Event()
        """Set at shutdown: the streams end."""
        self.writers: trio.Nursery | None = None
        """Where the streams' writers run: outside the request, so a writer stuck on a client
        that does not read never holds the request (or the server) up."""
        self.max_events_clients = max_events_clients
        """``/events`` streams open at once; more are refused (503)."""
        self._token = token
        self._limit = limit

    @property
    def events_clients(self) -> int:
        return self.metrics.events_clients

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        head = method == "HEAD"
        client = (scope.get("client") or ("unknown",))[0]
        headers: dict[bytes, bytes] = dict(scope["headers"])
        wait = self._limit.take(client)
        if wait:
            wait = wait if wait < MAX_RETRY_AFTER else MAX_RETRY_AFTER  # infinity (and NaN) too
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
        if path == "/healthz":  # can a turn be taken: connected, and no device failing
            status = self.daemon.status()
            failing = [f"{role}: {why}" for role, why in status.get("device_errors", {}).items()]
            error = failing[0] if failing and status["connected"] else status["last_error"]
            ok = bool(status["connected"]) and not failing
            return (200 if ok else 503), {"ok": ok, "error": None if ok else error}
        return await self._command(Command(path[1:]), query, body)

    async def _set_volume(self, body: bytes) -> tuple[int, dict[str, Any]]:
        refused = 400, {"error": 'send {"volume": 0.0-1.0}'}
        given = _parsed(body)
        volume = given.get("volume") if isinstance(given, dict) else None
        if isinstance(volume, bool) or not isinstance(volume, int | float):
            return refused
        try:
            # An integer past float's range overflows; the daemon refuses NaN and the rest.
            await self.daemon.set_volume(float(volume))
        except (ValueError, OverflowError):
            return refused
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
            given = _parsed(body)
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
        if self.metrics.events_clients >= self.max_events_clients or self.writers is None:
            body = {"error": f"{self.max_events_clients} /events streams are open already"}
            await self._respond(send, 503, body, head)
            return
        await serve_events(
            self.daemon, self.metrics, self.writers, self.closing, receive, send, head
        )
