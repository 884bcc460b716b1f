"""Decode: the server's audio deltas → speaker-ready reply audio.

The wire PCM is already the playback format here; this is where resampling to a device's rate
and output volume go once real devices need them.
"""

from __future__ import annotations

import trio

from voiced.audio import Earcon, EndOfReply, ReplyAudio
from voiced.protocol import OutputAudioDelta


async def run_decode(
    inbound: trio.abc.ReceiveChannel[OutputAudioDelta | EndOfReply | Earcon],
    outbound: trio.abc.SendChannel[ReplyAudio | EndOfReply | Earcon],
) -> None:
    """Run until ``inbound`` closes, then close ``outbound``."""
    async with inbound, outbound:
        async for item in inbound:
            if isinstance(item, OutputAudioDelta):
                # A malformed odd byte would shift every later sample: keep whole samples only.
                pcm = item.audio[: len(item.audio) & ~1]
                await outbound.send(ReplyAudio(pcm, item.response_id, item.item_id))
            else:
                await outbound.send(item)
