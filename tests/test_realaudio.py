"""voiced through PyAudio on a real sound server: PulseAudio with null sinks for sound cards.

Speech (espeak-ng) is played into a fake microphone and must reach the simulator intact; what
the fake speaker plays is recorded and must equal what the server sent. A person's pace
(speaking for a while before pressing, listening to part of an answer) is measured in audio the
sound server has really carried, read from recordings of the devices' monitors: never in wall
clock time, which a loaded machine stretches.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import pytest
import soxr
import trio

from tests.conftest import SIM_KEY, config_file, free_port
from tests.soundserver import (
    Device,
    Recording,
    SoundServer,
    align,
    missing_programs,
    onset,
    running_soundserver,
    samples,
    speech,
    to_pcm,
)
from voiced.app import run_daemon
from voiced.config import load_config
from voiced.events import Event, StateChanged
from voiced.pipeline import Pipeline
from voiced.sim import SimConnection, Simulator
from voiced.turn import State

pytestmark = pytest.mark.skipif(
    bool(missing_programs()), reason=f"needs a sound server: missing {missing_programs()}"
)

DEVICES = (
    Device("mic"),
    Device("spk"),
    Device("mic16", 16000),
    Device("mic44", 44100),
    Device("mic48s", 48000, 2),
    Device("spk48s", 48000, 2),
)
UTTERANCE = "what is the weather like in the kitchen today"
RATE = 24000
TAIL = 0.2
"""Seconds of audio the microphone carries after the last word before the button comes up."""


@pytest.fixture(scope="module")
def sound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoundServer]:
    with running_soundserver(tmp_path_factory.mktemp("sound"), DEVICES) as server:
        yield server


@asynccontextmanager
async def daemon(
    tmp_path: Path,
    sim: Simulator,
    *,
    mic: str = "mic",
    spk: str = "spk",
    audio: str = "",
) -> AsyncIterator[tuple[Pipeline, httpx.AsyncClient, trio.abc.ReceiveChannel[Event]]]:
    """``voiced run`` on the sound server's devices, talking to ``sim``."""
    port = free_port()
    async with trio.open_nursery() as nursery:
        sim_port = await nursery.start(sim.serve)
        path = config_file(
            tmp_path,
            f"realtime: {{url: 'ws://127.0.0.1:{sim_port}/v1/realtime'}}\n"
            f"auth: {{api_key: {SIM_KEY}}}\n"
            f"audio:\n  input: {{backend: pyaudio, device: {mic}{audio_in(audio)}}}\n"
            f"  output: {{backend: pyaudio, device: {spk}{audio_out(audio)}}}\n"
            "  earcons: false\n"
            f"plugins:\n  http: {{port: {port}}}\n",
        )
        stop = trio.Event()
        pipe: Pipeline = await nursery.start(
            partial(run_daemon, load_config(path), shutdown_trigger=stop.wait)
        )
        events = pipe.broadcast.subscribe("test")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await pipe.ready.wait()
            yield pipe, client, events
        stop.set()
        nursery.cancel_scope.cancel()


def audio_in(extra: str) -> str:
    return extra.split("|")[0] if extra else ""


def audio_out(extra: str) -> str:
    return extra.split("|")[1] if "|" in extra else ""


async def until(events: trio.abc.ReceiveChannel[Event], state: State) -> None:
    async for event in events:
        if isinstance(event, StateChanged) and event.new is state:
            return
    raise AssertionError("events ended")


async def say(
    sound: SoundServer,
    http: httpx.AsyncClient,
    events: trio.abc.ReceiveChannel[Event],
    pcm: bytes,
    *,
    sink: str = "mic",
    rate: int = RATE,
    channels: int = 1,
    early: float = 0.1,
) -> None:
    """A person speaks ``pcm``, presses once ``early`` seconds of it have been played into the
    microphone, and releases once the microphone has carried the last word and ``TAIL`` more.

    A recording of the microphone's monitor says what has been played: the app's microphone
    hears the same source. The press reaches the app later still (its capture lags the
    recording by some 25 ms, then the HTTP request), all of which the default 300 ms pre-roll
    must cover: ``early`` leaves it some 200 ms for that on a busy machine.
    """
    heard = await trio.to_thread.run_sync(sound.record, f"{sink}.monitor", rate, channels)
    try:
        player = await trio.to_thread.run_sync(sound.start_playing, sink, pcm, rate, channels)
        # The frame of the recording where the clip begins: its first sound, less the quiet
        # it starts with (at the sink's own rate, the clip goes through sample for sample).
        begins = await trio.to_thread.run_sync(heard.wait_for_sound)
        begins -= onset(pcm, channels=channels) or 0
        await until_recorded(heard, begins + int(early * rate))  # already speaking
        await http.post("/start")
        await until(events, State.LISTENING)
        clip = len(pcm) // heard.frame_bytes
        await until_recorded(heard, begins + clip + int(TAIL * rate))  # the last word is out
        assert await trio.to_thread.run_sync(player.wait, 5) == 0
        await http.post("/commit")
    finally:
        await trio.to_thread.run_sync(heard.stop)


async def until_recorded(recording: Recording, frames: int) -> None:
    """Wait until ``recording`` holds ``frames`` frames: the sound server's clock paces this."""
    await trio.to_thread.run_sync(recording.wait_for, frames * recording.frame_bytes)


def connection(sim: Simulator) -> SimConnection:
    (conn,) = sim.connections
    return conn


async def test_speech_reaches_the_server_intact_with_preroll(
    sound: SoundServer, tmp_path: Path
) -> None:
    utterance = speech(UTTERANCE)
    sim = Simulator(api_key=SIM_KEY)
    with trio.fail_after(30):
        async with daemon(tmp_path, sim) as (_pipe, http, events):
            await say(sound, http, events, utterance)
            await until(events, State.IDLE)
    (heard,) = connection(sim).committed_audio
    # The whole utterance is there, what was spoken before the press included (pre-roll).
    lag, correlation = align(samples(utterance), samples(heard))
    assert correlation >= 0.999
    assert lag * 2 < 48 * 300  # it starts within the pre-roll


@pytest.mark.parametrize(
    ("device", "rate", "channels"),
    [("mic16", 16000, 1), ("mic44", 44100, 1), ("mic48s", 48000, 2)],
)
async def test_devices_at_other_rates_and_channels(
    sound: SoundServer, tmp_path: Path, device: str, rate: int, channels: int
) -> None:
    utterance = samples(speech(UTTERANCE)).astype(np.float32)
    at_device = soxr.resample(utterance, 24000, rate, "VHQ")
    played = to_pcm(np.repeat(at_device[:, None], channels, axis=1))
    # What can come back: the utterance as the device's rate can carry it, brought back to
    # 24 kHz the way voiced does (soxr, high quality).
    reference = soxr.resample(at_device, rate, 24000, "HQ")
    sim = Simulator(api_key=SIM_KEY)
    with trio.fail_after(30):
        async with daemon(
            tmp_path, sim, mic=device, audio=f", rate: {rate}, channels: {channels}|"
        ) as (_pipe, http, events):
            # Pressed as the speech starts: this test is about formats (pre-roll has its own).
            await say(
                sound, http, events, played, sink=device, rate=rate, channels=channels, early=0
            )
            await until(events, State.IDLE)
            status = (await http.get("/status")).json()
    assert status["audio"]["input"]["name"] == f"pyaudio:{device} ({rate} Hz, {channels} ch)"
    (heard,) = connection(sim).committed_audio
    _, correlation = align(reference, samples(heard))
    # voiced's own conversion is exact (tests/test_convert.py); through ALSA's pulse plugin the
    # capture measures 0.987 to 1.0 depending on the format (48 kHz mono is the lowest).
    assert correlation >= 0.98


@pytest.mark.parametrize(
    ("speaker", "fmt", "fidelity"),
    [
        ("spk", ", rate: 24000", 0.9999),  # no resampling anywhere: exact but for the mixing
        ("spk48s", ", rate: 48000, channels: 2", 0.99),  # resampled by voiced, then by the test
    ],
)
async def test_reply_plays_gapless_from_jittered_uneven_deltas(
    sound: SoundServer, tmp_path: Path, speaker: str, fmt: str, fidelity: float
) -> None:
    utterance = speech(UTTERANCE)
    # Deltas of uneven sizes, each up to 40 ms early or late; on average twice as fast as real
    # time, as the real service sends them.
    sim = Simulator(api_key=SIM_KEY, pace=0.5, jitter=0.04)
    recording = await trio.to_thread.run_sync(sound.record, f"{speaker}.monitor")
    with trio.fail_after(40):
        async with daemon(tmp_path, sim, spk=speaker, audio=f"|{fmt}") as (_pipe, http, events):
            for _ in range(2):  # the second reply must gather its jitter buffer again
                await say(sound, http, events, utterance)
                await until(events, State.SPEAKING)
                await until(events, State.IDLE)
            status = (await http.get("/status")).json()
    # The device still holds the last few ms when playback is done: record 200 ms more.
    await trio.to_thread.run_sync(recording.wait_for, recording.nbytes + 2 * 24000 // 5)
    played = samples(await trio.to_thread.run_sync(recording.stop))
    # Every sample the server sent came out, in one piece: a gap anywhere would break the match.
    for reply in connection(sim).reply_audio:
        _, correlation = align(samples(reply), played)
        assert correlation >= fidelity
    assert status["audio"]["output"]["underruns"] == 0
    # The app saw its first sample reach the device (how soon is bench/'s business).
    assert status["last_turn"]["latencies_ms"]["first_play"] >= 0


async def test_barge_in_stops_the_speaker_and_truncates_at_what_was_heard(
    sound: SoundServer, tmp_path: Path
) -> None:
    utterance = speech(UTTERANCE)  # its echo is the reply: about 3 s
    sim = Simulator(api_key=SIM_KEY, pace=0.5)
    recording = await trio.to_thread.run_sync(sound.record, "spk.monitor")
    with trio.fail_after(30):
        async with daemon(tmp_path, sim, audio="|, rate: 24000") as (_pipe, http, events):
            await say(sound, http, events, utterance)
            await until(events, State.SPEAKING)
            # The person listens to a second of the answer (from its first sound), then
            # interrupts: everything recorded by then certainly came out of the speaker.
            first_sound = await trio.to_thread.run_sync(recording.wait_for_sound)
            await until_recorded(recording, first_sound + RATE)
            pressed = recording.nbytes // recording.frame_bytes
            await http.post("/start")
            await until(events, State.LISTENING)
            # Half a second more of the speaker's output, in which it must stay quiet.
            listening = recording.nbytes // recording.frame_bytes
            await until_recorded(recording, listening + RATE // 2)
            await http.post("/cancel")
            await until(events, State.IDLE)
    played = samples(await trio.to_thread.run_sync(recording.stop))
    conn = connection(sim)
    (truncate,) = [e for e in conn.received if e["type"] == "conversation.item.truncate"]
    reply = samples(conn.reply_audio[0])
    start, correlation = align(reply[: RATE // 2], played)  # where the reply began
    assert correlation >= 0.999
    assert start < first_sound < pressed  # the answer was playing when the button went down
    heard = played[start : start + len(reply)]
    # What came out: exactly the reply up to ``matched`` (where the stop's fade begins), and
    # sound up to ``last_sound`` (the fade's end). The keep-alive mixes in exact zeros, so
    # after the stop the recording is exactly silent.
    differs = np.flatnonzero(heard != reply[: len(heard)])
    matched = int(differs[0]) if len(differs) else len(heard)
    last_sound = int(np.flatnonzero(heard)[-1]) + 1
    # The speaker played on until the press: all recorded before it was the reply, unchanged.
    assert matched >= pressed - start
    # Then it stopped: a fade of at most 10 ms, then silence to the end of the recording,
    # which ran half a second past the moment the app said it was listening.
    assert last_sound <= matched + RATE // 100
    assert not np.any(played[start + last_sound :])
    assert len(played) >= listening + RATE // 2
    assert start + last_sound < len(played) - RATE // 4  # and the silence lasted
    # The truncate says what came out, within 20 ms. Where the reply itself was silent at the
    # stop (a pause between words), the audio cannot tell the stop apart within the pause: any
    # point from the last sound to where the reply sounds again is right.
    low, high = sorted((matched, last_sound))
    assert low / 24 - 20 <= truncate["audio_end_ms"] <= high / 24 + 20
