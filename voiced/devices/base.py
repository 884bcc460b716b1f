"""The two device interfaces every audio backend implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from voiced.audio import AudioFrame


class Microphone(Protocol):
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

    async def flush(self) -> None:
        """Return once every sample heard up to now is in the frames channel.

        Called before each command, so that a commit follows the tail of what was said.
        """

    def statistics(self) -> dict[str, object]:
        """Name, format and counters for ``/status``: at least ``dropped_frames`` (frames the
        pipeline did not take in time)."""

    def watch(self, callback: Callable[[str, str | None], None]) -> None:
        """Call ``callback(name, error)`` when the device fails (error) or works again (None)."""


class Speaker(Protocol):
    """A speaker: takes wire-format PCM and plays it, at the pace of a device if it has one."""

    name: str
    volume: float
    """0.0 to 1.0, applied to what is played from the next block on."""
    paced: bool
    """Whether ``play`` takes as long as the audio lasts (a device) or returns at once (a file
    written as fast as it comes): playback hands a paced speaker short blocks, so a stop is
    quick."""

    async def open(self) -> None:
        """Open the device."""

    async def play(self, pcm: bytes) -> None:
        """Queue ``pcm``; returns when the device is ready for more."""

    async def drain(self) -> None:
        """Return once everything queued has been played (the end of a reply)."""

    def stop(self) -> None:
        """Stop at once (within a few milliseconds, without a click); drop what is queued."""

    def played_seconds(self) -> float:
        """Seconds of audio played since the speaker opened: out of the speaker, or handed to the
        device so that it will be, even if ``stop`` is called now."""

    def queued_seconds(self) -> float:
        """Seconds of audio taken but not yet handed to the device (``stop`` drops them)."""

    def started_at(self) -> float | None:
        """Trio time the latest run of audio began to be handed to the device (after a jitter
        buffer, say), or None when ``play`` hands it over at once."""

    def statistics(self) -> dict[str, object]:
        """Name, format and counters for ``/status`` (``underruns`` for a real device)."""

    def watch(self, callback: Callable[[str, str | None], None]) -> None:
        """Call ``callback(name, error)`` when the device fails (error) or works again (None)."""

    async def aclose(self) -> None:
        """Release the device; idempotent."""
