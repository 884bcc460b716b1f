"""The pipeline's middle stages on memory channels: encode, decode and playback.

Playback runs on the package's own speakers: ``NullSpeaker`` (takes audio at once) and
``WavSpeaker`` (a file; with ``realtime=True`` paced like a device, under ``autojump_clock``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.conftest import read_wav
from voiced import protocol as p
from voiced.actions import Play, Played
from voiced.audio import AnswerAgain, AudioFrame, Earcon, EndOfReply, ReplyAudio, bytes_of, ms_of
from voiced.devices.null import NullSpeaker
from voiced.devices.wav import WavSpeaker
from voiced.messages import PlaybackNews, PlaybackStarted
from voiced.stages.decode import run_decode
from voiced.stages.encode import run_encode
from voiced.stages.playback import BLOCK_MS, Player
from voiced.stages.transport import Renew


def audio(mark: int, ms: int) -> bytes:
    """``ms`` of PCM filled with ``mark``, so that every run can be told apart."""
    return bytes([mark]) * bytes_of(ms)


COMMIT = p.InputAudioBufferCommit()
CLEAR = p.InputAudioBufferClear()
RENEW = Renew()
CONTROL: dict[str, p.ClientEvent | Renew] = {"commit": COMMIT, "clear": CLEAR, "renew": RENEW}


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        # Frames (byte counts) gather into 480-byte (10 ms) appends; a control event first
        # flushes the partial chunk; closing flushes the rest.
        ([300, 300, 300, "commit", "renew", 100], [480, 420, "commit", "renew", 100]),
        ([1440, 10], [480, 480, 480, 10]),
        (["commit", 480, "commit", "clear"], ["commit", 480, "commit", "clear"]),
        ([2, 478, 482, "renew", "commit"], [480, 480, 2, "renew", "commit"]),
        ([], []),
    ],
)
async def test_encode_chunks_and_orders(items: list[int | str], expected: list[int | str]) -> None:
    in_send, in_recv = trio.open_memory_channel[AudioFrame | p.ClientEvent | Renew](math.inf)
    out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](math.inf)
    heard = b""
    for n, item in enumerate(items):
        if isinstance(item, int):
            pcm = bytes((n + i) % 251 for i in range(item))
            heard += pcm
            in_send.send_nowait(AudioFrame(pcm, float(n)))
        else:
            in_send.send_nowait(CONTROL[item])
    in_send.close()
    with trio.fail_after(5):
        await run_encode(in_recv, out_send, chunk_ms=10)
        out = [event async for event in out_recv]  # ends: the outbound was closed
    shapes: list[int | str] = []
    for event in out:
        if isinstance(event, p.InputAudioBufferAppend):
            shapes.append(len(event.audio))
        else:
            name = next(k for k, v in CONTROL.items() if v is event)  # the same object
            shapes.append(name)
    assert shapes == expected
    assert b"".join(e.audio for e in out if isinstance(e, p.InputAudioBufferAppend)) == heard


def delta(item_id: str, pcm: bytes) -> p.OutputAudioDelta:
    return p.OutputAudioDelta("response.output_audio.delta", "resp_1", item_id, pcm)


async def test_decode_keeps_whole_samples_and_passes_markers() -> None:
    earcon, end = Earcon("listening", audio(9, 5)), EndOfReply(3)
    items: list[Play | EndOfReply | AnswerAgain | Earcon] = [
        Play(delta("item_a", b"\x01\x02\x03"), 3),
        Play(delta("item_a", b"\x04\x05"), 3),
        earcon,
        Play(delta("item_b", b"\x06"), 3),
        Play(delta("item_b", b""), 4),
        end,
    ]
    in_send, in_recv = trio.open_memory_channel[Play | EndOfReply | AnswerAgain | Earcon](math.inf)
    out_send, out_recv = trio.open_memory_channel[ReplyAudio | EndOfReply | AnswerAgain | Earcon](
        math.inf
    )
    for item in items:
        in_send.send_nowait(item)
    in_send.close()
    with trio.fail_after(5):
        await run_decode(in_recv, out_send)
        out = [item async for item in out_recv]
    assert out == [
        ReplyAudio(b"\x01\x02", 3, "item_a"),
        ReplyAudio(b"\x04\x05", 3, "item_a"),
        earcon,
        ReplyAudio(b"", 3, "item_b"),
        ReplyAudio(b"", 4, "item_b"),
        end,
    ]
    assert out[2] is earcon
    assert out[5] is end


@pytest.mark.parametrize(
    ("replies", "expected"),
    [
        ([(1, "a", 100)], Played("a", 100)),
        ([(1, "a", 100), (1, "a", 50)], Played("a", 150)),
        ([(1, "a", 10), (1, "b", 20)], Played("b", 20)),
        ([(1, "a", 250), (1, "b", 40), (1, "c", 35)], Played("c", 35)),
        # A later turn's item restarts the count even when its id repeats (ids restart on
        # every connection).
        ([(1, "a", 100), (2, "a", 30)], Played("a", 30)),
    ],
)
async def test_position_names_the_item_and_counts_its_ms(
    replies: list[tuple[int, str, int]], expected: Played
) -> None:
    player = Player(NullSpeaker())
    send, recv = trio.open_memory_channel[ReplyAudio | EndOfReply | AnswerAgain | Earcon](math.inf)
    news_send, _news_recv = trio.open_memory_channel[PlaybackNews](math.inf)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(player.run, recv, news_send)
            assert player.position() is None
            for turn, item_id, ms in replies:
                send.send_nowait(ReplyAudio(audio(turn, ms), turn, item_id))
            await trio.testing.wait_all_tasks_blocked()
            assert player.position() == expected
            await send.aclose()


X1, X2, Y1, Y2, Z = audio(1, 30), audio(2, 20), audio(3, 40), audio(4, 10), audio(5, 25)
BEEP = Earcon("commit", audio(6, 15))
Step = ReplyAudio | EndOfReply | Earcon | int  # an int: stop(that turn) once the rest is played
TURN2_B: list[Step] = [ReplyAudio(Y1, 2, "b"), EndOfReply(2)]
TURN3: list[Step] = [ReplyAudio(Z, 3, "a"), EndOfReply(3)]


def turn1_stopped(stop: int) -> list[Step]:
    """Turn 1's reply, stopped (by a stop of turn ``stop``) after its first delta played."""
    return [ReplyAudio(X1, 1, "a"), stop, ReplyAudio(X2, 1, "a"), EndOfReply(1)]


@pytest.mark.parametrize(
    ("steps", "played", "news"),
    [
        pytest.param(
            [ReplyAudio(X1, 1, "a"), ReplyAudio(X2, 1, "a"), EndOfReply(1), BEEP, *TURN2_B],
            X1 + X2 + BEEP.pcm + Y1,
            [("started", 1), ("end", 1), ("started", 2), ("end", 2)],
            id="plain",
        ),
        pytest.param(
            [*turn1_stopped(1), ReplyAudio(Y1, 2, "a"), ReplyAudio(Y2, 2, "a"), EndOfReply(2)],
            X1 + Y1 + Y2,
            [("started", 1), ("started", 2), ("end", 2)],
            id="stopped turn, later turn plays",
        ),
        pytest.param(
            [*turn1_stopped(2), ReplyAudio(Y1, 2, "a"), EndOfReply(2), *TURN3],
            X1 + Z,
            [("started", 1), ("started", 3), ("end", 3)],
            id="stop drops earlier turns too",
        ),
        pytest.param(
            [ReplyAudio(Y1, 2, "b"), 1, ReplyAudio(Y2, 2, "b"), EndOfReply(2)],
            Y1 + Y2,
            [("started", 2), ("end", 2)],
            id="stopping an earlier turn leaves a later one",
        ),
        pytest.param(
            [1, ReplyAudio(X1, 1, "a"), EndOfReply(1), ReplyAudio(Y1, 2, "a"), EndOfReply(2)],
            Y1,
            [("started", 2), ("end", 2)],
            id="stopped before it arrived",
        ),
    ],
)
async def test_player_stops_by_turn_and_reports(
    tmp_path: Path, steps: list[Step], played: bytes, news: list[tuple[str, int]]
) -> None:
    speaker = WavSpeaker(tmp_path / "out.wav", realtime=False)
    player = Player(speaker)
    send, recv = trio.open_memory_channel[ReplyAudio | EndOfReply | AnswerAgain | Earcon](math.inf)
    news_send, news_recv = trio.open_memory_channel[PlaybackNews](math.inf)
    began = trio.current_time()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(player.run, recv, news_send)
            async with send:
                for step in steps:
                    if isinstance(step, int):
                        await trio.testing.wait_all_tasks_blocked()
                        player.stop(step)
                    else:
                        send.send_nowait(step)
        got = [n async for n in news_recv]  # ends: the player closed it
    assert read_wav(speaker.path) == played
    assert [("started" if isinstance(n, PlaybackStarted) else "end", n.turn) for n in got] == news
    assert all(began <= n.at <= trio.current_time() for n in got if isinstance(n, PlaybackStarted))


async def test_paced_playback_position_stop_and_end(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # The player runs in the fixture's nursery: the speaker closes in a thread, at teardown,
    # outside the virtual-time deadline below.
    speaker = WavSpeaker(tmp_path / "out.wav", realtime=True)
    player = Player(speaker)
    send, recv = trio.open_memory_channel[ReplyAudio | EndOfReply | AnswerAgain | Earcon](math.inf)
    news_send, news_recv = trio.open_memory_channel[PlaybackNews](math.inf)
    x, y = audio(1, 1000), audio(2, 200)
    with trio.fail_after(30):
        await nursery.start(player.run, recv, news_send)
        t0 = trio.current_time()
        send.send_nowait(ReplyAudio(x, 1, "a"))
        send.send_nowait(EndOfReply(1))
        await trio.sleep_until(t0 + 0.31)
        assert news_recv.receive_nowait() == PlaybackStarted(1, t0)
        position = player.position()
        assert position is not None
        assert position.item_id == "a"
        assert 310 - BLOCK_MS <= position.ms <= 310 + BLOCK_MS  # paced: not all of it at once
        player.stop(1)  # a barge-in
        assert player.position() == position  # what came out is all that comes out
        send.send_nowait(ReplyAudio(y, 2, "b"))
        send.send_nowait(EndOfReply(2))
        started = await news_recv.receive()
        assert isinstance(started, PlaybackStarted)
        assert started.turn == 2
        assert t0 + 0.31 <= started.at <= t0 + 0.31 + BLOCK_MS / 1000
        assert await news_recv.receive() == EndOfReply(2)  # not EndOfReply(1): it was stopped
        assert trio.current_time() - started.at == pytest.approx(0.2)  # after it played
        assert player.position() == Played("b", 200)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.WouldBlock):
            news_recv.receive_nowait()
    heard = read_wav(speaker.path)
    assert heard.endswith(y)
    cut = len(heard) - len(y)
    assert heard[:cut] == x[:cut]
    # The position read at the stop (what a truncate tells the server) is what came out.
    assert ms_of(cut) == position.ms
