"""The two device interfaces every audio backend implements."""

from __future__ import annotations

from typing import Protocol

import trio

from voiced.audio import AudioFrame


class AudioSource(Protocol):
    """A microphone: produces wire-format frames (24 kHz mono PCM16) as they are heard."""

    name: str
    """A short description for logs and ``/status``, e.g. ``wav:sample.wav``."""

    async def run(
        self,
        frames: trio.MemorySendChannel[AudioFrame],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Capture until cancelled or the source ends, then close ``frames``.

        A live source never waits on ``frames``: when it is full the frame is dropped and counted
        (hence a memory channel, for ``send_nowait``).
        """

    def flush(self) -> AudioFrame | None:
        """The audio heard since the last frame, now (the tail before a commit), if any."""

    @property
    def dropped_frames(self) -> int:
        """Frames dropped because the pipeline was not keeping up."""


class AudioSink(Protocol):
    """A speaker: takes wire-format PCM and plays it, at the pace of a device if it has one."""

    name: str
    paced: bool
    """Whether ``play`` takes as long as the audio lasts (a device) or returns at once (a file
    written as fast as it comes): playback hands a paced sink short blocks, so a stop is quick."""

    async def play(self, pcm: bytes) -> None:
        """Play ``pcm``; returns when the device has taken it (paced sinks: when it is heard)."""

    async def aclose(self) -> None:
        """Release the device; idempotent."""
