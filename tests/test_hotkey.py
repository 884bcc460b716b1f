"""The ``hotkey`` input (python-evdev): a key of an input device is the push-to-talk button.

This machine has no /dev/uinput and no /dev/input, so neither a virtual nor a real input device
can be made here. The evdev logic is fed real ``evdev.InputEvent``s through the plugin's reading
seam instead: each open "device" is a pipe carrying packed ``struct input_event``s, waited for
with ``trio.lowlevel.wait_readable`` and decoded by evdev's own ``EventIO.read``, as a device's
descriptor is. Hot-plug is simulated at the discovery seam (``Finder``'s ``list_paths`` and
``open_device``, over ``InputBus``, a stand-in for /dev/input): that is the one seam mocked. The
matching by path and by name, the press logic and the reading are the plugin's own.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from evdev import InputEvent, ecodes
from evdev.eventio import EventIO

from voiced.config import load_config
from voiced.errors import ConfigError, PluginError
from voiced.plugins import Plugins
from voiced.testing import FakeDaemon
from voiced.turn import Command, TurnCommand
from voiced_plugins.hotkey import Finder, HotkeyConfig, HotkeyInput, Missing, key_code

F13 = ecodes.KEY_F13
START = TurnCommand(Command.START, "hotkey")
COMMIT = TurnCommand(Command.COMMIT, "hotkey")
TOGGLE = TurnCommand(Command.TOGGLE, "hotkey")
CANCEL = TurnCommand(Command.CANCEL, "hotkey")
PEDAL = "/dev/input/by-id/usb-PCsensor_FootSwitch-event-kbd"
# struct input_event on 64-bit Linux: a timeval (seconds, microseconds), type, code, value.
INPUT_EVENT = struct.Struct("llHHi")


def event(type: int, code: int, value: int) -> InputEvent:
    sec, usec = divmod(time.time_ns() // 1000, 1_000_000)
    return InputEvent(sec, usec, type, code, value)


def key(code: int, value: int) -> InputEvent:
    return event(ecodes.EV_KEY, code, value)


class Node:
    """One simulated input device: its events go to every descriptor open on it."""

    def __init__(self, path: str, name: str, keys: Iterable[int]) -> None:
        self.path, self.name, self.keys = path, name, set(keys)
        self.down: set[int] = set()  # what EVIOCGKEY (active_keys) answers
        self.unplugged = False
        self.handles: list[PipeDevice] = []

    def send(self, *events: InputEvent, track: bool = True) -> None:
        """Deliver ``events``, then a SYN_REPORT, to every open descriptor; with ``track`` the
        keys' state (what ``active_keys`` answers) follows them."""
        events = (*events, event(ecodes.EV_SYN, ecodes.SYN_REPORT, 0))
        for e in events:
            if track and e.type == ecodes.EV_KEY and e.value in (0, 1):
                (self.down.add if e.value else self.down.discard)(e.code)
        data = b"".join(INPUT_EVENT.pack(e.sec, e.usec, e.type, e.code, e.value) for e in events)
        for handle in self.handles:
            if not handle.closed:
                os.write(handle.writer, data)


class PipeDevice(EventIO):
    """One open descriptor of a ``Node``: a non-blocking pipe; ``read`` is evdev's own."""

    def __init__(self, node: Node) -> None:
        self.node, self.name, self.path = node, node.name, node.path
        self.fd, self.writer = os.pipe()
        os.set_blocking(self.fd, False)  # as InputDevice opens it (O_NONBLOCK)
        self.grabbed = False
        self.closed = False

    def read(self) -> Iterator[InputEvent]:
        if self.node.unplugged:  # what the kernel answers once the device is gone
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return super().read()

    def capabilities(self) -> dict[int, list[int]]:
        return {ecodes.EV_KEY: sorted(self.node.keys)}

    def active_keys(self) -> list[int]:
        return sorted(self.node.down)

    def grab(self) -> None:
        self.grabbed = True

    def hang_up(self) -> None:
        """The device is gone: the descriptor becomes readable, and reading it fails."""
        if self.writer >= 0:
            os.close(self.writer)
            self.writer = -1

    def close(self) -> None:
        if not self.closed:
            self.hang_up()
            os.close(self.fd)
            self.fd, self.closed = -1, True


class InputBus:
    """A stand-in for /dev/input that the test plugs devices into and unplugs them from."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.scans = 0
        self._opened = trio.Event()

    def plug(self, path: str, name: str = "USB Foot Switch", keys: Iterable[int] = (F13,)) -> Node:
        self.nodes[path] = node = Node(path, name, keys)
        return node

    def unplug(self, path: str) -> None:
        node = self.nodes.pop(path)
        node.unplugged = True
        for handle in node.handles:
            handle.hang_up()

    def list_paths(self) -> list[str]:
        self.scans += 1
        return [path for path in self.nodes if path.startswith("/dev/input/event")]

    def open(self, path: str) -> PipeDevice:
        node = self.nodes.get(path)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        handle = PipeDevice(node)
        node.handles.append(handle)
        self._opened.set()
        return handle

    def finder(self, device: str, key: str = "KEY_F13") -> Finder:
        return Finder(device, key_code(key), list_paths=self.list_paths, open_device=self.open)

    async def attached(self, node: Node) -> PipeDevice:
        """The descriptor the plugin opened on ``node`` and kept (finding is synchronous: once
        an open is seen, the finder has returned and closed what it did not keep)."""
        while True:
            kept = [handle for handle in node.handles if not handle.closed]
            if kept:
                return kept[-1]
            self._opened = trio.Event()
            await self._opened.wait()

    def close(self) -> None:
        for node in self.nodes.values():
            for handle in node.handles:
                handle.close()


@pytest.fixture
def bus() -> Iterator[InputBus]:
    bus = InputBus()
    yield bus
    bus.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="voiced.hotkey")
    return caplog


def hotkey(bus: InputBus, device: str = "USB Foot Switch", **settings: object) -> HotkeyInput:
    config = HotkeyConfig(device=device, key="KEY_F13", **settings)
    return HotkeyInput(config, find=bus.finder(device))


async def test_hold_press_and_release(
    bus: InputBus, logs: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    node = bus.plug("/dev/input/event3")
    fake = FakeDaemon()
    with trio.fail_after(10):
        async with fake.running(hotkey(bus), input=True):
            handle = await bus.attached(node)
            node.send(key(F13, 1))
            assert await fake.next_command() == START
            node.send(key(F13, 0))  # within the debounce window: it settles, then counts
            assert await fake.next_command() == COMMIT
        assert handle.closed
        assert not handle.grabbed
    assert logs.messages == ["hotkey: KEY_F13 on USB Foot Switch (/dev/input/event3)"]


async def test_other_keys_repeats_and_events_ignored(bus: InputBus) -> None:
    node = bus.plug("/dev/input/event3")
    fake = FakeDaemon()
    with trio.fail_after(10):
        async with fake.running(hotkey(bus, debounce_s=0.0), input=True):
            await bus.attached(node)
            node.send(event(ecodes.EV_MSC, ecodes.MSC_SCAN, 0x70068), key(F13, 1))
            node.send(key(F13, 2), key(F13, 2), key(F13, 2))  # the key repeating
            node.send(key(ecodes.KEY_A, 1), key(ecodes.KEY_A, 0), key(ecodes.BTN_LEFT, 0))
            node.send(key(F13, 0))
            node.send(key(F13, 2))  # a repeat with the key up is no press
            node.send(key(ecodes.KEY_A, 1), key(ecodes.KEY_A, 2))
            node.send(event(ecodes.EV_REL, F13, 1))  # F13's code, but no key event
            await trio.testing.wait_all_tasks_blocked()
            assert fake.commands_received == [START, COMMIT]


async def test_toggle_and_long_press_cancel(
    bus: InputBus, autojump_clock: trio.testing.MockClock
) -> None:
    node = bus.plug("/dev/input/event3")
    fake = FakeDaemon()
    with trio.fail_after(60):
        async with fake.running(hotkey(bus, mode="toggle", reply=False), input=True):
            await bus.attached(node)
            toggle = TurnCommand(Command.TOGGLE, "hotkey", reply=False)
            node.send(key(F13, 1))
            assert await fake.next_command() == toggle  # start
            await trio.sleep(0.2)  # pacing: a short tap
            node.send(key(F13, 0))
            await trio.sleep(3)
            node.send(key(F13, 1))
            assert await fake.next_command() == toggle  # send
            await trio.sleep(0.2)
            node.send(key(F13, 0))
            await trio.sleep(3)
            node.send(key(F13, 1))
            pressed = trio.current_time()
            assert await fake.next_command() == toggle
            # Held: cancels after long_press_s, without waiting for the release.
            assert await fake.next_command() == TurnCommand(Command.CANCEL, "hotkey", reply=False)
            assert trio.current_time() - pressed == pytest.approx(1.5)
            node.send(key(F13, 0))
            await trio.testing.wait_all_tasks_blocked()
            assert len(fake.commands_received) == 4


async def test_device_missing_appears_vanishes_mid_press_and_returns(
    bus: InputBus, logs: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDaemon()
    with trio.fail_after(60):
        async with fake.running(hotkey(bus, PEDAL), input=True):
            # Up at once, though the pedal is not there; looked for every rescan_s.
            await trio.sleep(7)
            node = bus.plug(PEDAL, "PCsensor FootSwitch")
            first = await bus.attached(node)
            node.send(key(F13, 1))
            assert await fake.next_command() == START
            bus.unplug(PEDAL)  # mid-press: the held key counts as released
            assert await fake.next_command() == COMMIT
            await trio.sleep(9)
            assert first.closed
            node = bus.plug(PEDAL, "PCsensor FootSwitch")
            await bus.attached(node)
            node.send(key(F13, 1))
            assert await fake.next_command() == START
            await trio.sleep(0.1)
            node.send(key(F13, 0))
            assert await fake.next_command() == COMMIT
    assert logs.messages == [  # each change said once, however many rescans
        f"hotkey: waiting for {PEDAL}: not there (not plugged in?); looking again every 2 s",
        f"hotkey: KEY_F13 on PCsensor FootSwitch ({PEDAL})",
        f"hotkey: PCsensor FootSwitch ({PEDAL}) is gone (No such device); "
        "waiting for it to come back",
        f"hotkey: KEY_F13 on PCsensor FootSwitch ({PEDAL})",
    ]


@pytest.mark.parametrize("grab", [True, False])
async def test_grab_when_configured(
    bus: InputBus, logs: pytest.LogCaptureFixture, grab: bool
) -> None:
    node = bus.plug("/dev/input/event3")
    with trio.fail_after(10):
        async with FakeDaemon().running(hotkey(bus, grab=grab), input=True):
            handle = await bus.attached(node)
            assert handle.grabbed is grab
    suffix = ", grabbed" if grab else ""
    assert logs.messages == [f"hotkey: KEY_F13 on USB Foot Switch (/dev/input/event3){suffix}"]


async def test_dropped_events_resync_from_the_key_state(bus: InputBus) -> None:
    node = bus.plug("/dev/input/event3")
    fake = FakeDaemon()
    with trio.fail_after(10):
        async with fake.running(hotkey(bus, debounce_s=0.0), input=True):
            await bus.attached(node)
            node.send(key(F13, 1))
            assert await fake.next_command() == START
            # The kernel's buffer overflowed: the release was lost, and what came before the
            # next SYN_REPORT is incomplete; the key's state is read from the device.
            node.down.discard(F13)
            node.send(event(ecodes.EV_SYN, ecodes.SYN_DROPPED, 0), key(F13, 1), track=False)
            assert await fake.next_command() == COMMIT


def test_finds_a_device_by_name(bus: InputBus) -> None:
    bus.plug("/dev/input/event2", "AT Translated Set 2 keyboard", keys=[F13, ecodes.KEY_A])
    bus.plug("/dev/input/event5", "USB Foot Switch Mouse", keys=[ecodes.BTN_LEFT])
    bus.plug("/dev/input/event4", "USB Foot Switch")

    chosen = []

    def found(device: str) -> str:
        chosen.append(bus.finder(device)())
        path: str = chosen[-1].path
        return path

    assert found("USB Foot Switch") == "/dev/input/event4"  # the exact name, over a part
    assert found("usb foot switch") == "/dev/input/event4"  # case does not matter
    assert found("Translated") == "/dev/input/event2"  # a unique part
    assert found("/dev/input/event5") == "/dev/input/event5"  # a path, whatever its name
    # Only the devices chosen stay open.
    still_open = [h for n in bus.nodes.values() for h in n.handles if not h.closed]
    assert sorted(map(id, still_open)) == sorted(map(id, chosen))


def test_a_name_shared_by_nodes_prefers_the_one_with_the_key(bus: InputBus) -> None:
    bus.plug("/dev/input/event7", "PCsensor FootSwitch", keys=[ecodes.BTN_LEFT])
    bus.plug("/dev/input/event8", "PCsensor FootSwitch", keys=[F13])
    assert bus.finder("FootSwitch")().path == "/dev/input/event8"


def test_ambiguous_or_unknown_names(bus: InputBus) -> None:
    bus.plug("/dev/input/event10", "Foot Pedal Right")
    bus.plug("/dev/input/event9", "Foot Pedal Left")
    with pytest.raises(Missing) as ambiguous:
        bus.finder("foot pedal")()
    assert ambiguous.value.message == (
        "'foot pedal' matches 2 devices: 'Foot Pedal Left' (/dev/input/event9), "
        "'Foot Pedal Right' (/dev/input/event10); write more of the name, or a path from "
        "/dev/input/by-id/"
    )
    assert ambiguous.value.level == logging.ERROR
    with pytest.raises(Missing) as unknown:
        bus.finder("Presenter")()
    assert unknown.value.message == (
        "no input device is named 'Presenter' "
        "(python -m evdev.evtest lists the devices and shows their keys)"
    )
    assert unknown.value.level == logging.INFO
    assert all(h.closed for n in bus.nodes.values() for h in n.handles)


async def test_ambiguous_name_is_logged_once_until_resolved(
    bus: InputBus, logs: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    bus.plug("/dev/input/event9", "Foot Pedal Left")
    right = bus.plug("/dev/input/event10", "Foot Pedal Right")
    fake = FakeDaemon()
    with trio.fail_after(60):
        async with fake.running(hotkey(bus, "Foot Pedal"), input=True):
            await trio.sleep(9)
            assert bus.scans >= 4
            bus.unplug("/dev/input/event9")
            await bus.attached(right)
    assert [(r.levelno, r.getMessage()) for r in logs.records] == [
        (
            logging.ERROR,
            "hotkey: waiting for Foot Pedal: 'Foot Pedal' matches 2 devices: 'Foot Pedal Left' "
            "(/dev/input/event9), 'Foot Pedal Right' (/dev/input/event10); write more of the "
            "name, or a path from /dev/input/by-id/; looking again every 2 s",
        ),
        (logging.INFO, "hotkey: KEY_F13 on Foot Pedal Right (/dev/input/event10)"),
    ]


@pytest.mark.parametrize(
    ("written", "hint"),
    [
        ("KEY_F133", " — did you mean 'KEY_F13'?"),
        ("f13", " — did you mean 'KEY_F13'?"),
        ("key_space", " — did you mean 'KEY_SPACE'?"),
        ("EV_KEY", ""),
    ],
)
def test_unknown_key_name_is_a_config_error(tmp_path: Path, written: str, hint: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"plugins:\n  hotkey:\n    device: USB Foot Switch\n    key: {written}\n")
    plugins = Plugins(load_config(path))
    message = f"{written!r} is not a key name (a KEY_ or BTN_ name as evtest shows it){hint}"
    with pytest.raises(ConfigError) as caught:
        plugins.create_enabled()
    assert str(caught.value) == f"{path}:4: plugins.hotkey.key: {message}"


def test_settings_checked_where_written(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "plugins:\n  hotkey:\n    device: /dev/input/event3\n    key: BTN_LEFT\n"
        "    mode: toggle\n    long_press_s: 0.1\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"^.*config\.yaml:6: plugins\.hotkey\.long_press_s: must be between 0\.2 and 30 seconds, or null$",
    ):
        Plugins(load_config(path)).create_enabled()
    path.write_text("plugins:\n  hotkey:\n    device: Pedal\n    key: KEY_B\n    grab: true\n")
    [loaded] = Plugins(load_config(path)).create_enabled()
    config = loaded.plugin.config  # type: ignore[attr-defined]
    assert config == HotkeyConfig(device="Pedal", key="KEY_B", grab=True)
    assert (config.mode, config.debounce_s, config.rescan_s) == ("hold", 0.03, 2.0)


async def test_without_evdev_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    config = HotkeyConfig(device="USB Foot Switch", key="KEY_F13")
    monkeypatch.setitem(sys.modules, "evdev", None)  # import evdev fails, as when not installed
    hint = r"^the hotkey plugin needs python-evdev: pip install 'voiced\[hotkey\]'$"
    with pytest.raises(PluginError, match=hint):
        HotkeyConfig(device="USB Foot Switch", key="KEY_F13")
    with trio.fail_after(10), pytest.raises(PluginError, match=hint):
        async with FakeDaemon().running(HotkeyInput(config), input=True):
            pass


def test_evdev_is_imported_only_when_configured() -> None:
    code = (
        "import sys, voiced_plugins.hotkey as hotkey; hotkey.voiced_plugin(); "
        "print('evdev' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout == "False\n"
