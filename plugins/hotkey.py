"""The ``hotkey`` input: one key of a Linux input device (a keyboard, a USB foot pedal, a presenter
clicker) is the push-to-talk button.

The device is named by path (``/dev/input/by-id/usb-...-event-kbd``) or by name, or part of one
(``USB Foot Switch``, as ``python -m evdev.evtest`` lists them). Its events are read on the trio
thread when its descriptor is readable; the key's presses and releases go through
``voiced.press.Presses``, like every button. A device that is missing at startup or unplugged later
is looked for every ``rescan_s`` while the daemon carries on; a key held when its device vanished
counts as released. With ``grab`` the key (and the rest of that device) no longer types into the
kiosk's UI.

python-evdev is imported only when the plugin is configured (``pip install 'voiced[hotkey]'``).
"""

from __future__ import annotations

import difflib
import errno
import logging
import os
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import trio

from voiced import Daemon, PluginSpec, TurnCommand, hookimpl
from voiced.errors import PluginError
from voiced.press import PressConfig, Presses, PressMode
from voiced.yamlconf import FieldError

log = logging.getLogger("voiced.hotkey")

SOURCE = "hotkey"
INSTALL_HINT = "pip install 'voiced[hotkey]'"
LIST_HINT = "python -m evdev.evtest lists the devices and shows their keys"
_NOT_KEYS = {"KEY_RESERVED", "KEY_MAX", "KEY_CNT"}


def _evdev() -> ModuleType:
    """python-evdev, or a PluginError that says how to install it."""
    try:
        import evdev
    except ImportError as exc:
        raise PluginError(f"the hotkey plugin needs python-evdev: {INSTALL_HINT}") from exc
    return evdev


def key_code(name: str) -> int:
    """The event code of the key ``name`` (``KEY_F13``, ``BTN_LEFT``, ...).

    Raises:
        FieldError: no key has that name (for field ``key``), with a close match when there is one.
        PluginError: python-evdev is not installed.
    """
    codes: dict[str, Any] = _evdev().ecodes.ecodes
    names = sorted(n for n in codes if n.startswith(("KEY_", "BTN_")) and n not in _NOT_KEYS)
    if name in names:
        return int(codes[name])
    guess = name.strip().upper().replace(" ", "_").replace("-", "_")
    if guess in names:
        close = [guess]
    elif f"KEY_{guess}" in names:
        close = [f"KEY_{guess}"]
    else:
        close = difflib.get_close_matches(guess, names, n=1)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    raise FieldError(
        f"{name!r} is not a key name (a KEY_ or BTN_ name as evtest shows it){hint}", field="key"
    )


@dataclass(frozen=True)
class HotkeyConfig:
    """Which key of which input device is the button, and how its presses count."""

    device: str
    """A path (``/dev/input/by-id/usb-...-event-kbd``, ``/dev/input/event3``; starts with ``/``),
    or the device's name or a part of it (``USB Foot Switch``; case does not matter)."""
    key: str
    """The key: ``KEY_F13``, ``KEY_SPACE``, ``KEY_PAGEDOWN``, ``BTN_LEFT``, ..."""
    grab: bool = False
    """Take the device for voiced alone, so its keys no longer reach the kiosk's UI."""
    mode: PressMode = PressConfig.mode
    """``hold``: talk while held; ``toggle``: press to talk, press again to send."""
    long_press_s: float | None = PressConfig.long_press_s
    """``toggle`` only: holding this long cancels (seconds); null turns it off."""
    debounce_s: float = PressConfig.debounce_s
    """Changes closer than this to the last one are ignored (seconds)."""
    reply: bool = PressConfig.reply
    """Ask for a spoken answer; false only sends what was heard (dictation)."""
    rescan_s: float = 2.0
    """How often to look for the device while it is missing (seconds)."""

    def __post_init__(self) -> None:
        if not self.device.strip():
            raise FieldError("names no device: write its path or its name", field="device")
        key_code(self.key)
        if not 0.1 <= self.rescan_s <= 300.0:
            raise FieldError("must be between 0.1 and 300 seconds", field="rescan_s")
        self.press  # noqa: B018 (PressConfig checks its own fields, which have the same names)

    @property
    def press(self) -> PressConfig:
        """The press settings, for ``voiced.press.Presses``."""
        return PressConfig(self.mode, self.long_press_s, self.debounce_s, self.reply)


class InputEventLike(Protocol):
    """What is read of an ``evdev.InputEvent``."""

    type: int
    code: int
    value: int


class Device(Protocol):
    """The part of an ``evdev.InputDevice`` the plugin uses."""

    fd: int
    name: str
    path: Any

    def read(self) -> Iterable[InputEventLike]:
        """The events available now; raises BlockingIOError when there are none."""

    def capabilities(self) -> dict[int, list[Any]]:
        """The event codes the device can send, by event type."""

    def active_keys(self) -> list[int]:
        """The keys held down now."""

    def grab(self) -> None:
        """Take the device's events for this descriptor alone."""

    def close(self) -> None:
        """Close the descriptor (which also lets go of a grab)."""


class Missing(Exception):
    """The device cannot be used now; ``level`` says how loudly to log ``message``."""

    def __init__(self, message: str, level: int = logging.INFO) -> None:
        super().__init__(message)
        self.message = message
        self.level = level


def _open_evdev(path: str) -> Device:
    device: Device = _evdev().InputDevice(path)
    return device


def _list_evdev() -> list[str]:
    paths: list[str] = _evdev().list_devices(writable=False)
    return paths


def _event_number(path: str) -> tuple[int, str]:
    tail = os.path.basename(path).removeprefix("event")
    return (int(tail), path) if tail.isdigit() else (-1, path)


def has_key(device: Device, code: int, ecodes: Any) -> bool:
    return code in device.capabilities().get(ecodes.EV_KEY, [])


class Finder:
    """Finds the configured device: the discovery seam, called again while the device is missing.

    Args:
        device: a path (starts with ``/``), or a name or part of one.
        code: the key; among several devices of a name, those that have it are preferred.
        list_paths: the event devices there are (default: ``evdev.list_devices``).
        open_device: opens one (default: ``evdev.InputDevice``); raises OSError as ``os.open``.
    """

    def __init__(
        self,
        device: str,
        code: int,
        *,
        list_paths: Callable[[], list[str]] | None = None,
        open_device: Callable[[str], Device] | None = None,
    ) -> None:
        self.wanted = device
        self._code = code
        self._list = list_paths or _list_evdev
        self._open = open_device or _open_evdev

    def __call__(self) -> Device:
        """The device, opened.

        Raises:
            Missing: it is not there, cannot be opened, or the name matches several devices.
        """
        if self.wanted.startswith("/"):
            return self._by_path(self.wanted)
        return self._by_name()

    def _by_path(self, path: str) -> Device:
        try:
            return self._open(path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
                raise Missing("not there (not plugged in?)") from exc
            denied = exc.errno in (errno.EACCES, errno.EPERM)
            hint = " (add the daemon's user to the input group)" if denied else ""
            message = f"cannot open it: {exc.strerror or exc}{hint}"
            raise Missing(message, logging.WARNING) from exc

    def _by_name(self) -> Device:
        ecodes = _evdev().ecodes
        opened: list[Device] = []
        chosen: Device | None = None
        try:
            for path in sorted(self._list(), key=_event_number):
                with suppress(OSError):  # gone meanwhile, or not ours to read
                    opened.append(self._open(path))
            wanted = self.wanted.casefold()
            candidates = [d for d in opened if d.name.casefold() == wanted] or [
                d for d in opened if wanted in d.name.casefold()
            ]
            if len(candidates) > 1:  # e.g. a pedal's keyboard and mouse nodes: the one with the key
                candidates = [d for d in candidates if has_key(d, self._code, ecodes)] or candidates
            if not candidates:
                raise Missing(f"no input device is named {self.wanted!r} ({LIST_HINT})")
            if len(candidates) > 1:
                names = ", ".join(f"{d.name!r} ({d.path})" for d in candidates)
                raise Missing(
                    f"{self.wanted!r} matches {len(candidates)} devices: {names}; write more of "
                    "the name, or a path from /dev/input/by-id/",
                    logging.ERROR,
                )
            chosen = candidates[0]
            return chosen
        finally:
            for device in opened:
                if device is not chosen:
                    with suppress(OSError):
                        device.close()


class _Button:
    """The key's presses as commands; ``tick`` settles debounce and long presses on time."""

    def __init__(self, presses: Presses, commands: trio.MemorySendChannel[TurnCommand]) -> None:
        self._presses = presses
        self._commands = commands
        self._changed = trio.Event()

    async def set(self, down: bool) -> None:
        now = trio.current_time()
        commands = self._presses.press(now) if down else self._presses.release(now)
        self._changed.set()
        for command in commands:
            await self._commands.send(command)

    async def tick(self) -> None:
        """Run until cancelled: whenever ``Presses.deadline`` comes, tick."""
        while True:
            with trio.move_on_at(self._presses.deadline):
                await self._changed.wait()
            self._changed = trio.Event()
            now = trio.current_time()
            if now >= self._presses.deadline:
                for command in self._presses.tick(now):
                    await self._commands.send(command)


class HotkeyInput:
    """The plugin.

    Args:
        config: its settings.
        find: the discovery seam (default: a `Finder` for ``config.device``): returns the device,
            opened, or raises `Missing`.
    """

    def __init__(self, config: HotkeyConfig, find: Callable[[], Device] | None = None) -> None:
        self.config = config
        self._find = find

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        ecodes = _evdev().ecodes
        code = key_code(self.config.key)
        find = self._find or Finder(self.config.device, code)
        button = _Button(Presses(self.config.press, SOURCE), daemon.commands)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(button.tick)
            task_status.started()  # the input is up, with its device or waiting for it
            said: str | None = None  # why the device is missing, as last logged
            vanished = False
            while True:
                try:
                    device = find()
                except OSError as exc:  # a device went away while it was being looked at
                    missing = Missing(f"cannot look for it: {exc}", logging.WARNING)
                except Missing as exc:
                    missing = exc
                else:
                    said = None
                    await self._use(device, button, code, ecodes)
                    vanished = True
                    await trio.sleep(self.config.rescan_s)  # a device that fails at once: no spin
                    continue
                if missing.message != said and not (vanished and missing.level <= logging.INFO):
                    log.log(
                        missing.level,
                        "hotkey: waiting for %s: %s; looking again every %g s",
                        self.config.device,
                        missing.message,
                        self.config.rescan_s,
                    )
                said = missing.message
                await trio.sleep(self.config.rescan_s)

    async def _use(self, device: Device, button: _Button, code: int, ecodes: Any) -> None:
        """Read the key from ``device`` until the device is gone; then close it."""
        where = f"{device.name} ({device.path})"
        try:
            try:
                self._greet(device, where, code, ecodes)
                await self._read(device, button, code, ecodes)
                reason = "end of file"
            except OSError as exc:  # ENODEV: unplugged
                reason = exc.strerror or str(exc)
            log.warning("hotkey: %s is gone (%s); waiting for it to come back", where, reason)
            await button.set(False)  # a key held when its device vanished is released
        finally:
            if device.fd >= 0:
                trio.lowlevel.notify_closing(device.fd)
            with suppress(OSError):
                device.close()

    def _greet(self, device: Device, where: str, code: int, ecodes: Any) -> None:
        """Grab the device if asked to, and say it is in use."""
        grabbed = ""
        if self.config.grab:
            try:
                device.grab()
                grabbed = ", grabbed"
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    raise
                log.warning(
                    "hotkey: cannot grab %s: %s; its keys also reach other programs",
                    where,
                    exc.strerror or exc,
                )
        log.info("hotkey: %s on %s%s", self.config.key, where, grabbed)
        if not has_key(device, code, ecodes):
            log.warning("hotkey: %s has no %s key (%s)", where, self.config.key, LIST_HINT)

    async def _read(self, device: Device, button: _Button, code: int, ecodes: Any) -> None:
        """Until the end of the device's events: the key's downs and ups (repeats ignored).

        After SYN_DROPPED (the kernel's buffer overflowed) events up to the next SYN_REPORT are
        incomplete: they are skipped, and the key's state is asked of the device instead.

        Raises:
            OSError: the device is gone (ENODEV).
        """
        dropped = False
        while True:
            await trio.lowlevel.wait_readable(device.fd)
            try:
                events = list(device.read())
            except BlockingIOError:
                continue
            if not events:
                return  # end of file: no more events will come
            for event in events:
                if event.type == ecodes.EV_SYN:
                    if event.code == ecodes.SYN_DROPPED:
                        dropped = True
                    elif event.code == ecodes.SYN_REPORT and dropped:
                        dropped = False
                        await button.set(code in device.active_keys())
                elif (
                    not dropped
                    and event.type == ecodes.EV_KEY
                    and event.code == code
                    and event.value in (0, 1)  # 2 is the key repeating
                ):
                    await button.set(event.value == 1)


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec(
        "hotkey", "a key of an input device (keyboard, foot pedal, clicker) is the button",
        HotkeyConfig, HotkeyInput, input=True,
    )  # fmt: skip
