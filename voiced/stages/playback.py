"""Playback: reply audio → the speaker, with a played-samples clock and an immediate stop.

Audio is handed to the device in blocks of at most ``BLOCK_MS`` so that a barge-in stops the
speaker within one block. The clock counts the samples of the current assistant item that the
device has taken, which is what ``conversation.item.truncate`` needs.
"""

from __future__ import annotations

import trio

from voiced.audio import BYTES_PER_MS, Earcon, EndOfReply, ReplyAudio, bytes_of
from voiced.devices.base import AudioSink
from voiced.turn import Played

BLOCK_MS = 20
"""The most audio handed to the device at once: the worst-case delay of a stop."""


class Player:
    """Owns the speaker. ``stop`` and ``position`` are synchronous, for the session task."""

    def __init__(self, sink: AudioSink) -> None:
        self.sink = sink
        self._stopped: set[str] = set()
        self._item: str | None = None
        self._item_bytes = 0  # bytes of the current item handed to the sink
        self._item_start = 0.0  # the sink's clock (seconds) where the current item begins
        self._current: str | None = None  # the response whose audio is being played
        self._first: tuple[str, float] | None = None  # latest response, trio time it began

    @property
    def first_sample(self) -> tuple[str, float] | None:
        """The latest response played and the trio time its first sample reached the device."""
        if self._first is None:
            return None
        response_id, handed = self._first
        started = self.sink.started_at()  # later, when the device gathered a jitter buffer
        return response_id, max(handed, started) if started is not None else handed

    def stop(self, response_id: str | None) -> None:
        """Stop playing ``response_id`` now (or whatever plays, if None); drop the rest of it."""
        target = response_id or self._current
        if target is not None:
            self._stopped.add(target)
            if target == self._current:
                self.sink.stop()

    def position(self) -> Played | None:
        """The current assistant item and how many milliseconds of it came out of the speaker."""
        if self._item is None:
            return None
        heard = (self.sink.played_seconds() - self._item_start) * 1000
        return Played(self._item, int(max(0.0, min(heard, self._item_bytes / BYTES_PER_MS))))

    async def run(
        self,
        inbound: trio.abc.ReceiveChannel[ReplyAudio | EndOfReply | Earcon],
        done: trio.abc.SendChannel[EndOfReply],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Play until ``inbound`` closes, then close the speaker.

        Args:
            inbound: reply audio, each response ended by an ``EndOfReply`` marker.
            done: gets the marker back once everything before it has been played.
        """
        # A sink that returns at once gets whole deltas: there is no playing to stop early.
        block = bytes_of(BLOCK_MS) if self.sink.paced else 1 << 30
        async with inbound, done:
            try:
                await self.sink.open()
                task_status.started()
                async for item in inbound:
                    if isinstance(item, Earcon):
                        for start in range(0, len(item.pcm), block):
                            await self.sink.play(item.pcm[start : start + block])
                        await self.sink.drain()
                        continue
                    if isinstance(item, EndOfReply):
                        if item.response_id not in self._stopped:
                            await self.sink.drain()
                            await done.send(item)
                        continue
                    await self._play(item, block)
            finally:
                with trio.CancelScope(shield=True):
                    await self.sink.aclose()

    async def _play(self, audio: ReplyAudio, block: int) -> None:
        if audio.response_id in self._stopped:
            return
        if audio.item_id != self._item:
            self._item, self._item_bytes = audio.item_id, 0
            self._item_start = self.sink.played_seconds() + self.sink.queued_seconds()
        if audio.response_id != self._current:
            # Audio arrives in response order: older responses will not play again.
            self._stopped.clear()
            self._current = audio.response_id
            self._first = (audio.response_id, trio.current_time())
        for start in range(0, len(audio.pcm), block):
            if audio.response_id in self._stopped:
                return
            chunk = audio.pcm[start : start + block]
            await self.sink.play(chunk)
            self._item_bytes += len(chunk)
