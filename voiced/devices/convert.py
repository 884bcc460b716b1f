"""Sans-IO conversion between a device's format and the wire format (24 kHz mono PCM16).

Streaming and stateful, so a stream cut into blocks converts exactly like the whole of it: no
clicks at block borders. Rates are converted by soxr (the SoX resampler), channels are averaged
down or copied up, and a gain is applied in floating point with clipping. Imported only by the
real-device backend, so that numpy is not on the start-up path of anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from voiced.audio import RATE

QUALITY = "HQ"
"""soxr's high quality: flat to 20 kHz at 48 kHz, a few ms of delay, cheap enough for a Pi."""


@dataclass(frozen=True)
class DeviceFormat:
    """How a device stream is opened: interleaved PCM16 at ``rate`` with ``channels``."""

    rate: int
    channels: int

    @property
    def frame_bytes(self) -> int:
        return 2 * self.channels

    def __str__(self) -> str:
        return f"{self.rate} Hz, {self.channels} ch"


def _to_int16(x: np.ndarray) -> bytes:
    return bytes(np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes())


class FromDevice:
    """Device PCM16 (any rate, any channels) → wire PCM, with a gain."""

    def __init__(self, fmt: DeviceFormat, gain: float = 1.0) -> None:
        self.format = fmt
        self.gain = gain
        self._resampler = (
            None if fmt.rate == RATE else soxr.ResampleStream(fmt.rate, RATE, 1, "float32", QUALITY)
        )

    @property
    def delay_ms(self) -> float:
        """Audio taken in but held back by the resampler (its filter's look-ahead)."""
        return 0.0 if self._resampler is None else float(self._resampler.delay()) * 1000 / RATE

    def convert(self, data: bytes) -> bytes:
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32)
        channels = self.format.channels
        if channels > 1:
            # Strided adds: several times cheaper than reshape().mean() per 20 ms block.
            mono = samples[0::channels].copy()
            for channel in range(1, channels):
                mono += samples[channel::channels]
            samples = mono * np.float32(1 / channels)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        if self.gain != 1.0:
            samples = samples * self.gain
        return _to_int16(samples)


class ToDevice:
    """Wire PCM → device PCM16 (any rate, any channels), with a volume."""

    def __init__(self, fmt: DeviceFormat, volume: float = 1.0) -> None:
        self.format = fmt
        self.volume = volume
        self._resampler: soxr.ResampleStream | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the resampler's history: the next audio starts a new, unrelated stream."""
        self._resampler = (
            None
            if self.format.rate == RATE
            else soxr.ResampleStream(RATE, self.format.rate, 1, "float32", QUALITY)
        )

    def convert(self, data: bytes, *, last: bool = False) -> bytes:
        """Convert ``data``; ``last`` flushes what the resampler holds back (end of a reply)."""
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
            if last:
                self.reset()
        if self.volume != 1.0:
            samples = samples * self.volume
        if self.format.channels > 1:
            samples = np.repeat(samples, self.format.channels)
        return _to_int16(samples)


def fade_out(data: bytes, fmt: DeviceFormat) -> bytes:
    """``data`` faded linearly to silence over its length (a stop without a click)."""
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32).reshape(-1, fmt.channels)
    ramp = np.linspace(1.0, 0.0, len(samples), endpoint=False, dtype=np.float32)
    return _to_int16((samples * ramp[:, None]).reshape(-1))
