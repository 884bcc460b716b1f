"""One run of the MQTT plugin: wires the daemon's events, the client, the outbox delivery, the
commands and discovery together, and stops them in order.

Events are read from a durable subscription into memory at once (transcripts and turn ends to the
delivery's queue, the shown state to a retained value), so the subscription never fills up behind
the broker or the disk. Retained values (the state, the volume) are published when they change
while connected, and again on every connection, with the discovery configs.

Stopping (the daemon's events ended, at shutdown, or cancelled): what arrived is stored, then,
if connected, ``offline`` is published (retained) and its acknowledgement awaited, then the client
disconnects (so the will is not sent) and its thread ends; all within ``STOP_GRACE_S``.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from voiced import Daemon, __version__
from voiced.events import DaemonState, Transcript, TurnEnded

from . import _mqtt_discovery as discovery
from ._mqtt_client import Bridge, BrokerSettings, Tls
from ._mqtt_commands import Commands
from ._mqtt_delivery import Delivery, Figures, payload_of
from ._mqtt_outbox import Outbox
from ._mqtt_topics import OFFLINE, Topics, default_prefix
from .mqtt import MqttConfig, TlsConfig

log = logging.getLogger("voiced.mqtt")

STOP_GRACE_S = 2.0
"""Seconds the plugin takes at most to stop: store what is left, say offline, disconnect."""
OFFLINE_ACK_S = 1.0
"""Of which waiting for the broker to acknowledge ``offline``, at most."""


class Session:
    """The running plugin's parts; also the client's ``Listener``."""

    def __init__(self, config: MqttConfig, daemon: Daemon, outbox: Outbox, figures: Figures):
        self.config = config
        self.daemon = daemon
        self.device_id = daemon.device_id
        self.topics = Topics(config.topic_prefix or default_prefix(self.device_id))
        self.delivery = Delivery(outbox, self.topics, figures, daemon.report)
        self.commands = Commands(daemon, self._publish, self.topics, self._volume_set)
        self._ha_status = f"{config.discovery_prefix}/status"
        self._retained: dict[str, bytes] = {}  # topic → the latest value (state, volume)
        self._bridge: Bridge | None = None
        self._offline_mid: int | None = None
        self._offline_acked = trio.Event()

    def broker_settings(self) -> BrokerSettings:
        config = self.config
        tls = None
        if isinstance(config.tls, TlsConfig):
            tls = Tls(*(self._path(p) for p in (config.tls.ca, config.tls.cert, config.tls.key)))
        elif config.tls:
            tls = Tls()
        subscriptions = [self.topics.cmd]
        if config.discovery:
            subscriptions.append(self._ha_status)
        return BrokerSettings(
            host=config.host,
            port=config.port or (8883 if tls is not None else 1883),
            client_id=config.client_id or f"voiced-{discovery.node_id(self.device_id)}",
            availability=self.topics.availability,
            subscriptions=tuple(subscriptions),
            qos=config.qos,
            keepalive=config.keepalive,
            username=config.username,
            password=config.secret,
            tls=tls,
            reconnect_max_s=config.reconnect_max_s,
        )

    def _path(self, path: str | None) -> str | None:
        return None if path is None else str(self.daemon.resolve(path))

    async def run(self, bridge: Bridge, *, task_status: trio.TaskStatus[None]) -> None:
        self._bridge = bridge
        self.delivery.publisher = bridge
        events = self.daemon.subscribe(Transcript, TurnEnded, DaemonState, durable=True)
        shown = self.daemon.status().get("shown") or {}
        self._state(DaemonState(shown.get("state", "offline"), shown.get("reason")))
        self._check_volume()
        bridge.start()
        settings = bridge.settings
        log.info(
            "mqtt: to %s as %s%s, topics %s/...%s",
            settings.where, settings.client_id,
            f" (user {settings.username})" if settings.username else "",
            self.topics.prefix, ", Home Assistant discovery" if self.config.discovery else "",
        )  # fmt: skip
        try:
            async with events, trio.open_nursery() as nursery:
                nursery.start_soon(self.delivery.pump)
                nursery.start_soon(self.commands.run)
                task_status.started()
                async for event in events:
                    self._take(event)
                nursery.cancel_scope.cancel()  # the daemon is done: stop
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + STOP_GRACE_S
                await self._stop(bridge)

    async def _stop(self, bridge: Bridge) -> None:
        await self.delivery.flush()
        if bridge.connected:
            self._offline_mid = bridge.publish(self.topics.availability, OFFLINE, retain=True)
            with trio.move_on_after(OFFLINE_ACK_S):
                await self._offline_acked.wait()
            await self.delivery.flush()  # what was acknowledged meanwhile
        await bridge.stop(grace=max(0.1, trio.current_effective_deadline() - trio.current_time()))
        self.delivery.figures.connected = False

    # ------------------------------------------------------------------ the daemon's events

    def _take(self, event: Any) -> None:
        if isinstance(event, Transcript):
            if event.final:
                self.delivery.take(event, self.device_id)
        elif isinstance(event, TurnEnded):
            self.delivery.take(event, self.device_id)
        elif isinstance(event, DaemonState):
            self._state(event)
            self._check_volume()  # no event says the volume changed: look when the state does

    def _state(self, event: DaemonState) -> None:
        self._retain(self.topics.state, payload_of(event, self.device_id))

    def _check_volume(self) -> None:
        output = self.daemon.status().get("audio", {}).get("output", {})
        volume = output.get("volume") if isinstance(output, dict) else None
        if isinstance(volume, int | float) and not isinstance(volume, bool):
            self._volume_set(float(volume))

    def _volume_set(self, volume: float) -> None:
        self._retain(self.topics.volume, f"{volume:g}".encode())

    def _retain(self, topic: str, payload: bytes) -> None:
        if self._retained.get(topic) == payload:
            return
        self._retained[topic] = payload
        if self._bridge is not None and self._bridge.connected:
            self._bridge.publish(topic, payload, retain=True)

    def _publish(self, topic: str, payload: bytes) -> None:
        if self._bridge is not None:
            self._bridge.publish(topic, payload)

    def _discovery(self) -> None:
        if not self.config.discovery or self._bridge is None:
            return
        for topic, payload in discovery.messages(
            self.config.discovery_prefix, self.device_id, self.topics,
            qos=self.config.qos, version=__version__,
        ):  # fmt: skip
            self._bridge.publish(topic, payload, retain=True)

    # ------------------------------------------------------------------ the client's news

    def connected(self) -> None:
        if not self.delivery.figures.connects and self._bridge is not None:
            log.info("mqtt: connected to %s", self._bridge.settings.where)
        self.delivery.connected()
        self._discovery()
        if self._bridge is not None:
            for topic, payload in self._retained.items():
                self._bridge.publish(topic, payload, retain=True)

    def disconnected(self, why: str, news: bool) -> None:
        self.delivery.disconnected(why, news)

    def acked(self, mid: int) -> None:
        if mid == self._offline_mid:
            self._offline_acked.set()
        else:
            self.delivery.acked(mid)

    def message(self, topic: str, payload: bytes) -> None:
        if topic == self.topics.cmd:
            self.commands.message(payload)
        elif topic == self._ha_status and payload.strip() == b"online":
            self._discovery()  # Home Assistant restarted: say it all again
