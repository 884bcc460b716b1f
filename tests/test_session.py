"""The session task with real channels and a null speaker: what it carries out, in order.

The gate's own rules are unit-tested in ``test_capture.py``; here the session must hand the gate
every frame and state change, and send what it lets through ahead of the commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from voiced import protocol as p
from voiced.actions import Play
from voiced.audio import AnswerAgain, AudioFrame, Earcon, EndOfReply, bytes_of
from voiced.broadcast import Broadcast
from voiced.devices.null import NullSpeaker
from voiced.messages import Inbound, Shutdown
from voiced.session import Session
from voiced.stages.capture import AudioGate
from voiced.stages.playback import Player
from voiced.stages.transport import Renew
from voiced.status import Status
from voiced.turn import Command, TurnCommand, TurnController


def frame(index: int, ms: int = 20) -> AudioFrame:
    """A frame whose every byte says which frame it is."""
    return AudioFrame(bytes([index % 256]) * bytes_of(ms), 0.0)


@asynccontextmanager
async def session(
    preroll_ms: int, half_duplex: bool = True
) -> AsyncIterator[tuple[trio.MemorySendChannel[Inbound], list[AudioFrame | p.ClientEvent]]]:
    inbound_send, inbound_recv = trio.open_memory_channel[Inbound](64)
    encode_send, encode_recv = trio.open_memory_channel[AudioFrame | p.ClientEvent | Renew](64)
    decode_send, decode_recv = trio.open_memory_channel[Play | EndOfReply | AnswerAgain | Earcon](
        64
    )
    sent: list[AudioFrame | p.ClientEvent] = []

    async def collect() -> None:
        async for item in encode_recv:
            assert not isinstance(item, Renew)
            sent.append(item)

    s = Session(
        controller=TurnController(),
        gate=AudioGate(preroll_ms=preroll_ms, half_duplex=half_duplex),
        status=Status("ws://x", "m"),
        broadcast=Broadcast(),
        to_encode=encode_send,
        to_decode=decode_send,
        player=Player(NullSpeaker()),
    )
    s.controller.server_event(p.SessionUpdated("session.updated", {}))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.run, inbound_recv)
        nursery.start_soon(collect)
        async with inbound_send:
            yield inbound_send, sent
            await inbound_send.send(Shutdown())
    decode_recv.close()


def audio(sent: list[AudioFrame | p.ClientEvent]) -> bytes:
    return b"".join(item.pcm for item in sent if isinstance(item, AudioFrame))


async def test_preroll_sends_the_audio_heard_before_the_press() -> None:
    with trio.fail_after(10):
        async with session(preroll_ms=50) as (inbound, sent):
            for i in range(10):  # 200 ms heard while idle
                await inbound.send(frame(i))
            await inbound.send(TurnCommand(Command.START))
            for i in range(10, 16):  # 120 ms while listening
                await inbound.send(frame(i))
            await inbound.send(TurnCommand(Command.COMMIT))
    # Exactly 50 ms from before the press (the last 10 ms of frame 7, frames 8 and 9), then all
    # that was heard while listening, in order; then the commit.
    expected = bytes([7]) * bytes_of(10) + b"".join(frame(i).pcm for i in range(8, 16))
    assert audio(sent) == expected
    assert isinstance(sent[-2], p.InputAudioBufferCommit)
    assert isinstance(sent[-1], p.ResponseCreate)


async def test_no_preroll() -> None:
    with trio.fail_after(10):
        async with session(preroll_ms=0) as (inbound, sent):
            await inbound.send(frame(1))
            await inbound.send(TurnCommand(Command.START))
            for i in range(2, 8):
                await inbound.send(frame(i))
            await inbound.send(TurnCommand(Command.COMMIT))
    assert audio(sent) == b"".join(frame(i).pcm for i in range(2, 8))


async def _barge_in(half_duplex: bool) -> bytes:
    with trio.fail_after(10):
        async with session(preroll_ms=100, half_duplex=half_duplex) as (inbound, sent):
            await inbound.send(TurnCommand(Command.START))
            for i in range(6):
                await inbound.send(frame(i))
            await inbound.send(TurnCommand(Command.COMMIT))
            await inbound.send(p.ResponseCreated("response.created", "r1"))
            await inbound.send(
                p.OutputAudioDelta("response.output_audio.delta", "r1", "i1", b"\0\0" * 2400)
            )
            for i in range(20, 25):  # heard while the agent speaks: its own voice, in a room
                await inbound.send(frame(i))
            await inbound.send(TurnCommand(Command.START))  # barge in
            for i in range(30, 36):
                await inbound.send(frame(i))
            await inbound.send(TurnCommand(Command.COMMIT))
        commits = [n for n, item in enumerate(sent) if isinstance(item, p.InputAudioBufferCommit)]
        return audio(sent[commits[0] + 1 :])


async def test_half_duplex_never_sends_what_was_heard_while_the_agent_spoke() -> None:
    assert await _barge_in(half_duplex=True) == b"".join(frame(i).pcm for i in range(30, 36))


async def test_full_duplex_keeps_it_for_the_preroll() -> None:
    heard = b"".join(frame(i).pcm for i in (20, 21, 22, 23, 24))
    assert await _barge_in(half_duplex=False) == heard[-bytes_of(100) :] + b"".join(
        frame(i).pcm for i in range(30, 36)
    )


async def test_preroll_is_measured_from_the_press_not_its_handling() -> None:
    """Audio that arrives after the press but before the command is handled (the microphone's
    tail is gathered first) is sent whole, and the pre-roll counts back from the press."""
    with trio.fail_after(10):
        async with session(preroll_ms=40) as (inbound, sent):
            t0 = trio.current_time()
            for i in range(5):  # heard before the press, at t0 + 0.0 .. 0.4
                await inbound.send(AudioFrame(frame(i).pcm, t0 + i / 10))
            for i in range(5, 8):  # heard after the press at 0.45, queued before the command
                await inbound.send(AudioFrame(frame(i).pcm, t0 + i / 10))
            await inbound.send(TurnCommand(Command.START, at=t0 + 0.45))
            for i in range(8, 12):
                await inbound.send(frame(i))
            await inbound.send(TurnCommand(Command.COMMIT))
    expected = b"".join(frame(i).pcm for i in range(3, 12))  # 40 ms before the press, and on
    assert audio(sent) == expected
