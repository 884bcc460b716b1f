"""The private sound server (``tests/soundserver.py``) works as a sound card for PyAudio.

Real parts only: a real PulseAudio daemon, PortAudio through ALSA's pulse plugin, pacat. PyAudio's
blocking calls run on a worker thread joined with a timeout, so a stalled device fails the test
instead of hanging it. Every wait is on audio the server really carried (a player that finished,
blocks read); the timeouts are only safety nets.
"""

from __future__ import annotations

import math
import subprocess
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
    onset,
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
"""The app's block: what the callback stream here uses."""
BLOCKING_MS = 100
"""Blocks of the blocking streams here. PortAudio's default buffer for them holds 8 ms, which a
busy machine's scheduler easily overruns; 100 ms blocks make it 200 ms."""
MARGIN = 0.4
"""Seconds of audio read after the player has finished (or after a clip's end): what was played
reaches a capture within a block or two."""
PLAY_TIMEOUT = 30.0
"""Seconds a player may take (a safety net: the clips here last about 2 s)."""

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
    play: Callable[[], subprocess.Popen[bytes]],
) -> bytes:
    """Read ``device`` via PyAudio while ``play()`` plays a clip, from before the player starts
    (once reading runs) until ``MARGIN`` seconds of audio after it has finished."""
    index = int(devices(pa)[device]["index"])
    block = rate * BLOCKING_MS // 1000
    stream = pa.open(
        format=pyaudio.paInt16,
        channels=channels,
        rate=rate,
        input=True,
        input_device_index=index,
        frames_per_buffer=block,
    )
    reading = threading.Event()
    played = threading.Event()
    blocks: list[bytes] = []
    failure: list[BaseException] = []

    def read() -> None:
        try:
            while not played.is_set():
                blocks.append(stream.read(block, exception_on_overflow=True))
                reading.set()
            for _ in range(math.ceil(MARGIN * 1000 / BLOCKING_MS)):
                blocks.append(stream.read(block, exception_on_overflow=True))
        except BaseException as exc:
            failure.append(exc)
            reading.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        assert reading.wait(5), "PyAudio read no first block in 5 s"
        if not failure:
            try:
                code = play().wait(PLAY_TIMEOUT)
            finally:
                played.set()  # the reader takes MARGIN more, then stops
            assert code == 0, f"the player exited {code}"
        thread.join(MARGIN + 5)
        if thread.is_alive():
            pytest.fail(f"PyAudio read {MARGIN} s of audio not done after {MARGIN + 5} s")
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

        recorded = capture(pa, "default", RATE, 1, lambda: server.start_playing("mic", pcm))

    lag, correlation = align(samples(pcm), samples(recorded))
    assert correlation >= 0.99
    assert lag > 0  # the capture ran before the speech started


def test_what_pyaudio_plays_comes_out_of_the_speaker_monitor(tmp_path: Path) -> None:
    pcm = speech(TEXT)
    with running_soundserver(tmp_path, [MIC, SPEAKER]) as server, portaudio() as pa:
        recording = server.record("spk.monitor")
        stream = pa.open(
            format=pyaudio.paInt16,
            channels=1,
            rate=RATE,
            output=True,
            frames_per_buffer=RATE * BLOCKING_MS // 1000,
        )

        def play() -> None:
            # A gap would fail the match. Then 1 s of silence: stopping, PortAudio drops what
            # its buffer still holds (about 300 ms with these blocks), so that must be silence.
            stream.write(pcm + bytes(2 * RATE), exception_on_underflow=True)
            stream.stop_stream()

        try:
            in_thread(play, clip_seconds(pcm) + 6)
        finally:
            stream.close()
        # What PortAudio played reaches the monitor through the device's buffer (some 200 ms
        # here): wait until all of the clip is there, from its first sound, and MARGIN more.
        begins = recording.wait_for_sound() - (onset(pcm) or 0)
        recording.wait_for((begins + len(pcm) // 2 + int(MARGIN * RATE)) * 2)
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
        recorded = samples(
            capture(pa, "mic48", 48000, 2, lambda: server.start_playing("mic48", stereo, 48000, 2)),
            2,
        )
        assert align(voice, recorded[:, 0])[1] >= 0.999
        assert align(-voice // 2, recorded[:, 1])[1] >= 0.999

        # mic48 at PortAudio's default rate, mono: PulseAudio resamples and mixes down.
        recorded = samples(
            capture(pa, "mic48", 44100, 1, lambda: server.start_playing("mic48", stereo, 48000, 2))
        )
        assert align(samples(speech(TEXT, 44100)), recorded)[1] >= 0.99

        # mic16 at its own 16 kHz mono.
        pcm = speech(TEXT, 16000)
        recorded = samples(
            capture(pa, "mic16", 16000, 1, lambda: server.start_playing("mic16", pcm, 16000))
        )
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
        # PortAudio's callback thread notices on its own; PyAudio offers nothing to block on
        # (no finished-callback), so this one wait looks, briefly and bounded, at is_active().
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
            recorded = capture(pa, "mic", RATE, 1, lambda: server.start_playing("mic", pcm))
        assert align(samples(pcm), samples(recorded))[1] >= 0.99
    finally:
        server.close()
