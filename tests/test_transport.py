"""The transport on real loopback sockets: timeouts, reconnects and what each failure means.

Timeouts and backoff run on trio's ``autojump_clock``: virtual time, no waiting.
"""

from __future__ import annotations

import itertools
import json
from functools import partial

import pytest
import trio
import trio.testing
import trio_websocket as tw

from tests.conftest import SIM_KEY
from tests.netproxy import NetProxy
from voiced import protocol as p
from voiced.auth import ApiKey
from voiced.errors import ServerUnreachable, TransportError
from voiced.messages import Connected, Disconnected, TransportNews
from voiced.sim import Simulator
from voiced.stages.transport import Endpoint, LinkStats, Renew, run_transport

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
    endpoint = Endpoint(
        f"ws://127.0.0.1:{port}/v1/realtime", "m", ApiKey(SIM_KEY), connect_timeout=5
    )
    _out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](1)
    in_send, in_recv = trio.open_memory_channel[TransportNews](8)
    started = trio.current_time()
    with (
        trio.fail_after(60),
        pytest.raises(
            ServerUnreachable, match=r"^cannot reach ws://127.0.0.1:\d+/v1/realtime: timed out$"
        ),
    ):
        await run_transport(endpoint, HELLO, out_recv, in_send, stats=LinkStats(), reconnect=False)
    assert trio.current_time() - started == pytest.approx(5)
    assert isinstance(in_recv.receive_nowait(), Disconnected)


async def test_reconnects_with_backoff(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = Simulator(api_key=SIM_KEY)
    sim.faults.handshake_status = 503
    port = await nursery.start(sim.serve)
    endpoint = Endpoint(f"ws://127.0.0.1:{port}/v1/realtime", "m", ApiKey(SIM_KEY))
    out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](1)
    in_send, in_recv = trio.open_memory_channel[TransportNews](64)
    stats = LinkStats()
    nursery.start_soon(
        lambda: run_transport(endpoint, HELLO, out_recv, in_send, stats=stats, reconnect=True)
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
    # About 0.5 s, then 1 s between tries (each up to 20 % shorter, so kiosks that lost the same
    # server do not retry in lockstep): doubling backoff, no busy loop.
    first, second = (b - a for a, b in itertools.pairwise(failures))
    assert 0.4 <= first <= 0.5
    assert 0.8 <= second <= 1.0
    assert stats.connects == 1
    assert len(sim.connections) == 1
    await out_send.aclose()  # shutting down: the transport closes the socket cleanly
    with trio.fail_after(10):
        await sim.connections[0].closed.wait()
    assert sim.connections[0].close_code is None  # the client closed it


class CountingKey:
    """Credentials that count how often the transport asked for them."""

    def __init__(self) -> None:
        self.asked = 0

    async def headers(self) -> list[tuple[bytes, bytes]]:
        self.asked += 1
        return await ApiKey(SIM_KEY).headers()

    def describe(self) -> str:
        return "a counting test key"


async def test_backoff_starts_again_after_a_healthy_connection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Outage 2 waits as little as outage 1 did: the delay resets after a lasting connection,
    and the credentials are asked for before every single try."""
    sim = Simulator(api_key=SIM_KEY)
    sim.faults.expire_after = 60
    sim.faults.handshake_status = 503
    port = await nursery.start(sim.serve)
    key = CountingKey()
    endpoint = Endpoint(f"ws://127.0.0.1:{port}/v1/realtime", "m", key)
    _out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](1)
    in_send, in_recv = trio.open_memory_channel[TransportNews](64)
    nursery.start_soon(
        lambda: run_transport(endpoint, HELLO, out_recv, in_send, stats=LinkStats(), reconnect=True)
    )
    tries: list[float] = []  # when each try ended (failed, or the connection ended)
    with trio.fail_after(600):
        async for news in in_recv:
            if isinstance(news, Disconnected):
                tries.append(trio.current_time())
                if len(tries) == 4:  # outage 1: waits of 0.5, 1 and 2 s; the next would be 4
                    sim.faults.handshake_status = None
                elif len(tries) == 5:  # the session expired after 60 healthy seconds
                    sim.faults.handshake_status = 503  # outage 2 begins
                elif len(tries) == 6:
                    break
    waits = [b - a for a, b in itertools.pairwise(tries)]
    assert waits[2] >= 1.6  # outage 1 backed off
    assert 0.4 <= waits[4] <= 0.5  # outage 2 starts from the first delay again
    assert key.asked == 6


async def test_renew_closes_and_opens_a_fresh_session_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sim = Simulator(api_key=SIM_KEY)
    port = await nursery.start(sim.serve)
    endpoint = Endpoint(f"ws://127.0.0.1:{port}/v1/realtime", "m", ApiKey(SIM_KEY))
    out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](4)
    in_send, in_recv = trio.open_memory_channel[TransportNews](64)
    nursery.start_soon(
        lambda: run_transport(endpoint, HELLO, out_recv, in_send, stats=LinkStats(), reconnect=True)
    )
    news: list[object] = []
    with trio.fail_after(30):
        async for item in in_recv:
            if isinstance(item, Connected | Disconnected):
                news.append(item)
                if len(news) == 1:
                    renewed_at = trio.current_time()
                    await out_send.send(Renew())
                if len(news) == 3:
                    break
    first, closed, second = news
    assert isinstance(first, Connected)
    assert isinstance(second, Connected)
    assert closed == Disconnected(None)  # on purpose: no error, no backoff
    assert first.session_id != second.session_id
    assert trio.current_time() - renewed_at < 0.1
    assert len(sim.connections) == 2
    await sim.connections[0].closed.wait()
    assert sim.connections[0].close_code is None  # the client closed the old one
    await out_send.aclose()


async def _until(in_recv: trio.MemoryReceiveChannel[TransportNews], kind: type) -> TransportNews:
    async for news in in_recv:
        if isinstance(news, kind):
            return news
    raise AssertionError("the transport ended")


async def test_a_dead_link_is_noticed_within_ten_seconds(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The cable is pulled: no close, no error, just silence. A ping that gets no pong says so
    within 10 s, and once the network is back the daemon is connected again."""
    sim = Simulator(api_key=SIM_KEY)
    proxy = NetProxy(await nursery.start(sim.serve))
    await nursery.start(proxy.serve)
    endpoint = Endpoint(proxy.url, "m", ApiKey(SIM_KEY))
    _out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](1)
    in_send, in_recv = trio.open_memory_channel[TransportNews](64)
    nursery.start_soon(
        lambda: run_transport(endpoint, HELLO, out_recv, in_send, stats=LinkStats(), reconnect=True)
    )
    with trio.fail_after(120):
        await _until(in_recv, p.SessionUpdated)
        await trio.sleep(60)  # a quiet minute of pings answered: nothing happens
        proxy.cut()
        cut = trio.current_time()
        lost = await _until(in_recv, Disconnected)
        noticed = trio.current_time() - cut
        proxy.heal()
        await _until(in_recv, p.SessionUpdated)
    assert isinstance(lost, Disconnected)
    assert str(lost.error) == f"{proxy.url} did not answer a ping in 5 s"
    assert 5 <= noticed <= 10
    assert proxy.accepted == 2


@pytest.mark.parametrize(
    ("says", "error"),
    [
        ([], r"^no session.created from ws://127.0.0.1:\d+/v1/realtime in 3 s$"),
        ([{"type": "session.created", "session": {}}], r"^no session.updated from .* in 3 s$"),
        (
            [
                {"type": "session.created", "session": {}},
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "bad voice"},
                },
            ],
            r"^the server refused the session configuration: bad voice$",
        ),
    ],
)
async def test_a_server_that_accepts_and_then_says_nothing_is_not_waited_on(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, says: list[object], error: str
) -> None:
    async def mute(request: tw.WebSocketRequest) -> None:
        ws = await request.accept()
        for event in says:
            await ws.send_message(json.dumps(event))
        await trio.sleep_forever()

    server = await nursery.start(
        partial(tw.serve_websocket, mute, "127.0.0.1", 0, ssl_context=None)
    )
    port = server.port
    endpoint = Endpoint(
        f"ws://127.0.0.1:{port}/v1/realtime", "m", ApiKey(SIM_KEY), connect_timeout=3
    )
    _out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](1)
    in_send, _in_recv = trio.open_memory_channel[TransportNews](64)
    with trio.fail_after(30), pytest.raises(TransportError, match=error):
        await run_transport(endpoint, HELLO, out_recv, in_send, stats=LinkStats(), reconnect=False)


async def test_a_server_that_closes_before_the_upgrade_fails_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A proxy with no backend accepts TCP and closes it: that is an answer, not a timeout."""

    async def close(stream: trio.SocketStream) -> None:
        await stream.aclose()

    (listener,) = await nursery.start(partial(trio.serve_tcp, close, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    endpoint = Endpoint(f"ws://127.0.0.1:{port}/v1/realtime", "m", ApiKey(SIM_KEY))
    _out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](1)
    in_send, _in_recv = trio.open_memory_channel[TransportNews](8)
    started = trio.current_time()
    with pytest.raises(ServerUnreachable, match="closed the connection during the handshake"):
        await run_transport(endpoint, HELLO, out_recv, in_send, stats=LinkStats(), reconnect=False)
    assert trio.current_time() - started < 1  # not the 10 s connect timeout


async def test_a_server_that_resets_before_the_upgrade_fails_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A reset (the simulator's ``refuse_connections``) is an answer too, not a timeout."""
    sim = Simulator(api_key=SIM_KEY)
    sim.faults.refuse_connections = 1
    port = await nursery.start(sim.serve)
    endpoint = Endpoint(f"ws://127.0.0.1:{port}/v1/realtime", "m", ApiKey(SIM_KEY))
    _out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](1)
    in_send, _in_recv = trio.open_memory_channel[TransportNews](8)
    started = trio.current_time()
    with pytest.raises(ServerUnreachable, match=r"^cannot reach ws://127.0.0.1:\d+/v1/realtime: "):
        await run_transport(endpoint, HELLO, out_recv, in_send, stats=LinkStats(), reconnect=False)
    assert trio.current_time() - started < 1  # not the 10 s connect timeout
