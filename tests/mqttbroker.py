"""Real MQTT parts for the tests: a mosquitto broker on a free loopback port, started here and
killed by its PID, and a paho subscriber on its own thread that hands what arrives to trio.

The broker is ready when it says ``running`` on its log (read from its stdout), not after a
delay. It keeps a persistence file saved only when it stops cleanly (``stop``: SIGTERM), never
while running: a ``kill`` (SIGKILL) mid-test comes back with exactly what the last clean stop
saved. ``durable_subscriber`` uses that to give a subscriber a session that outlives a broker
crash, so that nothing published while the subscriber is reconnecting is lost to the test.
"""

from __future__ import annotations

import getpass
import json
import math
import shutil
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HOST = "127.0.0.1"


class Broker:
    """mosquitto on ``port`` (anonymous unless ``password_file``), plus ``extra`` config lines
    (another listener, TLS). Use ``start``/``kill``/``stop`` from a worker thread in trio."""

    def __init__(
        self, folder: Path, port: int, *, password_file: Path | None = None, extra: str = ""
    ) -> None:
        self.folder = folder
        self.port = port
        self.lines: list[str] = []
        """Everything the broker logged (for a failing test's report)."""
        self._process: subprocess.Popen[bytes] | None = None
        self._drainer: threading.Thread | None = None
        folder.mkdir(parents=True, exist_ok=True)
        auth = (
            f"allow_anonymous false\npassword_file {password_file}\n"
            if password_file is not None
            else "allow_anonymous true\n"
        )
        (folder / "mosquitto.conf").write_text(
            f"per_listener_settings false\n{auth}"
            f"persistence true\npersistence_location {folder}/\nautosave_interval 0\n"
            f"user {getpass.getuser()}\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
            "log_type information\nconnection_messages true\n"
            f"listener {port} {HOST}\n{extra}"
        )

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start it and return once it is running (blocking).

        Raises:
            RuntimeError: it exited instead (a port in use, a bad config).
        """
        assert self._process is None, "already running"
        process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.folder / "mosquitto.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if line.endswith(" running"):
                break
        else:
            process.wait()
            process.stdout.close()
            raise RuntimeError("mosquitto did not start:\n" + "\n".join(self.lines))
        self._process = process
        self._drainer = threading.Thread(target=self._drain, args=(process,), daemon=True)
        self._drainer.start()

    def _drain(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def kill(self) -> None:
        """SIGKILL, by PID: connections drop without a goodbye, nothing is saved."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: it saves its persistence file (sessions, retained messages) and exits."""
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.send_signal(sig)
            process.wait()
            if self._drainer is not None:
                self._drainer.join()  # its log has ended: the pipe is at its end
            assert process.stdout is not None
            process.stdout.close()


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client on its own thread (it reconnects by itself), subscribed to ``topics`` with
    QoS 1; what arrives goes, in order, to a trio channel (``next``). ``clean=False`` keeps its
    session (subscriptions, messages queued for it) on the broker while it is away."""

    def __init__(
        self,
        port: int,
        topics: Sequence[str],
        *,
        client_id: str = "",
        clean: bool = True,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.port = port
        self.topics = list(topics)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean
        )
        self.client.reconnect_delay_set(1, 1)
        if username is not None:
            self.client.username_pw_set(username, password)
        self._send, self.messages = trio.open_memory_channel[Message](math.inf)
        self._subscribed = trio.Event()
        self._held: list[Message] = []  # arrived, not asked for yet

    async def __aenter__(self) -> Subscriber:
        token = trio.lowlevel.current_trio_token()
        client = self.client

        def on_connect(c: mqtt.Client, u: Any, flags: Any, reason: Any, p: Any) -> None:
            for topic in self.topics:
                c.subscribe(topic, qos=1)

        def on_subscribe(c: mqtt.Client, u: Any, mid: int, codes: Any, p: Any) -> None:
            token.run_sync_soon(self._subscribed.set)

        def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
            message = Message(m.topic, bytes(m.payload), bool(m.retain), m.qos)
            token.run_sync_soon(self._send.send_nowait, message)

        client.on_connect, client.on_subscribe, client.on_message = (
            on_connect, on_subscribe, on_message,
        )  # fmt: skip
        await trio.to_thread.run_sync(client.connect, HOST, self.port, 30)
        client.loop_start()
        await self._subscribed.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.disconnect()
        await trio.to_thread.run_sync(self.client.loop_stop)
        self.client._reset_sockets()  # paho leaves its wake-up socket pair to the GC

    async def next(self, topic: str | None = None) -> Message:
        """The next message (on ``topic``: those on other topics stay for their own ``next``)."""
        for i, message in enumerate(self._held):
            if topic is None or message.topic == topic:
                return self._held.pop(i)
        while True:
            message = await self.messages.receive()
            if topic is None or message.topic == topic:
                return message
            self._held.append(message)

    async def publish(self, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
        """Publish with QoS 1 and wait for the broker's acknowledgement."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        await trio.to_thread.run_sync(info.wait_for_publish, 10)


async def durable_subscriber(broker: Broker, topics: Sequence[str], client_id: str) -> Subscriber:
    """A subscriber whose session (subscriptions, and what is queued for it while it is away) is
    on the broker's disk: made, saved by a clean stop, and loaded by a start. A later ``kill``
    and ``start`` of the broker comes back with it, so every message published after the broker
    is back reaches the subscriber, whenever it reconnects. Enter the returned subscriber."""
    async with Subscriber(broker.port, topics, client_id=client_id, clean=False):
        pass
    await trio.to_thread.run_sync(broker.stop)
    await trio.to_thread.run_sync(broker.start)
    return Subscriber(broker.port, topics, client_id=client_id, clean=False)
