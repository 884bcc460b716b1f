"""The exceptions voiced raises, shaped by what the operator must do about them.

Foreign exceptions (OSError, YAML, trio-websocket) are translated into these at their one
boundary with ``raise ... from exc``; ``cli.py`` turns them into one log line and an exit code.
"""

from __future__ import annotations

from typing import ClassVar


class VoicedError(Exception):
    """Base class: a failure with a message fit to show an operator as one line."""


class ConfigError(VoicedError):
    """The configuration is wrong. Exit status 2.

    Args:
        message: what is wrong and the fix.
        file: the config file, when known.
        line: the 1-based line in that file, when known.
        key: the dotted key path, e.g. ``realtime.voice``.
    """

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, key: str = ""
    ) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.reason = message
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")


class UsageError(VoicedError):
    """The command line is wrong. Exit status 2."""


class PluginError(VoicedError):
    """A plugin failed to load or run."""


class DeviceError(VoicedError):
    """An audio device or file could not be opened or used."""


class TransportError(VoicedError):
    """The connection to the realtime server failed."""

    fatal: ClassVar[bool] = False
    """A person must act (a key, a device token, quota, the config): retrying fast won't help."""


class ServerUnreachable(TransportError):
    """The realtime server could not be reached (DNS, refused, timeout, TLS). Transient."""


class AuthRejected(TransportError):
    """The server said the credentials are wrong (HTTP 401/403, or close code 3000), or the
    broker revoked this device. Fatal."""

    fatal = True


class RequestRejected(TransportError):
    """The server said the request is wrong (close code 4000: model, URL), or the broker does
    not allow what was asked. A config problem; fatal."""

    fatal = True


class QuotaExhausted(TransportError):
    """The account has no quota left (``insufficient_quota``): someone must pay. Fatal."""

    fatal = True


class ConnectionLost(TransportError):
    """An open connection ended (close 1001 on session expiry, or abrupt loss). Transient."""


class ProtocolError(VoicedError):
    """Base of the Realtime protocol errors."""


class LocalProtocolError(ProtocolError):
    """voiced itself tried to misuse the protocol (a bug)."""


class RemoteProtocolError(ProtocolError):
    """The server sent something malformed."""


class ServerError(VoicedError):
    """The server sent an ``error`` event that ended what voiced was doing.

    Args:
        message: the server's message.
        code: the server's error code, when given.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        self.code = code
        super().__init__(f"server error{f' ({code})' if code else ''}: {message}")
