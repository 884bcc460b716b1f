"""What voiced's two HTTP servers share (the control API, ``voiced broker``): a listening socket
bound before hypercorn starts, so that a port in use is one clear ConfigError at startup, and the
ASGI lifespan handshake hypercorn runs first.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from voiced.errors import ConfigError


async def listen(host: str, port: int, *, key: str, file: str | None = None) -> socket.socket:
    """A listening TCP socket on ``host:port``; ``key`` is the config section holding both.

    Raises:
        ConfigError: the address cannot be had (in use, not allowed, not on this machine),
            naming ``{key}.host`` or ``{key}.port``.
    """
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        infos = await trio.socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        message = f"cannot listen on {where}: {exc.strerror or exc} (is the address right?)"
        raise ConfigError(message, file=file, key=f"{key}.host") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(100)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            hint, field = "choose another port, or 0 for a free one", "port"
        else:
            hint, field = "is the address one of this machine's?", "host"
        message = f"cannot listen on {where}: {exc.strerror or exc} ({hint})"
        raise ConfigError(message, file=file, key=f"{key}.{field}") from exc
    return sock


async def lifespan(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    """Answer ASGI's lifespan messages until shutdown: nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
