"""The ``http`` input: a small local control API, served by hypercorn on trio.

``POST /start``, ``/commit``, ``/cancel``, ``/toggle`` send the command and answer 202 with the
state it was sent in; ``POST /volume`` with ``{"volume": 0.0-1.0}`` sets the speaker's volume
(kept across restarts); ``GET /status`` answers the daemon's status as JSON; ``GET /healthz``
answers 200 while connected to the realtime server and 503 (with the last error) otherwise.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import trio

from voiced import Command, Daemon, PluginSpec, TurnCommand, hookimpl

log = logging.getLogger("voiced.http")

MAX_BODY = 4096
"""Bytes of a request body read; no request here needs more."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    """Address to listen on; keep it on loopback unless a firewall guards the port."""
    port: int = 8787
    """TCP port (0 picks a free one)."""


class HttpInput:
    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self.bound: list[str] = []
        """The URLs actually bound, once running."""

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        from voiced.errors import PluginError

        config = Config()
        config.bind = [f"{self.config.host}:{self.config.port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("voiced.http.server")  # hypercorn's own chatter
        app = _App(daemon)
        async with trio.open_nursery() as nursery:
            try:
                self.bound = await nursery.start(_serve, serve, app, config)
            except OSError as exc:
                raise PluginError(
                    f"http: cannot listen on {self.config.host}:{self.config.port}: {exc}"
                ) from exc
            log.info("control API on %s", " ".join(self.bound))
            task_status.started()


async def _serve(
    serve: Any, app: _App, config: Any, *, task_status: trio.TaskStatus[list[str]]
) -> None:
    await serve(app, config, task_status=task_status)


class _App:
    """The ASGI application."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

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
        request = b""
        while True:
            message = await receive()
            request += message.get("body", b"")
            if not message.get("more_body") or len(request) > MAX_BODY:
                break
        status, body = await self._route(scope["method"], scope["path"], request[:MAX_BODY])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode() + b"\n"})

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        name = path.strip("/")
        if path == "/volume":
            if method != "POST":
                return 405, {"error": 'use POST /volume with {"volume": 0.0-1.0}'}
            try:
                volume = json.loads(body)["volume"]
                if isinstance(volume, bool) or not isinstance(volume, int | float):
                    raise TypeError(volume)
                await self.daemon.set_volume(float(volume))
            except (ValueError, KeyError, TypeError):
                return 400, {"error": 'send {"volume": 0.0-1.0}'}
            return 200, {"volume": float(volume)}
        if name in {c.value for c in Command}:
            if method != "POST":
                return 405, {"error": f"use POST {path}"}
            state = self.daemon.status()["state"]
            await self.daemon.commands.send(TurnCommand(Command(name), "http"))
            return 202, {"accepted": name, "state": state}
        if path in ("/status", "/healthz") and method != "GET":
            return 405, {"error": f"use GET {path}"}
        if path == "/status":
            return 200, self.daemon.status()
        if path == "/healthz":
            status = self.daemon.status()
            ok = bool(status["connected"])
            return (200 if ok else 503), {"ok": ok, "error": status["last_error"]}
        return 404, {"error": f"no such endpoint: {path}"}


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec(
        "http", "control API: POST /start /commit /cancel, GET /status", HttpConfig, HttpInput,
        input=True,
    )  # fmt: skip
