"""Strict validation of Realtime events against the official SDK's pydantic models (tests only).

The SDK's ``RealtimeClientEvent`` / ``RealtimeServerEvent`` unions carry their ``type``
discriminator only as SDK-internal metadata, so pydantic validates them as smart unions and lists
every member on failure; and every model allows extra keys, so a misspelt or beta-era field passes
silently (protocol §9). Here the unions are rebuilt as real discriminated unions, validated in
strict JSON mode, and the result is walked for ``model_extra``: any key the SDK does not know fails,
named by its dotted path. Server sessions may carry the few server-only keys real payloads show.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

SERVER_ONLY_SESSION_KEYS = frozenset({"session.id", "session.object", "session.expires_at"})
"""Keys of ``session.created`` / ``session.updated`` sessions that the server adds and the SDK's
``RealtimeSessionCreateRequest`` does not model (they land in ``model_extra``)."""

_SESSION_EVENTS = frozenset({"session.created", "session.updated"})


@functools.cache
def _adapter(side: Literal["client", "server"]) -> TypeAdapter[Any]:
    union = RealtimeClientEvent if side == "client" else RealtimeServerEvent
    # get_args(Annotated[Union[...], PropertyInfo]) -> (Union[...], PropertyInfo); the members
    # are the arguments of that inner Union.
    members = typing.get_args(typing.get_args(union)[0])
    discriminated: Any = Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007
    return TypeAdapter(discriminated)


def _extras(value: object, path: str) -> Iterator[str]:
    if isinstance(value, BaseModel):
        for key in value.model_extra or {}:
            yield f"{path}{key}"
        for name in type(value).model_fields:
            yield from _extras(getattr(value, name), f"{path}{name}.")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _extras(item, f"{path.removesuffix('.')}[{index}].")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _extras(item, f"{path}{key}.")


def _validate(side: Literal["client", "server"], event: dict[str, Any]) -> None:
    try:
        model = _adapter(side).validate_json(json.dumps(event), strict=True)
    except ValidationError as exc:
        raise AssertionError(f"invalid {side} event {event.get('type')!r}: {exc}") from exc
    extras = set(_extras(model, ""))
    if side == "server" and event.get("type") in _SESSION_EVENTS:
        extras -= SERVER_ONLY_SESSION_KEYS
    if extras:
        raise AssertionError(
            f"{side} event {event.get('type')!r} has keys the SDK does not know: "
            + ", ".join(sorted(extras))
        )


def assert_valid_client_event(event: dict[str, Any]) -> None:
    """Fail unless ``event`` is a client event the SDK accepts with no unknown key anywhere."""
    _validate("client", event)


def assert_valid_server_event(event: dict[str, Any]) -> None:
    """Fail unless ``event`` is a server event the SDK accepts with no unknown key anywhere
    (besides :data:`SERVER_ONLY_SESSION_KEYS` in session events)."""
    _validate("server", event)
