"""The ``http`` plugin's ``/events``: each client's Server-Sent Events stream of what the daemon
shows, its turns and transcripts, written by a task of its own (outside the request) from a bounded
queue, kept open by comment lines while idle, and ended cleanly when the daemon is done.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from voiced import Daemon
from voiced.envelope import envelope
from voiced.events import DaemonState, Event, StateChanged, Transcript, TurnEnded

from ._http_metrics import Metrics

log = logging.getLogger("voiced.http")

KEEP_ALIVE_S = 15.0
"""Seconds between the comment lines that keep an idle ``/events`` stream open through proxies."""
EVENTS_QUEUE = 64
"""Events queued for one ``/events`` client; a client that lets it fill is dropped."""
MAX_EVENTS_CLIENTS = 16
"""``/events`` streams open at once; more are refused (503)."""
SHUTDOWN_GRACE = 2.0
"""Seconds the server gets at shutdown to end the streams and answer the requests in flight."""
STREAMED: dict[type[Event], str] = {
    DaemonState: "daemon_state",
    StateChanged: "state_changed",
    TurnEnded: "turn_ended",
    Transcript: "transcript",
}
"""The kinds ``/events`` carries, and the ``event:`` name of each."""

# ASGI's request, messages and channels (the application's, in ``_http_app``, too).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _event(event: Event, device_id: str) -> bytes:
    """One Server-Sent Event: its kind's name, and the event as JSON: the documented envelope
    (``voiced.envelope``) for transcripts, turns and states, the fields of a state change."""
    data = envelope(event, device_id) or dataclasses.asdict(event)
    return f"event: {STREAMED[type(event)]}\ndata: {json.dumps(data)}\n\n".encode()


async def serve_events(
    daemon: Daemon,
    metrics: Metrics,
    writers: trio.Nursery,
    shutdown: trio.Event,
    receive: Receive,
    send: Send,
    head: bool,
) -> None:
    """Answer ``GET /events`` (or ``HEAD``): what the daemon shows now, then each event it streams,
    written by a task in ``writers``, until the daemon is done or ``shutdown`` is set (the stream
    is ended) or the client is gone or not reading (its connection is closed)."""
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ],
    }
    metrics.responses.labels("200").inc()
    if head:
        await send(start)
        await send({"type": "http.response.body", "body": b""})
        return
    subscription = daemon.subscribe(*STREAMED)
    chunks, to_write = trio.open_memory_channel[bytes](EVENTS_QUEUE)
    shown = daemon.status().get("shown") or {}
    now = DaemonState(shown.get("state", "offline"), shown.get("reason"))
    first = _event(now, daemon.device_id)  # what is shown now
    chunks.send_nowait(b"retry: 3000\n\n" + first)
    writer, written = trio.CancelScope(), trio.Event()
    metrics.events_clients += 1
    try:
        await send(start)
        writers.start_soon(_write, send, to_write, writer, written)
        clean = await _stream(subscription, chunks, receive, metrics, shutdown, daemon.device_id)
        chunks.close()
        if clean:  # the daemon is done: what is queued, then the end of the stream
            with trio.move_on_after(SHUTDOWN_GRACE / 2):
                await written.wait()
    finally:
        metrics.events_clients -= 1
        chunks.close()
        writer.cancel()  # lands once the server has closed a connection nobody reads
        await trio.aclose_forcefully(subscription)
    # Returning ends the request: the server closes the connection if the end was not sent.


async def _stream(
    subscription: trio.abc.ReceiveChannel[Event],
    chunks: trio.MemorySendChannel[bytes],
    receive: Receive,
    metrics: Metrics,
    shutdown: trio.Event,
    device_id: str,
) -> bool:
    """Queue the client's events until the daemon is done (True) or the client is gone or
    not reading (False)."""
    ended = False

    def queue(chunk: bytes) -> None:
        try:
            chunks.send_nowait(chunk)
        except trio.WouldBlock:
            metrics.dropped_clients.inc()
            log.warning("/events: a client stopped reading; its stream is closed")
            watch.cancel_scope.cancel()

    async def events() -> None:
        nonlocal ended
        async for event in subscription:
            queue(_event(event, device_id))
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
        await shutdown.wait()
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
