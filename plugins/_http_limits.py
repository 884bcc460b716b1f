"""The ``http`` plugin's rate limit: a token bucket per client, which the application takes a
token from for every request (429 once a client has none).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

RATE_CLIENTS = 1024
"""Clients the rate limiter remembers before it forgets those whose bucket is full again."""


class RateLimit:
    """A token bucket per client: ``burst`` requests at once, refilled at ``rate`` per second.

    Args:
        rate: requests per second; 0 lets every request through.
        burst: the bucket's size.
        clock: the time in seconds (default: trio's clock).
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client → (tokens, when counted)

    def take(self, client: str) -> float:
        """Take a token for ``client``: 0.0 if it had one, else the seconds until it will."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, at = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > RATE_CLIENTS:
                self._forget(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _forget(self, now: float) -> None:
        """Forget the clients whose bucket has filled up again (as good as never seen)."""
        for client, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[client]
