"""``PyAudioSpeaker.stop`` on a real sound server: the stop fades out at once, and the next reply
plays exactly as sent.

A reply (a tone) is stopped a third of the way through, then a second reply (another tone) is
played to its end. The speaker's sink runs at 24 kHz mono, the wire format, so the recording of
its monitor carries every sample bit for bit (the keep-alive mixes in exact zeros): what came out
is compared with what was played, sample for sample. Every wait is on audio the sound server has
really carried (the recording), never on the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
import trio

from tests.soundserver import (
    DEFAULT_DEVICES,
    RATE,
    Recording,
    SoundServer,
    align,
    missing_programs,
    running_soundserver,
    samples,
    sine,
    to_pcm,
)
from voiced.config import AudioOutputConfig
from voiced.devices.convert import DeviceFormat, fade_out
from voiced.devices.soundcard import FADE_MS, PyAudioSpeaker
from voiced.stages.playback import BLOCK_MS

pytestmark = pytest.mark.skipif(
    bool(missing_programs()), reason=f"needs a sound server: missing {missing_programs()}"
)


def reply(freq: float, seconds: float, seed: int) -> bytes:
    """A loud tone with a little noise, the same every run: the noise makes where it lies in a
    recording unambiguous (a pure 440 Hz tone repeats itself every 25 ms at 24 kHz)."""
    noise = np.random.default_rng(seed).integers(-200, 201, int(seconds * RATE))
    return to_pcm(samples(sine(freq, seconds)).astype(np.int32) + noise)


A = reply(440, 1.0, seed=1)  # the reply that is stopped
B = reply(660, 0.5, seed=2)  # the next reply, played to its end
LEVEL = int(np.max(np.abs(samples(A).astype(np.int32))))
FADE = RATE * FADE_MS // 1000
HEARD_BEFORE_STOP = RATE * 3 // 10
"""Frames of A the recording carries before the stop."""
AFTER_STOP = RATE // 2
"""Frames recorded after the stop before B starts: far more than the device's own buffer, so A
(and its fade) is out and the speaker is silent."""
MARGIN = RATE * 3 // 10
"""Frames recorded after B's drain: the device and the recording hold the last few ms."""
BLOCK = 2 * RATE * BLOCK_MS // 1000


@pytest.fixture(scope="module")
def sound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoundServer]:
    with running_soundserver(tmp_path_factory.mktemp("sound"), DEFAULT_DEVICES) as server:
        yield server


async def until_recorded(recording: Recording, frames: int) -> None:
    await trio.to_thread.run_sync(recording.wait_for, frames * recording.frame_bytes)


async def stop_then_play(sound: SoundServer) -> npt.NDArray[np.int16]:
    """Play A, stop it once 300 ms of it were recorded, play B to its end: the recording."""
    recording = await trio.to_thread.run_sync(sound.record, "spk.monitor")
    speaker = PyAudioSpeaker(
        AudioOutputConfig(backend="pyaudio", device="spk", rate=RATE, channels=1)
    )
    try:
        with trio.fail_after(20):
            await speaker.open()
            assert speaker.statistics()["name"] == f"pyaudio:spk ({RATE} Hz, 1 ch)"
            stopped = False

            async def play_a() -> None:  # as the playback stage does: 20 ms blocks until stopped
                for start in range(0, len(A), BLOCK):
                    if stopped:
                        return
                    await speaker.play(A[start : start + BLOCK])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(play_a)
                first_sound = await trio.to_thread.run_sync(recording.wait_for_sound)
                await until_recorded(recording, first_sound + HEARD_BEFORE_STOP)
                stopped = True  # no checkpoint between these two: nothing more of A is played
                speaker.stop()
            await until_recorded(recording, recording.nbytes // recording.frame_bytes + AFTER_STOP)
            for start in range(0, len(B), BLOCK):
                await speaker.play(B[start : start + BLOCK])
            await speaker.drain()
            await until_recorded(recording, recording.nbytes // recording.frame_bytes + MARGIN)
    finally:
        with trio.CancelScope(shield=True):
            await speaker.aclose()
        played = await trio.to_thread.run_sync(recording.stop)
    return samples(played)


def split(played: npt.NDArray[np.int16]) -> tuple[int, int, int]:
    """Where A begins, where its sound ends (the first 10 ms of exact silence after it), and
    where B begins, in the recording."""
    middle = samples(A)[RATE // 10 : RATE // 5]  # clear of the stream's start
    lag, correlation = align(middle, played)
    assert correlation > 0.9999
    a_start = lag - RATE // 10
    zero = np.concatenate(([0], (played == 0).astype(np.int32)))
    runs = np.cumsum(zero)
    after = np.arange(lag + len(middle), len(played) - FADE)
    silent = runs[after + FADE] - runs[after] == FADE  # played[i:i + FADE] is all zeros
    assert silent.any(), "A never went silent"
    a_end = int(after[np.argmax(silent)])
    b_start, correlation = align(samples(B), played)
    assert correlation > 0.9999
    assert a_end < b_start
    return a_start, a_end, b_start


async def test_a_stop_fades_out_at_once(sound: SoundServer) -> None:
    played = await stop_then_play(sound)
    a_start, a_end, _ = split(played)
    # It played on for the 300 ms and more before it stopped (the device's buffer).
    assert a_end - a_start > HEARD_BEFORE_STOP
    tail = played[a_end - RATE // 1000 : a_end].astype(np.int32)
    # No click: the last millisecond before the silence is faint, not A at full level cut off...
    assert np.max(np.abs(tail)) < LEVEL // 4, "A was cut off at full level: a click"
    # ...because it is the fade: A exactly up to where the stop fell, then A's next 10 ms faded
    # linearly to silence, then silence until B.
    heard = played[a_start:a_end]
    sent = samples(A)
    skip = RATE // 10  # clear of the stream's start (its first ms may come out as silence)
    differs = np.flatnonzero(heard[skip : len(sent)] != sent[skip : len(heard)])
    first_difference = skip + int(differs[0]) if len(differs) else len(heard)
    fits = []
    for cut in range(max(skip, first_difference - FADE), first_difference + 1):
        faded = samples(fade_out(sent[cut : cut + FADE].tobytes(), DeviceFormat(RATE, 1)))
        expected = np.concatenate((sent[skip:cut], faded))
        sounded = played[a_start + skip : a_start + cut + FADE]
        if np.array_equal(sounded, expected) and not np.any(played[a_start + cut + FADE : a_end]):
            fits.append(cut)
    assert fits, "what A ended with is not its own next 10 ms faded out"


async def test_the_next_reply_plays_exactly_as_sent(sound: SoundServer) -> None:
    played = await stop_then_play(sound)
    _, a_end, b_start = split(played)
    sent = samples(B)
    # Nothing of A is held back for B: silence from A's end to B's first sample...
    assert not np.any(played[a_end:b_start]), "stale audio played before the next reply"
    # ...then exactly B, and silence after it: B sounds for 500 ms, not 510.
    assert np.array_equal(played[b_start : b_start + len(sent)], sent)
    assert len(played) >= b_start + len(sent) + RATE // 10
    assert not np.any(played[b_start + len(sent) :])
    sounding = np.flatnonzero(played[a_end:])
    span = int(sounding[-1] - sounding[0]) + 1
    assert span <= len(sent), f"the next reply sounded for {span / RATE * 1000:.1f} ms"
