"""Press semantics, one set for every button-like input (GPIO, hotkey, foot pedal, terminal).

Pure: fed the contact's transitions with the time they happened, ``Presses`` says which
``TurnCommand``s they mean. Modes:

- ``hold``: press = start, release = commit (push-to-talk);
- ``toggle``: press = start, the next press = commit; holding the button for ``long_press_s``
  cancels (whatever is going on: listening, thinking or a reply), without waiting for release.

A transition within ``debounce_s`` of the last one accepted is contact bounce and ignored, so a
bouncing contact never starts two turns. With ``reply`` false a commit sends what was heard but
asks for no answer (dictation). The stuck-button limit is the turn controller's, for every input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from voiced.turn import Command, TurnCommand

PressMode = Literal["hold", "toggle"]


@dataclass(frozen=True)
class PressConfig:
    """How a button's presses become commands; every button-like input has these settings."""

    mode: PressMode = "hold"
    """``hold``: talk while held; ``toggle``: press to talk, press again to send."""
    long_press_s: float | None = 1.5
    """``toggle`` only: holding this long cancels (seconds); None turns it off."""
    debounce_s: float = 0.03
    """Transitions closer than this to the last one are contact bounce (seconds)."""
    reply: bool = True
    """Ask for a spoken answer; false only sends what was heard (its transcript still comes)."""

    def __post_init__(self) -> None:
        from voiced.yamlconf import FieldError

        if self.long_press_s is not None and not 0.2 <= self.long_press_s <= 30.0:
            raise FieldError("must be between 0.2 and 30 seconds, or null", field="long_press_s")
        if not 0.0 <= self.debounce_s <= 1.0:
            raise FieldError("must be between 0 and 1 second", field="debounce_s")
        if self.long_press_s is not None and self.debounce_s >= self.long_press_s:
            raise FieldError("must be shorter than long_press_s", field="debounce_s")


class Presses:
    """Turns a contact's presses and releases into commands.

    Debouncing settles on the contact's last level: a change within ``debounce_s`` of the last
    accepted one waits until the window ends (``tick``), and is dropped if the contact went back
    meanwhile. So bounce never starts two turns, and a tap shorter than the window still ends.

    Args:
        config: the mode, long press, debounce and reply settings.
        source: the input's name, carried by each command (for logs).
    """

    def __init__(self, config: PressConfig, source: str) -> None:
        self._config = config
        self._source = source
        self._down = False  # the accepted (debounced) state
        self._level = False  # the contact's latest level
        self._last = -math.inf  # when the last accepted change happened
        self._settle_at = math.inf  # when a change held back by the debounce window is looked at
        self._long_at = math.inf  # when a held button cancels (toggle mode)

    @property
    def held(self) -> bool:
        """Whether the button is down now (after debouncing)."""
        return self._down

    @property
    def deadline(self) -> float:
        """When ``tick`` has something to do."""
        return min(self._settle_at, self._long_at)

    def press(self, now: float) -> list[TurnCommand]:
        """The contact closed at ``now``."""
        self._level = True
        return self._settle(now)

    def release(self, now: float) -> list[TurnCommand]:
        """The contact opened at ``now``."""
        self._level = False
        return self._settle(now)

    def tick(self, now: float) -> list[TurnCommand]:
        """The time is ``now``: settle a held-back change; a long press cancels, once."""
        out = []
        if now >= self._settle_at:
            self._settle_at = math.inf
            out += self._settle(now)
        if now >= self._long_at:
            self._long_at = math.inf
            out.append(self._command(Command.CANCEL))
        return out

    def _settle(self, now: float) -> list[TurnCommand]:
        if self._level == self._down:
            return []  # bounced back: nothing changed
        if now < self._last + self._config.debounce_s:  # (a subtraction could round below)
            self._settle_at = self._last + self._config.debounce_s
            return []
        self._down, self._last = self._level, now
        if self._down:
            if self._config.mode == "hold":
                return [self._command(Command.START)]
            if self._config.long_press_s is not None:
                self._long_at = now + self._config.long_press_s
            return [self._command(Command.TOGGLE)]
        self._long_at = math.inf
        return [self._command(Command.COMMIT)] if self._config.mode == "hold" else []

    def _command(self, command: Command) -> TurnCommand:
        return TurnCommand(command, self._source, reply=self._config.reply)
