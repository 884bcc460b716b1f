"""Capture: ``AudioGate`` byte for byte (pure, no I/O), and ``run_intake``'s ordering."""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable

import pytest
import trio
import trio.testing

from voiced.audio import RATE, AudioFrame, bytes_of
from voiced.messages import Inbound
from voiced.stages.capture import EARCON_ECHO, PREROLL_SLACK, AudioGate, run_intake
from voiced.turn import Command, State, TurnCommand


def samples(start: int, count: int) -> bytes:
    """PCM whose sample ``i`` of the stream has the value ``i`` (mod 2**16): any shift shows."""
    return array("H", ((start + i) & 0xFFFF for i in range(count))).tobytes()


def frames_of(counts: Iterable[int], start: int = 0) -> list[AudioFrame]:
    """Consecutive frames of ``counts`` samples each; ``captured_at`` is when the last was heard."""
    out = []
    for count in counts:
        out.append(AudioFrame(samples(start, count), (start + count) / RATE))
        start += count
    return out


def pcm(frames: list[AudioFrame]) -> bytes:
    return b"".join(f.pcm for f in frames)


def idle_feed(gate: AudioGate, frames: list[AudioFrame]) -> None:
    for frame in frames:
        assert gate.frame(frame) is None


@pytest.mark.parametrize("state", [State.IDLE, State.THINKING, State.SPEAKING])
@pytest.mark.parametrize("half_duplex", [True, False])
def test_frames_outside_listening_are_never_sent(state: State, half_duplex: bool) -> None:
    gate = AudioGate(preroll_ms=300, half_duplex=half_duplex)
    gate.changed(state, 0.0)
    idle_feed(gate, frames_of([480] * 100))


@pytest.mark.parametrize(
    ("preroll_ms", "counts", "press_at", "first_sample"),
    [
        # 20 ms frames, press on a frame's end: that frame is before the press.
        (300, [480] * 50, 0.9, 21_600 - 7_200),
        # Press mid-frame: the frame ending after it counts as heard after the press.
        (300, [480] * 50, 0.91, 21_600 - 7_200),
        # Odd frame sizes: the pre-roll is trimmed inside a frame, to the sample.
        # 57 frames of 333 end by 0.8 s (18 981 samples); 250 ms is 6 000 samples.
        (250, [333] * 70, 0.8, 18_981 - 6_000),
        # No pre-roll: only what was heard after the press.
        (0, [333] * 70, 0.8, 18_981),
        # Less heard than the pre-roll: all of it.
        (500, [480] * 10, 0.15, 0),
        # A press before anything was heard: everything is after it.
        (300, [480] * 10, 0.0, 0),
    ],
)
def test_press_sends_exactly_the_preroll_then_everything_after(
    preroll_ms: int, counts: list[int], press_at: float, first_sample: int
) -> None:
    gate = AudioGate(preroll_ms=preroll_ms)
    frames = frames_of(counts)
    idle_feed(gate, frames)
    sent = gate.changed(State.LISTENING, press_at)
    assert pcm(sent) == samples(first_sample, sum(counts) - first_sample)
    # In order, each keeping the time it was heard (a trimmed frame keeps its end's time).
    assert [f.captured_at for f in sent] == [
        f.captured_at for f in frames[len(frames) - len(sent) :]
    ]


@pytest.mark.parametrize("preroll_ms", [0, 120, 500])
def test_ring_stays_bounded_and_its_count_exact(preroll_ms: int) -> None:
    sizes = [1, 7, 333, 49, 1001, 3, 480, 123, 2047]  # odd sample counts, cut anywhere
    counts = [sizes[i % len(sizes)] for i in range(5000)]
    total = sum(counts)
    bound = bytes_of(preroll_ms) + PREROLL_SLACK
    gates = [AudioGate(preroll_ms=preroll_ms), AudioGate(preroll_ms=preroll_ms)]
    for frame in frames_of(counts):
        for gate in gates:
            assert gate.frame(frame) is None
        held = [len(f.pcm) for f in gates[0]._ring]
        assert gates[0]._ring_bytes == sum(held) <= bound
    # A press before all of it returns the whole ring: exactly the bound, the newest audio.
    everything = pcm(gates[0].changed(State.LISTENING, -1.0))
    assert everything == samples(total - bound // 2, bound // 2)
    # A press after all of it: exactly the pre-roll.
    preroll = pcm(gates[1].changed(State.LISTENING, total / RATE))
    assert preroll == samples(total - bytes_of(preroll_ms) // 2, bytes_of(preroll_ms) // 2)


def test_next_turn_starts_from_an_empty_ring() -> None:
    gate = AudioGate(preroll_ms=200)
    idle_feed(gate, frames_of([480] * 50))
    assert pcm(gate.changed(State.LISTENING, 0.9)) == samples(21_600 - 4_800, 4_800 + 2_400)
    listened = frames_of([480] * 10, start=24_000)
    assert [gate.frame(f) for f in listened] == listened
    assert gate.changed(State.THINKING, 0.0) == []
    assert gate.changed(State.IDLE, 0.0) == []
    idle_feed(gate, frames_of([111] * 300, start=28_800))  # 1.39 s: the ring trims while idle
    end = 28_800 + 111 * 300
    assert pcm(gate.changed(State.LISTENING, end / RATE)) == samples(end - 4_800, 4_800)


def test_listening_frames_pass_through_unchanged() -> None:
    gate = AudioGate(preroll_ms=300)
    gate.changed(State.LISTENING, 0.0)
    for frame in frames_of([1, 480, 333, 2047]):
        assert gate.frame(frame) is frame


def muted_gate(*earcons: tuple[float, float]) -> AudioGate:
    gate = AudioGate()
    gate.changed(State.LISTENING, 0.0)
    for now, seconds in earcons:
        gate.mute(now, seconds)
    return gate


@pytest.mark.parametrize(
    ("make", "captured_at", "muted"),
    [
        (lambda: muted_gate((1.0, 0.2)), 1.0, True),
        (lambda: muted_gate((1.0, 0.2)), 1.2, True),  # the earcon itself
        (lambda: muted_gate((1.0, 0.2)), 1.2 + EARCON_ECHO - 0.01, True),  # its echo
        (lambda: muted_gate((1.0, 0.2)), 1.2 + EARCON_ECHO + 0.01, False),
        (lambda: muted_gate((1.0, 0.2)), 1.5, False),
        # A second earcon while the first plays plays after it: the window grows.
        (lambda: muted_gate((1.0, 0.2), (1.1, 0.2)), 1.5, True),
        (lambda: muted_gate((1.0, 0.2), (1.1, 0.2)), 1.75, False),
    ],
)
def test_earcon_window_is_sent_as_silence(
    make: Callable[[], AudioGate], captured_at: float, muted: bool
) -> None:
    frame = AudioFrame(samples(1, 480), captured_at)
    out = make().frame(frame)
    assert out is not None
    assert out.captured_at == captured_at
    assert out.pcm == (bytes(len(frame.pcm)) if muted else frame.pcm)


@pytest.mark.parametrize("half_duplex", [True, False])
def test_half_duplex_drops_what_is_heard_while_speaking(half_duplex: bool) -> None:
    gate = AudioGate(preroll_ms=300, half_duplex=half_duplex)
    idle_feed(gate, frames_of([480] * 25))  # the user, before the turn
    gate.changed(State.THINKING, 0.0)
    idle_feed(gate, frames_of([480] * 5, start=12_000))
    gate.changed(State.SPEAKING, 0.0)
    idle_feed(gate, frames_of([480] * 20, start=14_400))  # the agent's voice, 0.6 s to 1.0 s
    sent = pcm(gate.changed(State.LISTENING, 1.0))  # a barge-in
    assert sent == (b"" if half_duplex else samples(24_000 - 7_200, 7_200))


class FakeMicrophone:
    """A fake: the real microphones need a sound device (or pace a file in real time). Its flush
    puts a tail frame into the session's channel, as a real one does, after a moment."""

    name = "fake"

    def __init__(self, inbound: trio.MemorySendChannel[Inbound]) -> None:
        self.inbound = inbound
        self.flushes = 0

    async def run(
        self,
        frames: trio.MemorySendChannel[AudioFrame],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()

    async def flush(self) -> None:
        await trio.sleep(0.05)  # virtual time: the tail takes a moment to come
        self.flushes += 1
        self.inbound.send_nowait(AudioFrame(samples(self.flushes, 1), trio.current_time()))

    def statistics(self) -> dict[str, object]:
        return {"name": self.name, "dropped_frames": 0}

    def watch(self, callback: Callable[[str, str | None], None]) -> None:
        pass


@pytest.mark.parametrize("with_microphone", [True, False])
async def test_intake_stamps_flushes_and_keeps_order(
    autojump_clock: trio.testing.MockClock, with_microphone: bool
) -> None:
    commands = [TurnCommand(c, source=f"input{i}") for i, c in enumerate(Command)]
    with trio.fail_after(30):
        command_send, command_recv = trio.open_memory_channel[TurnCommand](0)
        inbound_send, inbound_recv = trio.open_memory_channel[Inbound](math.inf)
        microphone = FakeMicrophone(inbound_send.clone()) if with_microphone else None
        arrived = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_intake, command_recv, inbound_send, microphone)
            async with command_send:
                for command in commands:
                    await trio.sleep(1)
                    await command_send.send(command)  # unbuffered: returns as intake takes it
                    arrived.append(trio.current_time())
        if microphone is not None:
            await microphone.inbound.aclose()
        got = [item async for item in inbound_recv]
    if microphone is not None:  # each command right after the tail its flush put in
        tails = got[0::2]
        assert tails == [AudioFrame(samples(n, 1), at + 0.05) for n, at in enumerate(arrived, 1)]
        got = got[1::2]
    assert [(c.command, c.source, c.at) for c in got if isinstance(c, TurnCommand)] == [
        (c.command, c.source, at) for c, at in zip(commands, arrived, strict=True)
    ]
    assert len(got) == len(commands)
    assert all(c.at is None for c in commands)  # stamped copies: the inputs' own are untouched
