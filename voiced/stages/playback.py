"""Playback: reply audio → the speaker, with a played-samples clock and an immediate stop.

Audio is handed to the speaker in blocks of at most ``BLOCK_MS`` so that a barge-in stops it
within one block. The clock counts the samples of the current assistant item that the device has
taken, which is what ``conversation.item.truncate`` needs. Replies are keyed by turn number, which
only grows, so a reply stopped on one connection never silences the next connection's replies.
The task tells the session, by message, when a reply's first sample reached the device and when
a reply has been played to its end.
"""

from __future__ import annotations

import trio

from voiced.actions import Played
from voiced.audio import BYTES_PER_MS, AnswerAgain, Earcon, EndOfReply, ReplyAudio, bytes_of
from voiced.devices.base import Speaker
from voiced.messages import PlaybackNews, PlaybackStarted

BLOCK_MS = 20
"""The most audio handed to the device at once: the worst-case delay of a stop."""


class Player:
    """Owns the speaker. ``stop`` and ``position`` are synchronous: a barge-in stops the
    speaker, then reads what came out, with nothing played in between."""

    def __init__(self, speaker: Speaker) -> None:
        self.speaker = speaker
        self._stopped_through = 0  # replies of this turn and earlier are not played
        self._turn = 0  # the turn whose reply is being played
        self._item: str | None = None
        self._item_bytes = 0  # bytes of the current item handed to the speaker
        self._item_start = 0.0  # the speaker's clock (seconds) where the current item begins
        self._handed: float | None = None  # trio time this reply's first block was handed over

    def stop(self, turn: int) -> None:
        """Stop playing the reply of ``turn`` (and of any earlier turn) now; drop the rest."""
        self._stopped_through = max(self._stopped_through, turn)
        if self._turn <= turn:
            self.speaker.stop()

    def position(self) -> Played | None:
        """The current assistant item and how many milliseconds of it came out of the speaker."""
        if self._item is None:
            return None
        heard = (self.speaker.played_seconds() - self._item_start) * 1000
        ms = max(0.0, min(heard, self._item_bytes / BYTES_PER_MS))
        return Played(self._item, int(ms + 1e-6))  # not 19 ms for a float's 19.999999

    async def run(
        self,
        inbound: trio.abc.ReceiveChannel[ReplyAudio | EndOfReply | AnswerAgain | Earcon],
        news: trio.abc.SendChannel[PlaybackNews],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Play until ``inbound`` closes, then close the speaker.

        Args:
            inbound: reply audio, each reply ended by an ``EndOfReply`` marker.
            news: gets ``PlaybackStarted`` when a reply's first sample reached the device, and
                the marker back once everything before it has been played.
        """
        # A speaker that returns at once gets whole deltas: there is no playing to stop early.
        block = bytes_of(BLOCK_MS) if self.speaker.paced else 1 << 30
        async with inbound, news:
            try:
                await self.speaker.open()
                task_status.started()
                async for item in inbound:
                    if isinstance(item, Earcon):
                        for start in range(0, len(item.pcm), block):
                            await self.speaker.play(item.pcm[start : start + block])
                        await self.speaker.drain()
                    elif isinstance(item, AnswerAgain):
                        self._stopped_through = min(self._stopped_through, item.turn - 1)
                        self._turn = 0  # the new answer starts afresh
                    elif isinstance(item, EndOfReply):
                        if item.turn > self._stopped_through:
                            await self.speaker.drain()
                            await self._started(news, final=True)
                            await news.send(item)
                    else:
                        await self._play(item, block, news)
            finally:
                with trio.CancelScope(shield=True):
                    await self.speaker.aclose()

    async def _play(
        self, audio: ReplyAudio, block: int, news: trio.abc.SendChannel[PlaybackNews]
    ) -> None:
        if audio.turn <= self._stopped_through:
            return
        new_turn = audio.turn != self._turn
        if new_turn:
            self._turn, self._handed = audio.turn, trio.current_time()
        if new_turn or audio.item_id != self._item:  # item ids restart on every connection
            self._item, self._item_bytes = audio.item_id, 0
            self._item_start = self.speaker.played_seconds() + self.speaker.queued_seconds()
        for start in range(0, len(audio.pcm), block):
            if audio.turn <= self._stopped_through:
                return
            chunk = audio.pcm[start : start + block]
            self._item_bytes += len(chunk)  # handed over: it comes out even if stopped now
            await self.speaker.play(chunk)
            if self._handed is not None:
                await self._started(news, final=False)

    async def _started(self, news: trio.abc.SendChannel[PlaybackNews], *, final: bool) -> None:
        """Report when the reply's first sample reached the device: at once for a speaker that
        takes audio as it comes, else once it began playing (after its jitter buffer)."""
        handed = self._handed
        if handed is None:
            return
        started = self.speaker.started_at()
        if started is None or started >= handed or final:
            self._handed = None
            at = handed if started is None else max(started, handed)
            await news.send(PlaybackStarted(self._turn, at))
