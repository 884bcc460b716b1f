"""The simulator's per-connection protocol logic, sans-IO: client messages in, server events out.

:class:`SimSession` checks a connection's handshake (key, beta header, model), parses and validates
client events like the real server (protocol §4/§10), keeps the session state (effective config,
input audio buffer, conversation, the response in flight) and answers each message with an
:class:`Outcome`: the events to send, and whether to close the socket, start streaming a response,
or wake the response being cancelled. Events come back without ``event_id``;
:meth:`SimSession.stamp` adds one as each goes on the wire, so ids follow wire order even when the
response task and the reader interleave. A session made with ``record=False`` keeps only what
the protocol needs (the effective config, the buffer, the last commit, the response in flight, the
latest items without their audio), so it stays the same size however long it lives. No trio, no
sockets.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voiced.sim.auth import credential, key_problem
from voiced.sim.auth import mask_key as mask_key
from voiced.sim.config import BYTES_PER_MS, apply_update, check_voice, default_session
from voiced.sim.conversation import Conversation, Item
from voiced.sim.mint import SimMint
from voiced.sim.response import (
    PREAMBLE_TRANSCRIPT,
    ResponseRun,
    Speech,
    input_audio_tokens,
    preamble_audio,
)
from voiced.sim.schema import Problem, check_event, invalid_type

SESSION_DURATION_S = 3600
MIN_COMMIT_BYTES = 100 * BYTES_PER_MS
"""The real server refuses to commit less than 100 ms of audio."""
MAX_APPEND_CHARS = 15 * 1024 * 1024
SILENCE_MS = 500
"""The reply when nothing was committed yet."""
UNRECORDED_MAX_ITEMS = 200
"""How many conversation items a session that does not record holds (the oldest go first)."""

SESSION_EXPIRED = "Your session hit the maximum duration of 60 minutes."
AUTH_CLOSE_REASON = "invalid_request_error.invalid_api_key"
_BETA_SHAPE = (
    "The Realtime API beta shape is no longer supported. Remove the 'OpenAI-Beta: realtime=v1' "
    "header to use the GA interface."
)


@dataclass
class Outcome:
    """What the server must do after one input to the session."""

    events: list[dict[str, Any]] = field(default_factory=list)
    close: tuple[int, str] | None = None
    """Close the socket with this code and reason after sending ``events``."""
    start: ResponseRun | None = None
    """Start streaming this response."""
    cancel: ResponseRun | None = None
    """This response was asked to stop: wake it if it is pausing between deltas."""


class SimSession:
    """The protocol state of one simulated connection.

    Args:
        api_key: the only bearer token accepted.
        session_id: ``sess_...`` for ``session.created``.
        chunk_ms: reply audio per ``response.output_audio.delta``.
        now: wall-clock Unix time, for ``expires_at``.
        uneven: vary the sizes of the deltas around ``chunk_ms``.
        preamble_ms: when > 0, every response speaks a preamble item of this much audio before
            the answer item (see :mod:`voiced.sim.response`).
        omit_response_fields: leave ``id`` and ``status`` out of the ``response`` of
            ``response.created`` and ``response.done``.
        duration_s: how long the session may last: its ``expires_at`` is ``now`` plus this.
        secrets: client secrets minted for this key, by value; one whose ``expires_at`` is
            after ``now`` is accepted as the bearer token too, and the session starts with its
            configuration.
        record: keep every event received and sent, every commit's and every response's audio,
            and every conversation item with its audio, for tests. False (a long-running
            daemon): none of it; the conversation keeps at most :data:`UNRECORDED_MAX_ITEMS`
            items, with only the length of their audio.
    """

    def __init__(
        self,
        *,
        api_key: str,
        session_id: str,
        chunk_ms: int,
        now: float,
        uneven: bool = False,
        preamble_ms: int = 0,
        omit_response_fields: bool = False,
        secrets: Mapping[str, SimMint] | None = None,
        duration_s: float = SESSION_DURATION_S,
        record: bool = True,
    ) -> None:
        if preamble_ms < 0:
            raise ValueError(f"preamble_ms must be >= 0, got {preamble_ms}")
        self.record = record
        self.received: list[dict[str, Any]] = []
        """Every client message that parsed as a JSON object, valid or not, in arrival order
        (when recording)."""
        self.sent: list[dict[str, Any]] = []
        """Every stamped server event, in wire order (when recording)."""
        self.committed_audio: list[bytes] = []
        """The PCM of each successful commit (when recording)."""
        self.runs: list[ResponseRun] = []
        """Every response, in order (when recording)."""
        self.last_event: dict[str, Any] | None = None
        """The client event the last message parsed to (None: it was not a JSON object)."""
        self.config: dict[str, Any] = {}
        """The effective session; empty until :meth:`open` succeeds."""
        self.conversation = Conversation(
            keep_audio=record, max_items=None if record else UNRECORDED_MAX_ITEMS
        )
        self._api_key = api_key
        self._session_id = session_id
        self._conversation_id = session_id.replace("sess_", "conv_", 1)
        self._chunk_bytes = chunk_ms * BYTES_PER_MS
        self._uneven = uneven
        self._preamble_ms = preamble_ms
        self._omit_response_fields = omit_response_fields
        self._secrets: Mapping[str, SimMint] = secrets if secrets is not None else {}
        self._now = now
        self._expires_at = int(now + duration_s)
        self._buffer = bytearray()
        self._last_commit: bytes | None = None
        self._run: ResponseRun | None = None
        self._spoke = False  # a finished response streamed audio: the voice is locked
        self._counters: dict[str, itertools.count[int]] = {}
        self._handlers: dict[str, Callable[[dict[str, Any]], Outcome | Problem]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._item_op(self.conversation.truncate),
            "conversation.item.delete": self._item_op(self.conversation.delete),
            "conversation.item.retrieve": self._item_op(self.conversation.retrieve),
            "output_audio_buffer.clear": self._webrtc_only,
        }

    @property
    def reply_audio(self) -> list[bytes]:
        """The PCM streamed by each response so far, every item's in order (a cancelled one:
        what was sent)."""
        return [bytes(run.sent_audio) for run in self.runs]

    @property
    def active(self) -> ResponseRun | None:
        """The response in flight; a finished one is let go here."""
        run = self._run
        if run is not None and run.done:
            self._spoke = self._spoke or run.sent_bytes > 0
            self._run = run = None
        return run

    def stamp(self, event: dict[str, Any]) -> dict[str, Any]:
        """Give ``event`` the next ``event_id`` and record it as sent."""
        stamped = {"event_id": self._next_id("event"), **event}
        if self.record:
            self.sent.append(stamped)
        return stamped

    def note(self, event: dict[str, Any]) -> None:
        """``event`` arrived (as :attr:`last_event`, and recorded when recording)."""
        self.last_event = event
        if self.record:
            self.received.append(event)

    def open(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Outcome:
        """Check an accepted upgrade (header names lower-cased); ``session.created`` or a close.

        The key is the API key (as a bearer token or Azure's ``api-key``) or, as a bearer token,
        a client secret still valid at ``now``; a secret's session gives the model, so the query
        needs none.
        """
        key = credential(headers)
        minted = self._secrets.get(key) if "authorization" in headers else None
        if minted is not None and self._now >= minted.expires_at:
            minted = None
        if minted is None and (not key or key != self._api_key):
            return _fatal(key_problem(key), 3000, AUTH_CLOSE_REASON)
        if "realtime=v1" in headers.get("openai-beta", ""):
            problem = Problem("beta_api_shape_disabled", _BETA_SHAPE)
            return _fatal(problem, 4000, "invalid_request_error.beta_api_shape_disabled")
        if minted is not None:
            self.config = copy.deepcopy(minted.session)
            self.config.update(id=self._session_id, expires_at=self._expires_at)
            return Outcome([{"type": "session.created", "session": self.config}])
        model = query.get("model", "")
        if not model:
            problem = Problem("missing_model", "Missing required parameter: 'model'.", "model")
            return _fatal(problem, 4000, "invalid_request_error.missing_model")
        self.config = default_session(
            session_id=self._session_id, model=model, expires_at=self._expires_at
        )
        return Outcome([{"type": "session.created", "session": self.config}])

    def expire(self) -> Outcome:
        """The session hit its maximum duration."""
        return _fatal(Problem("session_expired", SESSION_EXPIRED), 1001, SESSION_EXPIRED)

    def receive(self, message: str | bytes) -> Outcome:
        """Parse one WebSocket message and handle it."""
        self.last_event = None
        if isinstance(message, bytes):
            problem = Problem(
                "invalid_json", "Binary frames are not supported; send events as JSON text."
            )
            return Outcome([problem.event()])
        try:
            event = json.loads(message)
        except (ValueError, RecursionError) as exc:
            problem = Problem("invalid_json", f"The server could not parse the JSON: {exc}.")
            return Outcome([problem.event()])
        if not isinstance(event, dict):
            return Outcome([invalid_type("event", "an object", event).event()])
        return self.handle(event)

    def handle(self, event: dict[str, Any]) -> Outcome:
        """Record and handle one parsed client event."""
        self.note(event)
        problem = check_event(event)
        result = problem or self._handlers[event["type"]](event)
        if isinstance(result, Problem):
            event_id = event.get("event_id")
            return Outcome([result.event(event_id if isinstance(event_id, str) else None)])
        return result

    def _next_id(self, prefix: str) -> str:
        counter = self._counters.setdefault(prefix, itertools.count(1))
        return f"{prefix}_{next(counter):04d}"

    def _session_update(self, event: dict[str, Any]) -> Outcome | Problem:
        active = self.active
        voice_locked = self._spoke or (active is not None and active.sent_bytes > 0)
        updated = apply_update(self.config, event["session"], voice_locked=voice_locked)
        if isinstance(updated, Problem):
            return updated
        self.config = updated
        return Outcome([{"type": "session.updated", "session": updated}])

    def _append(self, event: dict[str, Any]) -> Outcome | Problem:
        audio = event["audio"]
        if not isinstance(audio, str):
            return invalid_type("audio", "a string", audio)
        if len(audio) > MAX_APPEND_CHARS:
            message = f"Invalid 'audio': string too long. Expected at most {MAX_APPEND_CHARS}."
            return Problem("string_above_max_length", message, "audio")
        try:
            self._buffer += base64.b64decode(audio, validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text
            return Problem("invalid_value", "Invalid 'audio': expected base64 data.", "audio")
        return Outcome()

    def _clear(self, event: dict[str, Any]) -> Outcome:
        self._buffer.clear()
        return Outcome([{"type": "input_audio_buffer.cleared"}])

    def _commit(self, event: dict[str, Any]) -> Outcome | Problem:
        if len(self._buffer) < MIN_COMMIT_BYTES:
            message = (
                "Error committing input audio buffer: buffer too small. Expected at least 100ms "
                f"of audio, but buffer only has {len(self._buffer) / BYTES_PER_MS:.2f}ms of audio."
            )
            return Problem("input_audio_buffer_commit_empty", message)
        audio = bytes(self._buffer)
        self._buffer.clear()
        self._last_commit = audio
        if self.record:
            self.committed_audio.append(audio)
        content = [{"type": "input_audio", "transcript": None}]
        item = self.conversation.new_item(self._next_id("item"), "user", content, audio=audio)
        previous = self.conversation.add(item)
        events: list[dict[str, Any]] = [
            {
                "type": "input_audio_buffer.committed",
                "item_id": item.id,
                "previous_item_id": previous,
            },
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item.view()},
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item.view()},
        ]
        if self.config["audio"]["input"]["transcription"] is not None:
            transcript = f"heard {len(audio) // BYTES_PER_MS} ms"
            item.content = [{"type": "input_audio", "transcript": transcript}]
            audio_tokens = input_audio_tokens(len(audio) // BYTES_PER_MS)
            words = len(transcript.split())
            usage = {
                "type": "tokens",
                "input_tokens": audio_tokens,
                "output_tokens": words,
                "total_tokens": audio_tokens + words,
                "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
            }
            ids = {"item_id": item.id, "content_index": 0}
            events += [
                {
                    "type": "conversation.item.input_audio_transcription.delta",
                    **ids,
                    "delta": transcript,
                },
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    **ids,
                    "transcript": transcript,
                    "usage": usage,
                },
            ]
        return Outcome(events)

    def _response_create(self, event: dict[str, Any]) -> Outcome | Problem:
        active = self.active
        if active is not None:
            message = (
                f"Conversation already has an active response in progress: {active.id}. Wait "
                "until the response is finished before creating a new one."
            )
            return Problem("conversation_already_has_active_response", message)
        options = event.get("response") or {}
        session = copy.deepcopy(self.config)
        voice = ((options.get("audio") or {}).get("output") or {}).get("voice")
        if voice is not None:
            problem = check_voice("response.audio.output.voice", voice)
            if problem is not None:
                return problem
            session["audio"]["output"]["voice"] = voice
        metadata = options.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            return invalid_type("response.metadata", "a map of strings", metadata)
        if options.get("instructions") is not None:
            session["instructions"] = options["instructions"]
        reply = self._last_commit or bytes(SILENCE_MS * BYTES_PER_MS)
        user_ms = sum(i.audio_bytes for i in self.conversation.items if i.role == "user")
        text_tokens = len(str(session["instructions"]).split())
        audio_tokens = input_audio_tokens(user_ms // BYTES_PER_MS)
        speech = [Speech(reply, f"echo of {len(reply) // BYTES_PER_MS} ms")]
        if self._preamble_ms:
            speech.insert(0, Speech(preamble_audio(self._preamble_ms), PREAMBLE_TRANSCRIPT))
        run = ResponseRun(
            response_id=self._next_id("resp"),
            conversation_id=self._conversation_id,
            new_item=self._new_assistant_item,
            speech=speech,
            chunk_bytes=self._chunk_bytes,
            uneven=self._uneven,
            session=session,
            metadata=metadata,
            input_tokens=(text_tokens, audio_tokens),
            omit_fields=self._omit_response_fields,
            keep_audio=self.record,
        )
        self._run = run
        if self.record:
            self.runs.append(run)
        return Outcome(start=run)

    def _new_assistant_item(self) -> tuple[Item, str | None]:
        item = self.conversation.new_item(
            self._next_id("item"), "assistant", [], status="in_progress"
        )
        return item, self.conversation.add(item)

    def _response_cancel(self, event: dict[str, Any]) -> Outcome | Problem:
        active = self.active
        wanted = event.get("response_id")
        if active is None or (wanted is not None and wanted != active.id):
            return Problem(
                "response_cancel_not_active", "Cancellation failed: no active response found."
            )
        active.cancel_requested = True
        return Outcome(cancel=active)

    def _item_create(self, event: dict[str, Any]) -> Outcome | Problem:
        result = self.conversation.create(lambda: self._next_id("item"), event)
        return result if isinstance(result, Problem) else Outcome(result)

    def _item_op(
        self, operation: Callable[[dict[str, Any]], dict[str, Any] | Problem]
    ) -> Callable[[dict[str, Any]], Outcome | Problem]:
        def handle(event: dict[str, Any]) -> Outcome | Problem:
            result = operation(event)
            return result if isinstance(result, Problem) else Outcome([result])

        return handle

    def _webrtc_only(self, event: dict[str, Any]) -> Problem:
        message = "output_audio_buffer.clear is only supported for WebRTC and SIP connections."
        return Problem("invalid_value", message, "type")


def _fatal(problem: Problem, code: int, reason: str) -> Outcome:
    return Outcome([problem.event()], close=(code, reason))
