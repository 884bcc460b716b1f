"""systemd's notify protocol (``Type=notify``): a datagram to ``$NOTIFY_SOCKET`` per message.

A few lines, no dependency: ``READY=1`` once the daemon can take a turn (or runs degraded, with
a ``STATUS=`` that says why), ``STATUS=`` with what a person would want to read in ``systemctl
status``, ``WATCHDOG=1`` while the main loop answers, ``RELOADING=1`` and ``STOPPING=1``. Outside
systemd (no ``NOTIFY_SOCKET``) every call does nothing. See ``voiced.app`` for when each is sent.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("voiced.notify")


class Notifier:
    """Sends notify messages to the socket systemd named, if any.

    Args:
        address: ``$NOTIFY_SOCKET``: a path, or ``@name`` for an abstract socket; None: off.
        watchdog_usec: ``$WATCHDOG_USEC``: the watchdog period systemd expects pings within.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self.watchdog_s = watchdog_usec / 1e6 if watchdog_usec else None
        """The watchdog period in seconds, when systemd asked for pings."""
        self._failed = False

    @classmethod
    def from_environment(cls) -> Notifier:
        """The notifier systemd set up for this process (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
        ``WATCHDOG_PID``)."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        watchdog = int(usec) if usec.isdigit() and ours else None
        return cls(os.environ.get("NOTIFY_SOCKET") or None, watchdog)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> None:
        """Send ``fields`` (``READY=1``, ``STATUS=...``) as one message; never raises."""
        if self._address is None or self._failed:
            return
        message = "\n".join(field.replace("\n", " ") for field in fields).encode()
        try:  # a socket per message: a few a minute, and nothing to close at exit
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as exc:  # systemd is gone or the socket is full: say so once, go on
            self._failed = True
            log.warning("cannot notify systemd at %s: %s", self._address.lstrip("\0"), exc)

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        # systemd 253+ wants the time of the reload with it (Type=notify-reload); older ignore it.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=shutting down")
