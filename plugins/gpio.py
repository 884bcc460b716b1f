"""The ``gpio`` input: a push button on a GPIO pin, and LEDs that show what the daemon is doing.

Needs gpiozero (``pip install 'voiced[gpio]'``); on a Raspberry Pi 5 also lgpio. gpiozero is
imported when the plugin starts, never when it is only listed (``voiced plugins``)::

    plugins:
      gpio:
        pin_factory: null    # gpiozero's default; or lgpio (Pi 5), rpigpio, pigpio, native, mock
        button:
          pin: 17            # BCM number, or a name: GPIO17, BOARD11, J8:11
          pull_up: true      # button to ground; false: to 3V3; null: external resistor and
          # active_state: low  # ...then say which level is pressed (high or low)
          mode: hold         # hold (talk while held) | toggle; and long_press_s, debounce_s,
          reply: true        # reply: the press settings every button has (voiced.press)
        led: {pin: 18}       # one LED whose pattern shows the state
        leds: {listening: 23, error: 24}   # and/or one LED per state, lit in that state

The button's transitions become commands through ``voiced.press.Presses`` (debounced there:
gpiozero's own ``bounce_time`` is not used). gpiozero calls back on its own thread (or, with mock
pins, on whichever thread drove the pin, a test's trio thread included); the callback only hands
the level to trio with ``TrioToken.run_sync_soon``, which is safe from any thread, and trio stamps
it and queues it on a bounded channel (a full queue drops, counted in ``dropped``, and the latest
level is still taken in once the queue empties).

The single LED's patterns (``PATTERNS``), one per ``voiced.events.DaemonState``:

========== =====================================================
idle       off
listening  on
thinking   slow blink: 0.5 s on, 0.5 s off
speaking   fast blink: 0.15 s on, 0.15 s off
error      three quick flashes (0.1 s on, 0.1 s off), then 1 s dark
offline    a double blink every 2 s: 0.1 on, 0.2 off, 0.1 on, 1.6 off
========== =====================================================

``leds`` light one LED steadily per state (the states without a pin light none).

The patterns are played by a trio task that switches the LED on and off, not by gpiozero's
``blink``: the double blink and the triple flash are not ``blink(on_time, off_time)`` patterns; a
state change is one cancel scope, not a blink thread to stop and join; the daemon gets no extra
thread; and the pattern follows trio's clock, so tests check it on the virtual clock. Its cost is
a wake-up per LED edge: none while idle or listening, at most about 7 a second while speaking.

A pin that will not open (a wrong pin, one in use, no GPIO chip, a pin factory that is not
installed) is logged once as an error naming its key; the daemon and its other inputs carry on
(and so does the LED when only the button failed, and the other way round).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import trio

from voiced import Daemon, PluginSpec, TurnCommand, hookimpl
from voiced.errors import PluginError
from voiced.events import DaemonState
from voiced.press import PressConfig, Presses
from voiced.yamlconf import FieldError

# `X as X` re-exports a name from the module that now holds it, read here as before the split.
from ._gpio_lights import PATTERNS as PATTERNS
from ._gpio_lights import Lights, follow, shown_now
from ._gpio_lights import Step as Step
from ._gpio_pins import FACTORIES as FACTORIES
from ._gpio_pins import MAX_BCM as MAX_BCM
from ._gpio_pins import Pin, check_pin, gpiozero_pin, open_pin_factory, same_pin, shown_pin

log = logging.getLogger("voiced.gpio")

PinFactoryName = Literal["lgpio", "rpigpio", "pigpio", "native", "mock"]

INSTALL_HINT = "pip install 'voiced[gpio]'"
BRIDGE_BUFFER = 64
"""Button transitions queued between gpiozero's callback and the task that reads them."""


@dataclass(frozen=True)
class ButtonConfig(PressConfig):
    """The push button: its pin and wiring, and the press settings of every button-like input
    (``mode``, ``long_press_s``, ``debounce_s``, ``reply``: ``voiced.press.PressConfig``)."""

    pin: Pin = field(kw_only=True)
    """BCM GPIO number (17) or a gpiozero pin name (GPIO17, BOARD11, J8:11)."""
    pull_up: bool | None = field(default=True, kw_only=True)
    """true: the button connects the pin to ground (internal pull-up); false: to 3V3 (internal
    pull-down); null: an external resistor, and ``active_state`` says which level is pressed."""
    active_state: Literal["high", "low"] | None = field(default=None, kw_only=True)
    """With ``pull_up: null`` only: the level the pin reads while the button is pressed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_pin(self.pin, "pin")
        if self.pull_up is None and self.active_state is None:
            raise FieldError("required when pull_up is null (high or low)", field="active_state")
        if self.pull_up is not None and self.active_state is not None:
            raise FieldError("only with pull_up: null (the pull sets it)", field="active_state")
        if self.long_press_s is not None and self.debounce_s >= self.long_press_s:
            raise FieldError("must be shorter than long_press_s", field="debounce_s")


@dataclass(frozen=True)
class LedConfig:
    """One LED whose pattern shows the daemon's state (see ``PATTERNS``)."""

    pin: Pin
    """BCM GPIO number or pin name, as for the button."""
    active_high: bool = True
    """true: the pin drives the LED's anode (high = lit); false: it sinks the cathode."""

    def __post_init__(self) -> None:
        check_pin(self.pin, "pin")


@dataclass(frozen=True)
class LedsConfig:
    """One LED per state, lit steadily while the daemon shows that state; each optional."""

    idle: Pin | None = None
    listening: Pin | None = None
    thinking: Pin | None = None
    speaking: Pin | None = None
    error: Pin | None = None
    offline: Pin | None = None
    active_high: bool = True
    """As for ``led``, for all of them."""

    def __post_init__(self) -> None:
        if not self.pins():
            raise ValueError("give at least one state a pin, e.g. listening: 23")
        for state, pin in self.pins().items():
            check_pin(pin, state)

    def pins(self) -> dict[str, Pin]:
        """The pin of each state that has one."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "active_high" and getattr(self, f.name) is not None
        }


@dataclass(frozen=True)
class GpioConfig:
    """A button, an LED, LEDs per state, or any of them together (at least one)."""

    button: ButtonConfig | None = None
    """The push-to-talk button; null for an LED-only setup."""
    led: LedConfig | None = None
    """One LED with a pattern per state."""
    leds: LedsConfig | None = None
    """One LED per state."""
    pin_factory: PinFactoryName | None = None
    """gpiozero's pin library: null (gpiozero's default: GPIOZERO_PIN_FACTORY, else the first
    that works), lgpio (Raspberry Pi 5), rpigpio, pigpio, native, or mock (no hardware: tests,
    or to try it on a PC)."""

    def __post_init__(self) -> None:
        if self.button is None and self.led is None and self.leds is None:
            raise ValueError("nothing to do: set button, led or leds")
        seen: dict[int | str, str] = {}
        for where, pin in self._pins():
            first = seen.setdefault(same_pin(pin), where)
            if first != where:
                raise FieldError(f"pin {pin} is already {first}", field=where.split(".")[0])

    def _pins(self) -> list[tuple[str, Pin]]:
        out: list[tuple[str, Pin]] = []
        if self.button is not None:
            out.append(("button.pin", self.button.pin))
        if self.led is not None:
            out.append(("led.pin", self.led.pin))
        if self.leds is not None:
            out += [(f"leds.{state}", pin) for state, pin in self.leds.pins().items()]
        return out


class GpioInput:
    """The running plugin.

    Attributes:
        dropped: button transitions dropped because the queue to trio was full.
        opened: what did open (``button``, ``led``, ``leds.<state>``), for tests and logs.
    """

    def __init__(self, config: GpioConfig) -> None:
        self.config = config
        self.dropped = 0
        self.opened: list[str] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._send: trio.MemorySendChannel[tuple[bool, float]] | None = None
        self._missed: bool | None = None  # the latest level dropped, read once the queue empties

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            import gpiozero
        except ImportError as exc:
            raise PluginError(f"gpio: gpiozero is not installed ({INSTALL_HINT}): {exc}") from exc
        self._token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[tuple[bool, float]](BRIDGE_BUFFER)
        self._send = send
        with ExitStack() as devices, send, receive:
            button, lights = self._open(gpiozero, devices)
            if button is None and lights is None:
                task_status.started()  # nothing to drive: the daemon carries on without it
                return
            events = daemon.subscribe(DaemonState) if lights is not None else None
            async with trio.open_nursery() as nursery:
                if events is not None and lights is not None:
                    nursery.start_soon(follow, events, lights, shown_now(daemon))
                if button is not None and self.config.button is not None:
                    presses = Presses(self.config.button, "gpio")
                    nursery.start_soon(self._presses, daemon, receive, presses)
                    button.when_activated = self._on_pressed
                    button.when_deactivated = self._on_released
                factory = self.config.pin_factory or "gpiozero's default"
                log.info("gpio: %s (pin factory: %s)", ", ".join(self.opened), factory)
                task_status.started()

    # ------------------------------------------------------------------ opening

    def _open(self, gpiozero: Any, devices: ExitStack) -> tuple[Any | None, Lights | None]:
        """Open what can be opened (each failure logged once); closed when ``devices`` is."""
        config = self.config
        try:
            factory, owned = open_pin_factory(gpiozero, config.pin_factory)
        except Exception as exc:
            log.error(
                "plugins.gpio.pin_factory: %s; GPIO is off, the daemon carries on without it", exc
            )
            return None, None
        if owned:
            devices.callback(factory.close)
        button = None
        if config.button is not None:
            b = config.button
            active = None if b.active_state is None else b.active_state == "high"
            button = self._device(
                devices, "button", b.pin,
                lambda: gpiozero.DigitalInputDevice(
                    gpiozero_pin(b.pin), pull_up=b.pull_up, active_state=active,
                    bounce_time=None, pin_factory=factory,
                ),
            )  # fmt: skip
        led = None
        if config.led is not None:
            c = config.led
            led = self._device(
                devices, "led", c.pin,
                lambda: gpiozero.LED(
                    gpiozero_pin(c.pin), active_high=c.active_high, pin_factory=factory
                ),
            )  # fmt: skip
        per_state = {}
        if config.leds is not None:
            high = config.leds.active_high
            for state, pin in config.leds.pins().items():
                make = functools.partial(
                    gpiozero.LED, gpiozero_pin(pin), active_high=high, pin_factory=factory
                )
                device = self._device(devices, f"leds.{state}", pin, make)
                if device is not None:
                    per_state[state] = device
        lights = Lights(led, per_state) if led is not None or per_state else None
        return button, lights

    def _device(self, devices: ExitStack, key: str, pin: Pin, make: Callable[[], Any]) -> Any:
        where = key if key.startswith("leds.") else f"{key}.pin"
        try:
            device = make()
        except Exception as exc:
            log.error(
                "plugins.gpio.%s: cannot open %s (%s: %s); the %s is off, the daemon carries on",
                where, shown_pin(pin), type(exc).__name__, exc, key,
            )  # fmt: skip
            return None
        devices.callback(device.close)
        if key != "button":
            devices.callback(device.off)  # first: a closed pin is left as it was
        self.opened.append(f"{key} on {shown_pin(pin)}")
        return device

    # ------------------------------------------------------------------ the button

    def _on_pressed(self) -> None:
        self._bridge(True)

    def _on_released(self) -> None:
        self._bridge(False)

    def _bridge(self, pressed: bool) -> None:
        """gpiozero's callback, on any thread: hand the level to trio, nothing else."""
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):  # the daemon has ended
            self._token.run_sync_soon(self._arrive, pressed)

    def _arrive(self, pressed: bool) -> None:
        """In the trio thread (outside any task): stamp and queue one transition."""
        assert self._send is not None
        try:
            self._send.send_nowait((pressed, trio.current_time()))
            self._missed = None  # a newer level is queued
        except trio.WouldBlock:
            self.dropped += 1
            self._missed = pressed
            if self.dropped == 1:
                log.warning("gpio: button transitions come faster than they are read; dropping")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the plugin is stopping

    async def _presses(
        self,
        daemon: Daemon,
        receive: trio.MemoryReceiveChannel[tuple[bool, float]],
        presses: Presses,
    ) -> None:
        """Feed the transitions and the time to ``presses``; send the commands it gives."""
        while True:
            commands: list[TurnCommand] = []
            with trio.move_on_at(presses.deadline) as wait:
                pressed, at = await receive.receive()
                commands = presses.press(at) if pressed else presses.release(at)
                if self._missed is not None and not receive.statistics().current_buffer_used:
                    missed, self._missed = self._missed, None
                    now = trio.current_time()
                    commands += presses.press(now) if missed else presses.release(now)
            if wait.cancelled_caught:
                commands = presses.tick(trio.current_time())
            for command in commands:
                log.debug("gpio: %s", command.command)
                await daemon.commands.send(command)


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec(
        "gpio", "a GPIO push button and status LEDs (gpiozero)", GpioConfig, GpioInput,
        input=True,
    )  # fmt: skip
