"""The transport on real loopback sockets: timeouts, reconnects and what each failure means.

Timeouts and backoff run on trio's ``autojump_clock``: virtual time, no waiting.
"""

from __future__ import annotations

import itertools
from functools import partial

import pytest
import trio
import trio.testing

from tests.conftest import SIM_KEY
from voiced import protocol as p
from voiced.errors import ServerUnreachable
from voiced.sim import Simulator
from voiced.stages.transport import Connected, Disconnected, Endpoint, Inbound, Wire, run_transport

HELLO = p.SessionUpdate(voice="marin", instructions="", transcription=None)


async def test_handshake_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A server that accepts TCP but never answers the upgrade is "unreachable: timed out"."""
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    (listener,) = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    endpoint = Endpoint(f"ws://127.0.0.1:{port}/v1/realtime", "m", SIM_KEY, connect_timeout=5)
    _out_send, out_recv = trio.open_memory_channel[p.ClientEvent](1)
    in_send, in_recv = trio.open_memory_channel[Inbound](8)
    started = trio.current_time()
    with (
        trio.fail_after(60),
        pytest.raises(
            ServerUnreachable, match=r"^cannot reach ws://127.0.0.1:\d+/v1/realtime: timed out$"
        ),
    ):
        await run_transport(endpoint, HELLO, out_recv, in_send, wire=Wire(), reconnect=False)
    assert trio.current_time() - started == pytest.approx(5)
    assert isinstance(in_recv.receive_nowait(), Disconnected)


async def test_reconnects_with_backoff(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = Simulator(api_key=SIM_KEY)
    sim.faults.handshake_status = 503
    port = await nursery.start(sim.serve)
    endpoint = Endpoint(f"ws://127.0.0.1:{port}/v1/realtime", "m", SIM_KEY)
    out_send, out_recv = trio.open_memory_channel[p.ClientEvent](1)
    in_send, in_recv = trio.open_memory_channel[Inbound](64)
    wire = Wire()
    nursery.start_soon(
        lambda: run_transport(endpoint, HELLO, out_recv, in_send, wire=wire, reconnect=True)
    )
    with trio.fail_after(120):
        failures = []
        async for news in in_recv:
            if isinstance(news, Disconnected):
                failures.append(trio.current_time())
                if len(failures) == 3:
                    sim.faults.handshake_status = None  # the server is back
            elif isinstance(news, Connected):
                break
    # 0.5 s, then 1 s between tries: doubling backoff, no busy loop.
    assert [round(b - a, 1) for a, b in itertools.pairwise(failures)] == [0.5, 1.0]
    assert wire.connects == 1
    assert len(sim.connections) == 1
    await out_send.aclose()  # shutting down: the transport closes the socket cleanly
    with trio.fail_after(10):
        await sim.connections[0].closed.wait()
    assert sim.connections[0].close_code is None  # the client closed it
