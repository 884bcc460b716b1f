"""The broker's ASGI application (`build_app`): ``POST /v1/token`` and ``GET /healthz``.

A ``POST /v1/token`` passes, in order: the device token (401 ``invalid_device_token`` when
missing or unknown, 403 ``device_revoked``), the body (413 over `MAX_BODY`, 400
``invalid_json``), what it asks for (403 ``not_allowed``, see `voiced.broker.policy`), the
device's rate limit (429 ``rate_limited`` with ``Retry-After``, counted in the store), then the
mint upstream with the broker's key: no quota is 429 ``insufficient_quota`` (fatal for the
device too), the key refused is 502 ``upstream_rejected``, no answer or a 5xx is 503
``upstream_unavailable``. The answer is ``{"value": "ek_...", "expires_at": ...}`` and nothing
else. Every mint and every refusal is one line on the ``voiced.broker.audit`` logger (INFO):
who, what, when, never a secret. Every answer is ``Cache-Control: no-store``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeVar

import httpx
import trio

from voiced.broker.policy import MAX_BODY, Grant, Refusal, grant, parse_body, retry_after, utc
from voiced.broker.store import Device, RateLimited, Store
from voiced.client_secrets import ClientSecret, request_secret
from voiced.config import BrokerConfig
from voiced.errors import AuthRejected, QuotaExhausted, RequestRejected, ServerUnreachable
from voiced.serving import lifespan

log = logging.getLogger("voiced.broker")
audit = logging.getLogger("voiced.broker.audit")

_T = TypeVar("_T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPSTREAM_TIMEOUT_S = 10.0
"""Seconds for each step (connect, write, read) of a mint upstream."""
ROUTES: dict[str, tuple[str, ...]] = {"/v1/token": ("POST",), "/healthz": ("GET", "HEAD")}
"""Each path and the methods it answers; another method is 405 with ``Allow``."""


def build_app(
    store: Store,
    api_key: str,
    config: BrokerConfig,
    client: httpx.AsyncClient,
    *,
    clock: Callable[[], float] = time.time,
) -> BrokerApp:
    """The broker's ASGI application.

    Args:
        store: the devices file, open (called from worker threads).
        api_key: the OpenAI API key the secrets are minted with.
        config: ``broker:`` from the config (what is allowed, the limits, ``openai_url``).
        client: the HTTP client for every mint upstream (shared: it pools connections).
        clock: the wall clock in Unix seconds (the rate limit's window, the audit's times).
    """
    return BrokerApp(store, api_key, config, client, clock)


class BrokerApp:
    """The ASGI application; see `build_app`. It shows no secret in its ``repr``."""

    def __init__(
        self,
        store: Store,
        api_key: str,
        config: BrokerConfig,
        client: httpx.AsyncClient,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.config = config
        self.mint_url = f"{config.openai_url.rstrip('/')}/realtime/client_secrets"
        self._key = api_key
        self._client = client
        self._clock = clock

    def __repr__(self) -> str:
        return f"BrokerApp(minting at {self.mint_url})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        methods = ROUTES.get(path)
        if methods is None:
            refusal = Refusal(404, "not_found", f"no such endpoint: {method} {path[:100]}")
            await _respond(send, refusal.status, refusal.body())
            return
        if method not in methods:
            refusal = Refusal(405, "method_not_allowed", f"use {' or '.join(methods)} {path}")
            allow = (b"allow", ", ".join(methods).encode())
            await _respond(send, refusal.status, refusal.body(), headers=[allow])
            return
        if path == "/healthz":
            await _respond(send, 200, {"status": "ok"}, head=method == "HEAD")
            return
        try:
            answer = await self._token(dict(scope["headers"]), receive)
        except Refusal as refusal:
            headers = []
            if refusal.retry_after is not None:
                headers.append((b"retry-after", str(refusal.retry_after).encode()))
            if refusal.status == 401:
                headers.append((b"www-authenticate", b'Bearer realm="voiced broker"'))
            if refusal.status == 413:
                headers.append((b"connection", b"close"))  # the rest of the body is never read
            await _respond(send, refusal.status, refusal.body(), headers=headers)
            return
        await _respond(send, 200, answer)

    async def _token(self, headers: dict[bytes, bytes], receive: Receive) -> dict[str, Any]:
        """The answer to ``POST /v1/token``.

        Raises:
            Refusal: anything but a secret (audited).
        """
        device: Device | None = None
        try:
            device = await self._device(headers)
            if device.revoked_at is not None:
                message = f"device {device.name} was revoked on {utc(device.revoked_at)}"
                raise Refusal(403, "device_revoked", message)
            request = parse_body(await _body(headers, receive))
            wanted = grant(request, self.config.allowed, self.config.max_ttl_s)
            mint = await self._reserve(device, wanted)
            secret = await self._mint(device, wanted)
            await self._stored(self.store.minted, mint, secret.expires_at)
        except Refusal as refusal:
            who = device.name if device is not None else "unknown"
            audit.info("refused device=%s reason=%s status=%d", who, refusal.code, refusal.status)
            raise
        audit.info(
            "mint device=%s time=%s ttl_s=%d expires_at=%d model=%s voice=%s",
            device.name,
            utc(self._clock()),
            wanted.ttl_s,
            secret.expires_at,
            wanted.model,
            wanted.voice,
        )
        return {"value": secret.value, "expires_at": secret.expires_at}

    async def _device(self, headers: dict[bytes, bytes]) -> Device:
        """The device the request's token belongs to (perhaps revoked)."""
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token:
            message = "send the device token: Authorization: Bearer <device token>"
            raise Refusal(401, "invalid_device_token", message)
        device = await self._stored(self.store.find, token)
        if device is None:
            raise Refusal(401, "invalid_device_token", "the device token is not known here")
        return device

    async def _reserve(self, device: Device, wanted: Grant) -> int:
        """Count the request against the device's rate limit; the mint's row in the store."""
        limit = self.config.mints_per_minute
        try:
            mint = await self._stored(
                self.store.reserve, device.name, self._clock(), wanted.ttl_s, limit
            )
        except RateLimited as exc:
            wait = retry_after(exc.wait)
            message = f"over {limit} secrets a minute for device {device.name}: retry in {wait} s"
            raise Refusal(429, "rate_limited", message, kind="requests", retry_after=wait) from None
        return mint

    async def _mint(self, device: Device, wanted: Grant) -> ClientSecret:
        """A secret from OpenAI for ``wanted``, minted with the broker's key."""
        try:
            return await request_secret(
                self.mint_url,
                {"Authorization": f"Bearer {self._key}"},
                wanted.upstream_body(),
                what="OpenAI",
                time_limit=UPSTREAM_TIMEOUT_S,
                client=self._client,
            )
        except QuotaExhausted:
            log.error(
                "OpenAI at %s says the account has no quota left: add credit (device %s refused)",
                self.mint_url,
                device.name,
            )
            message = "the broker's OpenAI account has no quota left"
            raise Refusal(429, "insufficient_quota", message, kind="insufficient_quota") from None
        except AuthRejected:
            # OpenAI's message is not repeated: it shows part of the key.
            log.error(
                "OpenAI at %s rejected the broker's API key: the key is wrong or revoked, "
                "fix broker.api_key (device %s refused)",
                self.mint_url,
                device.name,
            )
            message = "OpenAI rejected the broker's credentials"
            raise Refusal(502, "upstream_rejected", message, kind="server_error") from None
        except RequestRejected as exc:
            log.error("%s (fix broker.allowed; device %s refused)", exc, device.name)
            message = "OpenAI refused to mint for what the broker allows"
            raise Refusal(502, "upstream_rejected", message, kind="server_error") from None
        except ServerUnreachable as exc:
            log.warning("%s (device %s refused)", exc, device.name)
            message = "OpenAI cannot be reached now: try again later"
            raise Refusal(503, "upstream_unavailable", message, kind="server_error") from None

    async def _stored(self, call: Callable[..., _T], *args: Any) -> _T:
        """``call(*args)`` on the store, in a worker thread; its failure is a 503."""
        try:
            return await trio.to_thread.run_sync(call, *args)
        except sqlite3.Error as exc:
            log.error("the devices file %s failed: %s", self.store.path, exc)
            message = "the broker cannot read its devices now: try again later"
            raise Refusal(503, "store_unavailable", message, kind="server_error") from None


async def _body(headers: dict[bytes, bytes], receive: Receive) -> bytes:
    """The request body, up to `MAX_BODY` bytes."""
    too_large = Refusal(413, "body_too_large", f"the body is over {MAX_BODY} bytes")
    length = headers.get(b"content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise too_large
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if len(body) > MAX_BODY:
            raise too_large
        if not message.get("more_body"):
            return body


async def _respond(
    send: Send,
    status: int,
    body: dict[str, Any],
    *,
    head: bool = False,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    data = json.dumps(body).encode() + b"\n"
    start = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": b"" if head else data})
