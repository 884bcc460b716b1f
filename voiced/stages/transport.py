"""Transport: the one WebSocket to the realtime server, and the only code that touches it.

It owns the connection lifecycle in one place: connect with the bearer key, send the session
configuration first on every connection, then a writer (client events out) and a reader (server
events in) around the sans-IO ``RealtimeProtocol``. Failures are translated once, here, into
``TransportError``s that say what the operator must do: a 401/403 at the handshake and a close
with code 3000 both mean the key is wrong; 4000 means the request (model, URL) is wrong; 1001
and abrupt loss are transient. A daemon reconnects with backoff; ``voiced ask`` does not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import quote

import trio
import trio_websocket as tw

from voiced import protocol as p
from voiced.errors import (
    AuthRejected,
    ConnectionLost,
    RemoteProtocolError,
    RequestRejected,
    ServerUnreachable,
    TransportError,
)

log = logging.getLogger("voiced.transport")

MAX_FRAME = 16 * 1024 * 1024
"""Largest server frame accepted; the SDK accepts any size, an audio delta is far smaller."""
RECEIVE_BUFFER = 64 * 1024
"""Socket read size: reply deltas are tens of kB, so small reads would cost CPU."""
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
"""Reconnect delays in seconds: doubling from the first to the cap."""
REJECTED_RETRY = 60.0
"""Seconds between tries when the server rejected the key or request (a person must act)."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect."""

    url: str
    """WebSocket URL without query, e.g. ``wss://api.openai.com/v1/realtime``."""
    model: str
    api_key: str = field(repr=False)
    connect_timeout: float = 10.0
    """Seconds for TCP, TLS and the WebSocket handshake together."""

    @property
    def full_url(self) -> str:
        return f"{self.url}?model={quote(self.model)}"


@dataclass(frozen=True)
class Connected:
    """The server accepted the connection (``session.created`` arrived)."""

    session_id: str | None


@dataclass(frozen=True)
class Disconnected:
    """The connection ended or could not be made."""

    error: TransportError


@dataclass
class Wire:
    """Counters and timestamps of the socket, read by the session and ``/status``."""

    connected: bool = False
    connects: int = 0
    events_sent: int = 0
    events_received: int = 0
    commit_sent_at: float | None = None
    """Trio time the last ``input_audio_buffer.commit`` was written to the socket."""


Inbound = p.ServerEvent | Connected | Disconnected


async def run_transport(
    endpoint: Endpoint,
    hello: p.SessionUpdate,
    outbound: trio.abc.ReceiveChannel[p.ClientEvent],
    inbound: trio.abc.SendChannel[Inbound],
    *,
    wire: Wire,
    reconnect: bool,
) -> None:
    """Keep one connection open and carry events both ways until ``outbound`` closes.

    Args:
        endpoint: where to connect.
        hello: sent first on every connection.
        outbound: client events to send, in order; while disconnected they are dropped.
        inbound: gets server events, plus ``Connected`` / ``Disconnected`` news.
        wire: counters to update.
        reconnect: retry with backoff after a failure (a daemon); else raise it.

    Raises:
        TransportError: with ``reconnect`` false, the failure that ended the connection.
    """
    delay = BACKOFF_START
    last_error = ""
    async with outbound, inbound:
        while True:
            try:
                await _connection(endpoint, hello, outbound, inbound, wire)
                return  # outbound closed: a clean shutdown
            except TransportError as exc:
                wire.connected = False
                await inbound.send(Disconnected(exc))
                if not reconnect:
                    raise
                if str(exc) != last_error:  # the same failure again is not news
                    log.error("%s; retrying", exc)
                    last_error = str(exc)
                rejected = isinstance(exc, AuthRejected | RequestRejected)
                wait = REJECTED_RETRY if rejected else delay
                delay = BACKOFF_START if wire.connected else min(delay * 2, BACKOFF_MAX)
            if await _drain_for(outbound, wait):
                return


async def _drain_for(outbound: trio.abc.ReceiveChannel[p.ClientEvent], seconds: float) -> bool:
    """Drop outbound events for ``seconds``; True if the channel closed meanwhile."""
    with trio.move_on_after(seconds):
        async for _ in outbound:
            pass
        return True
    return False


async def _connection(
    endpoint: Endpoint,
    hello: p.SessionUpdate,
    outbound: trio.abc.ReceiveChannel[p.ClientEvent],
    inbound: trio.abc.SendChannel[Inbound],
    wire: Wire,
) -> None:
    link = _Link(endpoint, p.RealtimeProtocol(), wire)
    headers = [(b"Authorization", f"Bearer {endpoint.api_key}".encode())]
    try:
        async with tw.open_websocket_url(
            endpoint.full_url,
            extra_headers=headers,
            max_message_size=MAX_FRAME,
            receive_buffer_size=RECEIVE_BUFFER,
            connect_timeout=endpoint.connect_timeout,
            disconnect_timeout=2,
        ) as ws:
            link.ws = ws
            # Both tasks catch the close themselves, so that it leaves this nursery as the one
            # TransportError below rather than inside an ExceptionGroup.
            async with trio.open_nursery() as nursery:
                link.scope = nursery.cancel_scope
                nursery.start_soon(link.write, outbound)
                await link.read(hello, inbound)
    except tw.ConnectionRejected as exc:
        raise _rejected(endpoint, exc.status_code) from exc
    except (OSError, tw.HandshakeError) as exc:
        raise ServerUnreachable(f"cannot reach {endpoint.url}: {_why(exc)}") from exc
    if link.closed is not None:
        raise _closed(endpoint, link.closed.reason, link.last_error) from link.closed


class _Link:
    """One open connection: the reader and writer around the sans-IO protocol."""

    def __init__(self, endpoint: Endpoint, proto: p.RealtimeProtocol, wire: Wire) -> None:
        self.endpoint = endpoint
        self.proto = proto
        self.wire = wire
        self.ws: tw.WebSocketConnection
        self.scope: trio.CancelScope
        self.closed: tw.ConnectionClosed | None = None
        self.last_error: p.ErrorEvent | None = None
        """The last ``error`` event: what a fatal close that follows it means."""

    def _lost(self, exc: tw.ConnectionClosed) -> None:
        if self.closed is None:
            self.closed = exc
        self.scope.cancel()

    async def read(self, hello: p.SessionUpdate, inbound: trio.abc.SendChannel[Inbound]) -> None:
        try:
            while True:
                text = await self.ws.get_message()
                try:
                    event = self.proto.receive(text)
                except RemoteProtocolError as exc:
                    log.warning("ignoring a malformed server event: %s", exc)
                    continue
                self.wire.events_received += 1
                if isinstance(event, p.ErrorEvent):
                    self.last_error = event
                elif isinstance(event, p.SessionCreated):
                    await self.ws.send_message(self.proto.send(hello))
                    self.wire.connected = True
                    self.wire.connects += 1
                    sid = event.session.get("id")
                    log.info("connected to %s (session %s)", self.endpoint.url, sid)
                    await inbound.send(Connected(sid if isinstance(sid, str) else None))
                await inbound.send(event)
        except tw.ConnectionClosed as exc:
            self._lost(exc)

    async def write(self, outbound: trio.abc.ReceiveChannel[p.ClientEvent]) -> None:
        try:
            async for event in outbound:
                await self.ws.send_message(self.proto.send(event))
                self.wire.events_sent += 1
                if isinstance(event, p.InputAudioBufferCommit):
                    self.wire.commit_sent_at = trio.current_time()
        except tw.ConnectionClosed as exc:
            self._lost(exc)
        self.scope.cancel()  # outbound closed: shutting down, stop reading too


def _why(exc: BaseException) -> str:
    if isinstance(exc, tw.ConnectionTimeout):
        return "timed out"
    return str(exc) or type(exc).__name__


def _rejected(endpoint: Endpoint, status: int) -> TransportError:
    if status in (401, 403):
        return AuthRejected(
            f"the server rejected the API key (HTTP {status} at {endpoint.url}): "
            "check auth.api_key / OPENAI_API_KEY"
        )
    if status == 404:
        return RequestRejected(
            f"no realtime endpoint at {endpoint.url} (HTTP 404): check realtime.url"
        )
    return ServerUnreachable(f"{endpoint.url} refused the WebSocket upgrade with HTTP {status}")


def _closed(
    endpoint: Endpoint, reason: tw.CloseReason | None, error: p.ErrorEvent | None
) -> TransportError:
    code = reason.code if reason else None
    said = error.message if error else (reason.reason or reason.name if reason else "no reason")
    if code == 3000:
        return AuthRejected(f"the server rejected the API key: {said} (check auth.api_key)")
    if code == 4000:
        return RequestRejected(
            f"the server refused the request: {said} (check realtime.model and realtime.url)"
        )
    return ConnectionLost(f"connection to {endpoint.url} ended ({code}): {said}")
