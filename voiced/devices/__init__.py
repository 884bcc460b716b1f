"""Audio backends behind two tiny interfaces: an ``AudioSource`` (microphone) and an
``AudioSink`` (speaker). ``open_source`` / ``open_sink`` pick one from the config.

Backends: ``wav`` (files: demos, batch, bit-exact tests) and ``null``. ``auto`` takes a real device
when one exists and otherwise the bundled sample utterance as the microphone and a WAV file as the
speaker. ``pyaudio`` is a real device (``voiced.devices.soundcard``), imported only when used.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import trio

from voiced.config import AudioInputConfig, AudioOutputConfig
from voiced.devices.base import AudioSink as AudioSink
from voiced.devices.base import AudioSource as AudioSource
from voiced.devices.null import NullSink, NullSource
from voiced.devices.wav import WavSink, WavSource
from voiced.errors import DeviceError

if TYPE_CHECKING:
    from voiced.devices.portaudio import Kind

log = logging.getLogger("voiced.audio")

DEFAULT_SPEAKER = "voiced-speaker.wav"
"""Where ``auto`` writes the speaker's audio when there is no audio device."""


def sample_utterance() -> Path:
    """The bundled sample utterance ("what is the weather like today"), 24 kHz mono PCM16."""
    return Path(str(resources.files("voiced") / "data" / "sample.wav"))


async def open_source(config: AudioInputConfig) -> AudioSource:
    """The microphone the config asks for (``auto``: a real one if there is one).

    Raises:
        DeviceError: the backend cannot be used (a missing file, PyAudio not installed).
    """
    if config.backend == "null":
        return NullSource()
    if config.backend == "wav":
        assert config.path is not None  # config validation requires it for wav
        return WavSource(Path(config.path), loop=config.loop, realtime=config.realtime)
    if config.backend == "pyaudio" or await _usable("input", config):
        source: AudioSource = soundcard_module().PyAudioSource(config)
        return source
    log.info("microphone: the bundled sample utterance, looped (no usable input device)")
    return WavSource(sample_utterance(), loop=True, realtime=True)


async def open_sink(config: AudioOutputConfig) -> AudioSink:
    """The speaker the config asks for (see ``open_source``)."""
    if config.backend == "null":
        return NullSink()
    if config.backend == "wav":
        assert config.path is not None
        return WavSink(Path(config.path), realtime=config.realtime)
    if config.backend == "pyaudio" or await _usable("output", config):
        sink: AudioSink = soundcard_module().PyAudioSink(config)
        return sink
    log.info("speaker: %s (no usable output device)", DEFAULT_SPEAKER)
    return WavSink(Path(DEFAULT_SPEAKER), realtime=True)


def soundcard_module() -> ModuleType:
    """``voiced.devices.soundcard``, or a DeviceError saying how to install what it needs."""
    try:
        from voiced.devices import soundcard
    except ImportError as exc:
        raise DeviceError(
            f"the pyaudio backend needs PyAudio, soxr and numpy ({exc}): "
            "pip install 'voiced[audio]' (PyAudio builds against portaudio19-dev)"
        ) from exc
    return soundcard


async def _usable(kind: Kind, config: AudioInputConfig | AudioOutputConfig) -> bool:
    """Whether ``auto`` finds a device of this kind that opens (PortAudio probes block)."""
    try:
        soundcard_module()
    except DeviceError as exc:
        log.debug("no %s device: %s", kind, exc)
        return False
    from voiced.devices.portaudio import probe

    why = await trio.to_thread.run_sync(probe, kind, config)
    if why is not None:
        log.debug("no %s device: %s", kind, why)
    return why is None
