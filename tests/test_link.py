"""A daemon that is never down for long, in-process against the simulator on loopback, on trio's
virtual clock: sessions renewed before the server's limit, and a link that breaks mid-turn."""

from __future__ import annotations

import base64
from pathlib import Path

import trio
import trio.testing

from tests.conftest import SIM_KEY, RunningSim, config_file, read_wav, tone, write_wav
from tests.netproxy import NetProxy
from tests.test_auth_e2e import first_ready, until_ready
from tests.test_daemon import MIC, daemon, elapse, next_event
from voiced.app import ask
from voiced.audio import ms_of
from voiced.config import load_config
from voiced.events import ConnectionChanged, Event, TurnEnded
from voiced.sim import SimConnection, Simulator


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


async def test_audio_heard_while_the_link_is_down_arrives_bit_exact(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The server goes away mid-sentence and refuses connections for a while; the person
    speaks on and lets go while it is away. Once it is back, the whole turn is sent again on
    the fresh session, bit-exact and in order, committed, and answered: nothing was lost."""
    sim = Simulator(api_key=SIM_KEY)
    proxy = NetProxy(await nursery.start(sim.serve))
    await nursery.start(proxy.serve)
    with trio.fail_after(60):
        async with daemon(tmp_path, proxy.url, preroll_ms=0) as (pipe, http, events):
            await first_ready(pipe, events)
            assert (await http.post("/start")).status_code == 202
            await elapse(0.5)
            proxy.refuse = True
            proxy.drop()  # the server is gone, and stays away for a while
            await elapse(1.0)  # the person speaks on
            assert (await http.post("/commit")).status_code == 202  # and lets go
            await elapse(2.0)
            proxy.refuse = False  # back: the daemon reconnects by itself
            ended = await next_event(events, TurnEnded)
    assert (ended.turn, ended.outcome) == (1, "completed")
    old, new = sim.connections
    assert old.committed_audio == []  # the first session never got the commit
    (heard,) = new.committed_audio
    assert ms_of(len(heard)) >= 1500
    assert heard in MIC * 3  # one stretch of what the microphone heard, in order, bit-exact
    sent_before = b"".join(
        base64.b64decode(e["audio"])
        for e in old.received
        if e["type"] == "input_audio_buffer.append"
    )
    assert heard.startswith(sent_before)  # what the old link carried is sent again first


async def test_ask_asks_again_after_a_dropped_link(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``voiced ask``: the link drops while the answer streams; ask reconnects, asks again,
    and every turn is answered in the end."""
    sim = Simulator(api_key=SIM_KEY, pace=1.0)  # the 1 s answer streams for 1 s
    proxy = NetProxy(await nursery.start(sim.serve))
    await nursery.start(proxy.serve)
    question = write_wav(tmp_path / "q.wav", tone(1.0, seed=3))
    path = config_file(
        tmp_path, f"realtime: {{url: '{proxy.url}'}}\nauth: {{api_key: {SIM_KEY}}}\n"
    )
    results: list[TurnEnded] = []

    async def run_ask() -> None:
        results.extend(await ask(load_config(path), [question], tmp_path / "out.wav"))

    with trio.fail_after(60):
        async with trio.open_nursery() as inner:
            inner.start_soon(run_ask)
            await trio.sleep(0.5)  # half a virtual second into the answer...
            proxy.drop()  # ...the link drops
    assert [(r.turn, r.outcome) for r in results] == [(1, "completed")]
    old, new = sim.connections
    assert new.committed_audio == old.committed_audio == [read_wav(question)]
    assert read_wav(tmp_path / "out.wav").endswith(new.reply_audio[0])


async def test_the_last_turns_are_carried_into_a_fresh_session(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``resilience.carry_over_turns: 1``: after a renewal the new session first gets the last
    completed turn's words as text messages, so the conversation goes on."""
    extra = "resilience: {carry_over_turns: 1}\n"
    with trio.fail_after(60):
        async with daemon(tmp_path, sim.url, extra=extra) as (pipe, http, events):
            await first_ready(pipe, events)
            for _ in range(2):
                assert (await http.post("/start")).status_code == 202
                await elapse(0.5)
                assert (await http.post("/commit")).status_code == 202
                await next_event(events, TurnEnded)
            await pipe.renew()
            await until_ready(events)
            await trio.testing.wait_all_tasks_blocked()
    first, second = sim.sim.connections
    said = [t["text"] for t in _texts(first)]
    assert len(said) == 4  # two turns: the user's words and the answer's, each
    created = [e for e in second.received if e["type"] == "conversation.item.create"]
    assert [(e["item"]["role"], e["item"]["content"][0]["text"]) for e in created] == [
        ("user", said[2]),
        ("assistant", said[3]),
    ]  # only the last turn
    assert [e["type"] for e in second.received[: len(created) + 1]] == [
        "session.update",
        *["conversation.item.create"] * len(created),
    ]


def _texts(conn: SimConnection) -> list[dict[str, str]]:
    """The final transcripts the simulator sent on ``conn``, user and agent, in order."""
    finals = (
        "conversation.item.input_audio_transcription.completed",
        "response.output_audio_transcript.done",
    )
    return [{"text": e["transcript"]} for e in conn.sent if e["type"] in finals]
