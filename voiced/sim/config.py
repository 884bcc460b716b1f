"""The simulated session's effective configuration: defaults, and how ``session.update`` changes it.

Defaults are the ones real ``session.created`` payloads show (protocol §10): voice ``alloy``,
``server_vad`` on, transcription and noise reduction off, the legacy default instructions. An update
is validated whole before anything changes, like the real server, which discards a failing update
entirely; fields sent replace the effective ones, and ``null`` clears ``turn_detection``,
``transcription`` and ``noise_reduction``. No trio, no sockets.
"""

from __future__ import annotations

import copy
from typing import Any

from voiced.sim.schema import Problem, invalid_type, invalid_value

BYTES_PER_MS = 48
"""PCM16 mono at 24 kHz: the only audio format the simulator speaks."""

SAMPLE_RATE = 24000

DEFAULT_INSTRUCTIONS = (
    "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. Act like a "
    "human, but remember that you aren't a human and that you can't do human things in the real "
    "world."
)

VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")

_TURN_DETECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "server_vad": {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    },
    "semantic_vad": {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    },
}

_OPAQUE = (
    "tools",
    "tool_choice",
    "truncation",
    "include",
    "tracing",
    "prompt",
    "reasoning",
    "parallel_tool_calls",
)
"""Fields stored and echoed as sent; they change nothing the simulator does."""


def default_session(*, session_id: str, model: str, expires_at: int) -> dict[str, Any]:
    """The effective session a new connection starts with, as ``session.created`` carries it."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(_TURN_DETECTION_DEFAULTS["server_vad"]),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
    }


def apply_update(
    current: dict[str, Any], update: dict[str, Any], *, voice_locked: bool
) -> dict[str, Any] | Problem:
    """Validate ``update`` (the ``session`` of a ``session.update``, keys already checked).

    Returns:
        The new effective session (``current`` is left untouched), or the problem that discards
        the whole update.
    """
    new = copy.deepcopy(current)
    kind = update.get("type")
    if kind is None:
        return Problem(
            "missing_required_parameter",
            "Missing required parameter: 'session.type'.",
            "session.type",
        )
    if kind != "realtime":
        return invalid_value("session.type", kind, ("realtime",))
    model = update.get("model")
    if model is not None and model != current["model"]:
        return Problem("invalid_value", "Cannot update a session's model.", "session.model")
    modalities = update.get("output_modalities")
    if modalities is not None and modalities != ["audio"]:
        # Text replies are a real mode, but voiced never asks for one; refusing loudly beats
        # silently answering with audio.
        message = f"Invalid value: {modalities!r}. The simulator only produces ['audio']."
        return Problem("invalid_value", message, "session.output_modalities")
    instructions = update.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            return invalid_type("session.instructions", "a string", instructions)
        new["instructions"] = instructions
    tokens = update.get("max_output_tokens")
    if tokens is not None:
        if tokens != "inf" and not (isinstance(tokens, int) and 1 <= tokens <= 4096):
            return invalid_value("session.max_output_tokens", tokens)
        new["max_output_tokens"] = tokens
    for name in _OPAQUE:
        if name in update:
            new[name] = update[name]
    audio = update.get("audio") or {}
    problem = _apply_input(new["audio"]["input"], audio.get("input") or {})
    if problem is None:
        output = audio.get("output") or {}
        problem = _apply_output(new["audio"]["output"], output, voice_locked=voice_locked)
    return new if problem is None else problem


def check_format(param: str, value: object) -> Problem | None:
    """Only ``{"type": "audio/pcm", "rate": 24000}`` (rate optional) is simulated."""
    if not isinstance(value, dict):
        return invalid_type(param, "an object", value)
    if value.get("type") != "audio/pcm":
        return invalid_value(f"{param}.type", value.get("type"), ("audio/pcm",))
    rate = value.get("rate", SAMPLE_RATE)
    if not isinstance(rate, int) or isinstance(rate, bool):
        return invalid_type(f"{param}.rate", "an integer", rate)
    if rate < SAMPLE_RATE:
        return Problem(
            "integer_below_min_value",
            f"Invalid '{param}.rate': integer below minimum value. Expected a value >= "
            f"{SAMPLE_RATE}, but got {rate} instead.",
            f"{param}.rate",
        )
    if rate > SAMPLE_RATE:
        return invalid_value(f"{param}.rate", rate, (str(SAMPLE_RATE),))
    return None


def check_voice(param: str, value: object) -> Problem | None:
    """A built-in voice name, or a custom voice as ``{"id": "voice_..."}``."""
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return None
    return None if value in VOICES else invalid_value(param, value, VOICES)


def _apply_input(effective: dict[str, Any], update: dict[str, Any]) -> Problem | None:
    prefix = "session.audio.input"
    if "format" in update:
        problem = check_format(f"{prefix}.format", update["format"])
        if problem is not None:
            return problem
        effective["format"] = {"type": "audio/pcm", "rate": SAMPLE_RATE}
    if "turn_detection" in update:
        turn = update["turn_detection"]
        if turn is not None:
            kind = turn.get("type")
            if kind not in _TURN_DETECTION_DEFAULTS:
                supported = tuple(_TURN_DETECTION_DEFAULTS)
                return invalid_value(f"{prefix}.turn_detection.type", kind, supported)
            turn = {**_TURN_DETECTION_DEFAULTS[kind], **turn}
        effective["turn_detection"] = turn
    if "noise_reduction" in update:
        noise = update["noise_reduction"]
        if noise is not None and noise.get("type") not in ("near_field", "far_field"):
            supported = ("near_field", "far_field")
            return invalid_value(f"{prefix}.noise_reduction.type", noise.get("type"), supported)
        effective["noise_reduction"] = noise
    if "transcription" in update:
        effective["transcription"] = update["transcription"]
    return None


def _apply_output(
    effective: dict[str, Any], update: dict[str, Any], *, voice_locked: bool
) -> Problem | None:
    prefix = "session.audio.output"
    if "format" in update:
        problem = check_format(f"{prefix}.format", update["format"])
        if problem is not None:
            return problem
    voice = update.get("voice")
    if voice is not None:
        problem = check_voice(f"{prefix}.voice", voice)
        if problem is not None:
            return problem
        if voice_locked and voice != effective["voice"]:
            return Problem(
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                f"{prefix}.voice",
            )
        effective["voice"] = voice
    speed = update.get("speed")
    if speed is not None:
        if not isinstance(speed, int | float) or isinstance(speed, bool):
            return invalid_type(f"{prefix}.speed", "a number", speed)
        if not 0.25 <= speed <= 1.5:
            code = "decimal_below_min_value" if speed < 0.25 else "decimal_above_max_value"
            message = f"Invalid '{prefix}.speed': expected 0.25 to 1.5, but got {speed} instead."
            return Problem(code, message, f"{prefix}.speed")
        effective["speed"] = float(speed)
    return None
