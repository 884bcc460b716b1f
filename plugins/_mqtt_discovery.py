"""Home Assistant MQTT discovery: the kiosk as one device with six entities. Pure: no I/O.

Each entity's config is published retained on ``<discovery_prefix>/<component>/<node_id>/
<object_id>/config`` (``node_id``: the device id with anything but letters, digits, ``_`` and
``-`` turned into ``_``), again whenever the plugin connects and when Home Assistant says it
is back (``online`` on ``<discovery_prefix>/status``):

============= ================ ==================================================================
component     object_id        what
============= ================ ==================================================================
button        talk             press: ``toggle`` on ``<prefix>/cmd`` (start talking / send)
sensor        state            ``state`` of the retained ``<prefix>/state`` envelope (an enum)
sensor        last_user        text of the last user transcript (``<prefix>/last/user``)
sensor        last_agent       text of the last agent reply (``<prefix>/last/agent``)
number        volume           0 to 1 by 0.05: ``{"volume": x}`` on ``<prefix>/cmd``; state from
                               the retained ``<prefix>/volume``
binary_sensor connected        ``online``/``offline`` on ``<prefix>/availability`` (connectivity)
============= ================ ==================================================================

Every entity has a ``unique_id`` (``voiced_<node_id>_<object_id>``), the device (identifiers
``voiced_<node_id>``), and the availability topic with ``payload_available: online`` and
``payload_not_available: offline``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._mqtt_topics import Topics

STATES = ["idle", "listening", "thinking", "speaking", "error", "offline"]
TEXT_MAX = 255
"""Home Assistant keeps at most 255 characters of a state; the whole text is an attribute."""


def node_id(device_id: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", device_id) or "_"


def configs(
    discovery_prefix: str, device_id: str, topics: Topics, *, qos: int, version: str
) -> list[tuple[str, dict[str, Any]]]:
    """Every entity's config topic and payload."""
    node = node_id(device_id)
    device = {
        "identifiers": [f"voiced_{node}"],
        "name": f"voiced {device_id}",
        "manufacturer": "voiced",
        "model": "push-to-talk kiosk",
        "sw_version": version,
    }
    common = {
        "availability_topic": topics.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": qos,
        "device": device,
        "origin": {"name": "voiced", "sw_version": version},
    }
    text = f"{{{{ value_json.text[:{TEXT_MAX}] }}}}"
    entities: list[tuple[str, str, dict[str, Any]]] = [
        ("button", "talk", {
            "name": "Talk",
            "command_topic": topics.cmd,
            "payload_press": "toggle",
            "icon": "mdi:microphone",
        }),
        ("sensor", "state", {
            "name": "State",
            "state_topic": topics.state,
            "value_template": "{{ value_json.state }}",
            "json_attributes_topic": topics.state,
            "json_attributes_template": "{{ {'reason': value_json.reason} | tojson }}",
            "device_class": "enum",
            "options": STATES,
            "icon": "mdi:account-voice",
        }),
        ("sensor", "last_user", {
            "name": "Last user transcript",
            "state_topic": topics.last("user"),
            "value_template": text,
            "json_attributes_topic": topics.last("user"),
            "icon": "mdi:account",
        }),
        ("sensor", "last_agent", {
            "name": "Last agent transcript",
            "state_topic": topics.last("agent"),
            "value_template": text,
            "json_attributes_topic": topics.last("agent"),
            "icon": "mdi:robot",
        }),
        ("number", "volume", {
            "name": "Volume",
            "command_topic": topics.cmd,
            "command_template": '{"volume": {{ value }}}',
            "state_topic": topics.volume,
            "min": 0.0,
            "max": 1.0,
            "step": 0.05,
            "mode": "slider",
            "icon": "mdi:volume-high",
        }),
        ("binary_sensor", "connected", {
            "name": "Connected",
            "state_topic": topics.availability,
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
        }),
    ]  # fmt: skip
    return [
        (
            f"{discovery_prefix}/{component}/{node}/{object_id}/config",
            {**entity, "unique_id": f"voiced_{node}_{object_id}", **common},
        )
        for component, object_id, entity in entities
    ]


def messages(
    discovery_prefix: str, device_id: str, topics: Topics, *, qos: int, version: str
) -> list[tuple[str, bytes]]:
    """``configs`` as retained messages to publish."""
    return [
        (topic, json.dumps(payload, ensure_ascii=False).encode())
        for topic, payload in configs(discovery_prefix, device_id, topics, qos=qos, version=version)
    ]
