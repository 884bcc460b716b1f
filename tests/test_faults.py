"""The state machine never wedges: every state of a turn x every way the link breaks, the daemon
in-process against the simulator behind a loopback proxy that breaks the network, on trio's
virtual clock. In each case the turn in flight ends exactly once (answered in the end, or
``lost`` with the reason), the daemon comes back by itself, and the next turn is answered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.conftest import SIM_KEY
from tests.netproxy import NetProxy
from tests.test_auth_e2e import first_ready, until_ready
from tests.test_daemon import daemon, elapse, next_event, next_state
from voiced.events import Event, TurnEnded
from voiced.sim import Simulator
from voiced.turn import State

Events = trio.abc.ReceiveChannel[Event]


async def killed(sim: Simulator, proxy: NetProxy) -> None:
    """The server process dies and is back two seconds later."""
    proxy.refuse = True
    proxy.drop()
    await elapse(2.0)
    proxy.refuse = False


async def dead(sim: Simulator, proxy: NetProxy) -> None:
    """Every byte stops for 15 s with the sockets left open: only a ping can tell."""
    proxy.cut()
    await elapse(15.0)
    proxy.heal()


async def rejected(sim: Simulator, proxy: NetProxy) -> None:
    """The link drops and the server refuses the key for a while (a key rotation), then takes
    it again: fatal, retried only after a minute."""
    sim.faults.handshake_status = 401
    proxy.drop()
    await elapse(5.0)
    sim.faults.handshake_status = None


FAULTS: dict[str, Callable[[Simulator, NetProxy], Awaitable[None]]] = {
    "killed": killed,
    "dead": dead,
    "rejected": rejected,
}


async def reach(state: State, http: object, events: Events) -> None:
    """Bring the daemon from idle to ``state`` (a one-second question; the answer streams in
    real time after the server thinks for half a second)."""
    import httpx

    assert isinstance(http, httpx.AsyncClient)
    if state is State.IDLE:
        return
    assert (await http.post("/start")).status_code == 202
    assert await next_state(events) is State.LISTENING
    await elapse(1.0)
    if state is State.LISTENING:
        return
    assert (await http.post("/commit")).status_code == 202
    assert await next_state(events) is State.THINKING
    if state is State.THINKING:
        return
    assert await next_state(events) is State.SPEAKING


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("state", [State.IDLE, State.LISTENING, State.THINKING, State.SPEAKING])
async def test_every_state_survives_every_fault(
    nursery: trio.Nursery,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    state: State,
    fault: str,
) -> None:
    sim = Simulator(api_key=SIM_KEY, pace=1.0, think=0.5)
    proxy = NetProxy(await nursery.start(sim.serve))
    await nursery.start(proxy.serve)
    with trio.fail_after(600):
        async with daemon(tmp_path, proxy.url, preroll_ms=0) as (pipe, http, events):
            await first_ready(pipe, events)
            await reach(state, http, events)
            await FAULTS[fault](sim, proxy)
            if state is State.LISTENING:
                assert (await http.post("/commit")).status_code == 202  # the person lets go
            ended = []
            if state is not State.IDLE:
                ended.append(await next_event(events, TurnEnded))
                assert ended[0].turn == 1
                assert ended[0].outcome in ("completed", "lost")
                if ended[0].outcome == "lost":
                    assert ended[0].reason
            if not pipe.status()["ready"]:
                await until_ready(events)
            # The next turn is answered, and nothing more of turn 1 turns up.
            assert (await http.post("/start")).status_code == 202
            await elapse(0.5)
            assert (await http.post("/commit")).status_code == 202
            after = await next_event(events, TurnEnded)
            assert (after.turn, after.outcome) == (len(ended) + 1, "completed")
            status = pipe.status()
            assert sum(status["outcomes"].values()) == len(ended) + 1
            assert status["state"] == "idle"
    assert len(sim.connections) >= 2  # the link really broke, and came back
