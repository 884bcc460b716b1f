"""Tests for `voiced.sim`: the embedded Realtime simulator, over loopback TCP and in-memory streams.

The tests talk to the simulator through a real trio-websocket client, the way voiced will, and
wait on events, never on sleeps; only the table of hostile events drives the sans-IO session
directly. Timed behaviour (pacing, cancel mid-response, expiry) runs over in-memory streams with
``autojump_clock``, so virtual time makes it instant and deterministic.
"""

from __future__ import annotations

import ast
import base64
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection

import voiced.sim
from tests.sdkcheck import assert_valid_client_event, assert_valid_server_event
from voiced.sim import SimFaults, Simulator
from voiced.sim.session import SimSession

KEY = "test-sim-key-not-a-secret"
RESOURCE = "/v1/realtime?model=gpt-realtime"
BYTES_PER_MS = 48

PUSH_TO_TALK = {
    "type": "session.update",
    "event_id": "evt_setup",
    "session": {
        "type": "realtime",
        "instructions": "Be brief.",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                "turn_detection": None,
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
        },
    },
}


def pcm(ms: int) -> bytes:
    """Deterministic, non-silent PCM16 of ``ms`` milliseconds: an echo is checked byte by byte."""
    return bytes((index * 7 + index // 256) % 256 for index in range(ms * BYTES_PER_MS))


def auth(key: str = KEY) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", f"Bearer {key}".encode())]


async def start(nursery: trio.Nursery, sim: Simulator) -> int:
    """Serve ``sim`` on loopback; returns the port."""
    port: int = await nursery.start(sim.serve)
    return port


@asynccontextmanager
async def open_client(
    stream: trio.abc.Stream,
    resource: str = RESOURCE,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket client over a stream this helper owns and closes.

    trio-websocket 0.12.2's ``open_websocket_url`` never closes its socket when the upgrade is
    rejected or when the server closes first (a ResourceWarning, an error here), so tests of
    those paths own the stream.
    """
    async with stream, trio.open_nursery() as nursery:
        # wrap_client_stream is annotated for socket streams, but works over any trio Stream.
        ws = await trio_websocket.wrap_client_stream(
            nursery,
            stream,  # type: ignore[arg-type]
            "sim.test",
            resource,
            extra_headers=auth() if headers is None else headers,
        )
        yield ws
        await ws.aclose()


@asynccontextmanager
async def open_tcp_ws(
    port: int, resource: str = RESOURCE, headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[WebSocketConnection]:
    async with open_client(await trio.open_tcp_stream("127.0.0.1", port), resource, headers) as ws:
        yield ws


@asynccontextmanager
async def open_memory_ws(
    sim: Simulator, headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[WebSocketConnection]:
    """A client connected to ``sim.handle_stream`` over an in-memory stream pair.

    Once the connection has ended, every event the simulator sent is checked against the SDK.
    """
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sim.handle_stream, server_stream)
        async with open_client(client_stream, headers=headers) as ws:
            yield ws
    for conn in sim.connections:
        for event in conn.sent:
            assert_valid_server_event(event)


async def rejected_upgrade(port: int, resource: str) -> ConnectionRejected:
    with pytest.RaisesGroup(ConnectionRejected) as group:
        async with open_tcp_ws(port, resource):
            pass
    rejected = group.value.exceptions[0]
    assert isinstance(rejected, ConnectionRejected)
    return rejected


async def send(ws: WebSocketConnection, event: dict[str, Any]) -> None:
    assert_valid_client_event(event)
    await ws.send_message(json.dumps(event))


async def recv(ws: WebSocketConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await ws.get_message())
    return event


async def recv_until(ws: WebSocketConnection, kind: str) -> list[dict[str, Any]]:
    """Every event up to and including the first of type ``kind``."""
    events = [await recv(ws)]
    while events[-1]["type"] != kind:
        events.append(await recv(ws))
    return events


async def append(ws: WebSocketConnection, audio: bytes, chunk: int = 100 * BYTES_PER_MS) -> None:
    for offset in range(0, len(audio), chunk):
        encoded = base64.b64encode(audio[offset : offset + chunk]).decode()
        await send(ws, {"type": "input_audio_buffer.append", "audio": encoded})


def deltas(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        base64.b64decode(event["delta"])
        for event in events
        if event["type"] == "response.output_audio.delta"
    )


def error_of(event: dict[str, Any]) -> dict[str, Any]:
    assert event["type"] == "error", event
    error: dict[str, Any] = event["error"]
    return error


async def test_full_turn_over_loopback(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY)
        url = f"ws://127.0.0.1:{await start(nursery, sim)}{RESOURCE}"
        audio = pcm(3000)
        async with trio_websocket.open_websocket_url(url, extra_headers=auth()) as ws:
            created = await recv(ws)
            assert created["type"] == "session.created"
            session = created["session"]
            assert session["id"].startswith("sess_")
            assert session["object"] == "realtime.session"
            assert session["audio"]["output"]["voice"] == "alloy"
            assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
            assert session["audio"]["input"]["transcription"] is None
            assert abs(session["expires_at"] - (time.time() + 3600)) < 60

            await send(ws, PUSH_TO_TALK)
            updated = (await recv(ws))["session"]
            assert updated["audio"]["input"]["turn_detection"] is None
            assert updated["audio"]["output"]["voice"] == "marin"
            assert updated["instructions"] == "Be brief."

            await append(ws, audio)
            await send(ws, {"type": "input_audio_buffer.commit"})
            commit = await recv_until(ws, "conversation.item.input_audio_transcription.completed")
            await send(ws, {"type": "response.create"})
            response = await recv_until(ws, "rate_limits.updated")

        conn = sim.connections[0]
        await conn.closed.wait()

    assert [event["type"] for event in commit] == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    ]
    user_item = commit[1]["item"]
    assert (user_item["role"], user_item["status"]) == ("user", "completed")
    assert user_item["content"] == [{"type": "input_audio", "transcript": None}]
    assert commit[-1]["transcript"] == "heard 3000 ms"

    kinds = [event["type"] for event in response]
    assert kinds[:4] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
    ]
    assert kinds[-7:] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    ]
    streamed = kinds[4:-7]
    assert streamed[0] == "response.output_audio.delta"
    assert set(streamed) == {
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
    }
    assert streamed.count("response.output_audio.delta") == 30

    assert deltas(response) == audio
    assert conn.committed_audio == [audio]
    assert conn.reply_audio == [audio]
    transcript = "".join(
        event["delta"]
        for event in response
        if event["type"] == "response.output_audio_transcript.delta"
    )
    assert transcript == "echo of 3000 ms"
    done = response[-2]["response"]
    assert (done["status"], done["status_details"]) == ("completed", None)
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": transcript}]
    assert response[-1]["rate_limits"][0]["name"] == "tokens"

    assert conn.path == RESOURCE
    assert conn.query == {"model": "gpt-realtime"}
    assert conn.headers["authorization"] == f"Bearer {KEY}"
    assert len(conn.received) == 1 + 30 + 2
    assert conn.errors_sent == []
    assert conn.close_code is None
    assert [event["event_id"] for event in conn.sent] == [
        f"event_{number:04d}" for number in range(1, len(conn.sent) + 1)
    ]
    for event in conn.sent:
        assert_valid_server_event(event)


async def test_memory_stream_turn_echoes_silence_before_any_commit() -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY, chunk_ms=200)
        async with open_memory_ws(sim) as ws:
            assert (await recv(ws))["type"] == "session.created"
            await send(ws, {"type": "response.create"})
            response = await recv_until(ws, "rate_limits.updated")
        await sim.connections[0].closed.wait()

    assert deltas(response) == bytes(500 * BYTES_PER_MS)
    assert [e["type"] for e in response].count("response.output_audio.delta") == 3
    assert response[-2]["response"]["status"] == "completed"


async def test_wrong_key_is_refused_and_closed_3000(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="voiced.sim")
    wrong = "test-wrong-but-long-key"
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY)
        port = await start(nursery, sim)
        async with open_tcp_ws(port, headers=auth(wrong)) as ws:
            error = error_of(await recv(ws))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
        await sim.connections[0].closed.wait()

    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert error["message"].startswith("Incorrect API key provided: test-***ey.")
    assert wrong not in error["message"]
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (
        3000,
        "invalid_request_error.invalid_api_key",
    )
    assert sim.connections[0].close_code == 3000
    assert wrong not in caplog.text
    assert KEY not in caplog.text


async def test_missing_key_is_refused_without_code() -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY)
        async with open_memory_ws(sim, headers=[]) as ws:
            error = error_of(await recv(ws))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()

    assert error["code"] is None
    assert error["message"].startswith("You didn't provide an API key.")
    assert closed.value.reason is not None
    assert closed.value.reason.code == 3000


async def test_handshake_fault_rejects_upgrade_until_switched_off(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY, faults=SimFaults(handshake_status=401))
        port = await start(nursery, sim)
        rejected = await rejected_upgrade(port, RESOURCE)
        sim.faults.handshake_status = None
        url = f"ws://127.0.0.1:{port}{RESOURCE}"
        async with trio_websocket.open_websocket_url(url, extra_headers=auth()) as ws:
            assert (await recv(ws))["type"] == "session.created"

    assert rejected.status_code == 401
    assert rejected.body is not None
    assert json.loads(rejected.body)["error"]["message"] == "Unauthorized"
    assert len(sim.connections) == 1


async def test_wrong_path_is_404(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        port = await start(nursery, Simulator(api_key=KEY))
        rejected = await rejected_upgrade(port, "/v1/chat?model=x")
    assert rejected.status_code == 404


@pytest.mark.parametrize(
    ("resource", "headers", "code"),
    [
        ("/v1/realtime", auth(), "missing_model"),
        (RESOURCE, [*auth(), (b"OpenAI-Beta", b"realtime=v1")], "beta_api_shape_disabled"),
    ],
)
async def test_request_errors_close_4000(
    nursery: trio.Nursery, resource: str, headers: list[tuple[bytes, bytes]], code: str
) -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY)
        port = await start(nursery, sim)
        async with open_tcp_ws(port, resource, headers) as ws:
            error = error_of(await recv(ws))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()

    assert error["code"] == code
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (
        4000,
        f"invalid_request_error.{code}",
    )


async def test_short_commit_fails_and_session_keeps_working() -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await append(ws, pcm(50))
            await send(ws, {"type": "input_audio_buffer.commit", "event_id": "evt_short"})
            error = error_of(await recv(ws))
            await send(ws, {"type": "input_audio_buffer.clear"})
            assert (await recv(ws))["type"] == "input_audio_buffer.cleared"
            await append(ws, pcm(200))
            await send(ws, {"type": "input_audio_buffer.commit"})
            committed = await recv_until(ws, "conversation.item.done")

    assert error == {
        "type": "invalid_request_error",
        "code": "input_audio_buffer_commit_empty",
        "message": "Error committing input audio buffer: buffer too small. Expected at least "
        "100ms of audio, but buffer only has 50.00ms of audio.",
        "param": None,
        "event_id": "evt_short",
    }
    assert committed[0]["type"] == "input_audio_buffer.committed"
    assert sim.connections[0].committed_audio == [pcm(200)]


@pytest.mark.parametrize(
    ("message", "code", "param"),
    [
        (
            json.dumps({"type": "input_audio_buffer.flush", "event_id": "evt_1"}),
            "invalid_value",
            "type",
        ),
        (json.dumps({"event_id": "evt_1"}), "invalid_value", "type"),
        (
            json.dumps({"type": "response.cancel", "reason": "x", "event_id": "evt_1"}),
            "unknown_parameter",
            "reason",
        ),
        (
            json.dumps({"type": "input_audio_buffer.append", "event_id": "evt_1"}),
            "missing_required_parameter",
            "audio",
        ),
        (
            json.dumps({"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "evt_1"}),
            "invalid_value",
            "audio",
        ),
        ("{not json", "invalid_json", None),
    ],
)
async def test_bad_events_get_an_error_and_leave_the_session_open(
    message: str, code: str, param: str | None
) -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await ws.send_message(message)
            error = error_of(await recv(ws))
            await send(ws, {"type": "input_audio_buffer.clear"})
            assert (await recv(ws))["type"] == "input_audio_buffer.cleared"

    assert (error["code"], error["param"]) == (code, param)
    assert error["event_id"] == ("evt_1" if code != "invalid_json" else None)
    assert len(sim.connections[0].received) == (2 if code != "invalid_json" else 1)


async def test_binary_frame_gets_an_error() -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await ws.send_message(b"\x00\x01")
            error = error_of(await recv(ws))
    assert error["type"] == "invalid_request_error"
    assert sim.connections[0].received == []


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        (
            {"type": "realtime", "audio": {"input": {"turn_detecton": None}}},
            "unknown_parameter",
            "session.audio.input.turn_detecton",
        ),
        (
            {
                "type": "realtime",
                "audio": {
                    "output": {"voice": "marin", "format": {"type": "audio/pcm", "rate": 16000}}
                },
            },
            "integer_below_min_value",
            "session.audio.output.format.rate",
        ),
        ({"audio": {"output": {"voice": "marin"}}}, "missing_required_parameter", "session.type"),
        ({"type": "realtime", "temperature": 0.8}, "unknown_parameter", "session.temperature"),
    ],
)
async def test_failed_session_update_is_discarded_whole(
    session: dict[str, Any], code: str, param: str
) -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await ws.send_message(json.dumps({"type": "session.update", "session": session}))
            error = error_of(await recv(ws))
            await send(ws, {"type": "session.update", "session": {"type": "realtime"}})
            updated = await recv(ws)

    assert (error["code"], error["param"], error["event_id"]) == (code, param, None)
    assert updated["type"] == "session.updated"
    assert updated["session"]["audio"]["output"]["voice"] == "alloy"
    assert updated["session"]["audio"]["input"]["turn_detection"] is not None


async def test_cancel_mid_response(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        sim = Simulator(api_key=KEY, pace=1.0)
        audio = pcm(3000)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await append(ws, audio)
            await send(ws, {"type": "input_audio_buffer.commit"})
            await recv_until(ws, "conversation.item.done")
            await send(ws, {"type": "response.create"})
            began = trio.current_time()
            streamed = await recv_until(ws, "response.output_audio.delta")
            for _ in range(4):
                streamed += await recv_until(ws, "response.output_audio.delta")
            cancelled_at = trio.current_time()
            response_id = streamed[0]["response"]["id"]
            await send(ws, {"type": "response.cancel", "response_id": response_id})
            closing = await recv_until(ws, "rate_limits.updated")
            finished_at = trio.current_time()

    conn = sim.connections[0]
    # Paced in real time: five 100 ms chunks are out after 400 ms of (virtual) time, and the
    # cancel lands without waiting out the current chunk.
    assert cancelled_at - began == pytest.approx(0.4)
    assert finished_at == cancelled_at
    assert [event["type"] for event in closing if "delta" not in event["type"]] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    ]
    done = closing[-2]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert closing[-4]["item"]["status"] == "incomplete"
    sent = deltas(streamed + closing)
    assert conn.reply_audio == [sent]
    assert 0 < len(sent) < len(audio)
    assert audio.startswith(sent)


async def test_think_delays_the_reply_and_a_cancel_cuts_it_short(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        sim = Simulator(api_key=KEY, think=0.5)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await append(ws, pcm(200))
            await send(ws, {"type": "input_audio_buffer.commit"})
            await recv_until(ws, "conversation.item.done")
            await send(ws, {"type": "response.create"})
            asked = trio.current_time()
            await recv_until(ws, "response.created")
            assert trio.current_time() - asked == pytest.approx(0.5)
            await recv_until(ws, "response.done")
            # A response still thinking stops at once when cancelled.
            asked = trio.current_time()
            await send(ws, {"type": "response.create"})
            await send(ws, {"type": "response.cancel"})
            closing = await recv_until(ws, "response.done")
            assert trio.current_time() == asked
    assert closing[-1]["response"]["status"] == "cancelled"


async def test_jitter_sends_uneven_deltas_unevenly(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        sim = Simulator(api_key=KEY, pace=1.0, jitter=0.04)
        audio = pcm(2000)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await append(ws, audio)
            await send(ws, {"type": "input_audio_buffer.commit"})
            await recv_until(ws, "conversation.item.done")
            await send(ws, {"type": "response.create"})
            arrivals: list[tuple[float, int]] = []
            while (event := await recv(ws))["type"] != "response.done":
                if event["type"] == "response.output_audio.delta":
                    size = len(base64.b64decode(event["delta"]))
                    arrivals.append((trio.current_time(), size))
    sizes = [size for _, size in arrivals]
    gaps = [round(b[0] - a[0], 3) for a, b in itertools.pairwise(arrivals)]
    assert len(set(sizes)) > 1  # uneven sizes...
    assert (
        len(
            {round(gap / (size / 48000), 2) for gap, (_, size) in zip(gaps, arrivals, strict=False)}
        )
        > 1
    )  # ...and timing
    assert conn_reply(sim) == audio  # still the exact echo


def conn_reply(sim: Simulator) -> bytes:
    (reply,) = sim.connections[0].reply_audio
    return reply


async def test_cancel_with_nothing_active_is_harmless() -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await send(ws, {"type": "response.cancel", "event_id": "evt_c"})
            error = error_of(await recv(ws))
            await send(ws, {"type": "response.create"})
            response = await recv_until(ws, "response.done")
    assert (error["code"], error["event_id"]) == ("response_cancel_not_active", "evt_c")
    assert response[-1]["response"]["status"] == "completed"


async def test_response_create_while_active(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        sim = Simulator(api_key=KEY, pace=1.0)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await send(ws, {"type": "response.create"})
            await send(ws, {"type": "response.create", "event_id": "evt_again"})
            events = await recv_until(ws, "rate_limits.updated")

    errors = [error_of(event) for event in events if event["type"] == "error"]
    assert [(e["code"], e["event_id"]) for e in errors] == [
        ("conversation_already_has_active_response", "evt_again")
    ]
    assert events[-2]["response"]["status"] == "completed"
    assert len(sim.connections[0].reply_audio) == 1


async def test_truncate_checks_the_audio_sent() -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await append(ws, pcm(1000))
            await send(ws, {"type": "input_audio_buffer.commit"})
            user_item = (await recv_until(ws, "conversation.item.done"))[0]["item_id"]
            await send(ws, {"type": "response.create"})
            response = await recv_until(ws, "rate_limits.updated")
            item_id = response[1]["item"]["id"]
            replies = []
            for target, end_ms in [(item_id, 1500), (item_id, 400), (item_id, 401), (user_item, 0)]:
                truncate = {
                    "type": "conversation.item.truncate",
                    "item_id": target,
                    "content_index": 0,
                    "audio_end_ms": end_ms,
                }
                await send(ws, truncate)
                replies.append(await recv(ws))
            missing = {
                "type": "conversation.item.truncate",
                "item_id": "nope",
                "content_index": 0,
                "audio_end_ms": 0,
            }
            await send(ws, missing)
            replies.append(await recv(ws))

    too_long = error_of(replies[0])
    assert (too_long["code"], too_long["param"]) == ("invalid_value", "audio_end_ms")
    assert replies[1] == {
        "event_id": replies[1]["event_id"],
        "type": "conversation.item.truncated",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": 400,
    }
    assert error_of(replies[2])["param"] == "audio_end_ms"
    assert error_of(replies[3])["param"] == "item_id"
    assert error_of(replies[4])["param"] == "item_id"


async def test_session_expires_and_closes_1001(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(120):
        sim = Simulator(api_key=KEY, faults=SimFaults(expire_after=60.0))
        began = trio.current_time()
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            error = error_of(await recv(ws))
            expired_at = trio.current_time()
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()

    message = "Your session hit the maximum duration of 60 minutes."
    assert expired_at - began == pytest.approx(60.0)
    assert error == {
        "type": "invalid_request_error",
        "code": "session_expired",
        "message": message,
        "param": None,
        "event_id": None,
    }
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (1001, message)
    assert (sim.connections[0].close_code, sim.connections[0].close_reason) == (1001, message)
    assert sim.connections[0].closed.is_set()


async def test_item_create_retrieve_delete() -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await append(ws, pcm(200))
            await send(ws, {"type": "input_audio_buffer.commit"})
            audio_item = (await recv(ws))["item_id"]
            await recv_until(ws, "conversation.item.done")
            text = {"type": "input_text", "text": "hello"}
            item = {"type": "message", "role": "user", "content": [text]}
            await send(ws, {"type": "conversation.item.create", "item": item})
            added, done = await recv(ws), await recv(ws)
            await send(ws, {"type": "conversation.item.retrieve", "item_id": audio_item})
            retrieved = await recv(ws)
            await send(ws, {"type": "conversation.item.delete", "item_id": audio_item})
            deleted = await recv(ws)
            await send(ws, {"type": "conversation.item.retrieve", "item_id": audio_item})
            gone = error_of(await recv(ws))

    assert (added["type"], done["type"]) == ("conversation.item.added", "conversation.item.done")
    assert added["previous_item_id"] == audio_item
    assert added["item"]["content"] == [text]
    content = retrieved["item"]["content"][0]
    assert base64.b64decode(content["audio"]) == pcm(200)
    assert (deleted["type"], deleted["item_id"]) == ("conversation.item.deleted", audio_item)
    assert (gone["code"], gone["param"]) == ("item_not_found", "item_id")


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"type": "input_audio_buffer.append", "audio": "AAé="}, "invalid_value"),
        ({"type": "input_audio_buffer.append", "audio": 5}, "invalid_type"),
        ({"type": "session.update", "session": {"type": "realtime", "audio": "x"}}, "invalid_type"),
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"speed": 3}}},
            },
            "decimal_above_max_value",
        ),
        (
            {"type": "session.update", "session": {"type": "transcription"}},
            "invalid_value",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": "hi"},
            },
            "invalid_type",
        ),
        (
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": 7}],
                },
            },
            "invalid_value",
        ),
        (
            {"type": "response.create", "response": {"audio": {"output": {"voice": {}}}}},
            "invalid_value",
        ),
        ({"type": "response.create", "response": {"metadata": {"a": 1}}}, "invalid_type"),
        ({"type": "output_audio_buffer.clear"}, "invalid_value"),
        ([1, 2], "invalid_type"),
    ],
)
def test_session_answers_hostile_events_with_one_error(event: object, code: str) -> None:
    """The sans-IO session, driven directly: malformed input is an error event, never a crash."""
    session = SimSession(api_key=KEY, session_id="sess_0001", chunk_ms=100, now=0.0)
    assert session.open({"authorization": f"Bearer {KEY}"}, {"model": "m"}).close is None
    outcome = session.receive(json.dumps(event))
    assert (outcome.close, outcome.start) == (None, None)
    (error,) = [session.stamp(reply) for reply in outcome.events]
    assert error_of(error)["code"] == code
    assert_valid_server_event(error)


def test_protocol_modules_stay_sans_io() -> None:
    """The protocol logic imports no I/O library, and no simulator module needs the SDK."""
    package = Path(voiced.sim.__file__).parent
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {
            name.split(".")[0]
            for node in ast.walk(tree)
            for name in (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
        }
        assert not imported & {"openai", "pydantic"}, path.name
        if path.name not in ("__init__.py", "server.py", "http.py"):
            assert not imported & {"trio", "trio_websocket"}, path.name
