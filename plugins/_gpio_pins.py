"""The ``gpio`` plugin's pins: how a pin may be written in the config (a BCM number or a gpiozero
name), how it is checked and spelled for gpiozero, and the pin factory (gpiozero's pin library,
``pin_factory``) that opens them. gpiozero is handed in by the running plugin, and a factory's own
module is imported only when that factory is opened.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

from voiced.yamlconf import FieldError

log = logging.getLogger("voiced.gpio")

Pin = int | str

FACTORIES: dict[str, tuple[str, str, str]] = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory", "pip install lgpio, or apt python3-lgpio"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory", "pip install RPi.GPIO"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory", "pip install pigpio, and run pigpiod"),
    "native": ("gpiozero.pins.native", "NativeFactory", ""),
}  # fmt: skip
"""Each ``pin_factory``: gpiozero's module and class, and how to install what it needs."""

_PIN_NAME = re.compile(r"(?:GPIO|BCM|BOARD|WPI)\d{1,2}|[A-Z][A-Z0-9]*:\d{1,3}")
_BCM_NAME = re.compile(r"(?:GPIO|BCM)?(\d{1,2})")
MAX_BCM = 53


def check_pin(pin: Pin, name: str) -> None:
    """Raise a ``FieldError`` for ``name`` unless ``pin`` is shaped like a gpiozero pin."""
    if isinstance(pin, int):
        if not 0 <= pin <= MAX_BCM:
            raise FieldError(f"a GPIO (BCM) number is 0 to {MAX_BCM}, got {pin}", field=name)
    elif not (pin.isdigit() or _PIN_NAME.fullmatch(pin.upper())):
        raise FieldError(
            f"not a pin: {pin!r}; write a BCM GPIO number (17) or a name (GPIO17, BOARD11, J8:11)",
            field=name,
        )
    elif pin.isdigit():
        check_pin(int(pin), name)


def gpiozero_pin(pin: Pin) -> int | str:
    """``pin`` as gpiozero spells it: BCM numbers as ints, names in capitals."""
    if isinstance(pin, str) and pin.isdigit():
        return int(pin)
    return pin.upper() if isinstance(pin, str) else pin


def same_pin(pin: Pin) -> int | str:
    """A key equal for two spellings of one BCM pin (17, "17", "GPIO17", "BCM17")."""
    text = str(gpiozero_pin(pin))
    match = _BCM_NAME.fullmatch(text)
    return int(match[1]) if match else text


def shown_pin(pin: Pin) -> str:
    return f"GPIO{pin}" if isinstance(gpiozero_pin(pin), int) else str(pin)


def open_pin_factory(gpiozero: Any, name: str | None) -> tuple[Any, bool]:
    """The pin factory ``name`` stands for, and whether this plugin owns it (closes it).

    ``mock`` is the process's ``Device.pin_factory`` when that already is a ``MockFactory`` (so
    a test, or a script trying it out, drives the same pins), else a new one.

    Raises:
        Exception: whatever the factory's library raises; the message says what to install.
    """
    if name is None:
        with warnings.catch_warnings(record=True) as fallbacks:
            warnings.simplefilter("always")
            try:
                gpiozero.Device.ensure_pin_factory()
            except Exception as exc:
                tried = "; ".join(
                    str(w.message).removeprefix("Falling back from ") for w in fallbacks
                )
                raise RuntimeError(
                    f"no pin factory works here ({tried or exc}); on a Raspberry Pi 5 install "
                    "lgpio (apt install python3-lgpio), or set pin_factory: mock to try without "
                    "GPIO"
                ) from exc
        for warning in fallbacks:
            log.warning("gpio: %s", warning.message)
        return gpiozero.Device.pin_factory, False
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        current = gpiozero.Device.pin_factory
        return (current, False) if isinstance(current, MockFactory) else (MockFactory(), True)
    module, cls, hint = FACTORIES[name]
    try:
        factory = getattr(__import__(module, fromlist=[cls]), cls)()
    except Exception as exc:
        install = f" ({hint})" if hint else ""
        raise RuntimeError(f"cannot use {name}: {type(exc).__name__}: {exc}{install}") from exc
    return factory, True
