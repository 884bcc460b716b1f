"""Backoff for every reconnect loop in voiced: how long to wait before the next try, and
whether a failure is worth logging. Delays double up to a cap, jittered so that kiosks that lost
the same server do not retry in lockstep, and go back to the start only after a lasting success,
so a link that connects and drops at once still backs off. Pure: no trio, no I/O, no clock;
callers pass ``now``.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass

# A plain, not frozen, dataclass, as in voiced.audio: cheaper to define. Treat it as immutable.


@dataclass
class Retry:
    """What to do about one failure."""

    delay: float
    """Seconds to wait before the next try."""
    news: bool
    """Log this failure: its text differs from the last one logged, or it is the first failure
    after a healthy period (a new outage is news even if it looks like the last one)."""


class Backoff:
    """Exponential backoff with jitter, reset only by a lasting success.

    Args:
        start: the first delay, and the one a new outage starts from (seconds).
        cap: the longest delay (seconds).
        healthy_after: how long a success must last before the next failure counts as a new
            outage: the delay goes back to ``start`` and the failure is news (seconds).
        jitter: each delay is multiplied by ``1 - jitter * random()``: up to this fraction
            shorter, never longer.
        random: a source of floats in [0, 1); tests pass a fixed one.

    Raises:
        ValueError: a delay that is not positive, a cap below the start, a negative
            ``healthy_after`` or a jitter outside [0, 1].
    """

    def __init__(
        self,
        *,
        start: float = 0.5,
        cap: float = 30.0,
        healthy_after: float = 10.0,
        jitter: float = 0.2,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not 0 < start <= cap:
            raise ValueError(f"backoff needs 0 < start <= cap, not start={start}, cap={cap}")
        if healthy_after < 0:
            raise ValueError(f"healthy_after cannot be negative: {healthy_after}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter is a fraction between 0 and 1, not {jitter}")
        self.start = start
        self.cap = cap
        self.healthy_after = healthy_after
        self.jitter = jitter
        self._random = random
        self._next = start  # the delay before jitter that the next failure gets
        self._failing: str | None = None
        self._last: str | None = None  # the last failure's text; kept across successes
        self._healthy_since: float | None = None  # when it began working, if it works now

    def failed(self, now: float, why: str) -> Retry:
        """Record a failure at ``now``, described by ``why``.

        Returns:
            How long to wait before trying again, and whether to log this failure.
        """
        new_outage = (
            self._healthy_since is not None and now - self._healthy_since >= self.healthy_after
        )
        if new_outage:
            self._next = self.start
        news = new_outage or why != self._last
        delay = self._next * (1 - self.jitter * self._random())
        self._next = min(self._next * 2, self.cap)
        self._failing = self._last = why
        self._healthy_since = None
        return Retry(delay=delay, news=news)

    def succeeded(self, now: float) -> None:
        """It works (connected, device opened) as of ``now``.

        A success reported again while it still works keeps the time it began working: the
        healthy period is measured from the first.
        """
        if self._healthy_since is None:
            self._healthy_since = now
        self._failing = None

    @property
    def failing(self) -> str | None:
        """The last failure's text while failing; None once it has succeeded since."""
        return self._failing
