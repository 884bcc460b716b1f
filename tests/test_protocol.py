"""Tests for `voiced.protocol`: the sans-IO GA Realtime protocol.

Plain, synchronous and table-driven. Every client event voiced can send is checked against the
official SDK's models (strictly, no unknown key anywhere), and every server fixture is checked the
same way before it is parsed, so that the fixtures themselves are honest GA payloads.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.sdkcheck import assert_valid_client_event, assert_valid_server_event
from voiced import protocol as p
from voiced.errors import LocalProtocolError, RemoteProtocolError

ROOT = Path(__file__).parent.parent

PCM = {"type": "audio/pcm", "rate": 24000}
SOME_PCM = bytes(range(256)) * 4  # 1024 bytes: every byte value, an even count


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def sent(event: p.ClientEvent, proto: p.RealtimeProtocol | None = None) -> dict[str, Any]:
    """The JSON object of the frame that carries ``event``."""
    frame = (proto or p.RealtimeProtocol()).send(event)
    assert isinstance(frame, str)
    obj = json.loads(frame)
    assert isinstance(obj, dict)
    return obj


# --------------------------------------------------------------------------- client events


def session_json(transcription: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": "Be brief.",
            "audio": {
                "input": {"format": PCM, "turn_detection": None, "transcription": transcription},
                "output": {"format": PCM, "voice": "marin"},
            },
        },
    }


def session(transcription: p.Transcription | None, **kw: Any) -> p.SessionUpdate:
    return p.SessionUpdate(
        voice="marin", instructions="Be brief.", transcription=transcription, **kw
    )


B64 = base64.b64encode(SOME_PCM).decode("ascii")

CLIENT_EVENTS: list[tuple[str, p.ClientEvent, dict[str, Any]]] = [
    ("session-no-transcription", session(None), session_json(None)),
    (
        "session-transcription-model-only",
        session(p.Transcription("gpt-4o-mini-transcribe")),
        session_json({"model": "gpt-4o-mini-transcribe"}),
    ),
    (
        "session-transcription-language",
        session(p.Transcription("gpt-4o-mini-transcribe", language="en")),
        session_json({"model": "gpt-4o-mini-transcribe", "language": "en"}),
    ),
    (
        "session-transcription-prompt",
        session(p.Transcription("gpt-4o-transcribe", prompt="kiosk, Raspberry Pi")),
        session_json({"model": "gpt-4o-transcribe", "prompt": "kiosk, Raspberry Pi"}),
    ),
    (
        "session-transcription-language-prompt-event-id",
        session(p.Transcription("whisper-1", "de", "Fachbegriffe"), event_id="hello_1"),
        {
            **session_json({"model": "whisper-1", "language": "de", "prompt": "Fachbegriffe"}),
            "event_id": "hello_1",
        },
    ),
    (
        "carry-user",
        p.ConversationItemCreate("user", "what time is it", event_id="carry_0"),
        {
            "type": "conversation.item.create",
            "event_id": "carry_0",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "what time is it"}],
            },
        },
    ),
    (
        "carry-assistant",
        p.ConversationItemCreate("assistant", "ten past two"),
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "ten past two"}],
            },
        },
    ),
    (
        "append",
        p.InputAudioBufferAppend(SOME_PCM),
        {"type": "input_audio_buffer.append", "audio": B64},
    ),
    (
        "append-event-id",
        p.InputAudioBufferAppend(SOME_PCM, event_id="append_7"),
        {"type": "input_audio_buffer.append", "event_id": "append_7", "audio": B64},
    ),
    (
        "commit",
        p.InputAudioBufferCommit(event_id="commit_1"),
        {"type": "input_audio_buffer.commit", "event_id": "commit_1"},
    ),
    ("commit-no-id", p.InputAudioBufferCommit(), {"type": "input_audio_buffer.commit"}),
    (
        "clear",
        p.InputAudioBufferClear(event_id="clear_2"),
        {"type": "input_audio_buffer.clear", "event_id": "clear_2"},
    ),
    (
        "response-create",
        p.ResponseCreate(event_id="response_3"),
        {"type": "response.create", "event_id": "response_3"},
    ),
    ("response-cancel", p.ResponseCancel(), {"type": "response.cancel"}),
    (
        "response-cancel-id",
        p.ResponseCancel("resp_abc", event_id="cancel_3"),
        {"type": "response.cancel", "event_id": "cancel_3", "response_id": "resp_abc"},
    ),
    (
        "truncate",
        p.ConversationItemTruncate("item_9", 1234, event_id="truncate"),
        {
            "type": "conversation.item.truncate",
            "event_id": "truncate",
            "item_id": "item_9",
            "content_index": 0,
            "audio_end_ms": 1234,
        },
    ),
]


@pytest.mark.parametrize(
    ("event", "expected"),
    [(e, j) for _, e, j in CLIENT_EVENTS],
    ids=[i for i, _, _ in CLIENT_EVENTS],
)
def test_client_event_is_valid_ga_json(event: p.ClientEvent, expected: dict[str, Any]):
    obj = sent(event)
    assert_valid_client_event(obj)
    assert obj == expected


def _concrete_subclasses(cls: type[p.ClientEvent]) -> set[type[p.ClientEvent]]:
    found: set[type[p.ClientEvent]] = set()
    for sub in cls.__subclasses__():
        # ``@dataclass(slots=True)`` replaces each class with a new one; the discarded original
        # may linger in ``__subclasses__()`` until collected, so keep the module's own class.
        if getattr(sys.modules[sub.__module__], sub.__qualname__, None) is not sub:
            continue
        if "type" in sub.__dict__:  # a concrete event names its wire type
            found.add(sub)
        found |= _concrete_subclasses(sub)
    return found


def test_client_event_table_covers_every_client_event():
    concrete = _concrete_subclasses(p.ClientEvent)
    assert len(concrete) >= 7  # the seven events of the brief, at least
    assert concrete == {type(event) for _, event, _ in CLIENT_EVENTS}


@pytest.mark.parametrize("transcription", [None, p.Transcription("gpt-4o-mini-transcribe", "en")])
def test_session_update_configures_push_to_talk(transcription: p.Transcription | None):
    s = sent(session(transcription))["session"]
    assert s["type"] == "realtime"
    assert "turn_detection" in s["audio"]["input"]
    assert s["audio"]["input"]["turn_detection"] is None  # explicitly null: the default is VAD
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["output"]["voice"] == "marin"
    assert s["instructions"] == "Be brief."
    assert "transcription" in s["audio"]["input"]
    expected = (
        None if transcription is None else {"model": "gpt-4o-mini-transcribe", "language": "en"}
    )
    assert s["audio"]["input"]["transcription"] == expected


@pytest.mark.parametrize(
    "audio", [b"\x00\x00", b"\xff\x7f\x00\x80", SOME_PCM, bytes(4800), bytes(range(256)) * 375]
)
def test_append_round_trips_pcm_through_base64(audio: bytes):
    fast = sent(p.InputAudioBufferAppend(audio))
    slow = sent(p.InputAudioBufferAppend(audio, event_id="x"))
    assert base64.b64decode(fast["audio"], validate=True) == audio
    assert base64.b64decode(slow["audio"], validate=True) == audio
    # The hand-built fast path is the same JSON object json.dumps would have produced.
    assert fast == p.InputAudioBufferAppend(audio).to_json()
    assert fast == {k: v for k, v in slow.items() if k != "event_id"}
    assert_valid_client_event(fast)
    assert_valid_client_event(slow)


@pytest.mark.parametrize("event_id", [None, "append_1"])
@pytest.mark.parametrize("audio", [b"", b"\x00", b"\x00\x01\x02"])
def test_append_of_not_whole_pcm16_is_refused(audio: bytes, event_id: str | None):
    proto = p.RealtimeProtocol()
    with pytest.raises(
        LocalProtocolError, match=exactly(f"append of {len(audio)} bytes is not whole PCM16")
    ):
        proto.send(p.InputAudioBufferAppend(audio, event_id=event_id))
    assert proto.buffered_bytes == 0


@pytest.mark.parametrize(
    "reset", [p.InputAudioBufferCommit(), p.InputAudioBufferClear(event_id="clear_1")]
)
def test_buffered_bytes_counts_appends_and_resets(reset: p.ClientEvent):
    proto = p.RealtimeProtocol()
    assert proto.buffered_bytes == 0
    proto.send(p.InputAudioBufferAppend(bytes(960)))
    proto.send(p.InputAudioBufferAppend(bytes(4800), event_id="append_2"))
    assert proto.buffered_bytes == 5760
    with pytest.raises(LocalProtocolError):
        proto.send(p.InputAudioBufferAppend(bytes(3)))
    assert proto.buffered_bytes == 5760  # a refused append is not counted
    proto.send(p.ResponseCreate())
    proto.send(p.ResponseCancel())
    assert proto.buffered_bytes == 5760  # only commit and clear empty the buffer
    proto.send(reset)
    assert proto.buffered_bytes == 0
    proto.send(p.InputAudioBufferAppend(bytes(2)))
    assert proto.buffered_bytes == 2


# --------------------------------------------------------------------------- server events

SERVER_SESSION: dict[str, Any] = {
    "type": "realtime",
    "object": "realtime.session",
    "id": "sess_C9x1",
    "model": "gpt-realtime",
    "output_modalities": ["audio"],
    "instructions": "Your knowledge cutoff is 2023-10. You are a helpful assistant.",
    "tools": [],
    "tool_choice": "auto",
    "max_output_tokens": "inf",
    "tracing": None,
    "prompt": None,
    "truncation": "auto",
    "expires_at": 1760003600,
    "audio": {
        "input": {
            "format": PCM,
            "transcription": None,
            "noise_reduction": None,
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 200,
                "idle_timeout_ms": None,
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": PCM, "voice": "alloy", "speed": 1.0},
    },
    "include": None,
}

UPDATED_SESSION: dict[str, Any] = {
    **SERVER_SESSION,
    "instructions": "Be brief.",
    "audio": {
        "input": {
            "format": PCM,
            "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
            "noise_reduction": None,
            "turn_detection": None,
        },
        "output": {"format": PCM, "voice": "marin", "speed": 1.0},
    },
}

USAGE: dict[str, Any] = {
    "total_tokens": 412,
    "input_tokens": 260,
    "output_tokens": 152,
    "input_token_details": {
        "text_tokens": 120,
        "audio_tokens": 140,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 30, "audio_tokens": 122},
}

ASSISTANT_ITEM: dict[str, Any] = {
    "id": "item_asst_1",
    "type": "message",
    "object": "realtime.item",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "output_audio", "transcript": "Hello there!"}],
}


PARSED_USAGE = p.Usage(
    input_text=120, input_audio=140, input_cached=64, output_text=30, output_audio=122
)
"""What ``response()``'s usage says, as voiced reads it."""


def response(status: str, details: dict[str, Any] | None, *, usage: bool = True) -> dict[str, Any]:
    return {
        "object": "realtime.response",
        "id": "resp_1",
        "status": status,
        "status_details": details,
        "output": [ASSISTANT_ITEM] if status != "in_progress" else [],
        "conversation_id": "conv_1",
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "audio": {"output": {"format": PCM, "voice": "marin"}},
        "usage": USAGE if usage else None,
        "metadata": None,
    }


def ids(r: str = "resp_1", i: str = "item_asst_1") -> dict[str, Any]:
    return {"response_id": r, "item_id": i, "output_index": 0, "content_index": 0}


PARSED: list[tuple[str, dict[str, Any], p.ServerEvent]] = [
    (
        "session.created",
        {"type": "session.created", "event_id": "event_1", "session": SERVER_SESSION},
        p.SessionCreated("session.created", SERVER_SESSION),
    ),
    (
        "session.updated",
        {"type": "session.updated", "event_id": "event_2", "session": UPDATED_SESSION},
        p.SessionUpdated("session.updated", UPDATED_SESSION),
    ),
    (
        "input_audio_buffer.committed",
        {
            "type": "input_audio_buffer.committed",
            "event_id": "event_3",
            "previous_item_id": None,
            "item_id": "item_user_1",
        },
        p.InputAudioBufferCommitted("input_audio_buffer.committed", "item_user_1"),
    ),
    (
        "input_audio_buffer.cleared",
        {"type": "input_audio_buffer.cleared", "event_id": "event_4"},
        p.InputAudioBufferCleared("input_audio_buffer.cleared"),
    ),
    (
        "response.created",
        {
            "type": "response.created",
            "event_id": "event_5",
            "response": response("in_progress", None, usage=False),
        },
        p.ResponseCreated("response.created", "resp_1"),
    ),
    (
        "response.output_audio.delta",
        {"type": "response.output_audio.delta", "event_id": "event_6", **ids(), "delta": B64},
        p.OutputAudioDelta("response.output_audio.delta", "resp_1", "item_asst_1", SOME_PCM),
    ),
    (
        "response.output_audio.delta-empty",
        {"type": "response.output_audio.delta", "event_id": "event_6b", **ids(), "delta": ""},
        p.OutputAudioDelta("response.output_audio.delta", "resp_1", "item_asst_1", b""),
    ),
    (
        "response.output_audio_transcript.done",
        {
            "type": "response.output_audio_transcript.done",
            "event_id": "event_7",
            **ids(),
            "transcript": "Hello there!",
        },
        p.OutputTranscriptDone(
            "response.output_audio_transcript.done", "resp_1", "item_asst_1", "Hello there!"
        ),
    ),
    (
        "input_audio_transcription.completed",
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": "event_8",
            "item_id": "item_user_1",
            "content_index": 0,
            "transcript": "What time is it?",
            "usage": {
                "type": "tokens",
                "input_tokens": 20,
                "output_tokens": 6,
                "total_tokens": 26,
                "input_token_details": {"audio_tokens": 20, "text_tokens": 0},
            },
        },
        p.InputTranscriptionCompleted(
            "conversation.item.input_audio_transcription.completed",
            "item_user_1",
            "What time is it?",
        ),
    ),
    (
        "input_audio_transcription.completed-duration",
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": "event_8b",
            "item_id": "item_user_1",
            "content_index": 0,
            "transcript": "",
            "usage": {"type": "duration", "seconds": 1.4},
        },
        p.InputTranscriptionCompleted(
            "conversation.item.input_audio_transcription.completed", "item_user_1", ""
        ),
    ),
    (
        "input_audio_transcription.failed",
        {
            "type": "conversation.item.input_audio_transcription.failed",
            "event_id": "event_9",
            "item_id": "item_user_1",
            "content_index": 0,
            "error": {
                "type": "transcription_error",
                "code": "audio_unintelligible",
                "message": "The audio could not be transcribed.",
                "param": None,
            },
        },
        p.InputTranscriptionFailed(
            "conversation.item.input_audio_transcription.failed",
            "item_user_1",
            "The audio could not be transcribed.",
        ),
    ),
    (
        "input_audio_transcription.failed-no-message",
        {
            "type": "conversation.item.input_audio_transcription.failed",
            "event_id": "event_9b",
            "item_id": "item_user_1",
            "content_index": 0,
            "error": {},
        },
        p.InputTranscriptionFailed(
            "conversation.item.input_audio_transcription.failed", "item_user_1", "(no message)"
        ),
    ),
    (
        "conversation.item.truncated",
        {
            "type": "conversation.item.truncated",
            "event_id": "event_10",
            "item_id": "item_asst_1",
            "content_index": 0,
            "audio_end_ms": 1500,
        },
        p.ConversationItemTruncated("conversation.item.truncated", "item_asst_1", 1500),
    ),
    (
        "response.output_audio_transcript.delta",
        {
            "type": "response.output_audio_transcript.delta",
            "event_id": "event_28",
            **ids(),
            "delta": "Hello",
        },
        p.TranscriptDelta(
            "response.output_audio_transcript.delta", "item_asst_1", "resp_1", "Hello"
        ),
    ),
    (
        "input_audio_transcription.delta",
        {
            "type": "conversation.item.input_audio_transcription.delta",
            "event_id": "event_29",
            "item_id": "item_user_1",
            "content_index": 0,
            "delta": "What time",
        },
        p.TranscriptDelta(
            "conversation.item.input_audio_transcription.delta", "item_user_1", None, "What time"
        ),
    ),
    (
        "response.done-completed",
        {"type": "response.done", "event_id": "event_11", "response": response("completed", None)},
        p.ResponseDone("response.done", "resp_1", "completed", None, PARSED_USAGE),
    ),
    (
        "response.done-cancelled",
        {
            "type": "response.done",
            "event_id": "event_12",
            "response": response("cancelled", {"type": "cancelled", "reason": "client_cancelled"}),
        },
        p.ResponseDone("response.done", "resp_1", "cancelled", "client_cancelled", PARSED_USAGE),
    ),
    (
        "response.done-incomplete",
        {
            "type": "response.done",
            "event_id": "event_13",
            "response": response(
                "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
            ),
        },
        p.ResponseDone("response.done", "resp_1", "incomplete", "max_output_tokens", PARSED_USAGE),
    ),
    (
        "response.done-failed",
        {
            "type": "response.done",
            "event_id": "event_14",
            "response": response(
                "failed",
                {
                    "type": "failed",
                    "error": {
                        "type": "server_error",
                        "code": "internal_error",
                        "message": "The server had an error while processing your request.",
                    },
                },
            ),
        },
        p.ResponseDone(
            "response.done",
            "resp_1",
            "failed",
            "The server had an error while processing your request.",
            PARSED_USAGE,
        ),
    ),
    (
        "error-full",
        {
            "type": "error",
            "event_id": "event_15",
            "error": {
                "type": "invalid_request_error",
                "code": "input_audio_buffer_commit_empty",
                "message": "Error committing input audio buffer: buffer too small. Expected at "
                "least 100ms of audio, but buffer only has 0.00ms of audio.",
                "param": None,
                "event_id": "commit_3",
            },
        },
        p.ErrorEvent(
            "error",
            error_type="invalid_request_error",
            code="input_audio_buffer_commit_empty",
            message="Error committing input audio buffer: buffer too small. Expected at least "
            "100ms of audio, but buffer only has 0.00ms of audio.",
            param=None,
            event_id="commit_3",
        ),
    ),
    (
        "error-param",
        {
            "type": "error",
            "event_id": "event_16",
            "error": {
                "type": "invalid_request_error",
                "code": "integer_below_min_value",
                "message": "Invalid 'session.audio.input.format.rate': integer below minimum "
                "value. Expected a value >= 24000, but got 16000 instead.",
                "param": "session.audio.input.format.rate",
                "event_id": "hello_1",
            },
        },
        p.ErrorEvent(
            "error",
            error_type="invalid_request_error",
            code="integer_below_min_value",
            message="Invalid 'session.audio.input.format.rate': integer below minimum value. "
            "Expected a value >= 24000, but got 16000 instead.",
            param="session.audio.input.format.rate",
            event_id="hello_1",
        ),
    ),
    (
        "error-bare",
        {
            "type": "error",
            "event_id": "event_17",
            "error": {
                "type": "invalid_request_error",
                "message": "Missing bearer or basic authentication in header",
            },
        },
        p.ErrorEvent(
            "error",
            error_type="invalid_request_error",
            code=None,
            message="Missing bearer or basic authentication in header",
            param=None,
            event_id=None,
        ),
    ),
]

# Documented GA events voiced reads but does not act on: kept whole as OtherEvent, no warning.
PASSIVE: list[tuple[str, dict[str, Any]]] = [
    (
        "conversation.item.added-user",
        {
            "type": "conversation.item.added",
            "event_id": "event_20",
            "previous_item_id": None,
            "item": {
                "id": "item_user_1",
                "type": "message",
                "object": "realtime.item",
                "status": "completed",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            },
        },
    ),
    (
        "conversation.item.added-assistant",
        {
            "type": "conversation.item.added",
            "event_id": "event_21",
            "previous_item_id": "item_user_1",
            "item": {
                "id": "item_asst_1",
                "type": "message",
                "object": "realtime.item",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            },
        },
    ),
    (
        "conversation.item.done",
        {
            "type": "conversation.item.done",
            "event_id": "event_22",
            "previous_item_id": "item_user_1",
            "item": ASSISTANT_ITEM,
        },
    ),
    (
        "response.output_item.added",
        {
            "type": "response.output_item.added",
            "event_id": "event_23",
            "response_id": "resp_1",
            "output_index": 0,
            "item": {**ASSISTANT_ITEM, "status": "in_progress", "content": []},
        },
    ),
    (
        "response.output_item.done",
        {
            "type": "response.output_item.done",
            "event_id": "event_24",
            "response_id": "resp_1",
            "output_index": 0,
            "item": ASSISTANT_ITEM,
        },
    ),
    (
        "response.content_part.added",
        {
            "type": "response.content_part.added",
            "event_id": "event_25",
            **ids(),
            "part": {"type": "audio", "transcript": ""},
        },
    ),
    (
        "response.content_part.done",
        {
            "type": "response.content_part.done",
            "event_id": "event_26",
            **ids(),
            "part": {"type": "audio", "transcript": "Hello there!"},
        },
    ),
    (
        "response.output_audio.done",
        {"type": "response.output_audio.done", "event_id": "event_27", **ids()},
    ),
    (
        "input_audio_buffer.speech_started",
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": "event_30",
            "audio_start_ms": 120,
            "item_id": "item_user_2",
        },
    ),
    (
        "rate_limits.updated",
        {
            "type": "rate_limits.updated",
            "event_id": "event_31",
            "rate_limits": [
                {"name": "tokens", "limit": 40000, "remaining": 39588, "reset_seconds": 0.618}
            ],
        },
    ),
]


@pytest.mark.parametrize(
    ("payload", "expected"), [(d, e) for _, d, e in PARSED], ids=[i for i, _, _ in PARSED]
)
def test_server_event_is_parsed(payload: dict[str, Any], expected: p.ServerEvent, caplog):
    assert_valid_server_event(payload)
    caplog.set_level(logging.DEBUG, logger="voiced.protocol")
    proto = p.RealtimeProtocol()
    assert proto.receive(json.dumps(payload)) == expected
    assert proto.receive(json.dumps(payload).encode()) == expected  # a binary frame parses too
    assert caplog.records == []


@pytest.mark.parametrize("payload", [d for _, d in PASSIVE], ids=[i for i, _ in PASSIVE])
def test_passive_server_event_is_other_event_without_warning(payload: dict[str, Any], caplog):
    assert_valid_server_event(payload)
    caplog.set_level(logging.DEBUG, logger="voiced.protocol")
    event = p.RealtimeProtocol().receive(json.dumps(payload))
    assert event == p.OtherEvent(payload["type"], payload)
    assert caplog.records == []


OBFUSCATED = [
    (i, d)
    for i, d, _ in PARSED
    if d["type"]
    in (
        "response.output_audio.delta",
        "response.output_audio_transcript.done",
        "response.output_audio_transcript.delta",
        "conversation.item.input_audio_transcription.delta",
    )
]


@pytest.mark.parametrize("payload", [d for _, d in OBFUSCATED], ids=[i for i, _ in OBFUSCATED])
def test_undocumented_fields_are_ignored(payload: dict[str, Any], caplog):
    assert_valid_server_event(payload)
    caplog.set_level(logging.DEBUG, logger="voiced.protocol")
    proto = p.RealtimeProtocol()
    plain = proto.receive(json.dumps(payload))
    extra = {**payload, "obfuscation": "x7Qv", "phase": "commentary"}
    padded = proto.receive(json.dumps(extra))
    if isinstance(plain, p.OtherEvent):
        assert padded == p.OtherEvent(payload["type"], extra)
    else:
        assert padded == plain
    assert caplog.records == []


def test_unknown_event_type_is_other_event_and_logged_once_per_type(caplog):
    caplog.set_level(logging.DEBUG, logger="voiced.protocol")
    proto = p.RealtimeProtocol()
    first: dict[str, Any] = {"type": "response.future_thing", "event_id": "event_40", "x": 1}
    second: dict[str, Any] = {"type": "session.someday", "event_id": "event_41"}
    for payload in (first, first, second, first, second):
        assert proto.receive(json.dumps(payload)) == p.OtherEvent(payload["type"], payload)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "voiced.protocol",
            "WARNING",
            "ignoring server events of unknown type 'response.future_thing' (logged once)",
        ),
        (
            "voiced.protocol",
            "WARNING",
            "ignoring server events of unknown type 'session.someday' (logged once)",
        ),
    ]


DELTA = {"type": "response.output_audio.delta", "event_id": "e", **ids()}

MALFORMED: list[tuple[str, str | bytes, str]] = [
    (
        "not-json",
        "not json",
        exactly("server sent a frame that is not JSON: Expecting value: line 1 column 1 (char 0)"),
    ),
    (
        "not-json-truncated",
        '{"type": "error"',
        r"^server sent a frame that is not JSON: Expecting ',' delimiter: line 1 column 17 "
        r"\(char 16\)$",
    ),
    (
        "not-utf8",
        b'{"type": "\x80"}',
        r"^server sent a frame that is not JSON: 'utf-8' codec can't decode byte 0x80",
    ),
    (
        "nested-deep",  # valid JSON: json.loads raises RecursionError, not ValueError
        '{"type": "error", "error": ' + "[" * 100_000 + "]" * 100_000 + "}",
        exactly("server sent JSON nested too deeply to parse"),
    ),
    (
        "no-type",
        '{"event_id": "e"}',
        exactly("server sent an event with no type: {'event_id': 'e'}"),
    ),
    (
        "type-not-string",
        '{"type": 5}',
        exactly("server sent an event with no type: {'type': 5}"),
    ),
    ("array", "[1, 2]", exactly("server sent an event with no type: [1, 2]")),
    ("string", '"hello"', exactly("server sent an event with no type: hello")),
    ("null", "null", exactly("server sent an event with no type: None")),
    (
        "delta-bad-padding",
        json.dumps({**DELTA, "delta": "AAA"}),
        exactly("response.output_audio.delta: delta is not base64: Incorrect padding"),
    ),
    (
        "delta-bad-alphabet",
        json.dumps({**DELTA, "delta": "not base64!"}),
        exactly("response.output_audio.delta: delta is not base64: Only base64 data is allowed"),
    ),
    (
        "delta-non-ascii",
        json.dumps({**DELTA, "delta": "AAé="}),
        r"^response\.output_audio\.delta: delta is not base64: ",
    ),
    (
        "delta-missing",
        json.dumps(DELTA),
        exactly("response.output_audio.delta: expected a string 'delta', got None"),
    ),
    (
        "delta-item-id-not-string",
        json.dumps({**DELTA, "item_id": 5, "delta": "AAAA"}),
        exactly("response.output_audio.delta: expected a string 'item_id', got 5"),
    ),
    (
        "committed-no-item-id",
        '{"type": "input_audio_buffer.committed", "event_id": "e", "previous_item_id": null}',
        exactly("input_audio_buffer.committed: expected a string 'item_id', got None"),
    ),
    (
        "session-not-object",
        '{"type": "session.created", "event_id": "e", "session": "sess_1"}',
        exactly("session.created: expected an object 'session', got 'sess_1'"),
    ),
    (
        "created-no-response",
        '{"type": "response.created", "event_id": "e"}',
        exactly("response.created: expected an object 'response', got None"),
    ),
    (
        "done-no-response",
        '{"type": "response.done", "event_id": "e"}',
        exactly("response.done: expected an object 'response', got None"),
    ),
    (
        "error-not-object",
        '{"type": "error", "event_id": "e", "error": "boom"}',
        exactly("error: expected an object 'error', got 'boom'"),
    ),
    (
        "transcript-done-no-transcript",
        json.dumps({"type": "response.output_audio_transcript.done", "event_id": "e", **ids()}),
        exactly("response.output_audio_transcript.done: expected a string 'transcript', got None"),
    ),
    (
        "transcription-completed-no-item",
        '{"type": "conversation.item.input_audio_transcription.completed", "transcript": "hi"}',
        exactly(
            "conversation.item.input_audio_transcription.completed: "
            "expected a string 'item_id', got None"
        ),
    ),
    # Malformed values must come out as RemoteProtocolError, never as a bare ValueError.
    (
        "truncated-end-not-a-number",
        '{"type": "conversation.item.truncated", "item_id": "i", "audio_end_ms": "soon"}',
        r"^conversation\.item\.truncated: .*'audio_end_ms'",
    ),
    (
        "transcription-failed-error-not-object",
        '{"type": "conversation.item.input_audio_transcription.failed", "item_id": "i", '
        '"error": "boom"}',
        r"^conversation\.item\.input_audio_transcription\.failed: .*'error'",
    ),
]


@pytest.mark.parametrize(
    ("text", "match"), [(t, m) for _, t, m in MALFORMED], ids=[i for i, _, _ in MALFORMED]
)
def test_malformed_server_frame_is_a_remote_protocol_error(text: str | bytes, match: str):
    with pytest.raises(RemoteProtocolError, match=match):
        p.RealtimeProtocol().receive(text)


@pytest.mark.parametrize(
    ("text", "event"),
    [
        (
            '{"type": "response.created", "event_id": "e", "response": {"status": "in_progress"}}',
            p.ResponseCreated("response.created", None),
        ),
        (
            '{"type": "response.done", "event_id": "e", "response": {"id": "resp_1"}}',
            p.ResponseDone("response.done", "resp_1", None, None),
        ),
        (
            '{"type": "response.done", "event_id": "e", "response": {}}',
            p.ResponseDone("response.done", None, None, None),
        ),
    ],
)
def test_response_events_without_id_or_status_are_kept(text: str, event: p.ServerEvent):
    """The SDK types ``response.id`` and ``response.status`` optional: not malformed."""
    assert p.RealtimeProtocol().receive(text) == event


def test_protocol_survives_a_malformed_frame():
    proto = p.RealtimeProtocol()
    with pytest.raises(RemoteProtocolError):
        proto.receive("{")
    assert proto.receive('{"type": "input_audio_buffer.cleared", "event_id": "e"}') == (
        p.InputAudioBufferCleared("input_audio_buffer.cleared")
    )


# --------------------------------------------------------------------------- sans-IO


def test_sans_io_modules_import_no_io_library():
    code = (
        "import sys, json\n"
        "import voiced.protocol, voiced.turn, voiced.audio\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('trio', 'trio_websocket'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []
    assert done.stderr == ""
