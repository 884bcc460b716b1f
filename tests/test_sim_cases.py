"""Tests for the simulator's switches that reproduce awkward real-server cases.

- ``preamble_ms``: each response speaks a short preamble item before the answer item;
- ``omit_response_fields``: ``response.created`` / ``response.done`` without ``id`` and ``status``;
- a failed ``input_audio_buffer.commit`` keeps the buffered audio, as on the real server.

Same rules as ``test_sim.py`` (whose helpers these tests share): a real WebSocket client over
in-memory streams, every event the simulator sent checked against the SDK, waits on events and
never on sleeps, ``autojump_clock`` for pacing.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection

from tests.conftest import tone
from tests.test_sim import (
    KEY,
    append,
    deltas,
    error_of,
    open_memory_ws,
    pcm,
    recv,
    recv_until,
    send,
)
from voiced.sim import SimFaults, Simulator
from voiced.sim.response import PREAMBLE_AMPLITUDE, preamble_audio

ITEM_STEPS = [
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "conversation.item.done",
    "response.output_item.done",
]
"""The events of one output item (protocol §5 steps 2-4), deltas left out."""
DELTAS = ("response.output_audio.delta", "response.output_audio_transcript.delta")


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events if event["type"] not in DELTAS]


def of_item(events: list[dict[str, Any]], item_id: str) -> list[dict[str, Any]]:
    """The events about ``item_id``, in order."""
    return [
        event
        for event in events
        if event.get("item_id") == item_id or event.get("item", {}).get("id") == item_id
    ]


def transcript(events: list[dict[str, Any]]) -> str:
    return "".join(
        event["delta"]
        for event in events
        if event["type"] == "response.output_audio_transcript.delta"
    )


def truncate(item_id: str, end_ms: int) -> dict[str, Any]:
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": end_ms,
    }


async def commit_turn(ws: WebSocketConnection, audio: bytes) -> str:
    """Append and commit ``audio``; returns the user item's id."""
    await append(ws, audio)
    await send(ws, {"type": "input_audio_buffer.commit"})
    events = await recv_until(ws, "conversation.item.done")
    item_id: str = events[0]["item_id"]
    return item_id


async def test_preamble_item_then_answer_item_in_one_response() -> None:
    audio = pcm(1000)
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY, preamble_ms=300)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            user_item = await commit_turn(ws, audio)
            await send(ws, {"type": "response.create"})
            response = await recv_until(ws, "rate_limits.updated")

    assert kinds(response) == [
        "response.created",
        *ITEM_STEPS,
        *ITEM_STEPS,
        "response.done",
        "rate_limits.updated",
    ]
    preamble, answer = (item["id"] for item in response[-2]["response"]["output"])
    assert (user_item, preamble, answer) == ("item_0001", "item_0002", "item_0003")
    first, second = of_item(response, preamble), of_item(response, answer)
    assert len(first) + len(second) == len(response) - 3  # everything else names an item
    assert response.index(first[-1]) < response.index(second[0])  # one item after the other
    for events, index, previous in [(first, 0, user_item), (second, 1, preamble)]:
        assert {event.get("output_index", index) for event in events} == {index}
        assert {event.get("response_id", "resp_0001") for event in events} == {"resp_0001"}
        added = [
            e for e in events if e["type"] in ("conversation.item.added", "conversation.item.done")
        ]
        assert {event["previous_item_id"] for event in added} == {previous}

    assert deltas(first) == preamble_audio(300)
    assert deltas(second) == audio
    assert (transcript(first), transcript(second)) == ("one moment", "echo of 1000 ms")
    samples = struct.unpack(f"<{300 * 24}h", preamble_audio(300))
    assert 0 < max(abs(sample) for sample in samples) <= PREAMBLE_AMPLITUDE  # quiet, not silent
    done = response[-2]["response"]
    assert (done["id"], done["status"]) == ("resp_0001", "completed")
    assert [(item["id"], item["status"], item["content"]) for item in done["output"]] == [
        (preamble, "completed", [{"type": "output_audio", "transcript": "one moment"}]),
        (answer, "completed", [{"type": "output_audio", "transcript": "echo of 1000 ms"}]),
    ]
    assert sim.connections[0].reply_audio == [preamble_audio(300) + audio]


async def test_preamble_either_item_can_be_truncated() -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY, faults=SimFaults(preamble_ms=300))
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await commit_turn(ws, pcm(1000))
            await send(ws, {"type": "response.create"})
            response = await recv_until(ws, "rate_limits.updated")
            preamble, answer = (item["id"] for item in response[-2]["response"]["output"])
            replies = []
            for item_id, end_ms in [(preamble, 301), (preamble, 120), (answer, 640)]:
                await send(ws, truncate(item_id, end_ms))
                replies.append(await recv(ws))
            for item_id in (preamble, answer):
                await send(ws, {"type": "conversation.item.retrieve", "item_id": item_id})
                replies.append(await recv(ws))

    assert error_of(replies[0])["param"] == "audio_end_ms"  # past the preamble's 300 ms
    assert [(r["type"], r["item_id"], r["audio_end_ms"]) for r in replies[1:3]] == [
        ("conversation.item.truncated", preamble, 120),
        ("conversation.item.truncated", answer, 640),
    ]
    kept = [base64.b64decode(r["item"]["content"][0]["audio"]) for r in replies[3:]]
    assert kept == [preamble_audio(300)[: 120 * 48], pcm(1000)[: 640 * 48]]


async def test_preamble_cancel_mid_answer_stops_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    audio = pcm(3000)
    with trio.fail_after(60):
        sim = Simulator(api_key=KEY, pace=1.0, preamble_ms=300)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await commit_turn(ws, audio)
            await send(ws, {"type": "response.create"})
            began = trio.current_time()
            streamed: list[dict[str, Any]] = []
            for _ in range(3 + 4):  # the preamble's three 100 ms deltas, four of the answer's
                streamed += await recv_until(ws, "response.output_audio.delta")
            cancelled_at = trio.current_time()
            answer = streamed[-1]["item_id"]
            await send(ws, {"type": "response.cancel", "response_id": "resp_0001"})
            closing = await recv_until(ws, "rate_limits.updated")
            finished_at = trio.current_time()
            # The client played 250 ms of the answer: it truncates the item that was playing.
            await send(ws, truncate(answer, 250))
            truncated = await recv(ws)

    assert cancelled_at - began == pytest.approx(0.6)
    assert finished_at == cancelled_at
    assert kinds(closing) == [*ITEM_STEPS[3:], "response.done", "rate_limits.updated"]
    assert {e["item_id"] for e in closing if "item_id" in e} == {answer}
    assert {e["output_index"] for e in closing if "output_index" in e} == {1}
    done = closing[-2]["response"]
    assert (done["status"], done["status_details"]) == (
        "cancelled",
        {"type": "cancelled", "reason": "client_cancelled"},
    )
    assert [item["status"] for item in done["output"]] == ["completed", "incomplete"]
    (reply,) = sim.connections[0].reply_audio
    answered = deltas(of_item(streamed + closing, answer))
    assert reply == preamble_audio(300) + answered
    assert 0 < len(answered) < len(audio)
    assert audio.startswith(answered)
    assert (truncated["type"], truncated["item_id"]) == ("conversation.item.truncated", answer)


async def test_preamble_cancelled_before_the_answer_starts_no_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        sim = Simulator(api_key=KEY, pace=1.0, preamble_ms=300)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await commit_turn(ws, pcm(1000))
            await send(ws, {"type": "response.create"})
            streamed = await recv_until(ws, "response.output_audio.delta")
            await send(ws, {"type": "response.cancel"})
            closing = await recv_until(ws, "rate_limits.updated")
            next_user_item = await commit_turn(ws, pcm(200))

    events = streamed + closing
    assert kinds(events) == [
        "response.created",
        *ITEM_STEPS,
        "response.done",
        "rate_limits.updated",
    ]
    assert {e["output_index"] for e in events if "output_index" in e} == {0}
    (item,) = closing[-2]["response"]["output"]
    assert (item["id"], item["status"]) == ("item_0002", "incomplete")
    assert next_user_item == "item_0003"  # the answer item never existed
    assert sim.connections[0].reply_audio == [preamble_audio(300)[: 100 * 48]]


async def test_response_fields_omitted_per_connection() -> None:
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY, omit_response_fields=True)
        responses = []
        for omit in (True, False):
            sim.faults.omit_response_fields = omit
            async with open_memory_ws(sim) as ws:
                await recv(ws)
                await send(ws, {"type": "response.create"})
                responses.append(await recv_until(ws, "rate_limits.updated"))

    for events, omit in zip(responses, (True, False), strict=True):
        created, done = events[0]["response"], events[-2]["response"]
        assert (events[0]["type"], events[-2]["type"]) == ("response.created", "response.done")
        for response, status in [(created, "in_progress"), (done, "completed")]:
            if omit:
                assert "id" not in response
                assert "status" not in response
            else:
                assert (response["id"], response["status"]) == ("resp_0001", status)
            assert response["object"] == "realtime.response"
        assert done["status_details"] is None
        assert done["output"][0]["status"] == "completed"
        assert {e["response_id"] for e in events if "response_id" in e} == {"resp_0001"}
    assert deltas(responses[0]) == deltas(responses[1]) == bytes(500 * 48)


@pytest.mark.parametrize("clear", [False, True])
@pytest.mark.parametrize("failure", ["server_error", "too_short"])
async def test_failed_commit_keeps_the_audio_until_cleared(failure: str, clear: bool) -> None:
    first = pcm(50) if failure == "too_short" else pcm(300)
    second = tone(0.2, seed=3)
    faults = SimFaults(fail_event="input_audio_buffer.commit", fail_count=1)
    with trio.fail_after(5):
        sim = Simulator(api_key=KEY, faults=faults if failure == "server_error" else None)
        async with open_memory_ws(sim) as ws:
            await recv(ws)
            await append(ws, first)
            await send(ws, {"type": "input_audio_buffer.commit", "event_id": "evt_turn1"})
            error = error_of(await recv(ws))
            if clear:
                await send(ws, {"type": "input_audio_buffer.clear"})
                assert (await recv(ws))["type"] == "input_audio_buffer.cleared"
            await append(ws, second)
            await send(ws, {"type": "input_audio_buffer.commit", "event_id": "evt_turn2"})
            item_id = (await recv_until(ws, "conversation.item.done"))[0]["item_id"]
            await send(ws, {"type": "conversation.item.retrieve", "item_id": item_id})
            retrieved = await recv(ws)

    expected = second if clear else first + second
    assert error["event_id"] == "evt_turn1"
    if failure == "server_error":
        assert (error["type"], error["code"]) == ("server_error", None)
    else:
        assert error["code"] == "input_audio_buffer_commit_empty"
    assert base64.b64decode(retrieved["item"]["content"][0]["audio"]) == expected
    conn = sim.connections[0]
    assert conn.committed_audio == [expected]
    assert [e["type"] for e in conn.received].count("input_audio_buffer.commit") == 2
