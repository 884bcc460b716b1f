"""A daemon that is never down for long, in-process against the simulator on loopback, on trio's
virtual clock: sessions renewed before the server's limit, and a link that breaks mid-turn."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from tests.conftest import SIM_KEY
from tests.test_auth_e2e import first_ready
from tests.test_daemon import daemon
from voiced.events import ConnectionChanged, Event
from voiced.sim import Simulator


async def connection_events(events: trio.abc.ReceiveChannel[Event], n: int) -> list[float]:
    """When each of the next ``n`` connection changes happened."""
    times = []
    async for event in events:
        if isinstance(event, ConnectionChanged):
            times.append(trio.current_time())
            if len(times) == n:
                return times
    raise AssertionError("events ended")


async def test_an_idle_daemon_renews_its_session_before_the_limit(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The server ends every session at its ``expires_at`` (close 1001); the daemon takes a
    fresh one before, while idle (five minutes before an hour's limit; half way through this
    ten minutes'), so it never meets the wall."""
    sim = Simulator(api_key=SIM_KEY)
    sim.faults.expire_after = 600
    port = await nursery.start(sim.serve)
    with trio.fail_after(3600):
        async with daemon(tmp_path, f"ws://127.0.0.1:{port}/v1/realtime") as (pipe, _, events):
            await first_ready(pipe, events)
            start = trio.current_time()
            # down (renewing), up, ready; and again an hour later
            times = await connection_events(events, 6)
    assert [round((t - start) / 60) for t in times[::3]] == [5, 10]
    assert len(sim.connections) == 3
    for conn in sim.connections[:2]:
        assert conn.close_code is None  # the daemon closed it: the server never had to
        assert not any(e.get("error", {}).get("code") == "session_expired" for e in conn.sent)
