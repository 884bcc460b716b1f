"""The ``null`` backend: a microphone that hears silence in real time, a speaker that discards."""

from __future__ import annotations

import trio

from voiced.audio import AudioFrame
from voiced.devices.clock import PacedClock


class NullSource:
    """Digital silence, paced like a live microphone."""

    name = "null"

    def __init__(self) -> None:
        self._clock = PacedClock()

    @property
    def dropped_frames(self) -> int:
        return self._clock.dropped

    async def run(
        self,
        frames: trio.MemorySendChannel[AudioFrame],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with frames:
            await self._clock.run(frames, bytes, task_status=task_status)

    def flush(self) -> AudioFrame | None:
        return self._clock.flush(bytes)


class NullSink:
    """Takes any audio at once and throws it away."""

    name = "null"
    paced = False

    async def play(self, pcm: bytes) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        pass
