"""The floor: a bare trio-websocket push-to-talk client doing only the protocol work.

Connect with the bearer header, ``session.update``, then per input file: appends of 100 ms,
commit, ``response.create``, read events (``json.loads`` each) until ``response.done``,
base64-decoding the audio deltas. At the end: write the replies to a WAV file and check that they
echo the inputs bit-exact. No features: no reconnects, no typed events, no playback.

Socket settings are the ones voiced uses (64 KiB reads, 16 MiB frames), so that the floor is a
lower bound for the same work rather than a slower configuration.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from bench.clients.common import (
    APPEND_BYTES,
    Args,
    echo_status,
    mark_connected,
    parse_args,
    read_pcm,
    session_config,
    write_wav,
)


async def next_event(ws: WebSocketConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await ws.get_message())
    if event["type"] == "error":
        raise RuntimeError(f"server error: {event['error']}")
    return event


async def send(ws: WebSocketConnection, event: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(event))


async def turn(ws: WebSocketConnection, pcm: bytes) -> bytes:
    for start in range(0, len(pcm), APPEND_BYTES):
        chunk = base64.b64encode(pcm[start : start + APPEND_BYTES]).decode("ascii")
        await send(ws, {"type": "input_audio_buffer.append", "audio": chunk})
    await send(ws, {"type": "input_audio_buffer.commit"})
    await send(ws, {"type": "response.create"})
    reply = bytearray()
    while True:
        event = await next_event(ws)
        if event["type"] == "response.output_audio.delta":
            reply += base64.b64decode(event["delta"])
        elif event["type"] == "response.done":
            status = event["response"]["status"]
            if status != "completed":
                raise RuntimeError(f"response ended {status}")
            return bytes(reply)


async def run(args: Args) -> int:
    inputs = [read_pcm(path) for path in args.inputs]
    url = f"{args.base_url}/realtime?model={args.model}"
    headers = [(b"Authorization", f"Bearer {args.key}".encode())]
    async with open_websocket_url(
        url, extra_headers=headers, max_message_size=16 * 1024 * 1024, receive_buffer_size=65536
    ) as ws:
        created = await next_event(ws)
        if created["type"] != "session.created":
            raise RuntimeError(f"expected session.created, got {created['type']}")
        await send(ws, {"type": "session.update", "session": session_config()})
        mark_connected()
        while (await next_event(ws))["type"] != "session.updated":
            pass
        replies = [await turn(ws, pcm) for pcm in inputs]
    write_wav(args.out, b"".join(replies))
    return echo_status(inputs, replies)


def main() -> int:
    args = parse_args("Bare trio-websocket push-to-talk client (the benchmark's floor).")
    return trio.run(run, args)


if __name__ == "__main__":
    sys.exit(main())
