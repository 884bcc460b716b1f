"""One simulated response, streamed step by step so ``response.cancel`` can land between deltas.

:meth:`ResponseRun.steps` generates :class:`Step` values in the order real traffic shows
(protocol §5/§10): the opening events, then one step per audio chunk (a
``response.output_audio.delta`` with the transcript deltas that go with it), then the closing
events down to ``response.done`` and ``rate_limits.updated``. The server sends a step, waits for the
step's audio duration times its pace, and resumes the generator; a cancel flag checked on every
resumption ends the stream with the closing events of a cancelled response. The reply audio is
what the session hands in (an echo of the last commit); what was streamed is kept in
:attr:`ResponseRun.sent_audio`. No trio, no sockets.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from voiced.sim.config import BYTES_PER_MS, SAMPLE_RATE
from voiced.sim.conversation import Item

UNEVEN = (0.4, 1.6, 1.0, 0.6, 1.4)
"""Delta sizes, as factors of the chunk size, when they are uneven (averaging 1.0)."""
TOKEN_LIMIT = 40000
"""The ``tokens`` rate limit reported in ``rate_limits.updated``."""

_OUTPUT_AUDIO_MS_PER_TOKEN = 50
_INPUT_AUDIO_MS_PER_TOKEN = 100


@dataclass(frozen=True)
class Step:
    """Events to send together, and how much reply audio (seconds) they carry, for pacing."""

    events: list[dict[str, Any]]
    audio_seconds: float = 0.0


def input_audio_tokens(audio_ms: int) -> int:
    return audio_ms // _INPUT_AUDIO_MS_PER_TOKEN


class ResponseRun:
    """The state of one response in flight; iterate :meth:`steps` once.

    Args:
        response_id: ``resp_...``.
        item: the assistant item, already added to the conversation.
        previous_item_id: the id of the item before ``item``.
        audio: the reply PCM to stream.
        chunk_bytes: PCM per ``response.output_audio.delta`` (on average, when ``uneven``).
        uneven: vary the deltas' sizes, as real traffic does.
        session: the effective session (voice, ``max_output_tokens``).
        input_tokens: (text, audio) tokens the response's input costs, for ``usage``.
    """

    def __init__(
        self,
        *,
        response_id: str,
        conversation_id: str,
        item: Item,
        previous_item_id: str | None,
        audio: bytes,
        chunk_bytes: int,
        uneven: bool = False,
        session: dict[str, Any],
        metadata: dict[str, str] | None,
        input_tokens: tuple[int, int],
    ) -> None:
        self.id = response_id
        self.item = item
        self.cancel_requested = False
        """Set by the session on ``response.cancel``; honoured at the next resumption."""
        self.done = False
        """True once the closing events are produced: the response is no longer active."""
        self.sent_audio = bytearray()
        self._previous_item_id = previous_item_id
        self._audio = audio
        self._chunk_bytes = chunk_bytes
        self._uneven = uneven
        self._input_tokens = input_tokens
        self._transcript = ""
        voice = session["audio"]["output"]["voice"]
        self._base = {
            "object": "realtime.response",
            "id": response_id,
            "conversation_id": conversation_id,
            "output_modalities": ["audio"],
            "max_output_tokens": session["max_output_tokens"],
            "audio": {
                "output": {
                    "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                    "voice": voice["id"] if isinstance(voice, dict) else voice,
                }
            },
            "metadata": metadata,
        }
        self._ids = {
            "response_id": response_id,
            "item_id": item.id,
            "output_index": 0,
            "content_index": 0,
        }

    def _chunks(self) -> list[bytes]:
        """The reply cut into deltas: all ``chunk_bytes`` long, or of varying sizes."""
        sizes = itertools.cycle(UNEVEN if self._uneven else (1.0,))
        chunks, offset = [], 0
        while offset < len(self._audio):
            size = max(2, int(self._chunk_bytes * next(sizes)) & ~1)  # whole samples
            chunks.append(self._audio[offset : offset + size])
            offset += size
        return chunks

    def steps(self) -> Iterator[Step]:
        created = {**self._base, "status": "in_progress", "status_details": None}
        created |= {"output": [], "usage": None}
        added = self.item.view()
        yield Step(
            [
                {"type": "response.created", "response": created},
                {
                    "type": "response.output_item.added",
                    "response_id": self.id,
                    "output_index": 0,
                    "item": added,
                },
                {
                    "type": "conversation.item.added",
                    "previous_item_id": self._previous_item_id,
                    "item": added,
                },
                {
                    "type": "response.content_part.added",
                    **self._ids,
                    "part": {"type": "audio", "transcript": ""},
                },
            ]
        )
        self.item.content = [{"type": "output_audio", "transcript": None}]
        chunks = self._chunks()
        words = _words(f"echo of {len(self._audio) // BYTES_PER_MS} ms")
        for index, chunk in enumerate(chunks):
            if self.cancel_requested:
                break
            self.sent_audio += chunk
            self.item.audio += chunk
            events = [
                {
                    "type": "response.output_audio.delta",
                    **self._ids,
                    "delta": base64.b64encode(chunk).decode("ascii"),
                }
            ]
            # One transcript word per chunk; the last chunk carries whatever is left.
            spoken = words[index:] if index == len(chunks) - 1 else words[index : index + 1]
            for word in spoken:
                self._transcript += word
                events.append(
                    {"type": "response.output_audio_transcript.delta", **self._ids, "delta": word}
                )
            yield Step(events, len(chunk) / BYTES_PER_MS / 1000)
        yield Step(self._closing())

    def _closing(self) -> list[dict[str, Any]]:
        cancelled = self.cancel_requested
        self.done = True
        self.item.status = "incomplete" if cancelled else "completed"
        self.item.content = [{"type": "output_audio", "transcript": self._transcript}]
        final = self.item.view()
        details = {"type": "cancelled", "reason": "client_cancelled"} if cancelled else None
        usage = self._usage()
        response = {**self._base, "status": "cancelled" if cancelled else "completed"}
        response |= {"status_details": details, "output": [final], "usage": usage}
        total = usage["total_tokens"]
        rate_limit = {
            "name": "tokens",
            "limit": TOKEN_LIMIT,
            "remaining": TOKEN_LIMIT - total,
            "reset_seconds": round(60 * total / TOKEN_LIMIT, 3),
        }
        return [
            {"type": "response.output_audio.done", **self._ids},
            {
                "type": "response.output_audio_transcript.done",
                **self._ids,
                "transcript": self._transcript,
            },
            {
                "type": "response.content_part.done",
                **self._ids,
                "part": {"type": "audio", "transcript": self._transcript},
            },
            {
                "type": "conversation.item.done",
                "previous_item_id": self._previous_item_id,
                "item": final,
            },
            {
                "type": "response.output_item.done",
                "response_id": self.id,
                "output_index": 0,
                "item": final,
            },
            {"type": "response.done", "response": response},
            {"type": "rate_limits.updated", "rate_limits": [rate_limit]},
        ]

    def _usage(self) -> dict[str, Any]:
        text_in, audio_in = self._input_tokens
        text_out = len(self._transcript.split())
        audio_out = len(self.sent_audio) // BYTES_PER_MS // _OUTPUT_AUDIO_MS_PER_TOKEN
        return {
            "total_tokens": text_in + audio_in + text_out + audio_out,
            "input_tokens": text_in + audio_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }


def _words(text: str) -> list[str]:
    """Split ``text`` into transcript deltas that join back to it exactly."""
    words = text.split(" ")
    return [f"{word} " for word in words[:-1]] + words[-1:]
