"""The private sound server (``tests/soundserver.py``) works as a sound card for PyAudio.

Real parts only: a real PulseAudio daemon, PortAudio through ALSA's pulse plugin, pacat. PyAudio's
blocking calls run on a worker thread joined with a timeout, so a stalled device fails the test
instead of hanging it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyaudio
import pytest

from tests.soundserver import (
    DEFAULT_DEVICES,
    MIC,
    RATE,
    SPEAKER,
    Device,
    SoundServer,
    align,
    missing_programs,
    running_soundserver,
    samples,
    speech,
    to_pcm,
)
from voiced.devices.portaudio import open_portaudio

MISSING = missing_programs()
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"needs {', '.join(MISSING)} (Debian: pulseaudio pulseaudio-utils libasound2-plugins "
    "espeak-ng sox; `make test` installs them)",
)

TEXT = "what is the weather today"
BLOCK_MS = 20
MARGIN = 0.4
"""Seconds recorded beyond the clip: capture latency here is ~10 ms, plus pacat's start."""

MIC48 = Device("mic48", 48000, 2)
MIC16 = Device("mic16", 16000, 1)
PULSE_DEVICES = {"pulse", "default"}


@contextmanager
def portaudio() -> Iterator[pyaudio.PyAudio]:
    """A PortAudio instance: it lists the devices there are now, so create it after ``start``."""
    pa = open_portaudio()
    try:
        yield pa
    finally:
        pa.terminate()


def devices(pa: pyaudio.PyAudio) -> dict[str, dict[str, Any]]:
    infos = (pa.get_device_info_by_index(i) for i in range(pa.get_device_count()))
    return {str(info["name"]): dict(info) for info in infos}


def in_thread(work: Callable[[], Any], timeout: float) -> Any:
    """``work()`` on a thread; its result, or its exception, or a failure after ``timeout``."""
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"PortAudio call still blocked after {timeout} s")
    if failure:
        raise failure[0]
    return outcome[0]


def capture(
    pa: pyaudio.PyAudio,
    device: str,
    rate: int,
    channels: int,
    seconds: float,
    meanwhile: Callable[[], Any],
) -> bytes:
    """Read ``seconds`` from ``device`` via PyAudio; ``meanwhile()`` runs once reading runs."""
    index = int(devices(pa)[device]["index"])
    block = rate * BLOCK_MS // 1000
    stream = pa.open(
        format=pyaudio.paInt16,
        channels=channels,
        rate=rate,
        input=True,
        input_device_index=index,
        frames_per_buffer=block,
    )
    reading = threading.Event()
    blocks: list[bytes] = []
    failure: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(int(seconds * 1000 / BLOCK_MS)):
                blocks.append(stream.read(block, exception_on_overflow=True))
                reading.set()
        except BaseException as exc:
            failure.append(exc)
            reading.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        assert reading.wait(5), "PyAudio read no first block in 5 s"
        if not failure:
            meanwhile()
        thread.join(seconds + 5)
        if thread.is_alive():
            pytest.fail(f"PyAudio read {seconds} s of audio not done after {seconds + 5} s")
        if failure:
            raise failure[0]
    finally:
        if not thread.is_alive():  # closing a stream that a read blocks on crashes PortAudio
            stream.close()
    return b"".join(blocks)


def clip_seconds(pcm: bytes, rate: int = RATE, channels: int = 1) -> float:
    return len(pcm) / (2 * rate * channels)


def test_pyaudio_lists_the_devices_and_hears_the_mic(tmp_path: Path) -> None:
    pcm = speech(TEXT)
    with running_soundserver(tmp_path, DEFAULT_DEVICES) as server, portaudio() as pa:
        assert set(devices(pa)) == {"mic", "spk"} | PULSE_DEVICES
        assert pa.get_default_input_device_info()["name"] == "default"
        assert pa.get_default_output_device_info()["name"] == "default"

        players = []
        recorded = capture(
            pa,
            "default",
            RATE,
            1,
            clip_seconds(pcm) + MARGIN,
            lambda: players.append(server.start_playing("mic", pcm)),
        )
        assert players[0].wait(5) == 0

    lag, correlation = align(samples(pcm), samples(recorded))
    assert correlation >= 0.99
    assert lag < 0.2 * RATE  # heard within 200 ms of the player starting (~40 ms here)


def test_what_pyaudio_plays_comes_out_of_the_speaker_monitor(tmp_path: Path) -> None:
    pcm = speech(TEXT)
    with running_soundserver(tmp_path, [MIC, SPEAKER]) as server, portaudio() as pa:
        recording = server.record("spk.monitor")
        stream = pa.open(format=pyaudio.paInt16, channels=1, rate=RATE, output=True)

        def play() -> None:
            stream.write(pcm)
            stream.stop_stream()  # returns once PortAudio has played it all

        try:
            in_thread(play, clip_seconds(pcm) + 5)
        finally:
            stream.close()
        # What PortAudio played is in the monitor a few ms later: record a little more.
        recording.wait_for(recording.nbytes + int(MARGIN * RATE) * 2)
        recorded = recording.stop()

    lag, correlation = align(samples(pcm), samples(recorded))
    assert correlation >= 0.99
    assert lag > 0  # the recording ran before the speech started


def test_devices_at_other_rates_report_44100_and_take_any_rate(tmp_path: Path) -> None:
    """PortAudio reports every pulse-backed device as 44100 Hz, 32 channels, whatever the sink
    is; PulseAudio converts. At the sink's own rate and channels audio goes through unchanged."""
    with running_soundserver(tmp_path, [MIC, SPEAKER, MIC48, MIC16]) as server, portaudio() as pa:
        assert server.sample_specs() == {
            "mic": (24000, 1),
            "spk": (24000, 1),
            "mic48": (48000, 2),
            "mic16": (16000, 1),
        }
        found = devices(pa)
        assert set(found) == {"mic", "spk", "mic48", "mic16"} | PULSE_DEVICES
        for name, info in found.items():
            assert (
                info["defaultSampleRate"],
                info["maxInputChannels"],
                info["maxOutputChannels"],
            ) == (44100.0, 32, 32), name
        for rate in (8000, 16000, 44100, 48000, 96000):
            assert pa.is_format_supported(
                rate,
                input_device=int(found["mic16"]["index"]),
                input_channels=2,
                input_format=pyaudio.paInt16,
            )

        # mic48 at its own 48 kHz stereo: each channel bit-exact (left speech, right inverted).
        voice = samples(speech(TEXT, 48000))
        stereo = to_pcm(np.stack([voice, -voice // 2], axis=1))
        players = []
        recorded = samples(
            capture(
                pa,
                "mic48",
                48000,
                2,
                clip_seconds(stereo, 48000, 2) + MARGIN,
                lambda: players.append(server.start_playing("mic48", stereo, 48000, 2)),
            ),
            2,
        )
        assert players[-1].wait(5) == 0
        assert align(voice, recorded[:, 0])[1] >= 0.999
        assert align(-voice // 2, recorded[:, 1])[1] >= 0.999

        # mic48 at PortAudio's default rate, mono: PulseAudio resamples and mixes down.
        recorded = samples(
            capture(
                pa,
                "mic48",
                44100,
                1,
                clip_seconds(stereo, 48000, 2) + MARGIN,
                lambda: players.append(server.start_playing("mic48", stereo, 48000, 2)),
            )
        )
        assert players[-1].wait(5) == 0
        assert align(samples(speech(TEXT, 44100)), recorded)[1] >= 0.99

        # mic16 at its own 16 kHz mono.
        pcm = speech(TEXT, 16000)
        recorded = samples(
            capture(
                pa,
                "mic16",
                16000,
                1,
                clip_seconds(pcm, 16000) + MARGIN,
                lambda: players.append(server.start_playing("mic16", pcm, 16000)),
            )
        )
        assert players[-1].wait(5) == 0
        assert align(samples(pcm), recorded)[1] >= 0.999


def test_stop_unplugs_the_devices_and_start_brings_them_back(tmp_path: Path) -> None:
    server = SoundServer(tmp_path)
    try:
        server.start(DEFAULT_DEVICES)
        # Not ``portaudio()``: if closing the stream hangs, terminating would hang too.
        pa = open_portaudio()
        assert set(devices(pa)) == {"mic", "spk"} | PULSE_DEVICES
        # A callback stream (as the app uses) just stops when its server goes away.
        # It must have run first: stopped within ms of starting, PortAudio's callback
        # thread can spin forever instead (see the soundserver module's docstring).
        blocks = 0
        running = threading.Event()

        def callback(*_: object) -> tuple[None, int]:
            nonlocal blocks
            blocks += 1
            if blocks == 5:
                running.set()
            return None, pyaudio.paContinue

        stream = pa.open(
            format=pyaudio.paInt16,
            channels=1,
            rate=RATE,
            input=True,
            frames_per_buffer=RATE * BLOCK_MS // 1000,
            stream_callback=callback,
        )
        assert running.wait(5), "no audio blocks came"
        server.stop()
        deadline = time.monotonic() + 5
        while stream.is_active():
            assert time.monotonic() < deadline, "the stream outlived its server"
            time.sleep(0.01)
        in_thread(stream.close, 5)
        pa.terminate()

        assert not server.running
        assert server.sinks() == []
        with portaudio() as pa:
            assert devices(pa) == {}  # no sound card here: nothing at all
            with pytest.raises(OSError, match="No Default Input Device"):
                pa.get_default_input_device_info()

        server.start(DEFAULT_DEVICES)
        pcm = speech("back again")
        with portaudio() as pa:
            assert set(devices(pa)) == {"mic", "spk"} | PULSE_DEVICES
            players = []
            recorded = capture(
                pa,
                "mic",
                RATE,
                1,
                clip_seconds(pcm) + MARGIN,
                lambda: players.append(server.start_playing("mic", pcm)),
            )
            assert players[0].wait(5) == 0
        assert align(samples(pcm), samples(recorded))[1] >= 0.99
    finally:
        server.close()
