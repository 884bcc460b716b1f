"""Decode: the reply audio the turn controller lets through → speaker-ready reply audio.

The wire PCM is already the playback format here (the speaker converts to its device's rate);
this stage keeps whole samples and tags each run with its turn and item.
"""

from __future__ import annotations

import trio

from voiced.actions import Play
from voiced.audio import AnswerAgain, Earcon, EndOfReply, ReplyAudio


async def run_decode(
    inbound: trio.abc.ReceiveChannel[Play | EndOfReply | AnswerAgain | Earcon],
    outbound: trio.abc.SendChannel[ReplyAudio | EndOfReply | AnswerAgain | Earcon],
) -> None:
    """Run until ``inbound`` closes, then close ``outbound``."""
    async with inbound, outbound:
        async for item in inbound:
            if isinstance(item, Play):
                audio = item.delta.audio
                # A malformed odd byte would shift every later sample: keep whole samples only.
                pcm = audio[: len(audio) & ~1]
                await outbound.send(ReplyAudio(pcm, item.turn, item.delta.item_id))
            else:
                await outbound.send(item)
