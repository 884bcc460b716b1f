"""A real-time pacer for microphones without a device clock (files, silence).

Every ``FRAME_MS`` it emits exactly the samples due since the last emission, computed from the
trio clock, so no sample is lost or doubled however late a tick runs; ``emit_due`` sends the
samples due *now*, which is how the tail of a turn reaches the server before the commit.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from voiced.audio import AudioFrame, bytes_of

FRAME_MS = 20
"""How often a paced source emits a frame, in milliseconds."""


class PacedClock:
    """Emits ``produce(nbytes)`` worth of audio as it comes due on the trio clock."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._emitted = 0  # bytes emitted since _t0
        self._frames: trio.MemorySendChannel[AudioFrame] | None = None
        self.dropped = 0
        """Frames dropped because the consumer's channel was full."""

    async def run(
        self,
        frames: trio.MemorySendChannel[AudioFrame],
        produce: Callable[[int], bytes],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Emit frames until cancelled; never waits on ``frames`` (a full channel drops)."""
        self._t0 = trio.current_time()
        self._frames = frames
        task_status.started()
        tick = 0
        while True:
            tick += 1
            await trio.sleep_until(self._t0 + tick * FRAME_MS / 1000)
            self.emit_due(produce)

    def emit_due(self, produce: Callable[[int], bytes]) -> None:
        """Send the audio due since the last frame, now (nothing before ``run``)."""
        if self._t0 is None or self._frames is None:
            return
        now = trio.current_time()
        due = bytes_of((now - self._t0) * 1000)
        if due <= self._emitted:
            return
        nbytes, self._emitted = due - self._emitted, due
        try:
            self._frames.send_nowait(AudioFrame(produce(nbytes), now))
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass


class PacedMicrophone:
    """The base of a microphone without a device clock: ``read(nbytes)`` gives the audio, the
    ``PacedClock`` gives it as it comes due. A file or nothing: it does not come and go."""

    name = "paced"

    def __init__(self) -> None:
        self._clock = PacedClock()

    def read(self, nbytes: int) -> bytes:
        """The next ``nbytes`` of audio."""
        raise NotImplementedError

    def watch(self, callback: Callable[[str, str | None], None]) -> None:
        pass

    def statistics(self) -> dict[str, object]:
        return {"name": self.name, "dropped_frames": self._clock.dropped}

    async def run(
        self,
        frames: trio.MemorySendChannel[AudioFrame],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with frames:
            await self._clock.run(frames, self.read, task_status=task_status)

    async def flush(self) -> None:
        self._clock.emit_due(self.read)
