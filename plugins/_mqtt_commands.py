"""Commands over MQTT, on ``<prefix>/cmd``: the payload is text or a JSON object.

- ``start``, ``commit``, ``cancel``, ``toggle`` (case does not matter), or
  ``{"command": "commit", "reply": false}`` (``reply`` false: send what was heard, no spoken
  answer). Each becomes a ``TurnCommand`` with source ``mqtt``.
- ``volume 0.4``, or ``{"volume": 0.4}``: the speaker's volume, 0.0 to 1.0 (kept across restarts);
  the new value is then published, retained, on ``<prefix>/volume``.

A JSON object may carry ``"id"`` (a string or number), echoed in the result. Every command gets
one result on ``<prefix>/cmd/result`` (not retained), JSON: ``{"command": "start", "verdict":
"accepted", "reason": "listening", "id": ...}``; ``verdict`` is the daemon's (``accepted``,
``conflict``: not in this state, ``unavailable``: not now) or ``invalid`` (the payload is not a
command; ``command`` is then null). Commands are read in order, at most ``QUEUE`` waiting (more
are dropped and counted; a broker replaying a flood cannot pile up turns).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from voiced import Daemon
from voiced.actions import Verdict
from voiced.turn import Command, TurnCommand

from ._mqtt_topics import Topics

log = logging.getLogger("voiced.mqtt")

QUEUE = 16
"""Commands received and not yet handled, at most."""
COMMANDS = {command.value: command for command in Command}
KNOWN = "start, commit, cancel, toggle, volume"


@dataclass(frozen=True)
class Request:
    """One parsed command: a turn command, or a volume."""

    command: Command | None = None
    volume: float | None = None
    reply: bool = True
    id: str | int | None = None


class Invalid(ValueError):
    """The payload is not a command (the message says why)."""


def parse(payload: bytes) -> Request:
    """The command in ``payload``.

    Raises:
        Invalid: it is not one.
    """
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise Invalid("not UTF-8 text") from exc
    if text.startswith("{"):
        return _parse_json(text)
    words = text.split()
    if len(words) == 1 and words[0].lower() in COMMANDS:
        return Request(COMMANDS[words[0].lower()])
    if len(words) == 2 and words[0].lower() == "volume":
        try:
            return Request(volume=float(words[1]))
        except ValueError:
            raise Invalid(f"volume {words[1]!r} is not a number") from None
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise Invalid(f"unknown command {shown!r} (known: {KNOWN})")


def _parse_json(text: str) -> Request:
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise Invalid(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Invalid("expected a JSON object")
    request_id = data.get("id")
    if request_id is not None and (
        isinstance(request_id, bool) or not isinstance(request_id, str | int)
    ):
        raise Invalid("id must be a string or a number")
    if "volume" in data:
        volume = data["volume"]
        if set(data) - {"volume", "id"}:
            raise Invalid("a volume takes only volume and id")
        if isinstance(volume, bool) or not isinstance(volume, int | float):
            raise Invalid("volume must be a number from 0.0 to 1.0")
        return Request(volume=float(volume), id=request_id)
    unknown = set(data) - {"command", "reply", "id"}
    if unknown:
        raise Invalid(f"unknown key(s): {', '.join(sorted(unknown))}")
    command = data.get("command")
    if not isinstance(command, str) or command.lower() not in COMMANDS:
        raise Invalid(f"command must be one of {KNOWN}")
    reply = data.get("reply", True)
    if not isinstance(reply, bool):
        raise Invalid("reply must be true or false")
    return Request(COMMANDS[command.lower()], reply=reply, id=request_id)


class Commands:
    """The input side: reads ``<prefix>/cmd``, acts, publishes each result.

    Args:
        daemon: the daemon.
        publish: publishes a payload on a topic (not retained); never waits.
        topics: the plugin's topics.
        volume_set: told the volume a command set.
    """

    def __init__(
        self,
        daemon: Daemon,
        publish: Callable[[str, bytes], object],
        topics: Topics,
        volume_set: Callable[[float], None],
    ) -> None:
        self._daemon = daemon
        self._publish = publish
        self._topics = topics
        self._volume_set = volume_set
        self._send, self._receive = trio.open_memory_channel[bytes](QUEUE)
        self.dropped = 0
        """Commands dropped because too many were waiting."""

    def message(self, payload: bytes) -> None:
        """A message arrived on ``<prefix>/cmd`` (in the trio thread; never waits)."""
        try:
            self._send.send_nowait(payload)
        except trio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("mqtt: commands arrive faster than they are handled; dropping")

    async def run(self) -> None:
        """Handle the commands, in order, until cancelled or the daemon takes no more."""
        async for payload in self._receive:
            try:
                await self._handle(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the daemon is shutting down

    async def _handle(self, payload: bytes) -> None:
        try:
            request = parse(payload)
        except Invalid as exc:
            log.info("mqtt: ignored a command on %s: %s", self._topics.cmd, exc)
            self._result(None, "invalid", str(exc), None)
            return
        if request.volume is not None:
            volume = request.volume
            try:
                if not math.isfinite(volume):
                    raise ValueError("volume must be a number from 0.0 to 1.0")
                await self._daemon.set_volume(volume)
            except ValueError as exc:
                self._result("volume", "invalid", str(exc), request.id)
                return
            self._volume_set(volume)
            self._result("volume", "accepted", f"volume {volume:g}", request.id)
            return
        command = request.command
        assert command is not None
        log.debug("mqtt: %s", command)

        def answer(verdict: Verdict) -> None:
            self._result(str(command), verdict.kind, verdict.reason, request.id)

        await self._daemon.commands.send(
            TurnCommand(command, "mqtt", reply=request.reply, on_verdict=answer)
        )

    def _result(
        self, command: str | None, verdict: str, reason: str, request_id: str | int | None
    ) -> None:
        result: dict[str, Any] = {"command": command, "verdict": verdict, "reason": reason}
        if request_id is not None:
            result["id"] = request_id
        self._publish(self._topics.result, json.dumps(result, ensure_ascii=False).encode())
