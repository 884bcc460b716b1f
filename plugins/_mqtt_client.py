"""The MQTT client: paho-mqtt on its own network thread, bridged to trio.

paho's thread connects (DNS, TCP, TLS: all blocking, all there), reconnects after every failure
with ``voiced.backoff`` delays (jittered, doubling up to ``reconnect_max_s``), keeps the connection
alive and resends unacknowledged QoS 1/2 messages after a reconnect, in order. Its callbacks do one
thing: hand the news to trio with the trio token's ``run_sync_soon``, which is safe from any thread
and never waits. From trio, ``publish`` only queues the packet for paho's thread (a mutex held for
microseconds, no I/O): paho never blocks the trio loop. ``stop`` joins the thread in a worker
thread.

On every connection, from paho's thread and before anything else is sent: ``online`` (retained) on
the availability topic, whose last will is ``offline`` (retained), and the subscriptions; trio is
told it is connected once the broker has acknowledged them (no command is missed from then on).

paho itself is imported here: this module is imported only when the plugin starts.
"""

from __future__ import annotations

import functools
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from voiced.backoff import Backoff

from ._mqtt_topics import OFFLINE, ONLINE

log = logging.getLogger("voiced.mqtt")
P = ParamSpec("P")

CONNECT_TIMEOUT_S = 10.0
"""Seconds paho's thread gives a TCP connect (and TLS handshake) before it counts as failed."""


@dataclass(frozen=True)
class Tls:
    """TLS: the CA bundle (None: the system's) and the client certificate and key, if any."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    client_id: str
    availability: str
    """The availability topic: ``online`` on connecting, ``offline`` as the last will."""
    subscriptions: tuple[str, ...] = ()
    qos: int = 1
    keepalive: int = 60
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: Tls | None = None
    reconnect_max_s: float = 30.0

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class Listener(Protocol):
    """What the trio side is told; each runs in the trio thread and must not raise or wait."""

    def connected(self) -> None: ...

    def disconnected(self, why: str, news: bool) -> None:
        """The connection failed or was lost; ``news``: worth a log line (see ``Backoff``)."""

    def acked(self, mid: int) -> None:
        """The broker acknowledged the message ``mid``."""

    def message(self, topic: str, payload: bytes) -> None: ...


class _Client(mqtt.Client):
    """paho's client, remembering why the last connection attempt failed (paho does not say)."""

    connect_error: str | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            self.connect_error = describe(exc)
            raise

    def close(self) -> None:
        """Close its sockets, the thread's wake-up pair included (paho leaves that to the
        garbage collector). Only once its thread has ended."""
        self._reset_sockets()


def tls_context(tls: Tls) -> ssl.SSLContext:
    """What paho's ``tls_set`` makes (TLS 1.2 or later, the broker's certificate and name
    checked), except that a socket whose handshake fails closes itself (paho drops it open).

    Raises:
        OSError, ssl.SSLError: a file cannot be read or holds no certificate or key.
    """
    context = ssl.create_default_context(cafile=tls.ca)
    if tls.cert is not None:
        context.load_cert_chain(tls.cert, tls.key)
    context.sslsocket_class = _ClosingSSLSocket
    return context


class _ClosingSSLSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _logged(callback: Callable[P, None]) -> Callable[P, None]:
    """A callback in paho's thread that logs what it raises (paho would only drop it)."""

    @functools.wraps(callback)
    def logged(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            callback(*args, **kwargs)
        except Exception:
            log.exception("mqtt: in the client's thread")

    return logged


def describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class Bridge:
    """One paho client on its own thread, reporting to ``listener`` in the trio thread.

    Create it in trio (it keeps the current trio token).

    Raises:
        OSError, ssl.SSLError, ValueError: a TLS file cannot be read or is not one.
    """

    def __init__(self, settings: BrokerSettings, listener: Listener) -> None:
        self.settings = settings
        self._listener = listener
        self._token = trio.lowlevel.current_trio_token()
        self._backoff = Backoff(start=0.5, cap=max(0.5, settings.reconnect_max_s))
        self._refused: str | None = None  # the broker's refusal (CONNACK), until disconnected
        self._stopping = False  # a disconnect asked for: not a failure
        self._subscribing: int | None = None  # the mid of this connection's SUBSCRIBE
        self._closed = False  # nothing more to tell trio
        client = self.client = _Client(
            CallbackAPIVersion.VERSION2, client_id=settings.client_id, clean_session=True
        )
        client.suppress_exceptions = True  # and ours log what they raise (paho's log is off)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(0)  # no limit: the outbox hands over few at a time
        client.max_queued_messages_set(0)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls is not None:
            client.tls_set_context(tls_context(settings.tls))
        client.will_set(settings.availability, OFFLINE, qos=settings.qos, retain=True)
        self._delay(self._backoff.start)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message

    # ------------------------------------------------------------------ from trio

    def start(self) -> None:
        """Start paho's thread; it connects, and reconnects, by itself. Never waits."""
        self.client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive)
        self.client.loop_start()

    @property
    def connected(self) -> bool:
        return self.client.is_connected()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Queue a message for paho's thread (sent now if connected, else after reconnecting);
        its ``mid``, which ``Listener.acked`` will name."""
        return self.client.publish(topic, payload, qos=self.settings.qos, retain=retain).mid

    async def stop(self, grace: float) -> None:
        """Disconnect cleanly (the will is not sent) and end paho's thread, within ``grace``
        seconds (then the thread, a daemon thread, is left to end by itself)."""
        self._stopping = True
        self.client.disconnect()
        with trio.move_on_after(grace):
            await trio.to_thread.run_sync(self.client.loop_stop, abandon_on_cancel=True)
            self.client.close()
        self._closed = True

    # ------------------------------------------------------------------ in paho's thread

    @_logged
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._refused = f"the broker refused the connection: {reason}"
            return
        self._backoff.succeeded(time.monotonic())
        self._delay(self._backoff.start)
        client.publish(self.settings.availability, ONLINE, qos=self.settings.qos, retain=True)
        if not self.settings.subscriptions:
            self._hand(self._listener.connected)
            return
        topics = [(topic, self.settings.qos) for topic in self.settings.subscriptions]
        self._subscribing = client.subscribe(topics)[1]

    @_logged
    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        if mid == self._subscribing:  # the broker has the subscriptions: nothing is missed now
            self._hand(self._listener.connected)

    @_logged
    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        error = self.client.connect_error or "cannot connect"
        self._failed(f"cannot connect to {self.settings.where}: {error}")

    @_logged
    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self._refused is not None:
            why, self._refused = self._refused, None
        elif flags.is_disconnect_packet_from_server:
            why = f"the broker at {self.settings.where} disconnected: {reason}"
        else:
            why = f"lost the connection to {self.settings.where}"
        self._failed(why)

    def _failed(self, why: str) -> None:
        if self._stopping:
            return
        retry = self._backoff.failed(time.monotonic(), why)
        self._delay(retry.delay)
        self._hand(self._listener.disconnected, why, retry.news)

    def _delay(self, seconds: float) -> None:
        """The wait before paho's thread tries again (paho doubles it up to the maximum; the
        same value for both keeps ours)."""
        set_delay: Callable[[float, float], None] = self.client.reconnect_delay_set  # type: ignore[assignment]
        set_delay(seconds, seconds)

    @_logged
    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._hand(self._listener.acked, mid)

    @_logged
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._hand(self._listener.message, message.topic, bytes(message.payload))

    def _hand(self, callback: Callable[..., None], *args: Any) -> None:
        if self._closed:
            return
        try:
            self._token.run_sync_soon(_safely, callback, args)
        except trio.RunFinishedError:
            self._closed = True  # trio has ended: nobody to tell


def _safely(callback: Callable[..., None], args: tuple[Any, ...]) -> None:
    """Run ``callback`` in the trio thread; it must not raise (that would crash trio's run)."""
    try:
        callback(*args)
    except Exception:
        log.exception("mqtt: handling the client's news failed")
