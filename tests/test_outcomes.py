"""How each turn ends, seen from outside: ``/status`` (``outcomes``, ``last_turn``) over real HTTP
and the published ``TurnEnded`` events, with the daemon in-process against the simulator on a
real loopback WebSocket; then the protocol cases a reply can bring (two items, missing fields, a
refused commit, a renewed session).

Everything that paces a turn (the WAV microphone and speaker, the simulator) runs on trio's
clock, so every test here runs on the ``autojump_clock``: "the person speaks for half a second"
is half a virtual second (``elapse``), and no test waits on the wall clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import SIM_KEY, RunningSim, free_port, read_wav
from tests.test_daemon import MIC, daemon, elapse, next_event, next_state
from voiced.audio import ms_of
from voiced.events import ConnectionChanged, Event, TurnEnded
from voiced.sim import Simulator
from voiced.sim.response import preamble_audio
from voiced.turn import State

SERVER_ERROR = "server error: The server had an error while processing your request."
"""The reason of a turn the simulator's ``fail_event`` failed."""

Events = trio.abc.ReceiveChannel[Event]


@pytest.fixture
async def streaming_sim(nursery: trio.Nursery) -> RunningSim:
    """A simulator that streams its reply as fast as it plays, as a real model does: a reply is
    still in flight while it is spoken."""
    simulator = Simulator(api_key=SIM_KEY, pace=1.0)
    return RunningSim(simulator, await nursery.start(simulator.serve))


async def talk(http: httpx.AsyncClient, events: Events, seconds: float) -> None:
    """Press, speak for ``seconds``, release: the daemon is thinking."""
    assert (await http.post("/start")).status_code == 202
    assert await next_state(events) is State.LISTENING
    await elapse(seconds)
    assert (await http.post("/commit")).status_code == 202
    assert await next_state(events) is State.THINKING


async def turn(http: httpx.AsyncClient, events: Events, seconds: float) -> TurnEnded:
    """A whole turn: press, speak for ``seconds``, release, hear the reply; how it ended."""
    await talk(http, events, seconds)
    assert await next_state(events) is State.SPEAKING
    ended = await next_event(events, TurnEnded)
    assert await next_state(events) is State.IDLE
    return ended


async def check_status(
    http: httpx.AsyncClient, last: TurnEnded | None, outcomes: dict[str, int]
) -> dict[str, Any]:
    """``/status`` counts ``outcomes`` and shows ``last`` as the last turn; returns it."""
    status: dict[str, Any] = (await http.get("/status")).json()
    assert status["outcomes"] == outcomes
    assert status["last_turn"] == (
        None
        if last is None
        else {
            "turn": last.turn,
            "outcome": last.outcome,
            "reason": last.reason,
            "latencies_ms": last.latencies,
        }
    )
    return status


def ms(pcm: bytes) -> float:
    return ms_of(len(pcm))


def received_types(sim: RunningSim) -> list[str]:
    """The types of the client events the first connection received, in order."""
    return [event["type"] for event in sim.sim.connections[0].received]


# ---------------------------------------------------------------------------- outcomes


async def test_completed(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            await pipe.ready.wait()
            await check_status(http, None, {})
            ended = await turn(http, events, 0.5)
            assert (ended.turn, ended.outcome, ended.reason) == (1, "completed", None)
            assert set(ended.latencies) == {"commit", "first_audio", "first_play"}
            status = await check_status(http, ended, {"completed": 1})
            assert (status["state"], status["turns"]) == ("idle", 1)
    (conn,) = sim.sim.connections
    (heard,) = conn.committed_audio
    assert ms(heard) == pytest.approx(500, abs=0.1)
    assert read_wav(tmp_path / "spk.wav") == conn.reply_audio[0] == heard


async def test_cancel_while_listening(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url) as (pipe, http, events):
            await pipe.ready.wait()
            assert (await http.post("/start")).status_code == 202
            assert await next_state(events) is State.LISTENING
            await elapse(0.5)
            assert (await http.post("/cancel")).status_code == 202
            ended = await next_event(events, TurnEnded)
            assert await next_state(events) is State.IDLE
            assert (ended.turn, ended.outcome) == (1, "cancelled")
            assert ended.reason == "cancelled by http"
            status = await check_status(http, ended, {"cancelled": 1})
            assert status["state"] == "idle"
    # What was heard is thrown away on the server too: nothing was committed or answered.
    types = received_types(sim)
    assert types[-1] == "input_audio_buffer.clear"
    assert "input_audio_buffer.commit" not in types
    assert "response.create" not in types
    assert read_wav(tmp_path / "spk.wav") == b""


async def test_cancel_while_speaking(
    streaming_sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim = streaming_sim
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url) as (pipe, http, events):
            await pipe.ready.wait()
            await talk(http, events, 1.0)
            assert await next_state(events) is State.SPEAKING
            await elapse(0.3)  # 300 ms of the answer play
            assert (await http.post("/cancel")).status_code == 202
            ended = await next_event(events, TurnEnded)
            assert await next_state(events) is State.IDLE
            assert (ended.turn, ended.outcome) == (1, "cancelled")
            assert ended.reason == "cancelled by http"
            await check_status(http, ended, {"cancelled": 1})
    conn = sim.sim.connections[0]
    # The reply still streaming is called off, and the item truncated at what was played.
    types = received_types(sim)
    assert types.index("response.cancel") < types.index("conversation.item.truncate")
    (done,) = [e for e in conn.sent if e["type"] == "response.done"]
    assert done["response"]["status"] == "cancelled"
    played = read_wav(tmp_path / "spk.wav")
    (truncate,) = [e for e in conn.received if e["type"] == "conversation.item.truncate"]
    assert truncate["audio_end_ms"] == pytest.approx(ms(played), abs=1)
    assert 300 <= ms(played) <= 320  # the speaker stopped within a block
    assert conn.reply_audio[0].startswith(played)


async def test_barge_in_is_interrupted_and_the_new_turn_completes(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            await pipe.ready.wait()
            await talk(http, events, 1.0)
            assert await next_state(events) is State.SPEAKING
            await elapse(0.3)  # 300 ms of the answer play
            assert (await http.post("/start")).status_code == 202  # barge in
            interrupted = await next_event(events, TurnEnded)
            assert await next_state(events) is State.LISTENING
            assert (interrupted.turn, interrupted.outcome, interrupted.reason) == (
                1,
                "interrupted",
                "barge-in from http",
            )
            await check_status(http, interrupted, {"interrupted": 1})
            await elapse(0.5)
            assert (await http.post("/commit")).status_code == 202
            ended = await next_event(events, TurnEnded)
            assert await next_state(events) is State.IDLE
            assert (ended.turn, ended.outcome) == (2, "completed")
            await check_status(http, ended, {"interrupted": 1, "completed": 1})
    conn = sim.sim.connections[0]
    first, second = conn.reply_audio
    played = read_wav(tmp_path / "spk.wav")
    # Some of the first answer, then all of the second.
    assert played.endswith(second)
    assert 0 < len(played) - len(second) < len(first)
    assert first.startswith(played[: len(played) - len(second)])


async def test_too_short(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            await pipe.ready.wait()
            assert (await http.post("/start")).status_code == 202
            assert await next_state(events) is State.LISTENING
            await elapse(0.06)  # a tap, not a question
            assert (await http.post("/commit")).status_code == 202
            ended = await next_event(events, TurnEnded)
            assert await next_state(events) is State.IDLE
            assert (ended.turn, ended.outcome) == (1, "too_short")
            # 60 ms, counted in whole samples: 59.96 ms when the clock's arithmetic rounds down.
            assert ended.reason in {f"too short: {ms} ms < 100 ms, discarded" for ms in (59, 60)}
            await check_status(http, ended, {"too_short": 1})
    # Nothing is committed (the server would refuse it): the buffer is cleared instead.
    types = received_types(sim)
    assert types[-1] == "input_audio_buffer.clear"
    assert "input_audio_buffer.commit" not in types
    assert sim.sim.connections[0].errors_sent == []


async def test_failed_response_then_the_next_turn_completes(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim.sim.faults.fail_event = "response.create"
    sim.sim.faults.fail_count = 1
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            await pipe.ready.wait()
            await talk(http, events, 0.4)
            failed = await next_event(events, TurnEnded)
            assert await next_state(events) is State.IDLE
            assert (failed.turn, failed.outcome, failed.reason) == (1, "failed", SERVER_ERROR)
            status = await check_status(http, failed, {"failed": 1})
            assert status["connected"] is True
            ended = await turn(http, events, 0.5)
            assert (ended.turn, ended.outcome) == (2, "completed")
            await check_status(http, ended, {"failed": 1, "completed": 1})
    (conn,) = sim.sim.connections
    (reply,) = conn.reply_audio
    assert reply == conn.committed_audio[-1]
    assert read_wav(tmp_path / "spk.wav") == reply


async def test_an_answer_all_received_plays_out_though_the_session_expires(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The whole answer arrived before the session expired: it plays to its end, the turn
    completes, and the next turn runs on the fresh session."""
    sim.sim.faults.expire_after = 1.5  # the answer arrives at once, at 1 s; it plays till 2 s
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            await pipe.ready.wait()
            sim.sim.faults.expire_after = None
            ended = await turn(http, events, 1.0)
            assert (ended.turn, ended.outcome) == (1, "completed")
            ended = await turn(http, events, 0.5)
            assert (ended.turn, ended.outcome) == (2, "completed")
    old, new = sim.sim.connections
    assert old.close_code == 1001
    assert len(old.committed_audio) == len(new.committed_audio) == 1  # nothing asked twice
    assert read_wav(tmp_path / "spk.wav") == old.reply_audio[0] + new.reply_audio[0]


async def test_a_session_expiring_mid_answer_is_asked_again_and_completes(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The session expires while the answer plays: the speaker stops, the daemon reconnects,
    sends the question again (bit-exact) on the fresh session and plays the whole new answer:
    the turn completes, with a delay, and nothing is lost. The new connection numbers its
    responses and items from 1 again, and that answer is not taken for the cut-off one's."""
    # Connected at 0 s; 1 s of question; the 1 s answer streams in real time from 1 s: the
    # session expires at 1.5 s, mid-answer.
    simulator = Simulator(api_key=SIM_KEY, pace=1.0)
    sim = RunningSim(simulator, await nursery.start(simulator.serve))
    sim.sim.faults.expire_after = 1.5
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            await pipe.ready.wait()
            sim.sim.faults.expire_after = None  # only the first connection expires
            await talk(http, events, 1.0)
            assert await next_state(events) is State.SPEAKING
            assert await next_state(events) is State.THINKING  # cut off: asking again
            assert await next_state(events) is State.SPEAKING
            ended = await next_event(events, TurnEnded)
            assert await next_state(events) is State.IDLE
            assert (ended.turn, ended.outcome) == (1, "completed")
            status = await check_status(http, ended, {"completed": 1})
            assert (status["state"], status["connection"]["connects"]) == ("idle", 2)
            ended = await turn(http, events, 0.5)  # and the next turn as ever
            assert (ended.turn, ended.outcome) == (2, "completed")
    old, new = sim.sim.connections
    assert old.close_code == 1001
    assert new.committed_audio[0] == old.committed_audio[0]  # the question, sent again
    # The new connection's answer has the cut-off one's response and item ids.
    created = [
        [e["response"]["id"] for e in c.sent if e["type"] == "response.created"] for c in (old, new)
    ]
    assert created[0][0] == created[1][0]
    cut = read_wav(tmp_path / "spk.wav")[: -len(b"".join(new.reply_audio))]
    # The first answer was cut off mid-way (what came of it played, up to the cut)...
    assert 0 < len(cut) <= len(old.reply_audio[0]) < len(new.reply_audio[0])
    assert read_wav(tmp_path / "spk.wav") == cut + b"".join(new.reply_audio)  # ...then all


@pytest.mark.parametrize("on_max_turn", ["commit", "cancel"])
async def test_stuck_button_ends_listening_by_itself(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock, on_max_turn: str
) -> None:
    with trio.fail_after(30):
        async with daemon(
            tmp_path, sim.url, preroll_ms=0, max_turn_s=1, on_max_turn=on_max_turn
        ) as (pipe, http, events):
            await pipe.ready.wait()
            pressed = trio.current_time()
            assert (await http.post("/start")).status_code == 202
            assert await next_state(events) is State.LISTENING
            # Nobody releases the button.
            if on_max_turn == "commit":
                assert await next_state(events) is State.THINKING
                assert trio.current_time() - pressed == pytest.approx(1.0)
                assert await next_state(events) is State.SPEAKING
                ended = await next_event(events, TurnEnded)
                assert (ended.turn, ended.outcome, ended.reason) == (1, "completed", None)
                # The limit ended listening, not the press a second before: the commit went
                # out at once.
                assert ended.latencies["commit"] < 50
            else:
                ended = await next_event(events, TurnEnded)
                assert trio.current_time() - pressed == pytest.approx(1.0)
                assert (ended.turn, ended.outcome) == (1, "cancelled")
                assert ended.reason == "still listening after 1 s (a stuck button?)"
            assert await next_state(events) is State.IDLE
            await check_status(http, ended, {ended.outcome: 1})
    conn = sim.sim.connections[0]
    if on_max_turn == "commit":
        (heard,) = conn.committed_audio
        # The second heard, but for the last 20 ms frame when the limit is handled before the
        # microphone's tick of that same instant (trio runs them in either order).
        assert 980 - 0.1 <= ms(heard) <= 1000 + 0.1
        assert read_wav(tmp_path / "spk.wav") == conn.reply_audio[0] == heard
    else:
        assert conn.committed_audio == []
        assert received_types(sim)[-1] == "input_audio_buffer.clear"


async def test_start_refused_while_the_server_is_unreachable(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    with trio.fail_after(30):
        async with daemon(tmp_path, url) as (_pipe, http, events):
            while (changed := await next_event(events, ConnectionChanged)).connected:
                pass
            assert (changed.error or "").startswith("cannot reach")
            response = await http.post("/start")
            assert response.status_code == 503
            assert response.json()["error"].startswith(
                "not connected to the realtime server (cannot reach"
            )
            await trio.testing.wait_all_tasks_blocked()  # the session has handled it
            status = await check_status(http, None, {})
            assert (status["state"], status["turns"], status["connected"]) == ("idle", 0, False)


# ---------------------------------------------------------------------------- protocol cases


async def test_two_audio_items_play_in_order(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim.sim.faults.preamble_ms = 300
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            await pipe.ready.wait()
            ended = await turn(http, events, 0.5)
            assert (ended.turn, ended.outcome) == (1, "completed")
    (conn,) = sim.sim.connections
    (heard,) = conn.committed_audio
    (reply,) = conn.reply_audio
    assert reply == preamble_audio(300) + heard  # the simulator spoke the preamble, then the echo
    assert read_wav(tmp_path / "spk.wav") == reply


async def test_barge_in_during_the_second_item_truncates_that_item(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim.sim.faults.preamble_ms = 300
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            await pipe.ready.wait()
            await talk(http, events, 1.0)
            assert await next_state(events) is State.SPEAKING
            await elapse(0.5)  # the 300 ms preamble, then 200 ms of the answer play
            assert (await http.post("/start")).status_code == 202  # barge in
            interrupted = await next_event(events, TurnEnded)
            assert (interrupted.turn, interrupted.outcome) == (1, "interrupted")
            assert (await http.post("/cancel")).status_code == 202
            assert (await next_event(events, TurnEnded)).outcome == "cancelled"
    (conn,) = sim.sim.connections
    added = [e["item"]["id"] for e in conn.sent if e["type"] == "response.output_item.added"]
    preamble_item, answer_item = added
    (truncate,) = [e for e in conn.received if e["type"] == "conversation.item.truncate"]
    assert truncate["item_id"] == answer_item != preamble_item
    played = read_wav(tmp_path / "spk.wav")
    assert played.startswith(preamble_audio(300))
    answer_played_ms = ms(played) - 300
    assert 200 <= answer_played_ms <= 220  # the speaker stopped within a block
    assert truncate["audio_end_ms"] == pytest.approx(answer_played_ms, abs=1)
    assert conn.errors_sent == []


async def test_barge_in_during_the_first_item_truncates_that_item(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The server sends faster than the speaker plays: the answer item has arrived while the
    preamble still plays. A barge-in then truncates the preamble, where the person stopped
    hearing it, not the answer they never heard a sample of."""
    sim.sim.faults.preamble_ms = 300
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            await pipe.ready.wait()
            await talk(http, events, 1.0)
            assert await next_state(events) is State.SPEAKING
            await elapse(0.15)  # half of the preamble plays
            assert (await http.post("/start")).status_code == 202  # barge in
            assert (await next_event(events, TurnEnded)).outcome == "interrupted"
            assert (await http.post("/cancel")).status_code == 202
            assert (await next_event(events, TurnEnded)).outcome == "cancelled"
    (conn,) = sim.sim.connections
    added = [e["item"]["id"] for e in conn.sent if e["type"] == "response.output_item.added"]
    preamble_item, _answer_item = added
    played = read_wav(tmp_path / "spk.wav")
    assert preamble_audio(300).startswith(played)
    assert 150 <= ms(played) <= 170  # the speaker stopped within a block
    (truncate,) = [e for e in conn.received if e["type"] == "conversation.item.truncate"]
    assert truncate["item_id"] == preamble_item
    assert truncate["audio_end_ms"] == pytest.approx(ms(played), abs=1)


async def test_response_without_id_or_status_completes(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim.sim.faults.omit_response_fields = True
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url) as (pipe, http, events):
            await pipe.ready.wait()
            ended = await turn(http, events, 0.5)
            assert (ended.turn, ended.outcome) == (1, "completed")
            await check_status(http, ended, {"completed": 1})
    (conn,) = sim.sim.connections
    kinds = ("response.created", "response.done")
    responses = [e["response"] for e in conn.sent if e["type"] in kinds]
    assert len(responses) == 2
    assert all("id" not in r and "status" not in r for r in responses)
    assert read_wav(tmp_path / "spk.wav") == conn.reply_audio[0]


async def test_refused_commit_is_cleared_and_the_next_turn_holds_only_its_audio(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sim.sim.faults.fail_event = "input_audio_buffer.commit"
    sim.sim.faults.fail_count = 1
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            await pipe.ready.wait()
            await talk(http, events, 0.5)
            failed = await next_event(events, TurnEnded)
            assert await next_state(events) is State.IDLE
            assert (failed.turn, failed.outcome, failed.reason) == (1, "failed", SERVER_ERROR)
            await check_status(http, failed, {"failed": 1})
            ended = await turn(http, events, 0.7)
            assert (ended.turn, ended.outcome) == (2, "completed")
            await check_status(http, ended, {"failed": 1, "completed": 1})
    (conn,) = sim.sim.connections
    types = received_types(sim)
    commits = [i for i, t in enumerate(types) if t == "input_audio_buffer.commit"]
    assert len(commits) == 2
    # The refused commit's audio is cleared before the next turn's audio is appended.
    assert "input_audio_buffer.clear" in types[commits[0] : commits[1]]
    clear = types.index("input_audio_buffer.clear", commits[0])
    assert "input_audio_buffer.append" in types[clear:]
    (heard,) = conn.committed_audio  # the second commit: this turn's 700 ms, not 1.2 s
    assert ms(heard) == pytest.approx(700, abs=0.1)
    assert heard in MIC * 2
    assert read_wav(tmp_path / "spk.wav") == conn.reply_audio[-1] == heard


async def test_renew_while_idle_opens_a_fresh_session(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            await pipe.ready.wait()
            first = await turn(http, events, 0.5)
            assert (first.turn, first.outcome) == (1, "completed")
            await pipe.renew()
            closed = await next_event(events, ConnectionChanged)
            assert (closed.connected, closed.error) == (False, None)  # on purpose: no error
            while not (await next_event(events, ConnectionChanged)).ready:
                pass
            await sim.sim.connections[0].closed.wait()
            status = await check_status(http, first, {"completed": 1})  # no turn lost
            assert (status["state"], status["connection"]["connects"]) == ("idle", 2)
            ended = await turn(http, events, 0.6)
            assert (ended.turn, ended.outcome) == (2, "completed")
            await check_status(http, ended, {"completed": 2})
    old, new = sim.sim.connections
    assert old.close_code is None  # the client closed it
    ((first_heard,), (second_heard,)) = old.committed_audio, new.committed_audio
    assert ms(first_heard) == pytest.approx(500, abs=0.1)
    assert ms(second_heard) == pytest.approx(600, abs=0.1)
    assert read_wav(tmp_path / "spk.wav") == old.reply_audio[0] + new.reply_audio[0]


async def test_a_sink_that_never_reads_does_not_stop_the_next_turns(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A sink stuck forever (it subscribed and never reads again) loses events, counted in
    /status, and the turns go on as if it were not there."""
    with trio.fail_after(30):
        async with daemon(tmp_path, sim.url, preroll_ms=0) as (pipe, http, events):
            stuck = pipe.broadcast.subscribe("stuck", size=2)  # and never read
            await pipe.ready.wait()
            outcomes = [(await turn(http, events, 0.3)).outcome for _ in range(3)]
            assert outcomes == ["completed"] * 3
            status = (await http.get("/status")).json()
            assert status["sinks"]["stuck"]["dropped"] > 0
            assert status["sinks"]["stdout"]["dropped"] == 0
            await stuck.aclose()
