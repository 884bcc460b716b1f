"""Encode: gated audio frames → ``input_audio_buffer.append`` events, in order with the rest.

The session hands this stage, in order, the frames it wants sent and the control events that
must follow them. Frames are gathered into appends of ``chunk_ms``; any other event first
flushes the partial chunk, so a commit always follows every sample captured before it.
"""

from __future__ import annotations

import trio

from voiced.audio import AudioFrame, bytes_of
from voiced.protocol import ClientEvent, InputAudioBufferAppend
from voiced.stages.transport import Renew

APPEND_MS = 100
"""Audio per append event. With manual turns the server does nothing with the audio until the
commit, and the commit flushes the partial chunk, so bigger chunks cost no latency and fewer
events cost less CPU."""


async def run_encode(
    inbound: trio.abc.ReceiveChannel[AudioFrame | ClientEvent | Renew],
    outbound: trio.abc.SendChannel[ClientEvent | Renew],
    *,
    chunk_ms: int = APPEND_MS,
) -> None:
    """Run until ``inbound`` closes, then flush and close ``outbound``.

    Args:
        inbound: frames to send, and control events (or a ``Renew``), in wire order.
        outbound: client events (and ``Renew``) for the transport.
        chunk_ms: audio per append event.
    """
    chunk_bytes = bytes_of(chunk_ms)
    pending = bytearray()
    async with inbound, outbound:
        async for item in inbound:
            if isinstance(item, AudioFrame):
                pending += item.pcm
                while len(pending) >= chunk_bytes:
                    await outbound.send(InputAudioBufferAppend(bytes(pending[:chunk_bytes])))
                    del pending[:chunk_bytes]
                continue
            if pending:
                await outbound.send(InputAudioBufferAppend(bytes(pending)))
                pending.clear()
            await outbound.send(item)
        if pending:
            await outbound.send(InputAudioBufferAppend(bytes(pending)))
