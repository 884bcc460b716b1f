"""A minimal push-to-talk client on the official openai SDK's realtime client, under asyncio.

The SDK's WebSocket client needs asyncio (it is built on ``websockets.asyncio``; under trio it
fails with "no running event loop"), so this is what a Python app on the SDK looks like: one
``AsyncOpenAI(...).realtime.connect(model=...)``, the typed helpers to send, ``recv()`` to read
parsed events. Same turns as voiced: appends of 100 ms, commit, ``response.create``, read until
``response.done``; replies go to a WAV file and must echo the inputs bit-exact.
"""

from __future__ import annotations

import asyncio
import base64
import sys

from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import (
    RealtimeErrorEvent,
    ResponseAudioDeltaEvent,
    ResponseDoneEvent,
    SessionCreatedEvent,
    SessionUpdatedEvent,
)

from bench.clients.common import (
    APPEND_BYTES,
    INSTRUCTIONS,
    RATE,
    TRANSCRIPTION_MODEL,
    VOICE,
    Args,
    echo_status,
    mark_connected,
    parse_args,
    read_pcm,
    write_wav,
)


async def turn(conn: AsyncRealtimeConnection, pcm: bytes) -> bytes:
    for start in range(0, len(pcm), APPEND_BYTES):
        chunk = base64.b64encode(pcm[start : start + APPEND_BYTES]).decode("ascii")
        await conn.input_audio_buffer.append(audio=chunk)
    await conn.input_audio_buffer.commit()
    await conn.response.create()
    reply = bytearray()
    while True:
        event = await conn.recv()
        if isinstance(event, ResponseAudioDeltaEvent):
            reply += base64.b64decode(event.delta)
        elif isinstance(event, ResponseDoneEvent):
            if event.response.status != "completed":
                raise RuntimeError(f"response ended {event.response.status}")
            return bytes(reply)
        elif isinstance(event, RealtimeErrorEvent):
            raise RuntimeError(f"server error: {event.error.message}")


async def run(args: Args) -> int:
    inputs = [read_pcm(path) for path in args.inputs]
    client = AsyncOpenAI(api_key=args.key, websocket_base_url=args.base_url)
    async with client.realtime.connect(model=args.model) as conn:
        created = await conn.recv()
        if not isinstance(created, SessionCreatedEvent):
            raise RuntimeError(f"expected session.created, got {created.type}")
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["audio"],
                "instructions": INSTRUCTIONS,
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": RATE},
                        "turn_detection": None,
                        "transcription": {"model": TRANSCRIPTION_MODEL},
                    },
                    "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": VOICE},
                },
            }
        )
        mark_connected()
        while not isinstance(await conn.recv(), SessionUpdatedEvent):
            pass
        replies = [await turn(conn, pcm) for pcm in inputs]
    write_wav(args.out, b"".join(replies))
    return echo_status(inputs, replies)


def main() -> int:
    args = parse_args("Push-to-talk client on the openai SDK's realtime client (asyncio).")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
