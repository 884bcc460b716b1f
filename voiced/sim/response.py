"""One simulated response, streamed step by step so ``response.cancel`` can land between deltas.

A response speaks one or more output items, each a :class:`Speech` (its audio and transcript):
the answer alone, or a short "preamble" item (:func:`preamble_audio`, "one moment") and then the
answer, as ``gpt-realtime-2`` does (protocol §5 step 5). :meth:`ResponseRun.steps` generates
:class:`Step` values in the order real traffic shows (protocol §5/§10): ``response.created``, then
for each item its opening events, one step per audio chunk (a ``response.output_audio.delta`` with
the transcript deltas that go with it) and its closing events, then ``response.done`` (listing
every item) and ``rate_limits.updated``. The server sends a step, waits for the step's audio
duration times its pace, and resumes the generator; a cancel flag checked on every resumption ends
the stream with the closing events of a cancelled response, and no later item starts. The answer
is what the session hands in (an echo of the last commit); everything streamed is kept in
:attr:`ResponseRun.sent_audio` (unless told not to: then only its length, :attr:`sent_bytes`).
No trio, no sockets.
"""

from __future__ import annotations

import base64
import itertools
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from voiced.sim.config import BYTES_PER_MS, SAMPLE_RATE
from voiced.sim.conversation import Item

UNEVEN = (0.4, 1.6, 1.0, 0.6, 1.4)
"""Delta sizes, as factors of the chunk size, when they are uneven (averaging 1.0)."""
TOKEN_LIMIT = 40000
"""The ``tokens`` rate limit reported in ``rate_limits.updated``."""
PREAMBLE_TRANSCRIPT = "one moment"
"""The transcript of a preamble item."""
PREAMBLE_HZ = 330
PREAMBLE_AMPLITUDE = 1000
"""A quiet tone: about -30 dBFS."""

_OUTPUT_AUDIO_MS_PER_TOKEN = 50
_INPUT_AUDIO_MS_PER_TOKEN = 100


@dataclass(frozen=True)
class Step:
    """Events to send together, and how much reply audio (seconds) they carry, for pacing."""

    events: list[dict[str, Any]]
    audio_seconds: float = 0.0


@dataclass(frozen=True)
class Speech:
    """What one output item says: its PCM and its transcript."""

    audio: bytes
    transcript: str


def input_audio_tokens(audio_ms: int) -> int:
    return audio_ms // _INPUT_AUDIO_MS_PER_TOKEN


def preamble_audio(ms: int) -> bytes:
    """The audio of a preamble item: ``ms`` milliseconds of a quiet, deterministic tone."""
    samples = ms * BYTES_PER_MS // 2
    wave = (
        round(PREAMBLE_AMPLITUDE * math.sin(2 * math.pi * PREAMBLE_HZ * n / SAMPLE_RATE))
        for n in range(samples)
    )
    return struct.pack(f"<{samples}h", *wave)


class _Output:
    """One output item of a response, and what it has said so far."""

    def __init__(
        self, response_id: str, index: int, item: Item, previous_item_id: str | None
    ) -> None:
        self.index = index
        self.item = item
        self.previous_item_id = previous_item_id
        self.transcript = ""
        self.ids = {
            "response_id": response_id,
            "item_id": item.id,
            "output_index": index,
            "content_index": 0,
        }


class ResponseRun:
    """The state of one response in flight; iterate :meth:`steps` once.

    Args:
        response_id: ``resp_...``.
        new_item: creates an assistant item (in progress, no content), adds it to the
            conversation and returns it with the id of the item before it. Called once here for
            the first item, and again as each later item starts.
        speech: what each output item says, in order (at least one).
        chunk_bytes: PCM per ``response.output_audio.delta`` (on average, when ``uneven``).
        uneven: vary the deltas' sizes, as real traffic does.
        session: the effective session (voice, ``max_output_tokens``).
        input_tokens: (text, audio) tokens the response's input costs, for ``usage``.
        omit_fields: leave ``id`` and ``status`` out of the ``response`` of ``response.created``
            and ``response.done`` (the SDK types both optional).
        keep_audio: keep a copy of everything streamed in :attr:`sent_audio` (False: only its
            length, :attr:`sent_bytes`).
    """

    def __init__(
        self,
        *,
        response_id: str,
        conversation_id: str,
        new_item: Callable[[], tuple[Item, str | None]],
        speech: list[Speech],
        chunk_bytes: int,
        uneven: bool = False,
        session: dict[str, Any],
        metadata: dict[str, str] | None,
        input_tokens: tuple[int, int],
        omit_fields: bool = False,
        keep_audio: bool = True,
    ) -> None:
        if not speech:
            raise ValueError("a response speaks at least one item")
        self.id = response_id
        self.cancel_requested = False
        """Set by the session on ``response.cancel``; honoured at the next resumption."""
        self.done = False
        """True once the closing events are produced: the response is no longer active."""
        self.sent_audio = bytearray()
        """Every item's audio streamed so far, in order (empty unless ``keep_audio``)."""
        self.sent_bytes = 0
        """How much audio has been streamed so far."""
        self._keep_audio = keep_audio
        self._new_item = new_item
        self._speech = speech
        self._chunk_bytes = chunk_bytes
        self._uneven = uneven
        self._input_tokens = input_tokens
        self._omit_fields = omit_fields
        self._outputs = [_Output(response_id, 0, *new_item())]
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

    @property
    def items(self) -> list[Item]:
        """The response's output items started so far, in order."""
        return [output.item for output in self._outputs]

    def _chunks(self, audio: bytes) -> list[bytes]:
        """``audio`` cut into deltas: all ``chunk_bytes`` long, or of varying sizes."""
        sizes = itertools.cycle(UNEVEN if self._uneven else (1.0,))
        chunks, offset = [], 0
        while offset < len(audio):
            size = max(2, int(self._chunk_bytes * next(sizes)) & ~1)  # whole samples
            chunks.append(audio[offset : offset + size])
            offset += size
        return chunks

    def _response(self, **fields: Any) -> dict[str, Any]:
        response = {**self._base, **fields}
        if self._omit_fields:
            del response["id"], response["status"]
        return response

    def steps(self) -> Iterator[Step]:
        created = self._response(status="in_progress", status_details=None, output=[], usage=None)
        opening: list[dict[str, Any]] = [{"type": "response.created", "response": created}]
        for index, speech in enumerate(self._speech):
            if index > 0:
                if self.cancel_requested:
                    break  # a cancelled response starts no further item
                self._outputs.append(_Output(self.id, index, *self._new_item()))
            output = self._outputs[index]
            yield Step(opening + self._opening(output))
            opening = []
            yield from self._deltas(output, speech)
            closing = self._closing(output)
            if index == len(self._speech) - 1 or self.cancel_requested:
                yield Step(closing + self._finish())
                return
            yield Step(closing)
        yield Step(self._finish())

    def _opening(self, output: _Output) -> list[dict[str, Any]]:
        added = output.item.view()
        return [
            {
                "type": "response.output_item.added",
                "response_id": self.id,
                "output_index": output.index,
                "item": added,
            },
            {
                "type": "conversation.item.added",
                "previous_item_id": output.previous_item_id,
                "item": added,
            },
            {
                "type": "response.content_part.added",
                **output.ids,
                "part": {"type": "audio", "transcript": ""},
            },
        ]

    def _deltas(self, output: _Output, speech: Speech) -> Iterator[Step]:
        output.item.content = [{"type": "output_audio", "transcript": None}]
        chunks = self._chunks(speech.audio)
        words = _words(speech.transcript)
        for index, chunk in enumerate(chunks):
            if self.cancel_requested:
                break
            self.sent_bytes += len(chunk)
            if self._keep_audio:
                self.sent_audio += chunk
            output.item.add_audio(chunk)
            events = [
                {
                    "type": "response.output_audio.delta",
                    **output.ids,
                    "delta": base64.b64encode(chunk).decode("ascii"),
                }
            ]
            # One transcript word per chunk; the last chunk carries whatever is left.
            spoken = words[index:] if index == len(chunks) - 1 else words[index : index + 1]
            for word in spoken:
                output.transcript += word
                events.append(
                    {"type": "response.output_audio_transcript.delta", **output.ids, "delta": word}
                )
            yield Step(events, len(chunk) / BYTES_PER_MS / 1000)

    def _closing(self, output: _Output) -> list[dict[str, Any]]:
        """An item's closing events; a cancel makes it ``incomplete``."""
        item = output.item
        item.status = "incomplete" if self.cancel_requested else "completed"
        item.content = [{"type": "output_audio", "transcript": output.transcript}]
        final = item.view()
        return [
            {"type": "response.output_audio.done", **output.ids},
            {
                "type": "response.output_audio_transcript.done",
                **output.ids,
                "transcript": output.transcript,
            },
            {
                "type": "response.content_part.done",
                **output.ids,
                "part": {"type": "audio", "transcript": output.transcript},
            },
            {
                "type": "conversation.item.done",
                "previous_item_id": output.previous_item_id,
                "item": final,
            },
            {
                "type": "response.output_item.done",
                "response_id": self.id,
                "output_index": output.index,
                "item": final,
            },
        ]

    def _finish(self) -> list[dict[str, Any]]:
        """``response.done`` and ``rate_limits.updated``: the response is over."""
        cancelled = self.cancel_requested
        self.done = True
        details = {"type": "cancelled", "reason": "client_cancelled"} if cancelled else None
        usage = self._usage()
        response = self._response(
            status="cancelled" if cancelled else "completed",
            status_details=details,
            output=[output.item.view() for output in self._outputs],
            usage=usage,
        )
        total = usage["total_tokens"]
        rate_limit = {
            "name": "tokens",
            "limit": TOKEN_LIMIT,
            "remaining": TOKEN_LIMIT - total,
            "reset_seconds": round(60 * total / TOKEN_LIMIT, 3),
        }
        return [
            {"type": "response.done", "response": response},
            {"type": "rate_limits.updated", "rate_limits": [rate_limit]},
        ]

    def _usage(self) -> dict[str, Any]:
        text_in, audio_in = self._input_tokens
        text_out = sum(len(output.transcript.split()) for output in self._outputs)
        audio_out = self.sent_bytes // BYTES_PER_MS // _OUTPUT_AUDIO_MS_PER_TOKEN
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
