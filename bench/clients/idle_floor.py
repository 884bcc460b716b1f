"""The idle floor: a bare program holding what an idle voiced holds, and doing nothing else.

- A PyAudio input stream by callback (20 ms blocks at the device's rate and channels). Each block
  is handed to trio with the trio token's ``run_sync_soon``; there it is converted with soxr (HQ,
  float32) to 24 kHz mono int16 and appended to a pre-roll ring trimmed to ``PREROLL_MS``.
- A PyAudio output stream by callback that plays silence.
- One trio-websocket session: ``session.created``, one ``session.update``, ``session.updated``,
  then it reads (and ``json.loads``) whatever comes.

It prints ``READY`` on stderr once both streams run and the session is updated, and runs until
SIGTERM or SIGINT. Usage (bench/idle.py runs it)::

    python -m bench.clients.idle_floor --url ws://127.0.0.1:PORT/v1/realtime?model=M --key K \
        --input mic48s --output spk48s --rate 48000 --channels 2
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyaudio
import soxr
import trio
from trio_websocket import open_websocket_url

from bench.clients.common import RATE, session_config

BLOCK_MS = 20
"""Audio per PortAudio callback, as voiced asks for."""
PREROLL_MS = 550
"""voiced's default pre-roll (300 ms) plus the slack it keeps beyond it (250 ms)."""


def find_device(pa: pyaudio.PyAudio, name: str, kind: str) -> int:
    """The index of the device called ``name`` (else the one whose name contains it)."""
    key = "maxInputChannels" if kind == "input" else "maxOutputChannels"
    infos = [pa.get_device_info_by_index(i) for i in range(pa.get_device_count())]
    usable = [info for info in infos if int(info[key]) > 0]
    found = [i for i in usable if i["name"] == name] or [
        i for i in usable if name in str(i["name"])
    ]
    if not found:
        raise SystemExit(f"no {kind} device named like {name!r}")
    return int(found[0]["index"])


class PreRoll:
    """Converts device blocks to the wire format and keeps the last ``PREROLL_MS`` of them."""

    def __init__(self, rate: int, channels: int) -> None:
        self.channels = channels
        self.resampler = soxr.ResampleStream(rate, RATE, 1, "float32", "HQ")
        self.ring: deque[bytes] = deque()
        self.size = 0
        self.limit = RATE * 2 * PREROLL_MS // 1000

    def push(self, data: bytes) -> None:  # on the trio thread
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32)
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1, dtype=np.float32)
        resampled = self.resampler.resample_chunk(samples)
        pcm = np.clip(np.rint(resampled), -32768, 32767).astype("<i2").tobytes()
        self.ring.append(pcm)
        self.size += len(pcm)
        while self.size > self.limit:
            self.size -= len(self.ring.popleft())


async def run(args: argparse.Namespace) -> None:
    pa = pyaudio.PyAudio()
    rate, channels = args.rate, args.channels
    frames = rate * BLOCK_MS // 1000
    silence = bytes(frames * channels * 2)
    preroll = PreRoll(rate, channels)
    token = trio.lowlevel.current_trio_token()

    def heard(
        data: bytes | None, count: int, _time: Mapping[str, float], _status: int
    ) -> tuple[bytes | None, int]:
        try:
            token.run_sync_soon(preroll.push, data or b"")
        except trio.RunFinishedError:
            return None, pyaudio.paAbort
        return None, pyaudio.paContinue

    def play(
        _data: bytes | None, count: int, _time: Mapping[str, float], _status: int
    ) -> tuple[bytes | None, int]:
        if count == frames:
            return silence, pyaudio.paContinue
        return bytes(count * channels * 2), pyaudio.paContinue

    common: dict[str, Any] = {
        "format": pyaudio.paInt16,
        "channels": channels,
        "rate": rate,
        "frames_per_buffer": frames,
    }
    mic = pa.open(
        input=True,
        input_device_index=find_device(pa, args.input, "input"),
        stream_callback=heard,
        **common,
    )
    speaker = pa.open(
        output=True,
        output_device_index=find_device(pa, args.output, "output"),
        stream_callback=play,
        **common,
    )
    headers = [(b"Authorization", f"Bearer {args.key}".encode())]
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with open_websocket_url(
                args.url,
                extra_headers=headers,
                max_message_size=16 * 1024 * 1024,
                receive_buffer_size=65536,
            ) as ws:
                created = json.loads(await ws.get_message())
                if created["type"] != "session.created":
                    raise RuntimeError(f"expected session.created, got {created['type']}")
                update = {"type": "session.update", "session": session_config()}
                await ws.send_message(json.dumps(update))
                while json.loads(await ws.get_message())["type"] != "session.updated":
                    pass
                print("READY", file=sys.stderr, flush=True)

                async def idle() -> None:
                    while True:
                        json.loads(await ws.get_message())

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(idle)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break
    finally:
        for stream in (mic, speaker):
            stream.stop_stream()
            stream.close()
        pa.terminate()
    print(f"PREROLL_BYTES={preroll.size}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/v1/realtime?model=M")
    parser.add_argument("--key", required=True, help="the bearer key")
    parser.add_argument("--input", required=True, help="PortAudio input device name")
    parser.add_argument("--output", required=True, help="PortAudio output device name")
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--channels", type=int, required=True)
    trio.run(run, parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
