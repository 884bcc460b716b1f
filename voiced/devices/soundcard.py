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
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyaudio
import trio

from voiced.audio import BYTES_PER_MS, RATE, AudioFrame
from voiced.config import AudioInputConfig, AudioOutputConfig
from voiced.devices.base import Microphone, Speaker
from voiced.devices.convert import DeviceFormat, FromDevice, ToDevice, fade_out
from voiced.devices.portaudio import (
    DeviceRetry,
    Once,
    close_in_thread,
    open_device,
    portaudio_lock,
    quiet_stderr,
    terminate,
)
from voiced.errors import DeviceError

log = logging.getLogger("voiced.audio")

BLOCK_MS = 20
"""Audio per PortAudio callback."""
FADE_MS = 10
"""How long a stop fades out: short enough to feel instant, long enough not to click."""
AHEAD_MS = 500
"""The most reply audio queued for the speaker before ``play`` waits: a cushion against a device
that takes audio in bursts (a stop drops it all, so it costs no latency)."""
FLUSH_TIMEOUT = 0.2
"""Seconds a command waits for the microphone's tail before going without it."""
STALL = 1.0
"""Seconds without a callback after which a device is taken for gone and reopened."""


class PyAudioMicrophone:
    """A microphone that survives its device going away: a missing device at startup, or one
    that stops delivering audio (unplugged, a sound server restart), is reopened with backoff."""

    def __init__(self, config: AudioInputConfig) -> None:
        self.config = config
        self.name = f"pyaudio:{config.device if config.device is not None else 'default'}"
        self.dropped_frames = 0
        self.xruns = 0
        self._native: dict[str, int] = {}  # the opened format, and the device's own rate
        self._retry = DeviceRetry("microphone")
        self._frames: trio.MemorySendChannel[AudioFrame] | None = None
        self._convert: FromDevice | None = None
        self._blocks = 0  # blocks the device has delivered
        self._arrived = trio.Event()

    async def run(
        self,
        frames: trio.MemorySendChannel[AudioFrame],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with frames:
            ready = Once(task_status)
            while True:
                try:
                    await self._stream_until_lost(frames, ready)
                except DeviceError as exc:
                    delay = self._retry.failed(self.name, exc)
                    ready.started()  # the daemon runs, and says what is missing, meanwhile
                    await trio.sleep(delay)

    async def _stream_until_lost(
        self, frames: trio.MemorySendChannel[AudioFrame], ready: Once
    ) -> None:
        """Open the device, report ``ready`` (the first time), stream until it stops."""
        pa, device, fmt = await open_device("input", self.config)
        self._convert = convert = FromDevice(fmt, self.config.gain)
        token = trio.lowlevel.current_trio_token()

        def push(data: bytes, status: int) -> None:  # on the trio thread
            self._blocks += 1
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
            with portaudio_lock(), quiet_stderr():
                return pa.open(
                    format=pyaudio.paInt16,
                    channels=fmt.channels,
                    rate=fmt.rate,
                    input=True,
                    input_device_index=device.index,
                    frames_per_buffer=fmt.rate * BLOCK_MS // 1000,
                    stream_callback=callback,
                )

        try:
            stream = await trio.to_thread.run_sync(start)
        except OSError as exc:
            await trio.to_thread.run_sync(terminate, pa)
            raise DeviceError(f"cannot open {device.name!r}: {exc}") from exc
        self.name = f"pyaudio:{device.name} ({fmt})"
        self._native = {"rate": fmt.rate, "channels": fmt.channels, "device_rate": device.rate}
        self._retry.opened(self.name)
        self._frames = frames
        ready.started()
        try:
            # The watchdog: a whole STALL with no block means the device is gone (noticed
            # within two). It looks once a STALL rather than pushing a deadline back on every
            # block, which an idle kiosk would pay fifty times a second.
            seen = -1
            while seen != self._blocks:
                seen = self._blocks
                await trio.sleep(STALL)
            raise DeviceError(f"{device.name!r} stopped delivering audio")
        finally:
            self._frames = None
            with trio.CancelScope(shield=True):
                await close_in_thread(stream, pa)

    def watch(self, callback: Callable[[str, str | None], None]) -> None:
        self._retry.on_change = callback

    def statistics(self) -> dict[str, object]:
        return {
            "name": self.name,
            **self._native,
            "error": self._retry.error,
            "dropped_frames": self.dropped_frames,
            "xruns": self.xruns,
            "reopens": self._retry.reopens,
        }

    async def flush(self) -> None:
        """Wait until what was heard up to now has come out of the device and the resampler:
        the next block, and as many more as the resampler holds back."""
        if self._frames is None or self._convert is None:
            return
        wanted = self._blocks + 1 + math.ceil(self._convert.delay_ms / BLOCK_MS)
        with trio.move_on_after(FLUSH_TIMEOUT):
            while self._blocks < wanted:
                self._arrived = trio.Event()
                await self._arrived.wait()


class PyAudioSpeaker:
    """A speaker with a jitter buffer, an underrun counter and a played-audio clock.

    It survives its device going away: while there is none, reply audio is dropped (and
    counted) and the device is reopened with backoff; one that stops taking audio is closed
    and reopened the same way.
    """

    paced = True

    def __init__(self, config: AudioOutputConfig) -> None:
        self.config = config
        self.name = f"pyaudio:{config.device if config.device is not None else 'default'}"
        self.underruns = 0
        self.xruns = 0
        self._native: dict[str, int] = {}
        self.dropped_ms = 0.0
        """Reply audio thrown away because there was no device."""
        self._retry = DeviceRetry("speaker")
        self._retry_at = -math.inf  # trio time of the next try to open the device
        self._lock = threading.Lock()
        # Shared with the PortAudio thread, under the lock:
        self._buffer = bytearray()  # device-format audio waiting for the callback
        self._priming = True  # gathering jitter_ms before a reply starts
        self._ending = False  # the reply is complete: play out the rest without waiting
        self._played = 0.0  # seconds of reply audio (not padding) handed to PortAudio
        self._started_mono: float | None = None  # monotonic time priming last ended
        self._last_callback_at = 0.0  # monotonic time PortAudio last asked for audio
        self._wake: trio.Event | None = None
        # Owned by the trio side:
        self._latency = 0.0
        self._pa: Any = None
        self._stream: Any = None
        self._format = DeviceFormat(RATE, 1)
        self._jitter_bytes = 0
        self._convert = ToDevice(self._format, config.volume)

    @property
    def volume(self) -> float:
        return self._convert.volume

    @volume.setter
    def volume(self, value: float) -> None:
        self._convert.volume = value

    async def open(self) -> None:
        await self._usable()

    async def _usable(self) -> bool:
        """Whether there is a working device now; reopens one that is missing or stalled."""
        if self._stream is not None:
            if time.monotonic() - self._last_callback_at < STALL:
                return True
            await self._close()  # gone (unplugged, a sound server restart): try again at once
            self._retry.failed(self.name, DeviceError(f"{self.name} stopped taking audio"))
        elif trio.current_time() < self._retry_at:
            return False
        try:
            await self._open_stream()
        except DeviceError as exc:
            self._retry_at = trio.current_time() + self._retry.failed(self.name, exc)
            return False
        return True

    async def _open_stream(self) -> None:
        pa, device, fmt = await open_device("output", self.config)
        token = trio.lowlevel.current_trio_token()
        frame_bytes, rate = fmt.frame_bytes, fmt.rate
        ahead = int(rate * AHEAD_MS / 1000) * frame_bytes

        def callback(_in: Any, count: int, _time: Any, status: int) -> tuple[bytes, int]:
            need = count * frame_bytes
            with self._lock:
                self._last_callback_at = time.monotonic()
                if status & pyaudio.paOutputUnderflow:
                    self.xruns += 1
                # A reply starts once jitter_ms is queued beyond the block taken now, so that
                # the next delta has jitter_ms to arrive before the buffer runs dry.
                ready = len(self._buffer) >= self._jitter_bytes + need
                if self._priming and not ready and not self._ending:
                    out = b""
                else:
                    if self._priming:
                        self._started_mono = self._last_callback_at
                    self._priming = False
                    out = bytes(self._buffer[:need])
                    del self._buffer[:need]
                    if len(out) < need and not self._ending:
                        self.underruns += 1  # ran dry mid-reply: gather again before resuming
                        self._priming = True
                    if out:
                        self._played += len(out) / frame_bytes / rate
                    if self._ending and not self._buffer:
                        # All of it is out: the next reply gathers its jitter buffer again.
                        self._priming, self._ending = True, False
                if self._wake is not None and len(self._buffer) < ahead:
                    wake, self._wake = self._wake, None
                    try:
                        token.run_sync_soon(wake.set)
                    except trio.RunFinishedError:
                        return b"\0" * need, pyaudio.paAbort
            return out + b"\0" * (need - len(out)), pyaudio.paContinue

        def start() -> tuple[Any, float]:
            with portaudio_lock(), quiet_stderr():
                stream = pa.open(
                    format=pyaudio.paInt16,
                    channels=fmt.channels,
                    rate=rate,
                    output=True,
                    output_device_index=device.index,
                    frames_per_buffer=rate * BLOCK_MS // 1000,
                    stream_callback=callback,
                )
                return stream, float(stream.get_output_latency())

        with self._lock:  # a new device: nothing queued for the old one carries over
            self._buffer.clear()
            self._priming, self._ending = True, False
            self._last_callback_at = time.monotonic()
        self._format = fmt
        self._jitter_bytes = int(rate * self.config.jitter_ms / 1000) * frame_bytes
        self._convert = ToDevice(fmt, self.volume)
        try:
            self._stream, self._latency = await trio.to_thread.run_sync(start)
        except OSError as exc:
            await trio.to_thread.run_sync(terminate, pa)
            raise DeviceError(f"cannot open {device.name!r}: {exc}") from exc
        self._pa = pa
        self.name = f"pyaudio:{device.name} ({fmt})"
        self._native = {"rate": fmt.rate, "channels": fmt.channels, "device_rate": device.rate}
        self._retry.opened(self.name)

    async def play(self, pcm: bytes) -> None:
        if not await self._usable():
            self.dropped_ms += len(pcm) / BYTES_PER_MS
            await trio.lowlevel.checkpoint()
            return
        data = self._convert.convert(pcm)
        with self._lock:
            self._buffer += data
            self._ending = False
        await self._wait_until(lambda: len(self._buffer) < self._bytes(AHEAD_MS))
        await trio.lowlevel.checkpoint()

    async def drain(self) -> None:
        """Play out the end of the reply and return once it has all left the buffer."""
        if self._stream is None:
            await trio.lowlevel.checkpoint()
            return
        tail = self._convert.convert(b"", last=True)
        with self._lock:
            self._buffer += tail
            self._ending = True
        await self._wait_until(lambda: not self._buffer)
        with self._lock:
            # The reply is out: the next one gathers its jitter buffer again.
            self._priming, self._ending = True, False
        # What was handed last is still in the device's own buffer for this long.
        await trio.sleep(self._latency)

    async def _wait_until(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()`` (checked under the lock), or until the device stalls."""
        with trio.move_on_after(STALL):
            while True:
                with self._lock:
                    if ready():
                        return
                    self._wake = wake = trio.Event()
                await wake.wait()

    def _bytes(self, ms: float) -> int:
        return int(self._format.rate * ms / 1000) * self._format.frame_bytes

    def stop(self) -> None:
        """Stop now: fade out what is about to play, drop the rest."""
        fade = self._bytes(FADE_MS)
        with self._lock:
            head = bytes(self._buffer[:fade])
            self._buffer[:] = fade_out(head, self._format) if head else b""
            # The fade plays out at once (no jitter buffer to gather, no underrun to count);
            # then the next reply gathers its own.
            self._priming, self._ending = not head, bool(head)
        self._convert.reset()

    def played_seconds(self) -> float:
        # Handed to PortAudio: it comes out of the speaker even if stop() is called now.
        with self._lock:
            return self._played

    def queued_seconds(self) -> float:
        with self._lock:
            return len(self._buffer) / self._format.frame_bytes / self._format.rate

    def started_at(self) -> float | None:
        with self._lock:
            started = self._started_mono
        if started is None:
            return None
        return trio.current_time() - (time.monotonic() - started)  # the same moment, trio's clock

    async def _close(self) -> None:
        stream, pa, self._stream, self._pa = self._stream, self._pa, None, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await close_in_thread(stream, pa)

    def watch(self, callback: Callable[[str, str | None], None]) -> None:
        self._retry.on_change = callback

    def statistics(self) -> dict[str, object]:
        return {
            "name": self.name,
            **self._native,
            "error": self._retry.error,
            "underruns": self.underruns,
            "xruns": self.xruns,
            "dropped_ms": round(self.dropped_ms),
            "reopens": self._retry.reopens,
            "volume": self.volume,
        }

    async def aclose(self) -> None:
        await self._close()


if TYPE_CHECKING:  # mypy checks that the backend fits the device interfaces

    def _fits(i: AudioInputConfig, o: AudioOutputConfig) -> tuple[Microphone, Speaker]:
        return PyAudioMicrophone(i), PyAudioSpeaker(o)
