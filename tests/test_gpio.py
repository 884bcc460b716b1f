"""The ``gpio`` input: a button and LEDs on gpiozero's mock pins, the real-parts option here (this
machine has no /dev/gpiochip). The test drives the button's pin, so gpiozero calls back on the
trio thread itself; the plugin's bridge (``TrioToken.run_sync_soon``) works from any thread.

LED patterns are played by a trio task, so they run on the ``autojump_clock``: every change of a
pin is recorded with the virtual time it happened (``TimedPin``) and checked against ``PATTERNS``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from gpiozero import LED, Device, DigitalInputDevice
from gpiozero.pins.mock import MockFactory, MockPin

from tests.conftest import SIM_KEY, RunningSim, config_file
from tests.test_daemon import daemon, elapse, next_state
from voiced.config import load_config
from voiced.errors import ConfigError, PluginError
from voiced.events import DaemonState, Event, StateChanged, TurnEnded
from voiced.pipeline import Pipeline
from voiced.plugins import Plugins
from voiced.sim import Simulator
from voiced.testing import FakeDaemon, default_status
from voiced.turn import Command, State, TurnCommand
from voiced_plugins.gpio import (
    BRIDGE_BUFFER,
    PATTERNS,
    ButtonConfig,
    GpioConfig,
    GpioInput,
    LedConfig,
    LedsConfig,
)

START, COMMIT, CANCEL, TOGGLE = (TurnCommand(c, "gpio") for c in Command)


class TimedPin(MockPin):  # type: ignore[misc]
    """A mock pin that records each change of its level with the trio time it happened."""

    def __init__(self, factory: Any, info: Any) -> None:
        self.changes: list[tuple[float, bool]] = []
        super().__init__(factory, info)

    def _change_state(self, value: bool) -> bool:
        changed: bool = super()._change_state(value)
        if changed:
            with contextlib.suppress(RuntimeError):  # outside trio (set-up, tear-down)
                self.changes.append((trio.current_time(), bool(value)))
        return changed


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    """gpiozero's MockFactory (of ``TimedPin``s) as the process's pin factory, which the
    plugin's ``pin_factory: mock`` takes over."""
    factory = MockFactory(pin_class=TimedPin)
    previous, Device.pin_factory = Device.pin_factory, factory
    try:
        yield factory
    finally:
        Device.pin_factory = previous
        factory.reset()


def timed(factory: MockFactory, pin: int) -> TimedPin:
    found = factory.pin(pin)
    assert isinstance(found, TimedPin)
    return found


def config(
    *,
    button: dict[str, Any] | None = None,
    led: int | None = None,
    leds: dict[str, Any] | None = None,
    pin_factory: Any = "mock",
) -> GpioConfig:
    return GpioConfig(
        button=None if button is None else ButtonConfig(**button),
        led=None if led is None else LedConfig(led),
        leds=None if leds is None else LedsConfig(**leds),
        pin_factory=pin_factory,
    )


@asynccontextmanager
async def running(
    settings: GpioConfig, fake: FakeDaemon | None = None
) -> AsyncIterator[tuple[FakeDaemon, GpioInput]]:
    plugin = GpioInput(settings)
    fake = fake or FakeDaemon()
    async with fake.running(plugin, input=True):
        yield fake, plugin


async def settle(seconds: float = 1.0) -> None:
    """Let virtual time pass, for "and nothing else happens" (refuses a real clock)."""
    await elapse(seconds)


# ---------------------------------------------------------------------- the button


async def test_hold_press_starts_release_commits(
    pins: MockFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with running(config(button={"pin": 17})) as (fake, plugin):
            button = timed(pins, 17)
            assert button.state  # pulled up: released
            button.drive_low()
            assert await fake.next_command() == START
            await trio.sleep(0.5)
            button.drive_high()
            assert await fake.next_command() == COMMIT
            await settle()
            assert fake.commands_received == [START, COMMIT]
            assert (plugin.opened, plugin.dropped) == (["button on GPIO17"], 0)


async def test_pull_down_button_presses_high(
    pins: MockFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with running(config(button={"pin": "GPIO5", "pull_up": False})) as (fake, _):
            button = timed(pins, 5)
            button.drive_high()
            assert await fake.next_command() == START
            await trio.sleep(0.5)
            button.drive_low()
            assert await fake.next_command() == COMMIT


async def test_external_resistor_with_active_state(
    pins: MockFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        settings = {"pin": "BOARD11", "pull_up": None, "active_state": "low"}
        async with running(config(button=settings)) as (fake, _):
            button = timed(pins, 17)  # BOARD11 is GPIO17
            button.drive_high()
            button.drive_low()
            assert await fake.next_command() == START


async def test_toggle_mode(pins: MockFactory, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with running(config(button={"pin": 17, "mode": "toggle"})) as (fake, _):
            button = timed(pins, 17)
            button.drive_low()
            await trio.sleep(0.2)
            button.drive_high()
            assert await fake.next_command() == TOGGLE
            await trio.sleep(2.0)  # listening; the release did nothing
            assert fake.commands_received == [TOGGLE]
            button.drive_low()
            await trio.sleep(0.2)
            button.drive_high()
            assert await fake.next_command() == TOGGLE
            await settle()
            assert fake.commands_received == [TOGGLE, TOGGLE]


async def test_long_press_cancels_once_without_waiting_for_the_release(
    pins: MockFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with running(config(button={"pin": 17, "mode": "toggle"})) as (fake, _):
            button = timed(pins, 17)
            button.drive_low()
            pressed = trio.current_time()
            assert await fake.next_command() == TOGGLE
            assert await fake.next_command() == CANCEL
            assert trio.current_time() - pressed == pytest.approx(1.5, abs=1e-3)
            await trio.sleep(3.0)  # still held: one cancel only
            button.drive_high()
            await settle()
            assert fake.commands_received == [TOGGLE, CANCEL]


async def test_bounce_gives_one_start(
    pins: MockFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with running(config(button={"pin": 17})) as (fake, _):
            button = timed(pins, 17)
            for _ in range(4):  # 8 transitions in 20 ms, within the 30 ms window
                button.drive_low()
                await trio.sleep(0.0025)
                button.drive_high()
                await trio.sleep(0.0025)
            button.drive_low()  # ...and it settles pressed
            assert await fake.next_command() == START
            await settle()
            assert fake.commands_received == [START]
            button.drive_high()
            assert await fake.next_command() == COMMIT


async def test_a_tap_shorter_than_the_debounce_window_still_commits(
    pins: MockFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with running(config(button={"pin": 17, "debounce_s": 0.05})) as (fake, _):
            button = timed(pins, 17)
            button.drive_low()
            pressed = trio.current_time()
            await trio.sleep(0.01)
            button.drive_high()
            assert await fake.next_command() == START
            assert await fake.next_command() == COMMIT
            # The release is taken when the window ends, on the deadline, not at the next event.
            assert trio.current_time() - pressed == pytest.approx(0.05, abs=1e-3)


async def test_reply_false_is_carried(
    pins: MockFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with running(config(button={"pin": 17, "reply": False})) as (fake, _):
            button = timed(pins, 17)
            button.drive_low()
            await trio.sleep(0.5)
            button.drive_high()
            assert [await fake.next_command(), await fake.next_command()] == [
                TurnCommand(Command.START, "gpio", reply=False),
                TurnCommand(Command.COMMIT, "gpio", reply=False),
            ]


async def test_callbacks_from_another_thread(pins: MockFactory) -> None:
    """On hardware gpiozero calls back on its own thread: the same bridge, real time."""
    with trio.fail_after(10):
        async with running(config(button={"pin": 17})) as (fake, _):
            button = timed(pins, 17)
            await trio.to_thread.run_sync(button.drive_low)
            assert await fake.next_command() == START
            await trio.to_thread.run_sync(button.drive_high)  # within 30 ms: held back...
            assert await fake.next_command() == COMMIT  # ...and taken when the window ends


async def test_a_full_queue_drops_and_still_ends_on_the_last_level(
    pins: MockFactory, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        async with running(config(button={"pin": 17})) as (fake, plugin):
            button = timed(pins, 17)
            for _ in range(BRIDGE_BUFFER):  # twice the queue, before trio runs once
                button.drive_low()
                button.drive_high()
            button.drive_low()  # the last level: pressed
            assert await fake.next_command() == START
            await settle()
            # 129 transitions: one handed to the waiting reader, a queue full, the rest dropped.
            assert plugin.dropped == BRIDGE_BUFFER
            assert fake.commands_received == [START]
            button.drive_high()
            assert await fake.next_command() == COMMIT
    warnings = [r for r in caplog.records if r.name == "voiced.gpio" and r.levelname == "WARNING"]
    assert len(warnings) == 1  # said once, counted in `dropped`


# ---------------------------------------------------------------------- the LEDs


def expected_changes(
    shown: list[tuple[float, str]], end: float, level: bool
) -> list[tuple[float, bool]]:
    """The changes of a pattern LED showing each state from its time until the next's."""
    out = []
    for (start, state), (stop, _) in zip(shown, [*shown[1:], (end, "")], strict=True):
        at = start
        while at < stop:
            for lit, seconds in PATTERNS[state]:
                if at >= stop:
                    break
                if lit != level:
                    out.append((at, lit))
                    level = lit
                at += seconds
    return out


def net(
    changes: list[tuple[float, bool]], since: float, until: float = math.inf
) -> list[tuple[float, bool]]:
    """``changes`` from ``since`` until before ``until``, those at one instant merged."""
    out: list[tuple[float, bool]] = []
    for at, level in changes:
        if not since - 1e-9 <= at < until - 1e-9:
            continue
        if out and abs(out[-1][0] - at) < 1e-9:
            out.pop()
        if not out or out[-1][1] != level:
            out.append((at, level))
    return out


def same(got: list[tuple[float, bool]], want: list[tuple[float, bool]]) -> bool:
    return [lit for _, lit in got] == [lit for _, lit in want] and all(
        g == pytest.approx(w, abs=1e-6) for (g, _), (w, _) in zip(got, want, strict=True)
    )


async def test_led_pattern_for_each_state(
    pins: MockFactory, autojump_clock: trio.testing.MockClock
) -> None:
    states = ["listening", "thinking", "speaking", "error", "offline", "idle", "listening"]
    with trio.fail_after(60):
        async with running(config(led=18)) as (fake, plugin):
            led = timed(pins, 18)
            assert plugin.opened == ["led on GPIO18"]
            assert not led.state  # idle: off
            shown = []
            for state in states:
                fake.publish(DaemonState(state))  # type: ignore[arg-type]
                shown.append((trio.current_time(), state))
                await trio.sleep(4.1)  # two periods of the slowest pattern, and a bit
            end = trio.current_time()
        assert not led.state  # closed: off
    assert same(net(led.changes, shown[0][0], end), expected_changes(shown, end, False))
    # And in words: thinking blinks slowly, speaking fast, offline twice every 2 s.
    first = {state: at for at, state in reversed(shown)}
    changes = net(led.changes, 0.0)
    thinking = [at - first["thinking"] for at, _ in changes if 0 <= at - first["thinking"] < 2]
    assert thinking == pytest.approx([0.5, 1.0, 1.5])  # on at 0 (listening was on already)
    speaking = [at - first["speaking"] for at, _ in changes if 0 <= at - first["speaking"] < 0.6]
    assert speaking == pytest.approx([0.15, 0.30, 0.45])
    offline = [(round(at - first["offline"], 6), lit) for at, lit in changes]
    assert [c for c in offline if 0 <= c[0] < 2] == [
        (0.0, True), (0.1, False), (0.3, True), (0.4, False),
    ]  # fmt: skip


async def test_led_starts_with_what_the_daemon_shows(
    pins: MockFactory, autojump_clock: trio.testing.MockClock
) -> None:
    status = default_status()
    status["shown"] = {"state": "offline", "reason": "connecting"}
    with trio.fail_after(10):
        async with running(config(led=18), FakeDaemon(status=status)) as _:
            started = trio.current_time()
            await trio.sleep(2.05)
    changes = [(round(at - started, 6), lit) for at, lit in timed(pins, 18).changes]
    assert changes[:5] == [(0.0, True), (0.1, False), (0.3, True), (0.4, False), (2.0, True)]


async def test_one_led_per_state(pins: MockFactory, autojump_clock: trio.testing.MockClock) -> None:
    leds = {"listening": 23, "speaking": "GPIO24", "error": "J8:37"}  # J8:37 is GPIO26
    with trio.fail_after(10):
        async with running(config(leds=leds)) as (fake, _):
            lit = []
            for state in ["listening", "thinking", "speaking", "error", "idle"]:
                fake.publish(DaemonState(state))  # type: ignore[arg-type]
                await trio.sleep(0.5)
                lit.append([n for n in (23, 24, 26) if timed(pins, n).state])
    assert lit == [[23], [], [24], [26], []]


async def test_devices_are_closed_on_exit(
    pins: MockFactory, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(10):
        async with running(config(button={"pin": 17}, led=18, leds={"error": 19})):
            pass
    for device in (DigitalInputDevice(17), LED(18), LED(19)):  # free again
        device.close()


# ---------------------------------------------------------------------- what goes wrong


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_wrong_pin_logs_one_error_and_the_led_still_works(
    pins: MockFactory, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        async with running(config(button={"pin": 40}, led=18)) as (fake, plugin):
            fake.publish(DaemonState("listening"))
            await settle()
            assert timed(pins, 18).state
            assert plugin.opened == ["led on GPIO18"]
    (error,) = errors(caplog)
    assert error.startswith("plugins.gpio.button.pin: cannot open GPIO40 (PinInvalidPin:")
    assert error.endswith("the button is off, the daemon carries on")


async def test_a_pin_in_use_logs_one_error(
    pins: MockFactory, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    other = LED(18)
    try:
        with trio.fail_after(10):
            async with running(config(button={"pin": 17}, led=18)) as (fake, _):
                timed(pins, 17).drive_low()
                assert await fake.next_command() == START  # the button works
    finally:
        other.close()
    (error,) = errors(caplog)
    assert error.startswith("plugins.gpio.led.pin: cannot open GPIO18 (GPIOPinInUse:")


async def test_an_unavailable_pin_factory_logs_one_error(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with running(config(button={"pin": 17}, pin_factory="lgpio")) as (_, plugin):
            assert plugin.opened == []
    (error,) = errors(caplog)
    assert error.startswith("plugins.gpio.pin_factory: cannot use lgpio: ModuleNotFoundError")
    assert "pip install lgpio" in error


async def test_missing_gpiozero_is_a_plugin_error_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gpiozero", None)  # `import gpiozero` fails
    with trio.fail_after(10), pytest.raises(PluginError, match=r"pip install 'voiced\[gpio\]'"):
        async with running(config(button={"pin": 17})):
            pass


def test_gpiozero_is_not_imported_with_the_module() -> None:
    code = "import sys, voiced_plugins.gpio; print('gpiozero' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "button: {pin: banana}",
            r"config.yaml:3: plugins.gpio.button.pin: not a pin: 'banana'",
        ),
        ("button: {pin: 99}", r"plugins.gpio.button.pin: a GPIO \(BCM\) number is 0 to 53"),
        ("led: {pin: true}", r"plugins.gpio.led.pin: expected an integer or a string, got true"),
        ("{}", r"config.yaml:2: plugins.gpio: nothing to do: set button, led or leds"),
        (
            "button: {pin: 17}\n    leds: {error: GPIO17}",
            r"config.yaml:4: plugins.gpio.leds: pin GPIO17 is already button.pin",
        ),
        (
            "button: {pin: 17, pull_up: null}",
            r"plugins.gpio.button.active_state: required when pull_up is null",
        ),
        ("button: {pin: 17, mode: hold_on}", r"plugins.gpio.button.mode: expected one of hold"),
        ("button: {pin: 17, long_press_s: 0.1}", r"plugins.gpio.button.long_press_s: must be"),
        ("pin_factory: lgpi\n    led: {pin: 18}", r"plugins.gpio.pin_factory: expected one of"),
    ],
)
def test_config_errors(tmp_path: Path, section: str, message: str) -> None:
    path = config_file(tmp_path, f"plugins:\n  gpio:\n    {section}\n")
    with pytest.raises(ConfigError, match=message):
        Plugins(load_config(path)).create_enabled()


def test_led_only_config(tmp_path: Path) -> None:
    path = config_file(tmp_path, "plugins:\n  gpio:\n    led: {pin: GPIO18}\n")
    (loaded,) = Plugins(load_config(path)).create_enabled()
    assert loaded.spec.input
    assert loaded.plugin.config == GpioConfig(led=LedConfig("GPIO18"))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- the real daemon


def gpio_daemon(
    tmp_path: Path, url: str, gpio: str, *, max_turn_s: float | None = None
) -> AbstractAsyncContextManager[
    tuple[Pipeline, httpx.AsyncClient, trio.abc.ReceiveChannel[Event]]
]:
    """``run_daemon`` as tests/test_daemon.py runs it (looped WAV microphone, paced WAV speaker,
    http), with ``plugins.gpio`` set to ``gpio``."""
    return daemon(tmp_path, url, max_turn_s=max_turn_s, plugins=f"  gpio: {gpio}\n")


@pytest.fixture
async def thinking_sim(nursery: trio.Nursery) -> RunningSim:
    """A simulator that takes 300 ms before it answers."""
    simulator = Simulator(api_key=SIM_KEY, think=0.3)
    return RunningSim(simulator, await nursery.start(simulator.serve))


GPIO = "{pin_factory: mock, button: {pin: 17}, led: {pin: 18}}"


async def test_a_gpio_press_makes_a_whole_turn_and_the_led_follows(
    pins: MockFactory, thinking_sim: RunningSim, tmp_path: Path, autojump_clock: Any
) -> None:
    sim = thinking_sim
    with trio.fail_after(30):
        async with gpio_daemon(tmp_path, sim.url, GPIO) as (pipe, _http, events):
            shown_events = pipe.broadcast.subscribe("leds", DaemonState)
            await pipe.ready.wait()
            button, led = timed(pins, 17), timed(pins, 18)
            shown: list[tuple[float, str]] = []
            idle_again = trio.Event()

            async def watch() -> None:
                async for event in shown_events:
                    assert isinstance(event, DaemonState)
                    if shown or event.state == "listening":  # from the press on
                        shown.append((trio.current_time(), event.state))
                    if event.state == "idle" and len(shown) > 1:
                        idle_again.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                button.drive_low()
                assert await next_state(events) is State.LISTENING
                await elapse(0.5)  # the person speaks for half a second
                button.drive_high()
                assert await next_state(events) is State.THINKING
                assert await next_state(events) is State.SPEAKING
                ended = await turn_over(events)
                await idle_again.wait()
                await elapse(1.0)
                end = trio.current_time()
                nursery.cancel_scope.cancel()
            assert ended.outcome == "completed"
            assert pipe.status()["turns"] == 1
    (conn,) = sim.sim.connections
    assert [e["type"] for e in conn.received].count("input_audio_buffer.commit") == 1
    assert [state for _, state in shown] == ["listening", "thinking", "speaking", "idle"]
    # The LED showed each state with its pattern, from the instant it was published.
    assert same(net(led.changes, shown[0][0], end), expected_changes(shown, end, False))
    assert not led.state


async def test_a_stuck_button_ends_at_max_turn_s(
    pins: MockFactory, thinking_sim: RunningSim, tmp_path: Path, autojump_clock: Any
) -> None:
    with trio.fail_after(30):
        async with gpio_daemon(tmp_path, thinking_sim.url, GPIO, max_turn_s=1) as (pipe, _, ev):
            await pipe.ready.wait()
            button = timed(pins, 17)
            button.drive_low()  # ...and it stays down
            assert await next_state(ev) is State.LISTENING
            listening = trio.current_time()
            assert await next_state(ev) is State.THINKING  # the limit committed
            assert trio.current_time() - listening == pytest.approx(1.0, abs=0.05)
            assert await next_state(ev) is State.SPEAKING
            assert (await turn_over(ev)).outcome == "completed"
            button.drive_high()  # the late release's commit finds nothing to commit
            await elapse(2.0)
            assert not [e for e in await drain(ev) if isinstance(e, StateChanged)]
            assert (pipe.status()["state"], pipe.status()["turns"]) == ("idle", 1)


async def turn_over(events: trio.abc.ReceiveChannel[Event]) -> TurnEnded:
    """The turn's ``TurnEnded``, once the state is idle again as well (in either order)."""
    ended, idle = None, False
    async for event in events:
        if isinstance(event, TurnEnded):
            ended = event
        elif isinstance(event, StateChanged):
            assert event.new is State.IDLE
            idle = True
        if ended is not None and idle:
            return ended
    raise AssertionError("events ended")


async def drain(events: trio.abc.ReceiveChannel[Event]) -> list[Event]:
    """The events already queued (on the virtual clock, waiting costs nothing)."""
    out = []
    while True:
        with trio.move_on_after(0.01) as scope:
            out.append(await events.receive())
        if scope.cancelled_caught:
            return out


async def test_a_wrong_pin_leaves_the_daemon_and_the_other_inputs_up(
    pins: MockFactory, sim: RunningSim, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(30):
        gpio = "{pin_factory: mock, button: {pin: 40}}"
        async with gpio_daemon(tmp_path, sim.url, gpio) as (pipe, http, events):
            await pipe.ready.wait()
            assert (await http.post("/start")).status_code == 202
            assert await next_state(events) is State.LISTENING
    gpio_errors = [m for m in errors(caplog) if "gpio" in m]
    assert gpio_errors == [
        "plugins.gpio.button.pin: cannot open GPIO40 (PinInvalidPin: 40 is not a valid pin "
        "name); the button is off, the daemon carries on"
    ]
