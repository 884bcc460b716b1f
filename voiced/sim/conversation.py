"""The simulated conversation: its items, their audio, and the item operations clients may request.

Items keep the PCM they carry (committed user audio, or the assistant audio actually streamed so
far), so ``conversation.item.truncate`` is checked against what the client can really have played.
Item views never carry audio except in ``conversation.item.retrieved``, as on the real server.
A conversation that does not record (``keep_audio=False``, the simulator inside a long-running
daemon) keeps only each item's audio length, retrieves silence of that length, and holds at most
``max_items`` items, dropping the oldest as the real server's context truncation does.
No trio, no sockets.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voiced.sim.config import BYTES_PER_MS
from voiced.sim.schema import Problem, invalid_type, invalid_value

_ROLE_CONTENT = {
    "user": ("input_text", "input_audio"),
    "system": ("input_text",),
    "assistant": ("output_text",),
}
"""What ``conversation.item.create`` may add: assistant audio cannot be created by a client."""


@dataclass(eq=False)
class Item:
    """One message item. ``content`` is the item's content as shown to clients, without audio."""

    id: str
    role: str
    content: list[dict[str, Any]]
    status: str = "completed"
    audio: bytearray = field(default_factory=bytearray)
    """The item's PCM (empty when ``keep_audio`` is false)."""
    keep_audio: bool = True
    """False: keep only the length of the item's audio (``audio_bytes``), never its bytes."""
    audio_bytes: int = field(init=False, default=0)
    """How much PCM the item holds, kept or not."""

    def __post_init__(self) -> None:
        self.audio_bytes = len(self.audio)
        if not self.keep_audio:
            self.audio = bytearray()

    @property
    def has_audio(self) -> bool:
        return any(part.get("type") in ("input_audio", "output_audio") for part in self.content)

    def add_audio(self, pcm: bytes) -> None:
        """Append ``pcm`` to the item's audio (only its length, when audio is not kept)."""
        self.audio_bytes += len(pcm)
        if self.keep_audio:
            self.audio += pcm

    def cut_audio(self, end: int) -> None:
        """Keep the first ``end`` bytes of the item's audio."""
        self.audio_bytes = min(self.audio_bytes, end)
        del self.audio[end:]

    def pcm(self) -> bytes:
        """The item's audio: the bytes kept, or silence of its length."""
        return bytes(self.audio) if self.keep_audio else bytes(self.audio_bytes)

    def view(self, *, with_audio: bool = False) -> dict[str, Any]:
        content = [dict(part) for part in self.content]
        if with_audio:
            for part in content:
                if part.get("type") in ("input_audio", "output_audio"):
                    part["audio"] = base64.b64encode(self.pcm()).decode("ascii")
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "status": self.status,
            "role": self.role,
            "content": content,
        }


@dataclass
class Conversation:
    """The items of the one default conversation, in order.

    Args:
        keep_audio: items keep their PCM (False: only its length).
        max_items: hold at most this many items, dropping the oldest silently, as the real
            server drops the oldest items from the model's context (None: every item).
    """

    items: list[Item] = field(default_factory=list)
    keep_audio: bool = True
    max_items: int | None = None

    @property
    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def new_item(
        self,
        item_id: str,
        role: str,
        content: list[dict[str, Any]],
        *,
        status: str = "completed",
        audio: bytes | bytearray = b"",
    ) -> Item:
        """An item that keeps its audio as this conversation does (not added yet)."""
        return Item(item_id, role, content, status, bytearray(audio), self.keep_audio)

    def add(self, item: Item) -> str | None:
        """Append ``item``; returns the id of the item before it."""
        previous = self.last_id
        self.items.append(item)
        if self.max_items is not None and len(self.items) > self.max_items:
            del self.items[: len(self.items) - self.max_items]
        return previous

    def find(self, item_id: object) -> Item | Problem:
        for item in self.items:
            if item.id == item_id:
                return item
        return Problem(
            "item_not_found", f"Conversation item with id '{item_id}' not found.", "item_id"
        )

    def create(
        self, new_id: Callable[[], str], event: dict[str, Any]
    ) -> list[dict[str, Any]] | Problem:
        """``conversation.item.create``: message items only (what a push-to-talk client needs)."""
        raw = event["item"]
        if not isinstance(raw, dict):
            return invalid_type("item", "an object", raw)
        if raw.get("type") != "message":
            return invalid_value("item.type", raw.get("type"), ("message",))
        role = raw.get("role")
        if role not in _ROLE_CONTENT:
            return invalid_value("item.role", role, tuple(_ROLE_CONTENT))
        parts = raw.get("content") or []
        if not isinstance(parts, list):
            return invalid_type("item.content", "an array", parts)
        content: list[dict[str, Any]] = []
        audio = bytearray()
        for index, part in enumerate(parts):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _ROLE_CONTENT[role]:
                return invalid_value(f"item.content[{index}].type", kind, _ROLE_CONTENT[role])
            if kind == "input_audio":
                encoded = part.get("audio") or ""
                try:
                    audio += base64.b64decode(encoded, validate=True)
                except (ValueError, TypeError):  # not base64, not ASCII, not a string
                    return invalid_value(f"item.content[{index}].audio", "<not base64>")
                content.append({"type": kind, "transcript": part.get("transcript")})
            else:
                content.append({"type": kind, "text": part.get("text")})
        item = self.new_item(new_id(), role, content, audio=audio)
        previous = self.add(item)
        return [
            {"type": "conversation.item.added", "previous_item_id": previous, "item": item.view()},
            {"type": "conversation.item.done", "previous_item_id": previous, "item": item.view()},
        ]

    def truncate(self, event: dict[str, Any]) -> dict[str, Any] | Problem:
        """``conversation.item.truncate``: cut an assistant item's audio at ``audio_end_ms``."""
        item = self.find(event["item_id"])
        if isinstance(item, Problem):
            return item
        if item.role != "assistant" or not item.has_audio:
            message = "Only assistant messages with audio can be truncated."
            return Problem("invalid_value", message, "item_id")
        if event["content_index"] != 0:
            return invalid_value("content_index", event["content_index"], ("0",))
        end_ms = event["audio_end_ms"]
        if not isinstance(end_ms, int) or isinstance(end_ms, bool):
            return invalid_type("audio_end_ms", "an integer", end_ms)
        length_ms = item.audio_bytes // BYTES_PER_MS
        if not 0 <= end_ms <= length_ms:
            message = f"Audio content of {length_ms}ms is already shorter than {end_ms}ms"
            return Problem("invalid_value", message, "audio_end_ms")
        item.cut_audio(end_ms * BYTES_PER_MS)
        return {
            "type": "conversation.item.truncated",
            "item_id": item.id,
            "content_index": 0,
            "audio_end_ms": end_ms,
        }

    def delete(self, event: dict[str, Any]) -> dict[str, Any] | Problem:
        item = self.find(event["item_id"])
        if isinstance(item, Problem):
            return item
        self.items.remove(item)
        return {"type": "conversation.item.deleted", "item_id": item.id}

    def retrieve(self, event: dict[str, Any]) -> dict[str, Any] | Problem:
        item = self.find(event["item_id"])
        if isinstance(item, Problem):
            return item
        return {"type": "conversation.item.retrieved", "item": item.view(with_audio=True)}
