"""Audio backends behind two tiny interfaces: an ``AudioSource`` (microphone) and an
``AudioSink`` (speaker). ``open_source`` / ``open_sink`` pick one from the config.

Backends: ``wav`` (files: demos, batch, bit-exact tests) and ``null``. ``auto`` takes a real device
when one exists and otherwise the bundled sample utterance as the microphone and a WAV file as the
speaker. The ``pyaudio`` backend for real devices slots in here.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from voiced.config import AudioInputConfig, AudioOutputConfig
from voiced.devices.base import AudioSink as AudioSink
from voiced.devices.base import AudioSource as AudioSource
from voiced.devices.null import NullSink, NullSource
from voiced.devices.wav import WavSink, WavSource
from voiced.errors import DeviceError

DEFAULT_SPEAKER = "voiced-speaker.wav"
"""Where ``auto`` writes the speaker's audio when there is no audio device."""


def sample_utterance() -> Path:
    """The bundled sample utterance ("what is the weather like today"), 24 kHz mono PCM16."""
    return Path(str(resources.files("voiced") / "data" / "sample.wav"))


def open_source(config: AudioInputConfig) -> AudioSource:
    """The microphone the config asks for.

    Raises:
        DeviceError: the backend cannot be opened (a missing or unsupported file).
    """
    if config.backend == "null":
        return NullSource()
    if config.backend == "pyaudio":
        raise DeviceError("audio.input.backend: pyaudio is not available in this build yet")
    if config.backend == "auto":
        return WavSource(sample_utterance(), loop=True, realtime=True)
    assert config.path is not None  # config validation requires it for wav
    return WavSource(Path(config.path), loop=config.loop, realtime=config.realtime)


def open_sink(config: AudioOutputConfig) -> AudioSink:
    """The speaker the config asks for (see ``open_source``)."""
    if config.backend == "null":
        return NullSink()
    if config.backend == "pyaudio":
        raise DeviceError("audio.output.backend: pyaudio is not available in this build yet")
    path = Path(config.path or DEFAULT_SPEAKER)
    return WavSink(path, realtime=config.realtime)
