"""The simulator's I/O: a trio-websocket server that runs one :class:`SimSession` per connection.

:class:`Simulator` serves over loopback TCP (:meth:`Simulator.serve`) or over any trio stream
(:meth:`Simulator.handle_stream`, for in-memory tests). It owns what the sans-IO session cannot:
the HTTP-level handshake (a wrong path, or a faulted gateway, is rejected before the upgrade), the
reader loop, one task per streaming response paced on trio's clock (so ``autojump_clock`` makes it
instant and deterministic), session expiry, closing the socket with the codes the real server
uses, and the faults of :class:`~voiced.sim.faults.SimFaults` (refused, reset, stalled, silent
and garbage-spewing connections). Every connection is recorded as a :class:`SimConnection` for
tests and logs. The same port serves the client-secret endpoint (:mod:`voiced.sim.http`); each
mint is recorded as a :class:`~voiced.sim.mint.SimMint`, and its secret opens sessions until it
expires. A simulator made with ``record=False`` (inside the daemon) records nothing: its memory
stays flat however many turns and connections it serves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import trio
import trio_websocket
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from voiced.sim.faults import SimFaults as SimFaults
from voiced.sim.faults import garbage
from voiced.sim.http import ReplayStream, answer, read_head
from voiced.sim.mint import MINT_PATHS, Minter, SimMint, status_phrase
from voiced.sim.response import ResponseRun
from voiced.sim.session import SESSION_DURATION_S, Outcome, SimSession

logger = logging.getLogger("voiced.sim")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Frames up to this size are accepted: an append may carry 15 MiB of base64 (protocol §6)."""
HANDSHAKE_TIMEOUT_S = 10.0
"""How long a new stream may take to send its HTTP upgrade request (or to be answered, for a
plain HTTP request)."""
CLOSE_TIMEOUT_S = 5.0
"""How long the server waits for the client's half of a closing handshake."""
AUDIO_DELTA = "response.output_audio.delta"
APPEND = "input_audio_buffer.append"


@dataclass(eq=False)
class SimConnection:
    """The record of one accepted WebSocket, for tests and logs."""

    path: str
    """The request target, query string included."""
    query: dict[str, str]
    headers: dict[str, str] = field(repr=False)
    """Request headers, names lower-cased (includes the bearer token: never log them)."""
    session: SimSession = field(repr=False)
    close_code: int | None = None
    """The code the server closed with, if the server closed."""
    close_reason: str | None = None
    closed: trio.Event = field(default_factory=trio.Event, repr=False)
    """Set when the connection has ended."""
    aborted: bool = False
    """The server reset the connection (a ``drop_after_*`` fault): no close frame was sent."""
    garbage_sent: int = 0
    """Garbage frames sent (the ``garbage_every`` fault)."""

    @property
    def received(self) -> list[dict[str, Any]]:
        """Every client event that parsed as a JSON object, valid or not, in arrival order."""
        return self.session.received

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Every server event sent, in order."""
        return self.session.sent

    @property
    def committed_audio(self) -> list[bytes]:
        """The PCM of each successful commit, in order."""
        return self.session.committed_audio

    @property
    def reply_audio(self) -> list[bytes]:
        """The PCM each response streamed in ``output_audio.delta`` events (cancelled: what was
        sent), in order."""
        return self.session.reply_audio

    @property
    def errors_sent(self) -> list[dict[str, Any]]:
        return [event for event in self.sent if event["type"] == "error"]


class Simulator:
    """A server speaking the GA Realtime protocol, so voiced runs with no key and no network.

    Args:
        api_key: the key accepted on the socket (as a bearer token, or Azure's ``api-key``
            header) and the only one that may mint client secrets.
        pace: wall seconds per second of reply audio (0: as fast as possible, 1.0: real time).
        chunk_ms: reply audio per ``response.output_audio.delta``.
        think: seconds (trio clock) from ``response.create`` to the response's first event, as
            a real model takes a moment before it answers.
        jitter: seconds each pause between deltas may come early or late (uniformly, from a
            seeded generator: the same every run), and deltas of uneven sizes, as over a real
            network. 0: even sizes, exact pacing.
        faults: fault switches; ``Simulator.faults`` stays mutable.
        preamble_ms: sets ``faults.preamble_ms`` (when not 0).
        omit_response_fields: sets ``faults.omit_response_fields`` (when true).
        clock: the wall clock, Unix seconds: the ``expires_at`` of sessions and client secrets,
            and whether a secret is still valid when a connection presents it. A test may pass
            its own to move time forward.
        record: keep every connection in :attr:`connections`, with every event and all the
            audio of its session, and every mint in :attr:`mints` (for tests). False, for a
            simulator that runs for months inside a daemon: keep nothing but what live
            connections need (see :class:`~voiced.sim.session.SimSession`);
            :attr:`open_connections` still shows the connections in progress.
    """

    def __init__(
        self,
        *,
        api_key: str,
        pace: float = 0.0,
        chunk_ms: int = 100,
        think: float = 0.0,
        jitter: float = 0.0,
        faults: SimFaults | None = None,
        preamble_ms: int = 0,
        omit_response_fields: bool = False,
        clock: Callable[[], float] = time.time,
        record: bool = True,
    ) -> None:
        if pace < 0 or think < 0:
            raise ValueError(f"pace and think must be >= 0, got {pace} and {think}")
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be > 0, got {chunk_ms}")
        if preamble_ms < 0:
            raise ValueError(f"preamble_ms must be >= 0, got {preamble_ms}")
        self.connections: list[SimConnection] = []
        """Every accepted connection, in order (when recording)."""
        self.open_connections: list[SimConnection] = []
        """The connections in progress, in order, recording or not."""
        self.accepted = 0
        """How many connections were accepted (their sessions are numbered by it)."""
        self.refused = 0
        """How many connection attempts the ``refuse_connections`` fault refused."""
        self.record = record
        self.faults = faults if faults is not None else SimFaults()
        if preamble_ms:
            self.faults.preamble_ms = preamble_ms
        if omit_response_fields:
            self.faults.omit_response_fields = True
        self._api_key = api_key
        self._pace = pace
        self._think = think
        self._jitter = jitter
        self._chunk_ms = chunk_ms
        self._clock = clock
        self._minter = Minter(api_key=api_key, clock=clock, record=record)

    @property
    def mints(self) -> list[SimMint]:
        """Every successful client-secret mint, in order."""
        return self._minter.mints

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host``:``port`` and serve until cancelled; reports the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        if port == 0:
            # Each address of ``host`` got its own ephemeral port; serve one, the one reported.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        bound: int = listeners[0].socket.getsockname()[1]
        logger.info(
            "simulator listening on %s:%d (WebSocket /v1/realtime, POST %s)",
            host,
            bound,
            MINT_PATHS[0],
        )
        task_status.started(bound)
        await trio.serve_listeners(self.handle_stream, listeners)

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection over ``stream`` until it ends; closes ``stream``.

        A WebSocket upgrade becomes a session; any other request is answered as plain HTTP
        (the client-secret endpoint), then the connection closes.
        """
        if self.faults.refuse_connections > 0:
            self.faults.refuse_connections -= 1
            self.refused += 1
            logger.info(
                "sim refused a connection (fault; %d more to refuse)",
                self.faults.refuse_connections,
            )
            await _reset(stream)
            return
        async with stream, trio.open_nursery() as nursery:
            request: WebSocketRequest | None = None
            with (
                trio.move_on_after(HANDSHAKE_TIMEOUT_S),
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                head = await read_head(stream)
                if head is not None and head.is_websocket:
                    request = await trio_websocket.wrap_server_stream(
                        nursery, ReplayStream(stream, head.raw), max_message_size=MAX_MESSAGE_BYTES
                    )
                elif head is not None:
                    faults = self.faults
                    await answer(
                        stream,
                        head,
                        self._minter,
                        fault_status=faults.mint_status,
                        fault_code=faults.mint_code,
                    )
            if request is not None:
                await self._handle_request(request, stream)
            # Stops trio-websocket's reader task, which lives in this nursery.
            nursery.cancel_scope.cancel()

    async def _handle_request(self, request: WebSocketRequest, stream: trio.abc.Stream) -> None:
        url = urlsplit(request.path)
        if not url.path.endswith("/realtime"):
            await _reject(request, 404, f"Invalid URL (GET {url.path})")
            return
        faults = dataclasses.replace(self.faults)  # this connection's switches
        status = faults.handshake_status
        if status is not None:
            await _reject(request, status, status_phrase(status))
            return
        self.accepted += 1
        number = self.accepted
        session = SimSession(
            api_key=self._api_key,
            session_id=f"sess_{number:04d}",
            chunk_ms=self._chunk_ms,
            now=self._clock(),
            uneven=self._jitter > 0,
            preamble_ms=faults.preamble_ms,
            omit_response_fields=faults.omit_response_fields,
            secrets=self._minter.secrets,
            duration_s=faults.expire_after or SESSION_DURATION_S,
            record=self.record,
        )
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in request.headers
        }
        conn = SimConnection(request.path, dict(parse_qsl(url.query)), headers, session)
        # Recorded before accepting, so a client that sees the upgrade succeed finds its record.
        if self.record:
            self.connections.append(conn)
        self.open_connections.append(conn)
        try:
            ws = await request.accept()
        except ConnectionClosed:
            self.open_connections.remove(conn)
            if self.record:
                self.connections.remove(conn)
            return
        # Only the path and model: a query string may carry a key (Azure's ``api-key``).
        logger.info(
            "sim connection %d open: %s model=%s", number, url.path, conn.query.get("model")
        )
        handler = _Handler(
            conn,
            ws,
            stream,
            number=number,
            pace=self._pace,
            think=self._think,
            jitter=self._jitter,
            faults=faults,
        )
        try:
            await handler.run()
        finally:
            self.open_connections.remove(conn)
            conn.closed.set()
            if conn.aborted:
                how = "by the server: reset, with no close frame (fault)"
            elif conn.close_code is not None:
                how = f"by the server, code {conn.close_code} ({conn.close_reason})"
            else:
                how = f"by the client: {ws.closed}"
            logger.info("sim connection %d closed %s", number, how)


class _Handler:
    """Runs one accepted connection: the reader, response streams, expiry, the fatal close, and
    the connection's faults."""

    def __init__(
        self,
        conn: SimConnection,
        ws: WebSocketConnection,
        stream: trio.abc.Stream,
        *,
        number: int,
        pace: float,
        think: float,
        jitter: float,
        faults: SimFaults,
    ) -> None:
        self._number = number
        self._conn = conn
        self._session = conn.session
        self._ws = ws
        self._stream_under = stream  # the TCP stream under the WebSocket, for a reset
        self._pace = pace
        self._think = think
        self._jitter = jitter
        self._random = random.Random(number)  # the same jitter on every run
        self._faults = faults
        self._fail_left = faults.fail_count
        self._appends = 0
        self._events_out = 0
        self._send_lock = trio.Lock()
        self._tasks = trio.CancelScope()
        self._closing = False
        self._pauses: dict[str, trio.CancelScope] = {}

    async def run(self) -> None:
        started = trio.current_time()
        if self._faults.silent_open:
            logger.info("sim connection %d stays silent (fault)", self._number)
            await self._drop_messages()
            return
        with self._tasks:
            async with trio.open_nursery() as nursery:
                await self._apply(self._session.open(self._conn.headers, self._conn.query), nursery)
                expire_after = self._faults.expire_after
                if expire_after is not None:
                    nursery.start_soon(self._expire, started + expire_after, nursery)
                await self._read(nursery)
                nursery.cancel_scope.cancel()
        if self._conn.close_code is not None:
            # Outside the task scope: the close must not be cut short by its own cancellation.
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await self._ws.aclose(self._conn.close_code, self._conn.close_reason)

    async def _drop_messages(self) -> None:
        """Read and drop every message until the client goes: trio-websocket answers pings
        only while its messages are being read."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self._ws.get_message()

    async def _read(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                message = await self._ws.get_message()
            except ConnectionClosed:
                return
            outcome = self._fail(message) or self._session.receive(message)
            event = self._session.last_event
            if event is not None:
                logger.debug("sim %d <- %s", self._number, event.get("type"))
                if event.get("type") == APPEND and self._faults.drop_after_appends is not None:
                    self._appends += 1
                    if self._appends >= self._faults.drop_after_appends:
                        await self._abort(f"after {self._appends} appends")
                        return
            await self._apply(outcome, nursery)

    def _fail(self, message: str | bytes) -> Outcome | None:
        """The ``fail_event`` fault: a server error in place of handling the event, so the
        session's state (the input audio buffer included) is left as it was."""
        if self._faults.fail_event is None or isinstance(message, bytes):
            return None  # a binary frame is refused by the session, whatever it holds
        try:
            event = json.loads(message)
        except (ValueError, RecursionError):
            return None
        if not isinstance(event, dict) or event.get("type") != self._faults.fail_event:
            return None
        if self._fail_left is not None:
            if self._fail_left <= 0:
                return None
            self._fail_left -= 1
        self._session.note(event)
        event_id = event.get("event_id")
        error = {
            "type": "server_error",
            "code": None,
            "message": "The server had an error while processing your request.",
            "param": None,
            "event_id": event_id if isinstance(event_id, str) else None,
        }
        return Outcome(events=[{"type": "error", "error": error}])

    async def _apply(self, outcome: Outcome, nursery: trio.Nursery) -> None:
        async with self._send_lock:
            if not await self._send_locked(outcome.events):
                return
            if outcome.close is not None:
                # Nothing may follow a fatal error: stop every task; run() sends the close.
                self._closing = True
                self._conn.close_code, self._conn.close_reason = outcome.close
                self._tasks.cancel()
                return
        if outcome.start is not None:
            nursery.start_soon(self._stream, outcome.start)
        if outcome.cancel is not None and outcome.cancel.id in self._pauses:
            self._pauses[outcome.cancel.id].cancel()

    async def _send(self, events: list[dict[str, Any]]) -> bool:
        async with self._send_lock:
            return await self._send_locked(events)

    async def _send_locked(self, events: list[dict[str, Any]]) -> bool:
        """Stamp and send ``events`` in order (each N-th followed by garbage, when so faulted);
        False once the socket is closed or closing."""
        every = self._faults.garbage_every
        for event in events:
            if self._closing:
                return False
            stamped = self._session.stamp(event)
            logger.debug("sim %d -> %s %s", self._number, stamped["type"], stamped["event_id"])
            try:
                await self._ws.send_message(json.dumps(stamped))
                self._events_out += 1
                if every is not None and self._events_out % every == 0:
                    await self._ws.send_message(garbage(self._conn.garbage_sent))
                    self._conn.garbage_sent += 1
            except ConnectionClosed:
                return False
        return True

    async def _stream(self, run: ResponseRun) -> None:
        await self._pause(run, self._think)
        drop_after = self._faults.drop_after_deltas
        stall_after = self._faults.stall_after_deltas
        sent = 0  # audio deltas of this response
        for step in run.steps():
            if not await self._send(step.events):
                return
            sent += sum(event["type"] == AUDIO_DELTA for event in step.events)
            if drop_after is not None and sent >= drop_after:
                await self._abort(f"after {sent} deltas of {run.id}")
                return
            if stall_after is not None and sent >= stall_after:
                logger.info("sim connection %d: %s stalls (fault)", self._number, run.id)
                await trio.sleep_forever()  # no cancel wakes it: the connection's end does
            # With pace 0 this is still a checkpoint, so the reader gets to handle a
            # response.cancel between any two deltas.
            late = self._random.uniform(-self._jitter, self._jitter) if step.audio_seconds else 0
            await self._pause(run, max(0.0, step.audio_seconds * self._pace + late))

    async def _pause(self, run: ResponseRun, seconds: float) -> None:
        """Sleep, unless and until the response is asked to stop."""
        with trio.CancelScope() as pause:
            self._pauses[run.id] = pause
            if run.cancel_requested:
                pause.cancel()
            await trio.sleep(seconds)
        del self._pauses[run.id]

    async def _expire(self, deadline: float, nursery: trio.Nursery) -> None:
        await trio.sleep_until(deadline)
        await self._apply(self._session.expire(), nursery)

    async def _abort(self, why: str) -> None:
        """A ``drop_after_*`` fault: reset the TCP stream, with no close frame, and stop."""
        self._closing = True
        self._conn.aborted = True
        logger.info("sim connection %d reset %s (fault)", self._number, why)
        await _reset(self._stream_under)
        self._tasks.cancel()


async def _reset(stream: trio.abc.Stream) -> None:
    """Close ``stream`` at once; over TCP with a reset (RST), as a dropped link or a killed
    proxy does, rather than an orderly FIN."""
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


async def _reject(request: WebSocketRequest, status: int, message: str) -> None:
    """Refuse the upgrade with an OpenAI-style JSON error body."""
    error = {"message": message, "type": "invalid_request_error", "code": None, "param": None}
    body = json.dumps({"error": error}).encode()
    logger.info("sim rejected upgrade of %s with %d", urlsplit(request.path).path, status)
    headers = [(b"Content-Type", b"application/json")]
    with contextlib.suppress(ConnectionClosed):  # the client went away first: nothing to refuse
        await request.reject(status, extra_headers=headers, body=body)
