"""Each ``auth.mode`` end to end: the daemon in-process against the simulator over real HTTP and a
real WebSocket on loopback. What the simulator received is the proof: a client secret minted for
each connection in place of the key, Azure's ``api-key`` header, and for a fatal failure the state
``error``, ``/status`` and ``/healthz`` saying so, and a slow retry."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from tests.conftest import SIM_KEY, RunningSim, free_port
from tests.test_daemon import daemon
from voiced.events import ConnectionChanged, DaemonState, Event
from voiced.pipeline import Pipeline

WRONG = "sk-wrong-0123456789"


async def first_ready(pipe: Pipeline, events: trio.abc.ReceiveChannel[Event]) -> None:
    """Until the daemon is ready, whether it was before the test subscribed or after."""
    if not pipe.status()["ready"]:
        await until_ready(events)


async def until_ready(events: trio.abc.ReceiveChannel[Event]) -> ConnectionChanged:
    async for event in events:
        if isinstance(event, ConnectionChanged) and event.ready:
            return event
    raise AssertionError("events ended")


async def first_failure(
    pipe: Pipeline, events: trio.abc.ReceiveChannel[Event]
) -> ConnectionChanged:
    """The first failure to connect, whether it came before the test subscribed (it is in the
    status then) or after."""
    status = pipe.status()
    if status["last_error"] is not None:
        return ConnectionChanged(False, error=status["last_error"], fatal=status["fatal"])
    return await next_failure(events)


async def next_failure(events: trio.abc.ReceiveChannel[Event]) -> ConnectionChanged:
    async for event in events:
        if isinstance(event, ConnectionChanged) and event.error is not None:
            return event
    raise AssertionError("events ended")


async def test_ephemeral_connects_with_a_secret_minted_for_each_connection(
    sim: RunningSim, tmp_path: Path
) -> None:
    auth = f"{{mode: ephemeral, api_key: {SIM_KEY}, ttl_s: 30}}"
    with trio.fail_after(20):
        async with daemon(tmp_path, sim.url, auth=auth) as (pipe, http, events):
            await first_ready(pipe, events)
            (mint,) = sim.sim.mints
            assert mint.seconds == 30
            assert mint.session["model"] == "gpt-realtime-2"
            (conn,) = sim.sim.connections
            assert conn.headers["authorization"] == f"Bearer {mint.value}"
            assert SIM_KEY not in conn.headers["authorization"]  # the key never rides the socket
            assert mint.value.startswith("ek_")
            status = (await http.get("/status")).json()
            assert status["realtime"]["auth"].startswith("client secrets minted at http://")
            await pipe.renew()  # a fresh session: a fresh secret
            await until_ready(events)
            assert len(sim.sim.mints) == 2
            assert (
                sim.sim.connections[1].headers["authorization"]
                == f"Bearer {sim.sim.mints[1].value}"
            )


async def test_azure_sends_the_api_key_header(nursery: trio.Nursery, tmp_path: Path) -> None:
    from voiced.sim import Simulator

    simulator = Simulator(api_key=SIM_KEY)
    port = await nursery.start(simulator.serve)
    url = f"ws://127.0.0.1:{port}/openai/v1/realtime"
    with trio.fail_after(20):
        async with daemon(tmp_path, url, auth=f"{{mode: azure, api_key: {SIM_KEY}}}") as run:
            pipe, _http, events = run
            await first_ready(pipe, events)
    (conn,) = simulator.connections
    assert conn.headers["api-key"] == SIM_KEY
    assert "authorization" not in conn.headers
    assert conn.path.startswith("/openai/v1/realtime?model=")


@pytest.mark.parametrize(
    ("fault", "fatal", "said"),
    [
        ((None, None), True, "OpenAI answered HTTP 401 (invalid_api_key)"),
        ((429, "insufficient_quota"), True, "OpenAI answered HTTP 429 (insufficient_quota)"),
        ((500, None), False, "OpenAI answered HTTP 500"),
        ((429, "rate_limit_exceeded"), False, "OpenAI answered HTTP 429 (rate_limit_exceeded)"),
    ],
)
async def test_a_refused_mint_is_fatal_or_transient_by_what_it_says(
    sim: RunningSim,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    fault: tuple[int | None, str | None],
    fatal: bool,
    said: str,
) -> None:
    status_code, code = fault
    key = WRONG if status_code is None else SIM_KEY
    sim.sim.faults.mint_status, sim.sim.faults.mint_code = status_code, code
    auth = f"{{mode: ephemeral, api_key: {key}}}"
    with trio.fail_after(600):
        async with daemon(tmp_path, sim.url, auth=auth) as (pipe, http, events):
            failure = await first_failure(pipe, events)
            assert failure.fatal is fatal
            assert (failure.error or "").startswith(said)
            await trio.testing.wait_all_tasks_blocked()
            status = (await http.get("/status")).json()
            assert status["fatal"] is fatal
            shown = DaemonState("error" if fatal else "offline", failure.error)
            assert (status["shown"]["state"], status["shown"]["reason"]) == (
                shown.state,
                shown.reason,
            )
            assert (await http.get("/healthz")).status_code == 503
            # The next try: within seconds for a transient failure, a minute or more for a
            # fatal one.
            before = trio.current_time()
            await next_failure(events)
            waited = trio.current_time() - before
            assert waited >= 48 if fatal else waited <= 1.0
    assert sim.sim.connections == []  # no secret, no socket


async def test_the_embedded_simulator_mints_too(tmp_path: Path) -> None:
    """``auth.mode: ephemeral`` with no key and no URL runs on the built-in simulator, minting."""
    with trio.fail_after(20):
        async with daemon(tmp_path, "sim", auth="{mode: ephemeral}") as (pipe, http, events):
            await first_ready(pipe, events)
            status = (await http.get("/status")).json()
    assert status["realtime"]["auth"].startswith("client secrets minted at http://127.0.0.1:")
    assert status["realtime"]["auth"].endswith("(API key from the simulator)")


async def test_an_unreachable_mint_endpoint_is_transient(tmp_path: Path) -> None:
    """Nothing listens where secrets are minted: transient, retried with the fast backoff."""
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    with trio.fail_after(20):
        async with daemon(tmp_path, url, auth=f"{{mode: ephemeral, api_key: {SIM_KEY}}}") as run:
            pipe, _http, events = run
            failure = await first_failure(pipe, events)
    assert not failure.fatal
    assert (failure.error or "").startswith("cannot reach OpenAI at http://127.0.0.1:")


async def test_a_kiosk_in_broker_mode_holds_no_key_and_stops_when_revoked(tmp_path: Path) -> None:
    """The daemon asks the broker for a secret before each connection; once its device is
    revoked, the next connection is refused: fatal, shown as the state error."""
    from tests.test_broker import T0, running
    from voiced.broker.serve import open_devices
    from voiced.config import load_config

    (tmp_path / "broker").mkdir()
    async with running(tmp_path / "broker") as broker:
        token_file = tmp_path / "device-token"
        token_file.write_text(broker.tokens["kiosk-a"] + "\n")
        auth = f"{{mode: broker, broker_url: '{broker.url}', device_token_file: '{token_file}'}}"
        url = f"ws://127.0.0.1:{broker.sim_port}/v1/realtime"
        with trio.fail_after(30):
            async with daemon(tmp_path, url, auth=auth, realtime=", instructions: Be brief.") as (
                pipe,
                http,
                events,
            ):
                await first_ready(pipe, events)
                (mint,) = broker.sim.mints
                (conn,) = broker.sim.connections
                assert conn.headers["authorization"] == f"Bearer {mint.value}"
                assert conn.session.config["instructions"] == "Be brief."
                with open_devices(load_config(broker.config)) as store:
                    assert store.revoke_device("kiosk-a", T0 + 1)
                await pipe.renew()
                failure = await next_failure(events)
                status = (await http.get("/status")).json()
    assert failure.fatal
    assert (failure.error or "").startswith("the token broker answered HTTP 403 (device_revoked)")
    assert status["shown"] == {"state": "error", "reason": failure.error}
    assert len(broker.sim.mints) == 1  # the broker minted nothing for the revoked device
