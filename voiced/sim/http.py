"""The simulator's HTTP front: one port serves the WebSocket and the client-secret endpoint.

Every connection starts with an HTTP/1.1 request head, read with h11 (:func:`read_head`). An
upgrade to ``websocket`` goes to trio-websocket over a :class:`ReplayStream`, which hands it the
bytes already read before any new ones, so it sees the request as if it were first to read. Any
other request is plain HTTP, answered once by :func:`answer` (the routing and the mint itself are
sans-IO, in :mod:`voiced.sim.mint`), then the connection closes. Nothing here logs a header,
a query string or a body: they carry keys and secrets.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

from voiced.sim.mint import MAX_BODY_BYTES, Minter, Reply, bad_request, route, too_large

logger = logging.getLogger("voiced.sim")

RECEIVE_BYTES = 64 * 1024
LINGER_TIMEOUT_S = 2.0
"""After answering, how long to wait for the client to finish sending and close (see
:func:`_linger`)."""


@dataclass
class Head:
    """A request head read from a new connection."""

    conn: h11.Connection
    """The server side of the HTTP exchange, positioned after the head."""
    request: h11.Request
    raw: bytes
    """Every byte read from the stream so far (the head, and whatever followed it)."""

    @property
    def method(self) -> str:
        return self.request.method.decode("ascii", "replace")

    @property
    def path(self) -> str:
        """The request target without its query string (which may carry a key)."""
        return urlsplit(self.request.target.decode("ascii", "replace")).path

    @property
    def headers(self) -> dict[str, str]:
        """The headers, names lower-cased (h11 lower-cases them); a repeated name: the last."""
        return {
            name.decode("latin-1"): value.decode("latin-1") for name, value in self.request.headers
        }

    @property
    def is_websocket(self) -> bool:
        """True for a request to upgrade to a WebSocket."""
        return any(
            name == b"upgrade" and b"websocket" in value.lower().replace(b" ", b"").split(b",")
            for name, value in self.request.headers
        )


class ReplayStream(trio.abc.Stream):
    """``stream``, with ``buffered`` returned by the first reads before any new bytes."""

    def __init__(self, stream: trio.abc.Stream, buffered: bytes) -> None:
        self._stream = stream
        self._buffered = buffered

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self._buffered:
            return await self._stream.receive_some(max_bytes)
        await trio.lowlevel.checkpoint()
        size = len(self._buffered) if max_bytes is None else max_bytes
        data, self._buffered = self._buffered[:size], self._buffered[size:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def read_head(stream: trio.abc.Stream) -> Head | None:
    """Read one request head; None if the client closed first or sent no valid HTTP (which is
    answered 400)."""
    conn = h11.Connection(h11.SERVER)
    raw = bytearray()
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = bytes(await stream.receive_some(RECEIVE_BYTES))
                raw += data
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                return Head(conn, event, bytes(raw))
            else:  # ConnectionClosed: the client went away before sending anything
                return None
    except h11.RemoteProtocolError as exc:
        if raw:
            # Not the reason: h11 may quote the offending header line, key and all.
            logger.info("sim refused a malformed HTTP request (%d)", exc.error_status_hint)
            reply = bad_request(f"Malformed HTTP request: {exc}", exc.error_status_hint)
            await _send(stream, conn, reply)
        return None


async def answer(
    stream: trio.abc.Stream,
    head: Head,
    minter: Minter,
    *,
    fault_status: int | None = None,
    fault_code: str | None = None,
) -> None:
    """Answer one plain HTTP request: a mint, or the error that says why not.

    ``fault_status`` and ``fault_code`` are ``SimFaults.mint_status`` and ``mint_code``.
    """
    reply = route(head.method, head.path)
    if reply is None:
        reply = await _mint(stream, head, minter, fault_status, fault_code)
    logger.info("sim http %s %s -> %d", head.method, head.path, reply.status)
    await _send(stream, head.conn, reply)


async def _mint(
    stream: trio.abc.Stream,
    head: Head,
    minter: Minter,
    fault_status: int | None,
    fault_code: str | None,
) -> Reply:
    try:
        body = await _read_body(stream, head)
    except h11.RemoteProtocolError as exc:
        return bad_request(f"Malformed HTTP request: {exc}", exc.error_status_hint)
    if body is None:
        return too_large()
    return minter.mint(head.headers, body, fault_status=fault_status, fault_code=fault_code)


async def _read_body(stream: trio.abc.Stream, head: Head) -> bytes | None:
    """The request body, or None once it is known to exceed :data:`MAX_BODY_BYTES`."""
    length = head.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        return None  # refused before reading it
    conn = head.conn
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(RECEIVE_BYTES)))
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                return None
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:  # ConnectionClosed: h11 raises for a truncated body, so this is unexpected
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")


async def _send(stream: trio.abc.Stream, conn: h11.Connection, reply: Reply) -> None:
    """Send ``reply`` as the one answer of this connection, then let the client finish."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return  # already answered, or the client is gone
    data = json.dumps(reply.body).encode()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(data))),
        ("Connection", "close"),
        *reply.headers,
    ]
    response = h11.Response(status_code=reply.status, headers=headers, reason=reply.phrase)
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(conn.send(response) + conn.send(h11.Data(data=data)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        await _linger(stream)


async def _linger(stream: trio.abc.Stream) -> None:
    """Read and drop whatever the client still sends (a body not read, or too large) until it
    closes: closing a socket with unread bytes would reset the connection, and the client could
    lose the answer before reading it."""
    with trio.move_on_after(LINGER_TIMEOUT_S):
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        while await stream.receive_some(RECEIVE_BYTES):
            pass
