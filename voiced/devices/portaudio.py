"""PortAudio through PyAudio: a quiet start, the device list, and choosing a device and format.

PortAudio probes ALSA and JACK when it starts and prints dozens of lines of their chatter on
stderr; those are silenced here (ALSA's error handler, and standard error during the probe).
Every call here blocks: run them in a worker thread, holding ``portaudio_lock``: PortAudio is not
thread-safe, and two streams closing at once in two threads corrupted its heap. PortAudio lists
devices once, when ``PyAudio()`` is created, so a device plugged in later needs a new instance.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pyaudio
import trio

from voiced.backoff import Backoff
from voiced.config import AudioInputConfig, AudioOutputConfig
from voiced.devices.convert import DeviceFormat
from voiced.errors import DeviceError

log = logging.getLogger("voiced.audio")

Kind = Literal["input", "output"]

_LOCK = threading.Lock()
LOCK_TIMEOUT = 10.0
"""Seconds to wait for another PortAudio call before taking PortAudio for stuck."""


@contextmanager
def portaudio_lock() -> Iterator[None]:
    """Held for every blocking PortAudio call (open, close, probe, terminate), from any thread.

    Raises:
        DeviceError: another call has held it for ``LOCK_TIMEOUT``: PortAudio hangs (closing a
            stream on a device that vanished the instant it started can) and only a restart
            of voiced frees it.
    """
    if not _LOCK.acquire(timeout=LOCK_TIMEOUT):
        raise DeviceError("PortAudio is stuck closing a device that went away: restart voiced")
    try:
        yield
    finally:
        _LOCK.release()


_ALSA_HANDLER: Any = None  # kept alive for as long as libasound may call it


def _silence_alsa() -> None:
    global _ALSA_HANDLER
    if _ALSA_HANDLER is not None:
        return
    try:
        asound = ctypes.cdll.LoadLibrary("libasound.so.2")
    except OSError:
        return  # no ALSA: nothing to silence
    handler_type = ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
    )
    _ALSA_HANDLER = handler_type(lambda *_: None)
    asound.snd_lib_error_set_handler(_ALSA_HANDLER)


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block (JACK writes there directly)."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def open_portaudio() -> pyaudio.PyAudio:
    """A PortAudio instance, started without the ALSA/JACK noise. Blocking."""
    _silence_alsa()
    with quiet_stderr():
        return pyaudio.PyAudio()


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device."""

    index: int
    name: str
    inputs: int
    """Input channels (0: not a microphone)."""
    outputs: int
    """Output channels (0: not a speaker)."""
    rate: int
    """The device's default sample rate (Hz)."""
    default_input: bool = False
    default_output: bool = False

    def channels(self, kind: Kind) -> int:
        return self.inputs if kind == "input" else self.outputs


def list_devices(pa: pyaudio.PyAudio) -> list[DeviceInfo]:
    """Every device PortAudio knows, defaults marked."""
    defaults = {}
    getters = {
        "input": pa.get_default_input_device_info,
        "output": pa.get_default_output_device_info,
    }
    for kind, getter in getters.items():
        try:
            defaults[kind] = int(getter()["index"])
        except OSError:  # no default of that kind
            defaults[kind] = -1
    out = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        out.append(
            DeviceInfo(
                index=index,
                name=str(info["name"]),
                inputs=int(info["maxInputChannels"]),
                outputs=int(info["maxOutputChannels"]),
                rate=int(info["defaultSampleRate"]),
                default_input=index == defaults["input"],
                default_output=index == defaults["output"],
            )
        )
    return out


def describe(devices: list[DeviceInfo], kind: Kind) -> str:
    """The devices of a kind, for an error message."""
    names = [f"{d.index}: {d.name}" for d in devices if d.channels(kind)]
    return ", ".join(names) if names else "none"


def find_device(devices: list[DeviceInfo], spec: str | int | None, kind: Kind) -> DeviceInfo:
    """The device ``spec`` names: an index, an exact name, or a unique part of a name.

    Raises:
        DeviceError: no such device, or a name part that fits several (naming those there are).
    """
    usable = [d for d in devices if d.channels(kind)]
    if spec is None:
        found = [d for d in usable if (d.default_input if kind == "input" else d.default_output)]
        what = f"no default {kind} device"
    elif isinstance(spec, int):
        found = [d for d in usable if d.index == spec]
        what = f"no {kind} device with index {spec}"
    else:
        found = [d for d in usable if d.name == spec] or [
            d for d in usable if spec.lower() in d.name.lower()
        ]
        what = f"no {kind} device named like {spec!r}"
        if len(found) > 1:
            names = ", ".join(repr(d.name) for d in found)
            raise DeviceError(f"{spec!r} fits several {kind} devices: {names}; name one")
    if not found:
        raise DeviceError(f"{what} (there are: {describe(devices, kind)})")
    return found[0]


def choose_format(
    pa: pyaudio.PyAudio, device: DeviceInfo, kind: Kind, rate: int | None, channels: int | None
) -> DeviceFormat:
    """A format the device takes: the rate asked for or its own, mono when it can.

    Raises:
        DeviceError: the device refuses the format asked for.
    """
    rate = rate or device.rate
    if channels is not None:
        if not _supported(pa, device, kind, rate, channels):
            raise DeviceError(
                f"{kind} device {device.name!r} does not take {rate} Hz, {channels} ch"
            )
        return DeviceFormat(rate, channels)
    for channels in (1, 2):
        if _supported(pa, device, kind, rate, channels):
            return DeviceFormat(rate, channels)
    raise DeviceError(
        f"{kind} device {device.name!r} takes neither mono nor stereo at {rate} Hz "
        "(unplugged, or its sound server is down?)"
    )


def _supported(
    pa: pyaudio.PyAudio, device: DeviceInfo, kind: Kind, rate: int, channels: int
) -> bool:
    if channels > device.channels(kind):
        return False
    args: dict[str, Any] = {
        f"{kind}_device": device.index,
        f"{kind}_channels": channels,
        f"{kind}_format": pyaudio.paInt16,
    }
    try:
        with quiet_stderr():
            return bool(pa.is_format_supported(rate, **args))
    except ValueError:
        return False


# -- opening, closing and reopening streams ---------------------------------------------

CLOSE_TIMEOUT = 5.0
"""Seconds to wait for PortAudio to close a stream."""
RETRY_START, RETRY_MAX = 0.5, 10.0
"""Seconds between tries to reopen a device: doubling from the first to the cap (``Backoff``
shortens each by up to a fifth, at random)."""


async def open_device(
    kind: Kind, config: AudioInputConfig | AudioOutputConfig
) -> tuple[Any, Any, Any]:
    """A PortAudio instance, the configured device, and the format to open it with."""

    def work() -> tuple[Any, Any, Any]:
        with portaudio_lock():
            pa = open_portaudio()
            try:
                device = find_device(list_devices(pa), config.device, kind)
                fmt = choose_format(pa, device, kind, config.rate, config.channels)
            except BaseException:
                pa.terminate()
                raise
            return pa, device, fmt

    return await trio.to_thread.run_sync(work)


class Once:
    """A task status that may be reported ready more than once; only the first counts."""

    def __init__(self, task_status: trio.TaskStatus[None]) -> None:
        self._task_status: trio.TaskStatus[None] | None = task_status

    def started(self) -> None:
        if self._task_status is not None:
            self._task_status.started()
            self._task_status = None


class DeviceRetry:
    """Reopening a device: the delays and which failures to log come from ``Backoff`` (each
    distinct failure, and a new outage, logged once); this adds /status and its callback."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.reopens = 0
        self.on_change: Callable[[str, str | None], None] = lambda name, error: None
        """Called with the device's name and its error (None: working) when either changes."""
        self._backoff = Backoff(start=RETRY_START, cap=RETRY_MAX)
        self._told = False  # a failure was logged and its recovery not yet

    @property
    def error(self) -> str | None:
        """Why the device is not in use now; None while it works."""
        return self._backoff.failing

    def failed(self, name: str, exc: Exception) -> float:
        """Record a failure; returns the seconds to wait before trying again."""
        before = self.error
        retry = self._backoff.failed(trio.current_time(), str(exc))
        if retry.news:
            log.error("%s: %s; retrying", self.what, exc)
            self._told = True
        if self.error != before:
            self.on_change(name, self.error)
        return retry.delay

    def opened(self, name: str) -> None:
        if self.error is None:
            log.info("%s: %s", self.what, name)
        else:
            self.reopens += 1
            if self._told:  # a device that flaps is not back each time: its drops were not news
                log.info("%s is back: %s", self.what, name)
                self._told = False
        self._backoff.succeeded(trio.current_time())
        self.on_change(name, None)


def probe(kind: Kind, config: AudioInputConfig | AudioOutputConfig) -> str | None:
    """Why the configured device of this kind cannot be used, or None if it opens. Blocking."""
    with portaudio_lock():
        return _probe(kind, config)


def _probe(kind: Kind, config: AudioInputConfig | AudioOutputConfig) -> str | None:
    try:
        pa = open_portaudio()
    except OSError as exc:
        return f"PortAudio did not start: {exc}"
    try:
        device = find_device(list_devices(pa), config.device, kind)
        fmt = choose_format(pa, device, kind, config.rate, config.channels)
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


async def close_in_thread(stream: Any, pa: Any) -> None:
    """Close a stream; if PortAudio hangs doing it, give up waiting (and say so)."""
    with trio.move_on_after(CLOSE_TIMEOUT) as waited:
        await trio.to_thread.run_sync(_close, stream, pa, abandon_on_cancel=True)
    if waited.cancelled_caught:
        log.error("closing an audio stream hung in PortAudio; left behind")


def _close(stream: Any, pa: Any) -> None:
    with portaudio_lock(), quiet_stderr():
        try:
            stream.stop_stream()
            stream.close()
        except OSError:
            pass  # the device is gone: there is nothing left to stop
        finally:
            pa.terminate()


def terminate(pa: Any) -> None:
    with portaudio_lock():
        pa.terminate()
