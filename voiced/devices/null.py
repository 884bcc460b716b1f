"""The ``null`` backend: a microphone that hears silence in real time, a speaker that discards."""

from __future__ import annotations

from collections.abc import Callable

import trio

from voiced.audio import BYTES_PER_MS, silence
from voiced.devices.clock import PacedMicrophone


class NullMicrophone(PacedMicrophone):
    """Digital silence, paced like a live microphone."""

    name = "null"

    def read(self, nbytes: int) -> bytes:
        return silence(nbytes)


class NullSpeaker:
    """Takes any audio at once and throws it away."""

    name = "null"
    paced = False

    def __init__(self) -> None:
        self._played = 0  # bytes taken
        self.volume = 1.0

    async def open(self) -> None:
        pass

    async def play(self, pcm: bytes) -> None:
        self._played += len(pcm)
        await trio.lowlevel.checkpoint()

    async def drain(self) -> None:
        await trio.lowlevel.checkpoint()

    def stop(self) -> None:
        pass

    def played_seconds(self) -> float:
        return self._played / BYTES_PER_MS / 1000

    def queued_seconds(self) -> float:
        return 0.0

    def started_at(self) -> float | None:
        return None

    def watch(self, callback: Callable[[str, str | None], None]) -> None:
        pass  # a file or nothing: it does not come and go

    def statistics(self) -> dict[str, object]:
        return {"name": self.name, "volume": self.volume}

    async def aclose(self) -> None:
        pass
