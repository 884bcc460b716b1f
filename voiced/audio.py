"""Sans-IO audio value types and arithmetic for the one wire format voiced speaks.

The Realtime API takes and gives 24 kHz mono PCM16 little-endian ("audio/pcm", rate 24000):
48 bytes per millisecond. Every frame that travels between stages is that format; conversion
from device formats happens at the device edge.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

# Plain, not frozen, dataclasses: on CPython 3.11 a frozen one costs twice as much to define,
# and this module is on every start-up path (bench/README.md). Treat instances as immutable.

RATE = 24_000
"""Samples per second on the wire."""
SAMPLE_BYTES = 2
"""Bytes per sample (PCM16, mono)."""
BYTES_PER_MS = RATE * SAMPLE_BYTES // 1000
"""48 bytes of PCM per millisecond of audio."""
MIN_COMMIT_MS = 100
"""The server refuses a commit of less audio than this (``input_audio_buffer_commit_empty``)."""


def ms_of(nbytes: int) -> float:
    """Duration in milliseconds of ``nbytes`` of wire PCM."""
    return nbytes / BYTES_PER_MS


def bytes_of(ms: float) -> int:
    """Whole samples' worth of wire PCM bytes in ``ms`` milliseconds (rounded down)."""
    return int(ms * RATE / 1000) * SAMPLE_BYTES


def scale(pcm: bytes, factor: float) -> bytes:
    """``pcm`` with every sample multiplied by ``factor`` (0.0 to 1.0: no clipping needed)."""
    samples = array("h", pcm)
    for i, value in enumerate(samples):
        samples[i] = int(value * factor)
    return samples.tobytes()


def silence(nbytes: int) -> bytes:
    """``nbytes`` of digital silence."""
    return bytes(nbytes)


@dataclass
class AudioFrame:
    """A run of wire PCM captured from a source.

    Attributes:
        pcm: 24 kHz mono PCM16 little-endian bytes (an even count).
        captured_at: trio clock time (seconds) when the last sample of the frame was heard.
    """

    pcm: bytes
    captured_at: float


@dataclass
class ReplyAudio:
    """A run of wire PCM from the server, on its way to the speaker.

    Attributes:
        pcm: 24 kHz mono PCM16 little-endian bytes.
        turn: the turn whose reply it is (turn numbers only grow; response ids restart on
            every connection).
        item_id: the assistant item it belongs to (the key of ``conversation.item.truncate``).
    """

    pcm: bytes
    turn: int
    item_id: str


@dataclass
class Earcon:
    """A short sound for the speaker alone (see ``voiced.earcons``)."""

    name: str
    pcm: bytes


@dataclass
class AnswerAgain:
    """In the playback queue: the reply of ``turn`` was stopped (its link was lost) and is being
    asked again; that turn's audio after this marker plays."""

    turn: int


@dataclass
class EndOfReply:
    """Marks the end of a reply's audio in the playback queue; the speaker's task sends it back
    once all of it was played."""

    turn: int
