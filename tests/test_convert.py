"""Conversion between device formats and the wire format: streaming equals one-shot, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from voiced.devices.convert import DeviceFormat, FromDevice, ToDevice, fade_out


def speechlike(seconds: float, rate: int) -> np.ndarray:
    """A deterministic signal with speech's kind of spectrum: harmonics, changing pitch."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 20) if k * 180 < rate / 2)
    return (8000 * wave * (0.6 + 0.4 * np.sin(2 * np.pi * 2.3 * t))).astype(np.float32)


def pcm(x: np.ndarray) -> bytes:
    return bytes(np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes())


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (44100, 1), (48000, 2), (24000, 1)])
@pytest.mark.parametrize("block_ms", [10, 20, 37])
def test_from_device_in_blocks_equals_the_whole(rate: int, channels: int, block_ms: int) -> None:
    signal = speechlike(1.5, rate)
    device = pcm(np.repeat(signal[:, None], channels, axis=1))
    convert = FromDevice(DeviceFormat(rate, channels))
    step = rate * block_ms // 1000 * 2 * channels
    streamed = b"".join(convert.convert(device[i : i + step]) for i in range(0, len(device), step))
    whole = np.frombuffer(device, "<i2").astype(np.float32).reshape(-1, channels).mean(axis=1)
    expected = whole if rate == 24000 else soxr.resample(whole, rate, 24000, "HQ")
    got = np.frombuffer(streamed, "<i2").astype(np.float32)
    n = len(got)  # the stream holds back the resampler's look-ahead until more comes
    assert n >= len(expected) - 24 * convert.delay_ms - 1
    assert convert.delay_ms < 40
    # No clicks at block borders: the same samples as converting it all at once (to rounding).
    assert np.abs(got - np.rint(expected[:n])).max() <= 1


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (44100, 2), (48000, 2)])
def test_to_device_in_blocks_equals_the_whole(rate: int, channels: int) -> None:
    wire = pcm(speechlike(1.5, 24000))
    convert = ToDevice(DeviceFormat(rate, channels), volume=0.5)
    step = 2 * 24000 * 20 // 1000
    parts = [convert.convert(wire[i : i + step]) for i in range(0, len(wire), step)]
    streamed = b"".join(parts) + convert.convert(b"", last=True)
    got = np.frombuffer(streamed, "<i2").astype(np.float32).reshape(-1, channels)
    mono = np.frombuffer(wire, "<i2").astype(np.float32)
    expected = soxr.resample(mono, 24000, rate, "HQ") * 0.5
    assert len(got) == len(expected)
    for channel in range(channels):  # the reply on every channel
        assert np.abs(got[:, channel] - np.rint(expected)).max() <= 1


def test_gain_clips_instead_of_wrapping() -> None:
    loud = pcm(np.array([20000, -20000, 100], dtype=np.float32))
    out = np.frombuffer(FromDevice(DeviceFormat(24000, 1), gain=2.0).convert(loud), "<i2")
    assert out.tolist() == [32767, -32768, 200]


def test_fade_out_ends_in_silence_without_a_step() -> None:
    fmt = DeviceFormat(48000, 2)
    block = pcm(np.full(480 * 2, 10000, dtype=np.float32))
    faded = np.frombuffer(fade_out(block, fmt), "<i2").reshape(-1, 2)
    assert faded[0].tolist() == [10000, 10000]
    assert np.all(np.diff(faded[:, 0].astype(int)) <= 0)  # only ever quieter
    assert abs(int(faded[-1, 0])) < 100
