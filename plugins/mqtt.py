"""The ``mqtt`` plugin: transcripts to an MQTT broker through a persistent outbox, commands from
it, and Home Assistant discovery. Needs paho-mqtt (``pip install 'voiced[mqtt]'``), imported only
when the plugin starts::

    plugins:
      mqtt:
        host: broker.local    # default localhost; port: 1883, or 8883 with tls
        username: kiosk       # password, password_file, or $CREDENTIALS_DIRECTORY/mqtt_password
        tls: true             # or {ca: ca.pem, cert: client.pem, key: client.key}
        discovery: true       # Home Assistant

Topics (``_mqtt_topics``), under ``topic_prefix`` (default ``voiced/<device_id>``): final
transcripts on ``transcript`` and finished turns on ``turn``, each the ``voiced.envelope`` JSON;
retained: ``state`` (the ``state`` envelope), ``availability`` (``online``; ``offline`` on a clean
stop, and as the last will when the daemon dies), ``last/user``, ``last/agent``, ``volume``.
Commands on ``cmd``, results on ``cmd/result`` (``_mqtt_commands``); discovery in
``_mqtt_discovery``.

Delivery (``_mqtt_delivery``): every transcript and turn end is written to the outbox
(``mqtt-outbox.sqlite3`` in the state directory, ``_mqtt_outbox``) before it is published with
``qos`` (default 1), and removed only once the broker acknowledged it; so what was produced while
the broker was away, or before a crash, is delivered after reconnecting or restarting, in order.
A message acknowledged just before a crash can come again after the restart: subscribers drop
duplicates by the envelope's ``id``. The outbox keeps at most ``outbox_max`` events, none older
than ``outbox_max_age_s``; what had to be dropped is logged and shown in ``/status``
(``plugin_errors.mqtt``, with the broker's error while it is away).

The client (``_mqtt_client``) runs on paho's own thread and reconnects by itself; nothing in trio
waits on the network or on SQLite. The subscription is durable (a transcript is never dropped for
it), read at once into memory, and written to the outbox in batches: a slow or dead broker never
stalls the audio or the other sinks. The password is never logged nor shown.

It is an input (``PluginSpec.input``: ``voiced ask`` does not start it), so at shutdown it is
stopped with the inputs, just before the daemon's last events: one published in that moment of
shutdown (a transcript already on its way in when the daemon was told to stop) does not reach
it. One run's parts are wired together in ``_mqtt_session``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from voiced import Daemon, PluginSpec, hookimpl
from voiced.yamlconf import FieldError

from ._mqtt_topics import prefix_problem

if TYPE_CHECKING:
    from ._mqtt_delivery import Delivery, Figures

log = logging.getLogger("voiced.mqtt")

INSTALL_HINT = "pip install 'voiced[mqtt]'"
CREDENTIAL = "mqtt_password"
"""The systemd credential read as the password when neither password nor password_file is set."""


@dataclass(frozen=True)
class TlsConfig:
    """TLS with these files (relative paths: under the state directory, when one is given)."""

    ca: str | None = None
    """The CA certificates (PEM) the broker's certificate must chain to; null: the system's."""
    cert: str | None = None
    """A client certificate (PEM), for brokers that ask for one."""
    key: str | None = None
    """Its private key (PEM), unless it is in ``cert``."""

    def __post_init__(self) -> None:
        if self.key is not None and self.cert is None:
            raise FieldError("needs cert (the certificate this key belongs to)", field="key")


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    """The broker's name or address."""
    port: int | None = None
    """Its port; null: 8883 with TLS, else 1883."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    """Prefer ``password_file`` or the systemd credential to writing it here."""
    password_file: str | None = None
    """A file holding the password (its first line)."""
    tls: bool | TlsConfig = False
    """true: TLS, the system's CAs; or a mapping with ``ca``, ``cert``, ``key``."""
    client_id: str | None = None
    """null: ``voiced-<device_id>`` (letters, digits, ``_``, ``-``). Two clients with one id
    push each other off the broker."""
    topic_prefix: str | None = None
    """null: ``voiced/<device_id>``."""
    qos: int = 1
    """QoS of everything published and subscribed: 1 (at least once) or 2; 0 gives up the
    outbox's guarantee (a message counts as delivered once written to the socket)."""
    discovery: bool = False
    """Publish Home Assistant MQTT discovery configs."""
    discovery_prefix: str = "homeassistant"
    keepalive: int = 60
    """Seconds between keep-alive pings (5 to 3600)."""
    outbox_max: int = 10_000
    """Events kept in the outbox at most; past it the oldest are dropped (counted)."""
    outbox_max_age_s: float = 7 * 24 * 3600.0
    """Events stored longer ago than this are dropped undelivered (counted). Default: 7 days."""
    reconnect_max_s: float = 30.0
    """The longest wait between tries to reach the broker (the first is 0.5 s, then doubling)."""
    secret: str | None = field(default=None, init=False, repr=False, compare=False)
    """The password in force (``password``, ``password_file`` or the credential), once read."""

    def __post_init__(self) -> None:
        if self.port is not None and not 1 <= self.port <= 65535:
            raise FieldError("must be between 1 and 65535", field="port")
        if self.qos not in (0, 1, 2):
            raise FieldError("must be 0, 1 or 2", field="qos")
        if not 5 <= self.keepalive <= 3600:
            raise FieldError("must be between 5 and 3600 seconds", field="keepalive")
        if self.outbox_max < 1:
            raise FieldError("must be at least 1", field="outbox_max")
        if self.outbox_max_age_s <= 0:
            raise FieldError("must be more than 0 seconds", field="outbox_max_age_s")
        if not 0.5 <= self.reconnect_max_s <= 3600:
            raise FieldError("must be between 0.5 and 3600 seconds", field="reconnect_max_s")
        for name in ("topic_prefix", "discovery_prefix"):
            value = getattr(self, name)
            if value is not None and (problem := prefix_problem(value)):
                raise FieldError(problem, field=name)
        if self.password is not None and self.password_file is not None:
            raise FieldError("set password or password_file, not both", field="password_file")
        secret, where = self._secret()
        if secret is not None and self.username is None:
            raise FieldError(f"required with a password (from {where})", field="username")
        object.__setattr__(self, "secret", secret)

    def _secret(self) -> tuple[str | None, str]:
        if self.password is not None:
            return self.password, "password"
        if self.password_file is not None:
            return _read_secret(Path(self.password_file), "password_file"), "password_file"
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials and (path := Path(credentials) / CREDENTIAL).is_file():
            return _read_secret(path, "password"), str(path)
        return None, ""


def _read_secret(path: Path, key: str) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise FieldError(f"cannot read {path}: {why}", field=key) from exc
    if not lines or not lines[0]:
        raise FieldError(f"{path} is empty (the password is its first line)", field=key)
    return lines[0]


class MqttPlugin:
    """The running plugin: a sink (transcripts, turns, the state) and an input (commands).

    Attributes:
        figures: what it has done (``_mqtt_delivery.Figures``), once running.
    """

    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self.delivery: Delivery | None = None
        """The outbox side, once running (benchmarks set its ``on_ack``)."""
        self._figures: Figures | None = None

    @property
    def figures(self) -> Figures:
        if self._figures is None:
            from ._mqtt_delivery import Figures

            self._figures = Figures()
        return self._figures

    async def run(
        self, daemon: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from voiced.errors import PluginError

        try:
            from ._mqtt_client import Bridge
        except ImportError as exc:
            raise PluginError(f"mqtt: paho-mqtt is not installed ({INSTALL_HINT}): {exc}") from exc
        from ._mqtt_outbox import FILE_NAME, Outbox
        from ._mqtt_session import Session

        config = self.config
        outbox = Outbox(
            daemon.state_dir / FILE_NAME,
            max_rows=config.outbox_max,
            max_age_s=config.outbox_max_age_s,
        )
        try:
            dropped = await trio.to_thread.run_sync(outbox.open)
        except Exception as exc:
            raise PluginError(f"mqtt: cannot open the outbox {outbox.path}: {exc}") from exc
        try:
            session = Session(config, daemon, outbox, self.figures)
            self.delivery = session.delivery
            session.delivery.opened(dropped)
            try:
                bridge = Bridge(session.broker_settings(), session)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise PluginError(f"mqtt: plugins.mqtt.tls: {exc}") from exc
            await session.run(bridge, task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(outbox.close)


@hookimpl
def voiced_plugin() -> PluginSpec:
    return PluginSpec(
        "mqtt",
        "transcripts to an MQTT broker (outbox), commands from it, Home Assistant discovery",
        MqttConfig,
        MqttPlugin,
        input=True,
        sink=True,  # stopped after the pipeline drains: the last transcripts reach the outbox
    )
