"""The ``pyaudio`` backend: a real microphone and speaker through PortAudio.

PortAudio calls back on its own thread. The callbacks never block and never run trio code: the
microphone's hands each block to trio through the trio token (``run_sync_soon``), the speaker's
takes what is ready from a locked buffer and pads with silence. Conversion to and from the wire
format (24 kHz mono) happens on the trio side, with soxr (``voiced.devices.convert``).

The speaker keeps a small jitter buffer: a reply starts playing once ``jitter_ms`` of it is
queued (or it has ended), so deltas that arrive unevenly still play without gaps, and a buffer
that runs dry mid-reply is counted as an underrun. ``stop`` fades out over ``FADE_MS``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import pyaudio
import trio

from voiced.audio import RATE, AudioFrame
from voiced.config import AudioInputConfig, AudioOutputConfig
from voiced.devices.base import AudioSink, AudioSource
from voiced.devices.convert import DeviceFormat, FromDevice, ToDevice, fade_out
from voiced.devices.portaudio import (
    LOCK,
    choose_format,
    find_device,
    list_devices,
    open_portaudio,
    quiet_stderr,
)
from voiced.errors import DeviceError

log = logging.getLogger("voiced.audio")

BLOCK_MS = 20
"""Audio per PortAudio callback."""
FADE_MS = 10
"""How long a stop fades out: short enough to feel instant, long enough not to click."""
AHEAD_MS = 200
"""The most reply audio queued for the speaker before ``play`` waits."""
FLUSH_TIMEOUT = 0.2
"""Seconds a commit waits for the microphone's next block before going without it."""


async def _open(kind: str, config: AudioInputConfig | AudioOutputConfig) -> tuple[Any, Any, Any]:
    """A PortAudio instance, the configured device, and the format to open it with."""

    def work() -> tuple[Any, Any, Any]:
        with LOCK:
            pa = open_portaudio()
            try:
                device = find_device(list_devices(pa), config.device, kind)  # type: ignore[arg-type]
                fmt = choose_format(pa, device, kind, config.rate, config.channels)  # type: ignore[arg-type]
            except BaseException:
                pa.terminate()
                raise
            return pa, device, fmt

    return await trio.to_thread.run_sync(work)


class PyAudioSource:
    """A microphone. Counts frames dropped because the pipeline lagged, and device overflows."""

    def __init__(self, config: AudioInputConfig) -> None:
        self.config = config
        self.name = f"pyaudio:{config.device if config.device is not None else 'default'}"
        self.dropped_frames = 0
        self.xruns = 0
        self._frames: trio.MemorySendChannel[AudioFrame] | None = None
        self._arrived = trio.Event()

    async def run(
        self,
        frames: trio.MemorySendChannel[AudioFrame],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        pa, device, fmt = await _open("input", self.config)
        self.name = f"pyaudio:{device.name} ({fmt})"
        convert = FromDevice(fmt, self.config.gain)
        token = trio.lowlevel.current_trio_token()

        def push(data: bytes, status: int) -> None:  # on the trio thread
            if status & pyaudio.paInputOverflow:
                self.xruns += 1
            try:
                frames.send_nowait(AudioFrame(convert.convert(data), trio.current_time()))
            except trio.WouldBlock:
                self.dropped_frames += 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            self._arrived.set()

        def callback(data: bytes | None, count: int, _time: Any, status: int) -> tuple[None, int]:
            try:
                token.run_sync_soon(push, data or b"", status)
            except trio.RunFinishedError:
                return None, pyaudio.paAbort
            return None, pyaudio.paContinue

        def start() -> Any:
            with LOCK:
                return pa.open(
                    format=pyaudio.paInt16,
                    channels=fmt.channels,
                    rate=fmt.rate,
                    input=True,
                    input_device_index=device.index,
                    frames_per_buffer=fmt.rate * BLOCK_MS // 1000,
                    stream_callback=callback,
                )

        stream = await trio.to_thread.run_sync(start)
        log.info("microphone: %s", self.name)
        async with frames:
            self._frames = frames
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._frames = None
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_close, stream, pa)

    def statistics(self) -> dict[str, object]:
        return {"name": self.name, "dropped_frames": self.dropped_frames, "xruns": self.xruns}

    async def flush(self) -> None:
        """Wait for the device's next block: it holds what was heard up to now."""
        if self._frames is None:
            return
        self._arrived = trio.Event()
        with trio.move_on_after(FLUSH_TIMEOUT):
            await self._arrived.wait()


class PyAudioSink:
    """A speaker with a jitter buffer, an underrun counter and a played-audio clock."""

    paced = True

    def __init__(self, config: AudioOutputConfig) -> None:
        self.config = config
        self.name = f"pyaudio:{config.device if config.device is not None else 'default'}"
        self.underruns = 0
        self.xruns = 0
        self._lock = threading.Lock()
        self._buffer = bytearray()  # device-format audio waiting for the callback
        self._priming = True  # gathering jitter_ms before a reply starts
        self._ending = False  # the reply is complete: play out the rest without waiting
        self._handed = 0  # frames of reply audio (not padding) handed to PortAudio
        self._last_handed_at = 0.0  # monotonic time reply audio was last handed
        self._latency = 0.0
        self._wake: trio.Event | None = None
        self._pa: Any = None
        self._stream: Any = None
        self._format = DeviceFormat(RATE, 1)
        self._convert = ToDevice(self._format, config.volume)

    @property
    def volume(self) -> float:
        return self._convert.volume

    @volume.setter
    def volume(self, value: float) -> None:
        self._convert.volume = value

    async def open(self) -> None:
        self._pa, device, self._format = await _open("output", self.config)
        self.name = f"pyaudio:{device.name} ({self._format})"
        self._convert = ToDevice(self._format, self.volume)  # as set before it opened
        self._jitter_bytes = self._bytes(self.config.jitter_ms)
        token = trio.lowlevel.current_trio_token()

        def callback(_in: Any, count: int, _time: Any, status: int) -> tuple[bytes, int]:
            need = count * self._format.frame_bytes
            with self._lock:
                if status & pyaudio.paOutputUnderflow:
                    self.xruns += 1
                if self._priming and len(self._buffer) < self._jitter_bytes and not self._ending:
                    out = b""
                else:
                    self._priming = False
                    out = bytes(self._buffer[:need])
                    del self._buffer[:need]
                    if len(out) < need and not self._ending:
                        self.underruns += 1  # ran dry mid-reply: gather again before resuming
                        self._priming = True
                    if out:
                        self._handed += len(out) // self._format.frame_bytes
                        self._last_handed_at = time.monotonic()
                if self._wake is not None and len(self._buffer) < self._bytes(AHEAD_MS):
                    wake, self._wake = self._wake, None
                    try:
                        token.run_sync_soon(wake.set)
                    except trio.RunFinishedError:
                        return b"\0" * need, pyaudio.paAbort
            return out + b"\0" * (need - len(out)), pyaudio.paContinue

        def start() -> Any:
            with LOCK:
                return _open_stream()

        def _open_stream() -> Any:
            stream = self._pa.open(
                format=pyaudio.paInt16,
                channels=self._format.channels,
                rate=self._format.rate,
                output=True,
                output_device_index=device.index,
                frames_per_buffer=self._format.rate * BLOCK_MS // 1000,
                stream_callback=callback,
            )
            return stream, stream.get_output_latency()

        self._stream, self._latency = await trio.to_thread.run_sync(start)
        log.info("speaker: %s", self.name)

    def _bytes(self, ms: float) -> int:
        return int(self._format.rate * ms / 1000) * self._format.frame_bytes

    async def play(self, pcm: bytes) -> None:
        data = self._convert.convert(pcm)
        with self._lock:
            self._buffer += data
            self._ending = False
        while True:
            with self._lock:
                if len(self._buffer) < self._bytes(AHEAD_MS):
                    break
                self._wake = wake = trio.Event()
            await wake.wait()
        await trio.lowlevel.checkpoint()

    async def drain(self) -> None:
        """Play out the end of the reply and return once it has all left the buffer."""
        tail = self._convert.convert(b"", last=True)
        with self._lock:
            self._buffer += tail
            self._ending = True
        while True:
            with self._lock:
                if not self._buffer:
                    self._priming = True
                    break
                self._wake = wake = trio.Event()
            await wake.wait()
        # What was handed last is still in the device's own buffer for this long.
        await trio.sleep(self._latency)

    def stop(self) -> None:
        """Stop now: fade out what is about to play, drop the rest."""
        fade = self._bytes(FADE_MS)
        with self._lock:
            head = bytes(self._buffer[:fade])
            self._buffer[:] = fade_out(head, self._format) if head else b""
            self._priming = True
            self._ending = False
        self._convert.reset()

    def _in_flight(self) -> float:
        """Seconds of handed audio still in the device's buffer (caller holds the lock)."""
        since = time.monotonic() - self._last_handed_at
        return min(self._handed / self._format.rate, max(0.0, self._latency - since))

    def played_seconds(self) -> float:
        with self._lock:
            return self._handed / self._format.rate - self._in_flight()

    def queued_seconds(self) -> float:
        with self._lock:
            buffered = len(self._buffer) / self._format.frame_bytes / self._format.rate
            return buffered + self._in_flight()

    def statistics(self) -> dict[str, object]:
        return {
            "name": self.name,
            "underruns": self.underruns,
            "xruns": self.xruns,
            "volume": self.volume,
        }

    async def aclose(self) -> None:
        stream, pa, self._stream, self._pa = self._stream, self._pa, None, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close, stream, pa)


def probe(kind: str, config: AudioInputConfig | AudioOutputConfig) -> str | None:
    """Why the configured device of this kind cannot be used, or None if it opens. Blocking."""
    with LOCK:
        return _probe(kind, config)


def _probe(kind: str, config: AudioInputConfig | AudioOutputConfig) -> str | None:
    try:
        pa = open_portaudio()
    except OSError as exc:
        return f"PortAudio did not start: {exc}"
    try:
        device = find_device(list_devices(pa), config.device, kind)  # type: ignore[arg-type]
        fmt = choose_format(pa, device, kind, config.rate, config.channels)  # type: ignore[arg-type]
        with quiet_stderr():
            stream = pa.open(
                format=pyaudio.paInt16,
                channels=fmt.channels,
                rate=fmt.rate,
                input=kind == "input",
                output=kind == "output",
                input_device_index=device.index if kind == "input" else None,
                output_device_index=device.index if kind == "output" else None,
                start=False,
            )
        stream.close()
    except (DeviceError, OSError) as exc:
        return str(exc)
    finally:
        pa.terminate()
    return None


def _close(stream: Any, pa: Any) -> None:
    with LOCK:
        try:
            stream.stop_stream()
            stream.close()
        finally:
            pa.terminate()


if TYPE_CHECKING:  # mypy checks that the backend fits the device interfaces

    def _fits(i: AudioInputConfig, o: AudioOutputConfig) -> tuple[AudioSource, AudioSink]:
        return PyAudioSource(i), PyAudioSink(o)
