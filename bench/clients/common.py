"""What every benchmark client shares: its command line, the session settings, WAV I/O, the
connection marks it prints for the parent, and the echo check.

Only the standard library is imported here, so the floor client stays bare.
"""

from __future__ import annotations

import argparse
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

RATE: Final = 24_000
"""Samples per second: 24 kHz mono PCM16 little-endian both ways."""
BYTES_PER_SECOND = RATE * 2
APPEND_BYTES = BYTES_PER_SECOND // 10
"""100 ms of audio per ``input_audio_buffer.append``, as voiced sends."""

MODEL = "gpt-realtime-2"
VOICE = "marin"
INSTRUCTIONS = "You are a concise voice assistant. Answer in one or two short sentences."
TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"


def session_config() -> dict[str, Any]:
    """The ``session`` of the ``session.update`` voiced sends: manual turns, PCM 24 kHz."""
    pcm = {"type": "audio/pcm", "rate": RATE}
    return {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": INSTRUCTIONS,
        "audio": {
            "input": {
                "format": pcm,
                "turn_detection": None,
                "transcription": {"model": TRANSCRIPTION_MODEL},
            },
            "output": {"format": pcm, "voice": VOICE},
        },
    }


@dataclass(frozen=True)
class Args:
    base_url: str
    """``ws://host:port/v1``; the Realtime endpoint is ``<base_url>/realtime``."""
    key: str
    model: str
    out: Path
    inputs: list[Path]


def parse_args(description: str) -> Args:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--base-url", required=True, help="ws://127.0.0.1:PORT/v1")
    parser.add_argument("--key", required=True, help="the bearer key")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--out", required=True, type=Path, help="reply audio (WAV)")
    parser.add_argument("inputs", nargs="+", type=Path, help="24 kHz mono PCM16 WAV files")
    ns = parser.parse_args()
    return Args(ns.base_url.rstrip("/"), ns.key, ns.model, ns.out, ns.inputs)


def read_pcm(path: Path) -> bytes:
    """The PCM of a 24 kHz mono PCM16 WAV file."""
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (RATE, 1, 2):
            raise ValueError(f"{path}: not 24 kHz mono PCM16")
        return wav.readframes(wav.getnframes())


def write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm)


def mark_connected() -> None:
    """Tell the parent, on stderr, this process's CPU time and the wall clock right now."""
    cpu, wall = time.process_time(), time.time()
    print(f"CONNECTED_CPU={cpu:.6f}\nCONNECTED_WALL={wall:.6f}", file=sys.stderr, flush=True)


def echo_status(sent: list[bytes], replies: list[bytes]) -> int:
    """0 if every reply is its input bit-exact (the simulator echoes), else 1 (and say why)."""
    if len(sent) != len(replies):
        print(f"ECHO_MISMATCH: {len(sent)} inputs, {len(replies)} replies", file=sys.stderr)
        return 1
    for turn, (pcm, reply) in enumerate(zip(sent, replies, strict=True), 1):
        if pcm != reply:
            print(
                f"ECHO_MISMATCH: turn {turn}: sent {len(pcm)} bytes, got {len(reply)} back",
                file=sys.stderr,
            )
            return 1
    return 0
