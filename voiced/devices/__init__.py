"""Audio backends behind two tiny interfaces, ``Microphone`` and ``Speaker``;
``open_microphone`` / ``open_speaker`` pick one from the config and release it afterwards.

Backends: ``wav`` (files: demos, batch, bit-exact tests) and ``null``. ``auto`` takes a real device
when one exists and otherwise the bundled sample utterance as the microphone and a WAV file as the
speaker. ``pyaudio`` is a real device (``voiced.devices.soundcard``), imported only when used.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import trio

from voiced.config import AudioInputConfig, AudioOutputConfig
from voiced.devices.base import Microphone as Microphone
from voiced.devices.base import Speaker as Speaker
from voiced.devices.null import NullMicrophone, NullSpeaker
from voiced.devices.wav import WavMicrophone, WavSpeaker
from voiced.errors import DeviceError

if TYPE_CHECKING:
    from voiced.devices.portaudio import Kind

log = logging.getLogger("voiced.audio")

DEFAULT_SPEAKER = "voiced-speaker.wav"
"""Where ``auto`` writes the speaker's audio when there is no audio device."""


def sample_utterance() -> Path:
    """The bundled sample utterance ("what is the weather like today"), 24 kHz mono PCM16."""
    return Path(str(resources.files("voiced") / "data" / "sample.wav"))


@asynccontextmanager
async def open_microphone(
    config: AudioInputConfig, *, demo: bool = True
) -> AsyncIterator[Microphone]:
    """The microphone the config asks for (``auto``: a real one if there is one), for the body
    of the ``async with``. It captures while its ``run`` runs, and releases the device itself.

    Args:
        config: the microphone's settings.
        demo: the server is the simulator. Only then may ``auto`` with no device fall back to
            the bundled sample utterance; a real server would be paid to hear it on every
            press, so there ``auto`` waits for a device to appear instead (degraded meanwhile).

    Raises:
        DeviceError: the backend cannot be used (a missing file, PyAudio not installed).
    """
    yield await _microphone(config, demo)


async def _microphone(config: AudioInputConfig, demo: bool) -> Microphone:
    if config.backend == "null":
        return NullMicrophone()
    if config.backend == "wav":
        assert config.path is not None  # config validation requires it for wav
        return WavMicrophone(Path(config.path), loop=config.loop, realtime=config.realtime)
    if config.backend == "pyaudio" or await _usable("input", config):
        microphone: Microphone = soundcard_module().PyAudioMicrophone(config)
        return microphone
    if not demo:
        module = soundcard_module()  # no PyAudio: one line on how to get it
        log.warning(
            "microphone: no usable input device yet; waiting for one (the bundled sample "
            "utterance is only ever sent to the simulator)"
        )
        waiting: Microphone = module.PyAudioMicrophone(config)
        return waiting
    log.info("microphone: the bundled sample utterance, looped (no usable input device)")
    return WavMicrophone(sample_utterance(), loop=True, realtime=True)


@asynccontextmanager
async def open_speaker(
    config: AudioOutputConfig, *, fallback: Path = Path(DEFAULT_SPEAKER)
) -> AsyncIterator[Speaker]:
    """The speaker the config asks for (see ``open_microphone``), closed on the way out.

    Args:
        config: the speaker's settings.
        fallback: the WAV file ``auto`` writes to when there is no audio device.

    Raises:
        DeviceError: the backend cannot be used.
    """
    speaker = await _speaker(config, fallback)
    try:
        yield speaker
    finally:
        with trio.CancelScope(shield=True):
            await speaker.aclose()


async def _speaker(config: AudioOutputConfig, fallback: Path) -> Speaker:
    if config.backend == "null":
        return NullSpeaker()
    if config.backend == "wav":
        assert config.path is not None
        return WavSpeaker(Path(config.path), realtime=config.realtime)
    if config.backend == "pyaudio" or await _usable("output", config):
        speaker: Speaker = soundcard_module().PyAudioSpeaker(config)
        return speaker
    log.info("speaker: %s (no usable output device)", fallback)
    return WavSpeaker(fallback, realtime=True)


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
