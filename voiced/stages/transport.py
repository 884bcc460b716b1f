"""Transport: the one WebSocket to the realtime server, and the only code that touches it.

It owns the connection lifecycle in one place: the credentials awaited before every connection,
the session configuration sent first on every connection, then a writer (client events out) and
a reader (server events in) around the sans-IO ``RealtimeProtocol``. It tells the session what
happened by message: ``Connected``, ``Disconnected``, ``CommitSent``. Failures are translated once,
here, into ``TransportError``s that say what the operator must do: a 401/403 at the handshake and
a close with code 3000 both mean the credentials are wrong; 4000 means the request (model, URL) is
wrong; 1001 and abrupt loss are transient. A daemon reconnects with backoff (``voiced.backoff``):
fast after a transient failure, slowly (minutes) after a fatal one, which a person must fix;
``voiced ask`` fails fast on the first connection, then reconnects after a drop. A ``Renew`` in
the outbound stream closes the connection and opens a fresh session at once: the session sends
it only when the turn controller says the daemon is idle. Pings find a dead link, deadlines a
server that accepts and says nothing, and ``expires_at`` when to ask for a fresh session.
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlsplit

import trio
import trio_websocket as tw

from voiced import protocol as p
from voiced.auth import Credentials
from voiced.backoff import Backoff
from voiced.errors import (
    AuthRejected,
    ConnectionLost,
    RemoteProtocolError,
    RequestRejected,
    ServerUnreachable,
    TransportError,
)
from voiced.messages import CommitSent, Connected, Disconnected, RenewSession, TransportNews

log = logging.getLogger("voiced.transport")

MAX_FRAME = 16 * 1024 * 1024
"""Largest server frame accepted; the SDK accepts any size, an audio delta is far smaller."""
RECEIVE_BUFFER = 64 * 1024
"""Socket read size: reply deltas are tens of kB, so small reads would cost CPU."""
BACKOFF_START, BACKOFF_MAX = 0.5, 30.0
"""Reconnect delays in seconds: doubling from the first to the cap (with jitter)."""
HEALTHY_AFTER = 10.0
"""Seconds a connection must last for the next outage to start again from the first delay."""
CLOSE_TIMEOUT = 2.0
"""Seconds to wait for the server's half of the closing handshake."""
RENEW_BEFORE = 300.0
"""Seconds before a session's ``expires_at`` the daemon asks for a fresh one (taken as soon as
it is idle), so a person never meets the server's session limit mid-turn."""
PING_INTERVAL, PONG_TIMEOUT = 5.0, 5.0
"""A WebSocket ping every ``PING_INTERVAL`` seconds; no pong within ``PONG_TIMEOUT`` means the
link is dead, so a dead link is noticed within 10 seconds, even between turns."""
FATAL_RETRY, FATAL_RETRY_MAX = 60.0, 600.0
"""Delays in seconds after a fatal failure (a rejected key or device, no quota, a refused
request): a person must act, so the daemon only looks again now and then, never in a loop."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect."""

    url: str
    """WebSocket URL without query, e.g. ``wss://api.openai.com/v1/realtime``."""
    model: str
    credentials: Credentials = field(repr=False)
    connect_timeout: float = 10.0
    """Seconds for TCP, TLS and the WebSocket handshake together."""

    @property
    def full_url(self) -> str:
        return f"{self.url}?model={quote(self.model)}"


Reconnecting = bool | Literal["once_connected"]
"""When the transport retries: always, never, or once it has connected (see `run_transport`)."""


@dataclass
class Renew:
    """In the outbound stream: close this connection and open a fresh session now, configured
    with ``hello`` from now on when one is given."""

    hello: p.SessionUpdate | None = None


@dataclass
class LinkStats:
    """The socket's counters, for ``/status``; only the transport writes them."""

    connects: int = 0
    events_sent: int = 0
    events_received: int = 0
    malformed: int = 0
    """Frames that were not a server event voiced could read (or a second session.created)."""


async def run_transport(
    endpoint: Endpoint,
    hello: p.SessionUpdate,
    outbound: trio.abc.ReceiveChannel[p.ClientEvent | Renew],
    inbound: trio.abc.SendChannel[TransportNews],
    *,
    stats: LinkStats,
    reconnect: Reconnecting,
) -> None:
    """Keep one connection open and carry events both ways until ``outbound`` closes.

    Args:
        endpoint: where to connect.
        hello: sent first on every connection.
        outbound: client events to send, in order; while disconnected they are dropped.
        inbound: gets server events, plus ``Connected`` / ``Disconnected`` / ``CommitSent``.
        stats: counters to update.
        reconnect: ``True``: retry with backoff after any failure (a daemon); ``False``: raise
            it; ``"once_connected"``: raise a failure to connect the first time, or a fatal one,
            retry the rest (a batch that must not give up on a dropped link).

    Raises:
        TransportError: the failure that ended the connection, unless it is retried.
    """
    fast = Backoff(start=BACKOFF_START, cap=BACKOFF_MAX, healthy_after=HEALTHY_AFTER)
    slow = Backoff(start=FATAL_RETRY, cap=FATAL_RETRY_MAX, healthy_after=HEALTHY_AFTER)
    async with outbound, inbound:
        while True:
            link = _Link(endpoint, p.RealtimeProtocol(), stats, (fast, slow))
            try:
                if await _connection(link, hello, outbound, inbound):
                    return  # outbound closed: a clean shutdown
                hello = link.next_hello or hello
                await inbound.send(Disconnected(None))  # closed to renew: reconnect at once
                continue
            except TransportError as exc:
                await inbound.send(Disconnected(exc))
                once = reconnect == "once_connected"
                if not reconnect or (once and (exc.fatal or stats.connects == 0)):
                    raise
                retry = (slow if exc.fatal else fast).failed(trio.current_time(), str(exc))
                if retry.news:  # the same failure again is not news
                    how = f"trying again in {retry.delay / 60:.0f} min" if exc.fatal else "retrying"
                    log.error("%s; %s", exc, how)
            closed, renewed = await _drain_for(outbound, retry.delay)
            if closed:
                return
            hello = renewed or hello


async def _drain_for(
    outbound: trio.abc.ReceiveChannel[p.ClientEvent | Renew], seconds: float
) -> tuple[bool, p.SessionUpdate | None]:
    """Drop outbound events for ``seconds``; whether the channel closed meanwhile, and the
    new session configuration a ``Renew`` brought, which is kept."""
    hello = None
    with trio.move_on_after(seconds):
        async for event in outbound:
            if isinstance(event, Renew):
                hello = event.hello or hello
        return True, hello
    return False, hello


async def _connection(
    link: _Link,
    hello: p.SessionUpdate,
    outbound: trio.abc.ReceiveChannel[p.ClientEvent | Renew],
    inbound: trio.abc.SendChannel[TransportNews],
) -> bool:
    """One connection, until it ends: True when ``outbound`` closed, False to renew.

    Raises:
        TransportError: the connection could not be made, or ended.
    """
    endpoint = link.endpoint
    headers = await endpoint.credentials.headers()
    stream = await _open_stream(endpoint)
    failure: TransportError | None = None
    try:
        # trio-websocket's own reader task runs in this nursery; its handshake failures arrive
        # here as exception groups, and are translated into one TransportError below.
        async with trio.open_nursery() as websocket:
            link.ws = await _handshake(websocket, stream, endpoint, headers)
            # Both our tasks catch the close themselves: it leaves as one TransportError too.
            async with trio.open_nursery() as nursery:
                link.nursery = nursery
                link.scope = nursery.cancel_scope
                nursery.start_soon(link.write, outbound, inbound)
                nursery.start_soon(link.heartbeat)
                await link.read(hello, inbound)
            if link.failure is None:  # a dead or silent link gets no closing handshake
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await link.ws.aclose()
            websocket.cancel_scope.cancel()
    except* tw.ConnectionRejected as group:
        rejected = group.exceptions[0]
        assert isinstance(rejected, tw.ConnectionRejected)
        failure = _rejected(endpoint, rejected.status_code)
    except* (OSError, trio.BrokenResourceError, trio.TooSlowError, tw.HandshakeError) as group:
        failure = ServerUnreachable(f"cannot reach {endpoint.url}: {_why(group.exceptions[0])}")
    finally:
        # trio-websocket leaves the stream open when the server closes first or rejects the
        # upgrade; it is ours, so close it whatever happened.
        await trio.aclose_forcefully(stream)
    failure = failure or link.failure
    if failure is not None:
        raise failure
    if link.renewing:
        return False
    if link.closed is not None:
        raise _closed(endpoint, link.closed.reason, link.last_error) from link.closed
    return True


async def _open_stream(endpoint: Endpoint) -> trio.abc.Stream:
    """TCP (and TLS for ``wss``) to the server, within the connect timeout."""
    url = urlsplit(endpoint.url)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "wss" else 80)
    try:
        with trio.fail_after(endpoint.connect_timeout):
            if url.scheme == "wss":
                return await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=ssl.create_default_context(), https_compatible=True
                )
            return await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise ServerUnreachable(f"cannot reach {endpoint.url}: {_why(exc)}") from exc


async def _handshake(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    endpoint: Endpoint,
    headers: list[tuple[bytes, bytes]],
) -> tw.WebSocketConnection:
    url = urlsplit(endpoint.full_url)
    default_port = 443 if url.scheme == "wss" else 80
    host = url.netloc if url.port not in (None, default_port) else (url.hostname or "")
    # trio-websocket waits out the whole timeout when the server closes the connection before
    # answering the upgrade (a proxy with no backend does): watch for that end of stream.
    watched = _EndWatch(stream)
    ws: tw.WebSocketConnection | None = None
    with trio.fail_after(endpoint.connect_timeout):
        async with trio.open_nursery() as race:
            race.start_soon(_cancel_at_end, watched, race.cancel_scope)
            ws = await tw.wrap_client_stream(
                nursery,
                watched,  # type: ignore[arg-type]  # annotated for socket streams; any works
                host,
                f"{url.path}?{url.query}",
                extra_headers=headers,
                max_message_size=MAX_FRAME,
                receive_buffer_size=RECEIVE_BUFFER,
            )
            race.cancel_scope.cancel()
    if ws is None:
        raise trio.BrokenResourceError("the server closed the connection during the handshake")
    return ws


async def _cancel_at_end(watched: _EndWatch, scope: trio.CancelScope) -> None:
    await watched.ended.wait()
    scope.cancel()


class _EndWatch(trio.abc.Stream):
    """A stream that tells when the other side has closed or reset it (``ended``)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.ended = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self.inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()  # reset by the peer: trio-websocket would not tell the handshake
            raise
        if not data:
            self.ended.set()
        return bytes(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.inner.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended.set()
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Link:
    """One open connection: the reader and writer around the sans-IO protocol."""

    def __init__(
        self,
        endpoint: Endpoint,
        proto: p.RealtimeProtocol,
        stats: LinkStats,
        backoffs: tuple[Backoff, ...],
    ) -> None:
        self.endpoint = endpoint
        self.proto = proto
        self.stats = stats
        self.backoffs = backoffs
        self.ws: tw.WebSocketConnection
        self.nursery: trio.Nursery
        self.scope: trio.CancelScope
        self.closed: tw.ConnectionClosed | None = None
        self.renewing = False
        """Closed on purpose for a fresh session."""
        self.next_hello: p.SessionUpdate | None = None
        """The configuration of the fresh session, when it changes."""
        self.last_error: p.ErrorEvent | None = None
        """The last ``error`` event: what a fatal close that follows it means."""
        self.failure: TransportError | None = None
        """Why this side gave up on a link that is still open (silence, a dead link)."""
        self.created = False
        """``session.created`` arrived."""

    def _lost(self, exc: tw.ConnectionClosed) -> None:
        if self.closed is None:
            self.closed = exc
        self.scope.cancel()

    def _fail(self, failure: TransportError) -> None:
        if self.failure is None:
            self.failure = failure
        self.scope.cancel()

    async def heartbeat(self) -> None:
        """Ping now and then; a pong that does not come means the link is dead."""
        try:
            while True:
                await trio.sleep(PING_INTERVAL)
                with trio.move_on_after(PONG_TIMEOUT):
                    await self.ws.ping()
                    continue
                url = self.endpoint.url
                self._fail(ConnectionLost(f"{url} did not answer a ping in {PONG_TIMEOUT:.0f} s"))
                return
        except tw.ConnectionClosed as exc:
            self._lost(exc)

    async def read(
        self, hello: p.SessionUpdate, inbound: trio.abc.SendChannel[TransportNews]
    ) -> None:
        # The session must be created, then configured, each within the connect timeout: a
        # server that accepts the socket and then says nothing is not waited on forever.
        deadline = trio.current_time() + self.endpoint.connect_timeout
        try:
            while True:
                with trio.move_on_at(deadline) as waiting:
                    text = await self.ws.get_message()
                if waiting.cancelled_caught:
                    self._fail(self._unconfigured())
                    return
                try:
                    event = self.proto.receive(text)
                    if isinstance(event, p.SessionCreated) and self.created:
                        raise RemoteProtocolError("server sent session.created twice")
                except RemoteProtocolError as exc:
                    self.stats.malformed += 1
                    level = logging.WARNING if self.stats.malformed == 1 else logging.DEBUG
                    log.log(
                        level, "ignoring a malformed server event: %s (counted, logged once)", exc
                    )
                    continue
                self.stats.events_received += 1
                if isinstance(event, p.ErrorEvent):
                    self.last_error = event
                elif isinstance(event, p.SessionUpdated):
                    deadline = math.inf
                elif isinstance(event, p.SessionCreated):
                    deadline = trio.current_time() + self.endpoint.connect_timeout
                    self.created = True
                    await self.ws.send_message(self.proto.send(hello))
                    self.stats.events_sent += 1
                    self.stats.connects += 1
                    for backoff in self.backoffs:
                        backoff.succeeded(trio.current_time())
                    sid = event.session.get("id")
                    log.info("connected to %s (session %s)", self.endpoint.url, sid)
                    expires_at = event.session.get("expires_at")
                    if isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
                        self.nursery.start_soon(self._renew_before, expires_at, inbound)
                    await inbound.send(Connected(sid if isinstance(sid, str) else None))
                await inbound.send(event)
        except tw.ConnectionClosed as exc:
            self._lost(exc)

    async def _renew_before(
        self, expires_at: float, inbound: trio.abc.SendChannel[TransportNews]
    ) -> None:
        """Ask for a fresh session ``RENEW_BEFORE`` seconds before this one expires (or half
        way, for a short one)."""
        left = expires_at - time.time()
        await trio.sleep(max(0.0, left - min(RENEW_BEFORE, left / 2)))
        await inbound.send(RenewSession())

    def _unconfigured(self) -> TransportError:
        """Why the session was not ready in time."""
        timeout = self.endpoint.connect_timeout
        if self.created:
            if self.last_error is not None:  # it refused the configuration: a person must act
                said = self.last_error.message
                return RequestRejected(f"the server refused the session configuration: {said}")
            return ServerUnreachable(
                f"no session.updated from {self.endpoint.url} in {timeout:g} s"
            )
        return ServerUnreachable(f"no session.created from {self.endpoint.url} in {timeout:g} s")

    async def write(
        self,
        outbound: trio.abc.ReceiveChannel[p.ClientEvent | Renew],
        inbound: trio.abc.SendChannel[TransportNews],
    ) -> None:
        try:
            async for event in outbound:
                if isinstance(event, Renew):
                    log.info("renewing the session")
                    self.renewing, self.next_hello = True, event.hello
                    break
                await self.ws.send_message(self.proto.send(event))
                self.stats.events_sent += 1
                if isinstance(event, p.InputAudioBufferCommit):
                    await inbound.send(CommitSent(trio.current_time()))
        except tw.ConnectionClosed as exc:
            self._lost(exc)
        self.scope.cancel()  # outbound closed (shutting down) or renewing: stop reading too


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError | tw.ConnectionTimeout):
        return "timed out"
    return str(exc) or type(exc).__name__


def _rejected(endpoint: Endpoint, status: int) -> TransportError:
    if status in (401, 403):
        return AuthRejected(
            f"the server rejected the credentials (HTTP {status} at {endpoint.url}; "
            f"{endpoint.credentials.describe()}): check auth"
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
        how = endpoint.credentials.describe()
        return AuthRejected(f"the server rejected the credentials: {said} ({how}; check auth)")
    if code == 4000:
        return RequestRejected(
            f"the server refused the request: {said} (check realtime.model and realtime.url)"
        )
    return ConnectionLost(f"connection to {endpoint.url} ended ({code}): {said}")
