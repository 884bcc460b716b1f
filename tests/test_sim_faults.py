"""The simulator's fault switches, and a simulator that records nothing (the daemon's).

Every fault is shown with a raw trio-websocket client over loopback TCP (the helpers of
``test_sim.py``): the client sees exactly what the switch promises, and the simulator's record
agrees. Waiting for nothing to arrive (a stall, a silent server) runs on ``autojump_clock``, so
virtual time makes it instant. ``record=False`` is checked by sizes: after hundreds of turns and
dozens of connections the simulator holds what it held after the first few.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection

from tests.conftest import SIM_KEY
from tests.test_sim import (
    BYTES_PER_MS,
    append,
    auth,
    deltas,
    open_tcp_ws,
    pcm,
    recv,
    recv_until,
    rejected_upgrade,
    send,
)
from voiced import cli
from voiced.sim import SimFaults, Simulator
from voiced.sim.faults import GARBAGE_KINDS, NESTED_LEVELS, garbage
from voiced.sim.mint import Minter
from voiced.sim.session import UNRECORDED_MAX_ITEMS, SimSession

RESOURCE = "/v1/realtime?model=gpt-realtime"
DELTA = "response.output_audio.delta"
ABNORMAL = 1006
"""What a WebSocket reports when its TCP stream ended with no close frame."""


async def serve(nursery: trio.Nursery, sim: Simulator) -> int:
    port: int = await nursery.start(sim.serve)
    return port


def connect(port: int) -> AbstractAsyncContextManager[WebSocketConnection]:
    """A trio-websocket client on loopback, with ``SIM_KEY``."""
    return open_tcp_ws(port, RESOURCE, auth(SIM_KEY))


def faulted(**switches: Any) -> Simulator:
    return Simulator(api_key=SIM_KEY, faults=SimFaults(**switches))


async def turn(ws: WebSocketConnection, audio: bytes) -> list[dict[str, Any]]:
    """Commit ``audio``, ask for a response, and return its events up to ``response.done``."""
    await append(ws, audio)
    await send(ws, {"type": "input_audio_buffer.commit"})
    await recv_until(ws, "conversation.item.done")
    await send(ws, {"type": "response.create"})
    return await recv_until(ws, "rate_limits.updated")


async def until_closed(ws: WebSocketConnection) -> tuple[list[dict[str, Any]], ConnectionClosed]:
    """Every event until the connection ends, and how it ended."""
    events = []
    while True:
        try:
            events.append(await recv(ws))
        except ConnectionClosed as closed:
            return events, closed


async def assert_reset(port: int) -> None:
    """A TCP connection to ``port`` is reset before anything comes from it: at the first read,
    or so soon that the connect itself reports it."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError as exc:
        failed = exc
    else:
        async with stream:
            with pytest.raises(trio.BrokenResourceError) as broken:
                await stream.receive_some(100)
        assert isinstance(broken.value.__cause__, ConnectionResetError)
        return
    assert isinstance(failed.__cause__, ExceptionGroup)
    (attempt,) = failed.__cause__.exceptions
    assert isinstance(attempt, ConnectionResetError)


def close_code(closed: ConnectionClosed) -> int | None:
    return None if closed.reason is None else closed.reason.code


def sizes(session: SimSession) -> dict[str, int]:
    """How much a session holds."""
    items = session.conversation.items
    return {
        "received": len(session.received),
        "sent": len(session.sent),
        "committed_audio": len(session.committed_audio),
        "runs": len(session.runs),
        "reply_audio": len(session.reply_audio),
        "items": len(items),
        "item_audio_bytes": sum(len(item.audio) for item in items),
    }


# --------------------------------------------------------------------------- record=False


async def test_unrecorded_session_stays_the_same_size_over_many_turns(
    nursery: trio.Nursery,
) -> None:
    sim = Simulator(api_key=SIM_KEY, record=False)
    port = await serve(nursery, sim)
    snapshots = []
    with trio.fail_after(30):
        async with connect(port) as ws:
            await recv(ws)
            (conn,) = sim.open_connections
            for number in range(1, 301):
                audio = pcm(200 + number % 7 * 10)
                response = await turn(ws, audio)
                assert deltas(response) == audio  # still the echo, without keeping it
                if number in (UNRECORDED_MAX_ITEMS // 2, 150, 300):
                    snapshots.append(sizes(conn.session))
            assert conn.session.active is None  # the finished response is let go
        await conn.closed.wait()

    assert sim.connections == []
    assert sim.open_connections == []
    assert snapshots[0]["items"] == UNRECORDED_MAX_ITEMS  # 2 items a turn, capped
    assert snapshots[0] == snapshots[1] == snapshots[2]
    assert snapshots[2] == {
        "received": 0,
        "sent": 0,
        "committed_audio": 0,
        "runs": 0,
        "reply_audio": 0,
        "items": UNRECORDED_MAX_ITEMS,
        "item_audio_bytes": 0,
    }
    assert conn.session.conversation.items[-1].audio_bytes == len(pcm(200 + 300 % 7 * 10))


async def test_unrecorded_simulator_keeps_no_connection(nursery: trio.Nursery) -> None:
    sim = Simulator(api_key=SIM_KEY, record=False)
    port = await serve(nursery, sim)
    with trio.fail_after(30):
        for _ in range(40):
            async with connect(port) as ws:
                await recv(ws)
                (conn,) = sim.open_connections
                await turn(ws, pcm(150))
            await conn.closed.wait()
            assert sim.open_connections == []

    assert sim.connections == []
    assert sim.accepted == 40


async def test_unrecorded_items_keep_their_length_for_truncate_and_retrieve(
    nursery: trio.Nursery,
) -> None:
    sim = Simulator(api_key=SIM_KEY, record=False)
    port = await serve(nursery, sim)
    with trio.fail_after(10):
        async with connect(port) as ws:
            await recv(ws)
            response = await turn(ws, pcm(1000))
            item_id = response[1]["item"]["id"]
            too_long = {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 1001,
            }
            await send(ws, too_long)
            refused = await recv(ws)
            await send(ws, {**too_long, "audio_end_ms": 400})
            truncated = await recv(ws)
            await send(ws, {"type": "conversation.item.retrieve", "item_id": item_id})
            retrieved = await recv(ws)

    assert refused["type"] == "error"
    assert refused["error"]["param"] == "audio_end_ms"
    assert truncated["type"] == "conversation.item.truncated"
    audio = base64.b64decode(retrieved["item"]["content"][0]["audio"])
    assert audio == bytes(400 * BYTES_PER_MS)  # silence of the length kept


async def test_recorded_simulator_keeps_everything(nursery: trio.Nursery) -> None:
    sim = Simulator(api_key=SIM_KEY)  # record=True, the default
    port = await serve(nursery, sim)
    audios = [pcm(200 + 10 * n) for n in range(5)]
    with trio.fail_after(10):
        for _ in range(2):
            async with connect(port) as ws:
                await recv(ws)
                for audio in audios:
                    await turn(ws, audio)
        for conn in sim.connections:
            await conn.closed.wait()

    assert len(sim.connections) == 2
    assert sim.open_connections == []
    for conn in sim.connections:
        assert conn.committed_audio == audios
        assert conn.reply_audio == audios
        assert len(conn.session.runs) == 5
        assert [item.pcm() for item in conn.session.conversation.items] == [
            audio for audio in audios for _ in range(2)
        ]
        appends = sum(-(-len(audio) // (100 * BYTES_PER_MS)) for audio in audios)  # rounded up
        assert len(conn.received) == appends + 2 * len(audios)
        assert conn.sent[-1]["type"] == "rate_limits.updated"


def test_unrecorded_minter_forgets_expired_secrets() -> None:
    now = [1_000_000.0]
    minter = Minter(api_key=SIM_KEY, clock=lambda: now[0], record=False)
    headers = {"authorization": f"Bearer {SIM_KEY}"}
    body = json.dumps({"expires_after": {"anchor": "created_at", "seconds": 10}}).encode()
    for _ in range(3):
        assert minter.mint(headers, body).status == 200
    assert len(minter.secrets) == 3
    now[0] += 10
    assert minter.mint(headers, body).status == 200
    assert len(minter.secrets) == 1
    assert minter.mints == []


# --------------------------------------------------------------------------- faults


async def test_drop_after_deltas_resets_mid_reply(nursery: trio.Nursery) -> None:
    sim = faulted(drop_after_deltas=3)
    port = await serve(nursery, sim)
    with trio.fail_after(10):
        async with connect(port) as ws:
            await recv(ws)
            await append(ws, pcm(1000))  # ten deltas' worth
            await send(ws, {"type": "input_audio_buffer.commit"})
            await recv_until(ws, "conversation.item.done")
            await send(ws, {"type": "response.create"})
            events, closed = await until_closed(ws)
        (conn,) = sim.connections
        await conn.closed.wait()

    kinds = [event["type"] for event in events]
    assert kinds.count(DELTA) == 3
    assert kinds[-2:] == [DELTA, "response.output_audio_transcript.delta"]
    assert "response.done" not in kinds
    assert close_code(closed) == ABNORMAL  # no close frame came
    assert conn.aborted
    assert conn.close_code is None


async def test_drop_after_deltas_counts_each_response(nursery: trio.Nursery) -> None:
    sim = faulted(drop_after_deltas=3)
    port = await serve(nursery, sim)
    with trio.fail_after(10):
        async with connect(port) as ws:
            await recv(ws)
            short = await turn(ws, pcm(200))  # two deltas: not dropped
            again = await turn(ws, pcm(200))
            await send(ws, {"type": "response.create"})  # two more: still two per response
            third = await recv_until(ws, "response.done")
    assert [len(deltas(r)) for r in (short, again, third)] == [200 * BYTES_PER_MS] * 3
    assert not sim.connections[0].aborted


async def test_drop_after_appends_resets_mid_capture(nursery: trio.Nursery) -> None:
    sim = faulted(drop_after_appends=5)
    port = await serve(nursery, sim)
    with trio.fail_after(10):
        async with connect(port) as ws:
            await recv(ws)
            await append(ws, pcm(400))  # four appends: the link holds
            await send(ws, {"type": "input_audio_buffer.clear"})
            assert (await recv(ws))["type"] == "input_audio_buffer.cleared"
            await append(ws, pcm(100))  # the fifth
            events, closed = await until_closed(ws)
        (conn,) = sim.connections
        await conn.closed.wait()

    assert events == []
    assert close_code(closed) == ABNORMAL
    assert conn.aborted
    assert [e["type"] for e in conn.received].count("input_audio_buffer.append") == 5


async def test_stall_after_deltas_goes_quiet_but_answers_pings(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = faulted(stall_after_deltas=2)
    port = await serve(nursery, sim)
    with trio.fail_after(600):
        async with connect(port) as ws:
            await recv(ws)
            await append(ws, pcm(1000))
            await send(ws, {"type": "input_audio_buffer.commit"})
            await recv_until(ws, "conversation.item.done")
            await send(ws, {"type": "response.create"})
            streamed = await recv_until(ws, DELTA)
            streamed += await recv_until(ws, DELTA)
            streamed.append(await recv(ws))  # the second delta's transcript word
            response_id = streamed[0]["response"]["id"]
            with trio.move_on_after(60) as quiet:
                streamed.append(await recv(ws))
            await ws.ping()  # answered: the socket is alive
            await send(ws, {"type": "response.cancel", "response_id": response_id})
            with trio.move_on_after(60) as still_quiet:
                streamed.append(await recv(ws))
            await send(ws, {"type": "input_audio_buffer.clear"})
            cleared = await recv(ws)  # other events are still answered

    assert quiet.cancelled_caught
    assert still_quiet.cancelled_caught
    assert [e["type"] for e in streamed].count(DELTA) == 2
    assert streamed[-1]["type"] == "response.output_audio_transcript.delta"
    assert cleared["type"] == "input_audio_buffer.cleared"
    assert sim.connections[0].sent[-1]["type"] == "input_audio_buffer.cleared"


async def test_silent_open_accepts_and_never_speaks(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = faulted(silent_open=True)
    port = await serve(nursery, sim)
    with trio.fail_after(600):
        async with connect(port) as ws:  # the upgrade succeeds
            with trio.move_on_after(60) as quiet:
                await recv(ws)
            await ws.ping()
            await send(ws, {"type": "session.update", "session": {"type": "realtime"}})
            with trio.move_on_after(60) as still_quiet:
                await recv(ws)
        (conn,) = sim.connections
        await conn.closed.wait()

    assert quiet.cancelled_caught
    assert still_quiet.cancelled_caught
    assert conn.session.sent == []
    assert conn.session.config == {}  # never opened
    assert conn.close_code is None


async def test_garbage_every_rotates_through_every_kind(nursery: trio.Nursery) -> None:
    sim = faulted(garbage_every=2)
    port = await serve(nursery, sim)
    frames: list[str | bytes] = []
    audio = pcm(1000)
    with trio.fail_after(10):
        async with connect(port) as ws:
            frames.append(await ws.get_message())  # session.created
            await append(ws, audio)
            await send(ws, {"type": "input_audio_buffer.commit"})
            await send(ws, {"type": "response.create"})
            while len(frames) < 3 * len(GARBAGE_KINDS) or not _is_done(frames[-1]):
                frames.append(await ws.get_message())

    # Two events, one garbage frame, two events, ...
    junk = frames[2::3]
    events = [json.loads(f) for i, f in enumerate(frames) if i % 3 != 2]
    assert [e["event_id"] for e in events] == [f"event_{n:04d}" for n in range(1, len(events) + 1)]
    assert junk == [garbage(n) for n in range(len(junk))]
    assert sim.connections[0].garbage_sent == len(junk)
    assert deltas(events) == audio  # the session went on regardless

    not_json, array, no_type, unknown, missing, binary, nested = junk[:7]
    assert isinstance(not_json, str)
    with pytest.raises(ValueError, match="Unterminated string"):
        json.loads(not_json)
    assert isinstance(json.loads(array), list)
    assert "type" not in json.loads(no_type)
    assert json.loads(unknown)["type"] == "response.garbage.unknown"
    incomplete = json.loads(missing)
    assert incomplete["type"] == DELTA
    assert not {"delta", "item_id", "response_id"} & set(incomplete)
    assert isinstance(binary, bytes)
    assert isinstance(nested, str)
    assert nested == '{"a":' * NESTED_LEVELS + "0" + "}" * NESTED_LEVELS
    with pytest.raises(RecursionError):
        json.loads(nested)
    assert junk[7] == not_json  # and round again


def _is_done(frame: str | bytes) -> bool:
    try:
        return isinstance(frame, str) and json.loads(frame).get("type") == "rate_limits.updated"
    except (ValueError, RecursionError, AttributeError):
        return False


async def test_refuse_connections_resets_the_next_attempts(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = faulted(refuse_connections=2)
    port = await serve(nursery, sim)
    with trio.fail_after(600):
        await assert_reset(port)
        assert (sim.refused, sim.faults.refuse_connections) == (1, 1)
        # trio-websocket's client does not notice a reset during its handshake (0.12.2): only
        # a timeout ends the attempt (voiced's transport watches the stream for it instead).
        with trio.move_on_after(10) as hung:
            async with connect(port):
                pass
        assert hung.cancelled_caught
        assert (sim.refused, sim.faults.refuse_connections) == (2, 0)
        async with connect(port) as ws:  # the third gets through
            created = await recv(ws)

    assert created["type"] == "session.created"
    assert len(sim.connections) == 1  # the refused ones never got as far as a connection


async def test_handshake_status_after_a_key_rotation(nursery: trio.Nursery) -> None:
    """A 401 at the upgrade for new connections; the one already open carries on."""
    sim = Simulator(api_key=SIM_KEY)
    port = await serve(nursery, sim)
    with trio.fail_after(10):
        async with connect(port) as ws:
            await recv(ws)
            sim.faults.handshake_status = 401
            rejected = await rejected_upgrade(port, RESOURCE)
            response = await turn(ws, pcm(200))
    assert rejected.status_code == 401
    assert deltas(response) == pcm(200)


async def test_expire_after_over_loopback(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = faulted(expire_after=30.0)
    port = await serve(nursery, sim)
    with trio.fail_after(600):
        async with connect(port) as ws:
            began = trio.current_time()
            await recv(ws)
            events, closed = await until_closed(ws)
    assert trio.current_time() - began == pytest.approx(30.0)
    assert [e["error"]["code"] for e in events] == ["session_expired"]
    assert close_code(closed) == 1001


# --------------------------------------------------------------------------- voiced sim


def test_every_fault_flag_names_a_fault() -> None:
    args = cli._parser().parse_args(
        [
            "sim",
            *("--refuse-connections", "2", "--handshake-status", "401", "--silent-open"),
            *("--drop-after-appends", "3", "--drop-after-deltas", "4"),
            *("--stall-after-deltas", "5", "--garbage-every", "6", "--expire-after", "7.5"),
            *("--fail-event", "response.create", "--fail-count", "1", "--record"),
        ]
    )
    fields = set(SimFaults.__dataclass_fields__)
    given = {name: value for name, value in vars(args).items() if name in fields}
    assert SimFaults(**given) == SimFaults(
        refuse_connections=2,
        handshake_status=401,
        silent_open=True,
        drop_after_appends=3,
        drop_after_deltas=4,
        stall_after_deltas=5,
        garbage_every=6,
        expire_after=7.5,
        fail_event="response.create",
        fail_count=1,
    )
    assert args.record
    assert not cli._parser().parse_args(["sim"]).record


async def test_voiced_sim_flags_reach_the_server() -> None:
    """``voiced sim --port 0`` with faults, as a process: its log names the port and the
    faults; the first attempt is refused, the next is accepted and never spoken to."""
    argv = [sys.executable, "-m", "voiced", "sim", "--port", "0", "--key", SIM_KEY]
    argv += ["--refuse-connections", "1", "--silent-open"]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            run = partial(trio.run_process, argv, stderr=subprocess.PIPE, check=False)
            proc: trio.Process = await nursery.start(run)
            assert proc.stderr is not None
            log = b""
            while not (faults := re.search(rb"simulator faults: (.*)\n", log)):
                log += await proc.stderr.receive_some(4096)
            port = re.search(rb"ws://127\.0\.0\.1:(\d+)/", log)
            assert port is not None
            await assert_reset(int(port.group(1)))
            async with connect(int(port.group(1))) as ws:
                await ws.ping()  # accepted; a ping is all it answers
                while b"sim connection 1 stays silent" not in log:
                    log += await proc.stderr.receive_some(4096)
            proc.terminate()
    assert b"sim refused a connection (fault; 0 more to refuse)" in log
    assert faults.group(1) == b"silent_open=True, refuse_connections=1; not recording"
