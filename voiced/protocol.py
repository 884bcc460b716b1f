"""Sans-IO OpenAI Realtime protocol (GA): the client events voiced sends, and the server events
it reads (defined in ``voiced.server_events``, re-exported here).

No trio, no socket: ``RealtimeProtocol.send(event)`` turns a client event into the text of one
WebSocket frame and ``RealtimeProtocol.receive(text)`` turns one frame into a typed server event.
Event names and nesting follow the GA protocol exactly; every string constant of the wire format
lives in this module and ``voiced.server_events``. Unknown server event types are tolerated and
logged once each.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from voiced.errors import LocalProtocolError, RemoteProtocolError
from voiced.server_events import PARSERS, PASSIVE, Json
from voiced.server_events import ConversationItemTruncated as ConversationItemTruncated
from voiced.server_events import ErrorEvent as ErrorEvent
from voiced.server_events import InputAudioBufferCleared as InputAudioBufferCleared
from voiced.server_events import InputAudioBufferCommitted as InputAudioBufferCommitted
from voiced.server_events import InputTranscriptionCompleted as InputTranscriptionCompleted
from voiced.server_events import InputTranscriptionFailed as InputTranscriptionFailed
from voiced.server_events import OtherEvent as OtherEvent
from voiced.server_events import OutputAudioDelta as OutputAudioDelta
from voiced.server_events import OutputTranscriptDone as OutputTranscriptDone
from voiced.server_events import ResponseCreated as ResponseCreated
from voiced.server_events import ResponseDone as ResponseDone
from voiced.server_events import ServerEvent as ServerEvent
from voiced.server_events import SessionCreated as SessionCreated
from voiced.server_events import SessionUpdated as SessionUpdated
from voiced.server_events import TranscriptDelta as TranscriptDelta
from voiced.server_events import Usage as Usage

# Plain, not frozen, dataclasses: on CPython 3.11 a frozen one costs twice as much to define,
# and this module is on every start-up path (bench/README.md). Treat instances as immutable.

log = logging.getLogger("voiced.protocol")

# --------------------------------------------------------------------------- client events


@dataclass
class Transcription:
    """Input transcription settings (``session.audio.input.transcription``)."""

    model: str
    language: str | None = None
    prompt: str | None = None

    def to_json(self) -> Json:
        out: Json = {"model": self.model}
        if self.language is not None:
            out["language"] = self.language
        if self.prompt is not None:
            out["prompt"] = self.prompt
        return out


@dataclass
class ClientEvent:
    """Base of the events voiced sends. ``event_id`` comes back in a server ``error``."""

    type: ClassVar[str]
    event_id: str | None = field(default=None, kw_only=True)

    def body(self) -> Json:
        """The fields of the event besides ``type`` and ``event_id``."""
        return {}

    def to_json(self) -> Json:
        out: Json = {"type": self.type}
        if self.event_id is not None:
            out["event_id"] = self.event_id
        out.update(self.body())
        return out


@dataclass
class SessionUpdate(ClientEvent):
    """Configure the session for push-to-talk: manual turns, PCM 24 kHz both ways."""

    type: ClassVar[str] = "session.update"
    voice: str
    instructions: str
    transcription: Transcription | None

    def body(self) -> Json:
        pcm = {"type": "audio/pcm", "rate": 24000}
        return {
            "session": {
                "type": "realtime",
                "output_modalities": ["audio"],
                "instructions": self.instructions,
                "audio": {
                    "input": {
                        "format": pcm,
                        # null, explicitly: the server's default is server_vad (§3, §10).
                        "turn_detection": None,
                        "transcription": (
                            self.transcription.to_json() if self.transcription else None
                        ),
                    },
                    "output": {"format": pcm, "voice": self.voice},
                },
            }
        }


@dataclass
class InputAudioBufferAppend(ClientEvent):
    """Append PCM to the server's input buffer. Never acknowledged."""

    type: ClassVar[str] = "input_audio_buffer.append"
    audio: bytes

    def body(self) -> Json:
        return {"audio": base64.b64encode(self.audio).decode("ascii")}


@dataclass
class InputAudioBufferCommit(ClientEvent):
    """Turn the input buffer into a user item. Does not start a response."""

    type: ClassVar[str] = "input_audio_buffer.commit"


@dataclass
class InputAudioBufferClear(ClientEvent):
    """Drop what is in the input buffer."""

    type: ClassVar[str] = "input_audio_buffer.clear"


@dataclass
class ResponseCreate(ClientEvent):
    """Ask for a response to the conversation so far."""

    type: ClassVar[str] = "response.create"


@dataclass
class ResponseCancel(ClientEvent):
    """Cancel a response; without ``response_id``, the one in progress."""

    type: ClassVar[str] = "response.cancel"
    response_id: str | None = None

    def body(self) -> Json:
        return {} if self.response_id is None else {"response_id": self.response_id}


@dataclass
class ConversationItemCreate(ClientEvent):
    """Add a text message to the conversation: what was said before, in a fresh session."""

    type: ClassVar[str] = "conversation.item.create"
    role: Literal["user", "assistant"]
    text: str

    def body(self) -> Json:
        kind = "input_text" if self.role == "user" else "output_text"
        content = [{"type": kind, "text": self.text}]
        return {"item": {"type": "message", "role": self.role, "content": content}}


@dataclass
class ConversationItemTruncate(ClientEvent):
    """Cut an assistant item's audio at what was actually played."""

    type: ClassVar[str] = "conversation.item.truncate"
    item_id: str
    audio_end_ms: int
    content_index: int = 0

    def body(self) -> Json:
        return {
            "item_id": self.item_id,
            "content_index": self.content_index,
            "audio_end_ms": self.audio_end_ms,
        }


class RealtimeProtocol:
    """Client side of the Realtime protocol, sans-IO.

    Keeps the little state the wire needs: which unknown event types were already logged, and how
    much audio was appended since the last commit or clear (``buffered_bytes``).
    """

    def __init__(self) -> None:
        self.buffered_bytes = 0
        self._unknown_seen: set[str] = set()

    def send(self, event: ClientEvent) -> str:
        """The text of the WebSocket frame that carries ``event``."""
        if isinstance(event, InputAudioBufferAppend):
            if not event.audio or len(event.audio) % 2:
                raise LocalProtocolError(f"append of {len(event.audio)} bytes is not whole PCM16")
            self.buffered_bytes += len(event.audio)
            if event.event_id is None:
                # The hot path: base64 never needs JSON escaping, so skip json.dumps' scan.
                b64 = base64.b64encode(event.audio).decode("ascii")
                return f'{{"type":"input_audio_buffer.append","audio":"{b64}"}}'
        if isinstance(event, InputAudioBufferCommit | InputAudioBufferClear):
            self.buffered_bytes = 0
        return json.dumps(event.to_json(), separators=(",", ":"))

    def receive(self, text: str | bytes) -> ServerEvent:
        """Parse one server frame.

        Raises:
            RemoteProtocolError: the frame is not a JSON object with a ``type``, or a field
                voiced relies on is missing or malformed.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RemoteProtocolError(f"server sent a frame that is not JSON: {exc}") from exc
        except RecursionError:  # valid JSON nested deeper than Python can parse
            raise RemoteProtocolError("server sent JSON nested too deeply to parse") from None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise RemoteProtocolError(f"server sent an event with no type: {str(data)[:200]}")
        kind: str = data["type"]
        parser = PARSERS.get(kind)
        if parser is not None:
            return parser(kind, data)
        if kind not in PASSIVE and kind not in self._unknown_seen:
            self._unknown_seen.add(kind)
            log.warning("ignoring server events of unknown type %r (logged once)", kind)
        return OtherEvent(kind, data)
