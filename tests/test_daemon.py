"""``voiced run`` in-process: a push-to-talk turn driven over real HTTP on loopback against the
simulator on a real loopback WebSocket, with a paced WAV microphone and speaker.

The microphone, the speaker and the simulator are all paced on trio's clock, so the tests that
let time pass run on the ``autojump_clock``: "the person speaks for half a second" is half a
virtual second, in which the microphone hears exactly that much, and no wall time is spent.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import SIM_KEY, RunningSim, config_file, free_port, read_wav, tone, write_wav
from voiced.app import run_daemon
from voiced.audio import bytes_of, scale
from voiced.config import load_config
from voiced.earcons import builtin
from voiced.events import (
    ConnectionChanged,
    DeviceChanged,
    Event,
    StateChanged,
    Transcript,
    TurnEnded,
)
from voiced.pipeline import Pipeline
from voiced.sim import Simulator
from voiced.turn import State

MIC = tone(2.0, seed=7)


@asynccontextmanager
async def daemon(
    tmp_path: Path,
    url: str,
    *,
    speaker_realtime: bool = True,
    earcons: bool = False,
    preroll_ms: int | None = None,
    max_turn_s: float | None = None,
    on_max_turn: str | None = None,
    plugins: str = "  stdout: {}\n",
    auth: str = f"{{api_key: {SIM_KEY}}}",
    realtime: str = "",
    extra: str = "",
    volume: float | None = None,
) -> AsyncIterator[tuple[Pipeline, httpx.AsyncClient, trio.abc.ReceiveChannel[Event]]]:
    """``run_daemon`` with a looped WAV microphone, a WAV speaker (``spk.wav``), the http plugin
    and ``plugins`` (YAML lines under ``plugins:``; default stdout); yields the pipeline, an HTTP
    client for the control API and a subscription to every event published from then on. The
    ``audio`` settings left None keep the defaults; ``auth`` is the auth section (flow YAML), ``realtime`` more entries of the realtime one, ``extra`` more top-level YAML."""
    port = free_port()
    mic = write_wav(tmp_path / "mic.wav", MIC)
    audio = "".join(
        f"  {key}: {value}\n"
        for key, value in (("max_turn_s", max_turn_s), ("on_max_turn", on_max_turn))
        if value is not None
    )
    preroll = "" if preroll_ms is None else f", preroll_ms: {preroll_ms}"
    path = config_file(
        tmp_path,
        f"device_id: test-kiosk\nrealtime: {{url: '{url}'{realtime}}}\nauth: {auth}\n"
        f"audio:\n  input: {{backend: wav, path: '{mic}', loop: true{preroll}}}\n"
        f"  output: {{backend: wav, path: '{tmp_path / 'spk.wav'}', "
        f"realtime: {str(speaker_realtime).lower()}"
        f"{'' if volume is None else f', volume: {volume}'}}}\n"
        f"  earcons: {str(earcons).lower()}\n{audio}"
        f"plugins:\n  http: {{port: {port}}}\n{plugins}{extra}",
    )
    stop = trio.Event()
    with ExitStack() as after:
        async with trio.open_nursery() as nursery:
            pipe: Pipeline = await nursery.start(
                partial(run_daemon, load_config(path), shutdown_trigger=stop.wait)
            )
            events = pipe.broadcast.subscribe("test")
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    yield pipe, client, events
            finally:
                # Shutting down waits on a worker thread (the WAV speaker's file is closed in
                # one), which a virtual clock would race past to the next deadline.
                after.enter_context(real_time())
                stop.set()


@contextmanager
def real_time() -> Iterator[None]:
    """Inside, a virtual clock (``autojump_clock``) follows real time instead of jumping; a
    real clock is left alone."""
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock):
        yield
        return
    threshold = clock.autojump_threshold
    clock.autojump_threshold, clock.rate = math.inf, 1.0
    try:
        yield
    finally:
        clock.rate, clock.autojump_threshold = 0.0, threshold


async def elapse(seconds: float) -> None:
    """Let ``seconds`` pass on the test's virtual clock: the paced WAV microphone hears exactly
    that much and the paced WAV speaker plays that much. Never a wall-clock wait: it refuses to
    run unless the test runs on the ``autojump_clock``."""
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock), "elapse() needs the autojump_clock"
    assert clock.autojump_threshold == 0, "elapse() needs the autojump_clock"
    assert clock.rate == 0, "elapse() needs the autojump_clock"
    await trio.sleep(seconds)


E = TypeVar("E", StateChanged, TurnEnded, ConnectionChanged, Transcript, DeviceChanged)


async def next_event(events: trio.abc.ReceiveChannel[Event], kind: type[E]) -> E:
    """The next event of ``kind`` (those of other kinds before it are passed over)."""
    async for event in events:
        if isinstance(event, kind):
            return event
    raise AssertionError("events ended")


async def next_state(events: trio.abc.ReceiveChannel[Event]) -> State:
    return (await next_event(events, StateChanged)).new


@pytest.fixture
async def thinking_sim(nursery: trio.Nursery) -> RunningSim:
    """A simulator that takes 300 ms before it answers, as a real model does."""
    simulator = Simulator(api_key=SIM_KEY, think=0.3)
    return RunningSim(simulator, await nursery.start(simulator.serve))


async def test_turn_over_http(
    thinking_sim: RunningSim,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    autojump_clock: trio.testing.MockClock,
) -> None:
    sim = thinking_sim
    with trio.fail_after(20):
        async with daemon(tmp_path, sim.url) as (pipe, http, events):
            await pipe.ready.wait()
            status = (await http.get("/status")).json()
            assert (status["state"], status["turns"], status["connected"]) == ("idle", 0, True)
            assert (await http.get("/healthz")).status_code == 200

            response = await http.post("/start")
            assert response.status_code == 202
            assert await next_state(events) is State.LISTENING
            assert (await http.get("/status")).json()["state"] == "listening"
            await elapse(0.5)  # the person speaks for half a second
            assert (await http.post("/commit")).status_code == 202
            assert await next_state(events) is State.THINKING
            assert (await http.get("/status")).json()["state"] == "thinking"
            assert await next_state(events) is State.SPEAKING
            # The paced speaker takes as long as the reply: speaking is visible from outside.
            assert (await http.get("/status")).json()["state"] == "speaking"
            assert await next_state(events) is State.IDLE
            status = (await http.get("/status")).json()
            assert (status["state"], status["turns"]) == ("idle", 1)
            assert status["last_turn"]["outcome"] == "completed"
            # session.update, appends, commit, response.create: all counted on the wire.
            assert status["connection"] == {
                "connects": 1,
                "events_sent": len(sim.sim.connections[0].received),
                "events_received": len(sim.sim.connections[0].sent),
            }
            assert set(status["last_turn"]["latencies_ms"]) == {
                "commit",
                "first_audio",
                "first_play",
            }

    (conn,) = sim.sim.connections
    (heard,) = conn.committed_audio
    # What the server got is a gapless stretch of what the microphone heard (a looped file).
    assert 0.45 * 48000 <= len(heard) <= 0.8 * 48000
    assert heard in MIC * 3
    assert read_wav(tmp_path / "spk.wav") == conn.reply_audio[0]
    ms = len(heard) // 48
    assert capsys.readouterr().out.splitlines() == [
        f"user: heard {ms} ms",
        f"agent: echo of {ms} ms",
    ]


async def test_barge_in_truncates_at_what_was_played(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(20):
        async with daemon(tmp_path, sim.url) as (pipe, http, events):
            await pipe.ready.wait()
            await http.post("/start")
            assert await next_state(events) is State.LISTENING
            await elapse(1.0)  # a one-second question: a one-second (echo) answer
            await http.post("/commit")
            assert await next_state(events) is State.THINKING
            assert await next_state(events) is State.SPEAKING
            await elapse(0.3)  # 300 ms of the answer play
            await http.post("/start")  # barge in
            assert await next_state(events) is State.LISTENING
            await http.post("/cancel")
            assert await next_state(events) is State.IDLE

    conn = sim.sim.connections[0]
    truncates = [e for e in conn.received if e["type"] == "conversation.item.truncate"]
    (truncate,) = truncates
    played_ms = len(read_wav(tmp_path / "spk.wav")) // 48
    assert 0 < truncate["audio_end_ms"] < len(conn.committed_audio[0]) // 48
    assert abs(truncate["audio_end_ms"] - played_ms) <= 20  # the speaker stops within a block
    types = [e["type"] for e in conn.received]
    assert types.index("conversation.item.truncate") > types.index("input_audio_buffer.commit")
    assert conn.errors_sent == []


async def test_daemon_stays_up_when_server_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    with trio.fail_after(20):
        async with daemon(tmp_path, url) as (_pipe, http, events):
            async for event in events:
                if isinstance(event, ConnectionChanged):
                    assert not event.connected
                    assert (event.error or "").startswith("cannot reach")
                    break
            health = await http.get("/healthz")
            assert health.status_code == 503
            assert health.json()["error"].startswith(f"cannot reach {url}")
            status = (await http.get("/status")).json()
            assert (status["connected"], status["state"]) == (False, "idle")
            # A press while the server is away is refused at once, with the reason, rather than
            # leaving the person waiting for an answer that cannot come.
            assert (await http.post("/start")).status_code == 503
            await trio.testing.wait_all_tasks_blocked()  # the session has handled it
            assert (await http.get("/status")).json()["state"] == "idle"
            assert any(
                m.startswith("start refused: not connected to the realtime server (cannot reach")
                for m in caplog.messages
            )


async def test_http_errors(sim: RunningSim, tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with daemon(tmp_path, sim.url) as (_pipe, http, _events):
            assert (await http.get("/start")).status_code == 405
            assert (await http.post("/status")).status_code == 405
            missing = await http.get("/nothing")
            assert (missing.status_code, missing.json()["error"]) == (
                404,
                "no such endpoint: /nothing",
            )


async def test_turn_ended_event_reaches_sinks(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(20):
        async with daemon(tmp_path, sim.url, speaker_realtime=False) as (pipe, http, events):
            await pipe.ready.wait()
            await http.post("/start")
            await elapse(0.2)  # the person speaks
            await http.post("/commit")
            async for event in events:
                if isinstance(event, TurnEnded):
                    assert (event.turn, event.outcome) == (1, "completed")
                    break


async def test_daemon_survives_a_server_error(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim.sim.faults.fail_event = "response.create"
    with trio.fail_after(20):
        async with daemon(tmp_path, sim.url) as (pipe, http, events):
            await pipe.ready.wait()
            await http.post("/start")
            assert await next_state(events) is State.LISTENING
            await elapse(0.2)  # the person speaks
            await http.post("/commit")
            assert await next_state(events) is State.THINKING
            assert await next_state(events) is State.IDLE
            status = (await http.get("/status")).json()
            assert (status["connected"], status["last_turn"]["outcome"]) == (True, "failed")
            assert (await http.get("/healthz")).status_code == 200


async def test_volume_is_set_over_http_and_kept_across_restarts(
    sim: RunningSim,
    tmp_path: Path,
    state_directory: Path,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(20):
        async with daemon(tmp_path, sim.url) as (pipe, http, events):
            assert (await http.get("/status")).json()["audio"]["output"]["volume"] == 1.0
            with real_time():  # the volume is saved in a worker thread: no clock may race it
                response = await http.post("/volume", json={"volume": 0.25})
            assert (response.status_code, response.json()) == (200, {"volume": 0.25})
            assert (await http.get("/status")).json()["audio"]["output"]["volume"] == 0.25
            for bad in ({"volume": 1.5}, {"volume": "loud"}, {"level": 1}, {"volume": True}):
                refused = await http.post("/volume", json=bad)
                assert (refused.status_code, refused.json()) == (
                    400,
                    {"error": 'send {"volume": 0.0-1.0}'},
                )
            assert (await http.get("/volume")).json() == {"volume": 0.25}
            # The reply is played at that volume.
            await pipe.ready.wait()
            await http.post("/start")
            assert await next_state(events) is State.LISTENING
            await elapse(0.3)  # the person speaks
            await http.post("/commit")
            while await next_state(events) is not State.IDLE:
                pass
            (sent,) = sim.sim.connections[0].reply_audio
            assert read_wav(tmp_path / "spk.wav") == scale(sent, 0.25)
        saved = json.loads((state_directory / "state.json").read_text())
        assert saved == {"volume": 0.25, "volume_configured": 1.0}
        async with daemon(tmp_path, sim.url) as (_pipe, http, _events):
            assert (await http.get("/status")).json()["audio"]["output"]["volume"] == 0.25
        # An operator changes audio.output.volume in the config: that wins over the old setting.
        async with daemon(tmp_path, sim.url, volume=0.6) as (_pipe, http, _events):
            assert (await http.get("/status")).json()["audio"]["output"]["volume"] == 0.6


async def test_earcons_play_to_the_speaker_and_never_reach_the_server(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(20):
        async with daemon(tmp_path, sim.url, earcons=True) as (pipe, http, events):
            await pipe.ready.wait()
            await elapse(0.5)  # the person starts talking before the press: the pre-roll
            await http.post("/start")
            assert await next_state(events) is State.LISTENING
            await elapse(0.8)  # the person speaks
            await http.post("/commit")
            while await next_state(events) is not State.IDLE:
                pass
    (conn,) = sim.sim.connections
    (heard,) = conn.committed_audio
    (reply,) = conn.reply_audio
    # The speaker played: the listening sound, the commit sound, then the reply.
    assert read_wav(tmp_path / "spk.wav") == builtin("listening") + builtin("commit") + reply
    # The server got the pre-roll (up to 300 ms heard before the press), then silence while the
    # listening sound played and echoed (the microphone is muted for it), then the person.
    muted = heard.index(bytes(bytes_of(300)))
    assert 0 < muted <= bytes_of(300)
    assert heard[:muted] in MIC * 2
    resumed = len(heard) - len(heard[muted:].lstrip(b"\0"))
    assert bytes_of(175 + 150 - 20) <= resumed - muted <= bytes_of(175 + 150 + 40)  # 20 ms frames
    assert heard[resumed + 2 :] in MIC * 2
