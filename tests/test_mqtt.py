"""The ``mqtt`` plugin against a real mosquitto (started per test on a free port, killed by PID)
and a real paho subscriber (``tests/mqttbroker.py``).

Nothing waits on time: each step waits on what shows it happened (a message at the subscriber,
the plugin's own counters, a line from a subprocess). The plugin is driven by ``FakeDaemon``, by
the real daemon in-process (against the simulator), and, for the crash test, by a small program
in its own process that is SIGKILLed (``_driver`` below). Deadlines are only safety nets.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.conftest import RunningSim, free_port
from tests.mqttbroker import Broker, Subscriber, durable_subscriber
from voiced.actions import Verdict
from voiced.config import load_config
from voiced.envelope import envelope
from voiced.errors import ConfigError
from voiced.events import DaemonState, PluginChanged, Transcript, TurnEnded
from voiced.plugins import Plugins
from voiced.testing import FakeDaemon
from voiced.turn import Command, Outcome, State, TurnCommand
from voiced_plugins._mqtt_commands import Invalid, Request, parse
from voiced_plugins._mqtt_delivery import Figures
from voiced_plugins._mqtt_discovery import configs
from voiced_plugins._mqtt_outbox import FILE_NAME, Outbox
from voiced_plugins._mqtt_session import Session
from voiced_plugins._mqtt_topics import Topics
from voiced_plugins.mqtt import MqttConfig, MqttPlugin, TlsConfig

REPO = Path(__file__).resolve().parent.parent
DEVICE = "test-kiosk"
T = Topics(f"voiced/{DEVICE}")
TIMEOUT = 30  # a safety net: every wait below is on an event


def settings(port: int, **more: Any) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, reconnect_max_s=1.0, **more)


def transcripts(n: int, start: int = 1) -> list[Transcript]:
    """Final transcripts with known ids (``t001``, ...), user and agent in turn."""
    return [
        Transcript(
            "user" if i % 2 else "agent", f"words number {i}, déjà", (i + 1) // 2,
            f"item_{i}", time.time(), id=f"t{i:03d}",
        )
        for i in range(start, start + n)
    ]  # fmt: skip


def ids(events: list[Transcript]) -> list[str]:
    return [e.id for e in events]


class Arrivals:
    """Event ids in the order they first arrived; a subscriber drops resends by id."""

    def __init__(self) -> None:
        self.order: list[str] = []

    async def until(self, subscriber: Subscriber, topic: str, count: int) -> list[str]:
        while len(self.order) < count:
            event_id = (await subscriber.next(topic)).json()["id"]
            if event_id not in self.order:
                self.order.append(event_id)
        return self.order


async def connected(plugin: MqttPlugin) -> None:
    await plugin.figures.until(lambda f: f.connected)


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Makes brokers (not started); each is killed at the end."""
    made: list[Broker] = []

    def make(**options: Any) -> Broker:
        broker = Broker(tmp_path / f"broker{len(made)}", free_port(), **options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.kill()


@pytest.fixture
def broker(brokers: Callable[..., Broker]) -> Broker:
    broker = brokers()
    broker.start()
    return broker


@pytest.fixture
def fake(tmp_path: Path) -> FakeDaemon:
    return FakeDaemon(name="mqtt", device_id=DEVICE, state_dir=tmp_path / "state")


# ---------------------------------------------------------------------- the sink


async def test_transcripts_arrive_as_envelopes_in_order(broker: Broker, fake: FakeDaemon) -> None:
    plugin = MqttPlugin(settings(broker.port))
    said = transcripts(20)
    delta = Transcript("agent", "par", 10, "item_x", time.time(), final=False)
    turn = TurnEnded(10, Outcome.COMPLETED, {"commit": 12.5})
    with trio.fail_after(TIMEOUT):
        async with (
            Subscriber(broker.port, [T.transcript, T.turn]) as sub,
            fake.running(plugin, input=True),
        ):
            await connected(plugin)
            fake.publish(delta)  # a live piece of a transcript: not sent
            for event in said:
                fake.publish(event)
            fake.publish(turn)
            got = [await sub.next() for _ in range(len(said) + 1)]
            await plugin.figures.until(lambda f: f.acked == len(said) + 1 and f.waiting == 0)
    (subscription,) = fake.subscriptions
    assert subscription.durable
    sent = [m for m in got if m.topic == T.transcript]
    assert [m.json() for m in sent] == [envelope(e, DEVICE) for e in said]
    assert {m.qos for m in got} == {1}
    (ended,) = [m for m in got if m.topic == T.turn]
    assert ended.json() == envelope(turn, DEVICE)


async def test_state_and_availability_are_retained(broker: Broker, fake: FakeDaemon) -> None:
    plugin = MqttPlugin(settings(broker.port))
    listening = DaemonState("listening")
    with trio.fail_after(TIMEOUT):
        async with Subscriber(broker.port, [T.state]) as live, fake.running(plugin, input=True):
            await connected(plugin)
            assert (await live.next()).json()["state"] == "idle"  # what the daemon showed
            fake.publish(listening)
            assert (await live.next()).json() == envelope(listening, DEVICE)
            async with Subscriber(broker.port, [T.state, T.availability]) as late:
                first = {m.topic: m for m in [await late.next(), await late.next()]}
            assert first[T.state].retain
            assert first[T.state].json() == envelope(listening, DEVICE)
            assert (first[T.availability].payload, first[T.availability].retain) == (
                b"online",
                True,
            )
        # Stopped cleanly: it said so (the will is for when it dies).
        async with Subscriber(broker.port, [T.availability]) as after:
            gone = await after.next()
    assert (gone.payload, gone.retain) == (b"offline", True)


async def test_broker_killed_mid_conversation_every_transcript_arrives_in_order(
    broker: Broker, fake: FakeDaemon
) -> None:
    plugin = MqttPlugin(settings(broker.port))
    said = transcripts(12)
    arrivals = Arrivals()
    with trio.fail_after(TIMEOUT):
        sub = await durable_subscriber(broker, [T.transcript], "killed-broker-test")
        async with sub, fake.running(plugin, input=True):
            await connected(plugin)
            for event in said[:4]:
                fake.publish(event)
            assert await arrivals.until(sub, T.transcript, 4) == ids(said[:4])

            await trio.to_thread.run_sync(broker.kill)
            for event in said[4:6]:  # perhaps handed to the client before it noticed
                fake.publish(event)
            await plugin.figures.until(lambda f: not f.connected)
            assert f"127.0.0.1:{broker.port}" in (fake.reports[-1] or "")  # in /status
            for event in said[6:]:
                fake.publish(event)
            await plugin.figures.until(lambda f: f.stored == len(said))

            await trio.to_thread.run_sync(broker.start)
            assert await arrivals.until(sub, T.transcript, len(said)) == ids(said)
            await plugin.figures.until(lambda f: f.acked == len(said) and f.waiting == 0)
            assert fake.reports[-1] is None  # healthy again


async def test_daemon_killed_while_broker_down_delivers_after_restart(
    broker: Broker, tmp_path: Path
) -> None:
    """A real process runs the plugin; SIGKILL it while the broker is down, restart both."""
    said = transcripts(6)
    state = tmp_path / "driver-state"
    arrivals = Arrivals()
    with trio.fail_after(TIMEOUT * 2):
        sub = await durable_subscriber(broker, [T.transcript, T.availability], "crash-test")
        async with sub:
            first = await Driver.start(broker.port, state)
            assert (await sub.next(T.availability)).payload == b"online"
            for event in said[:2]:
                await first.publish(event)
            assert await arrivals.until(sub, T.transcript, 2) == ids(said[:2])
            await first.kill()  # connected: the broker says so with the last will
            will = await sub.next(T.availability)
            assert will.payload == b"offline"

            second = await Driver.start(broker.port, state)
            assert (await sub.next(T.availability)).payload == b"online"
            await trio.to_thread.run_sync(broker.kill)
            for event in said[2:]:
                await second.publish(event)  # returns once it is in the outbox
            await second.kill()

            await trio.to_thread.run_sync(broker.start)
            third = await Driver.start(broker.port, state)
            assert await arrivals.until(sub, T.transcript, len(said)) == ids(said)
            await third.kill()


class Driver:
    """``_driver`` in its own process: publishes what it is told, says when it is stored."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    @classmethod
    async def start(cls, port: int, state: Path) -> Driver:
        code = "from tests.test_mqtt import _driver; _driver()"
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", code, str(port), str(state)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        driver = cls(process)
        assert await driver.line() == "ready"
        return driver

    async def line(self) -> str:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"the driver ended (exit {await self.process.wait()})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def publish(self, event: Transcript) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(f"{event.id} {event.role} {event.text}\n".encode())
        assert await self.line() == f"stored {event.id}"

    async def kill(self) -> None:
        self.process.kill()  # SIGKILL: no goodbye, nothing flushed
        await self.process.wait()


def _driver() -> None:
    """The crash test's stand-in daemon: ``python -c ... PORT STATE_DIR``. Reads ``ID ROLE TEXT``
    lines, publishes each as a final transcript, prints ``stored ID`` once it is in the outbox."""
    port, state = int(sys.argv[1]), Path(sys.argv[2])

    async def drive() -> None:
        fake = FakeDaemon(name="mqtt", device_id=DEVICE, state_dir=state)
        plugin = MqttPlugin(settings(port))
        async with fake.running(plugin, input=True):
            print("ready", flush=True)
            count = 0
            async for line in trio.wrap_file(sys.stdin):
                event_id, role, text = line.rstrip("\n").split(" ", 2)
                fake.publish(Transcript(role, text, 1, "item", time.time(), id=event_id))
                count += 1
                await plugin.figures.until(lambda f: f.stored >= count)  # noqa: B023
                print(f"stored {event_id}", flush=True)

    trio.run(drive)


async def test_outbox_bound_drops_the_oldest_and_counts(
    brokers: Callable[..., Broker], fake: FakeDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    broker = brokers()
    broker.start()
    plugin = MqttPlugin(settings(broker.port, outbox_max=3))
    said = transcripts(7)
    with trio.fail_after(TIMEOUT):
        sub = await durable_subscriber(broker, [T.transcript], "bound-test")
        await trio.to_thread.run_sync(broker.kill)  # the broker is away from the start
        async with fake.running(plugin, input=True):
            for event in said[:5]:
                fake.publish(event)
            await plugin.figures.until(lambda f: f.stored == 5)
            assert (plugin.figures.dropped_full, plugin.figures.waiting) == (2, 3)
            for event in said[5:]:
                fake.publish(event)
            await plugin.figures.until(lambda f: f.stored == 7)
            assert (plugin.figures.dropped_full, plugin.figures.waiting) == (4, 3)
            report = fake.reports[-1] or ""
            assert "4 event(s) dropped from the outbox undelivered" in report
            assert "more than outbox_max (3)" in report
            dropping = [r for r in caplog.records if "dropped from the outbox" in r.getMessage()]
            assert len(dropping) == 1  # logged once

            await trio.to_thread.run_sync(broker.start)
            async with sub:
                arrived = await Arrivals().until(sub, T.transcript, 3)
            assert arrived == ids(said[4:])  # the newest three


async def test_outbox_drops_what_is_too_old(tmp_path: Path, fake: FakeDaemon) -> None:
    path = tmp_path / "state" / FILE_NAME
    old = Outbox(path, max_rows=10, max_age_s=3600)
    old.open()
    old.add([("recent", "transcript", b"{}")])
    old.add([("ancient", "transcript", b"{}")], now=time.time() - 7200)  # (a clock set back)
    assert old.count == 2
    old.close()
    plugin = MqttPlugin(settings(free_port(), outbox_max_age_s=3600))
    with trio.fail_after(TIMEOUT):
        async with fake.running(plugin, input=True):
            await plugin.figures.until(lambda f: f.dropped_old == 1)
            assert plugin.figures.waiting == 1
    assert "1 older than outbox_max_age_s (3600 s)" in " ".join(r or "" for r in fake.reports)


def test_outbox_keeps_order_across_reopening_and_bounds(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "outbox.sqlite3"
    box = Outbox(path, max_rows=3, max_age_s=60)
    assert box.open(now=1000) == 0
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    added = box.add([(f"e{i}", "transcript", b"x") for i in range(4)], now=1000)
    assert (added.dropped_full, box.count) == (1, 3)
    assert [r.event_id for r in box.after(0, 10)] == ["e1", "e2", "e3"]
    box.add([("e4", "turn", b"y")], now=1030)
    assert [r.event_id for r in box.after(0, 10)] == ["e2", "e3", "e4"]  # e1: the bound
    assert box.prune(now=1061) == 2  # stored at 1000: more than 60 s ago
    (left,) = box.after(0, 10)
    assert (left.event_id, left.kind, left.payload) == ("e4", "turn", b"y")
    last = left.seq
    assert box.remove([left.seq, left.seq + 100]) == 1
    box.close()
    again = Outbox(path, max_rows=3, max_age_s=60)
    assert (again.open(now=1061), again.count) == (0, 0)
    (row,) = again.add([("e5", "transcript", b"z")], now=1062).rows
    assert row.seq > last  # numbers are never reused: order survives restarts
    again.close()


def test_a_corrupt_outbox_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path, max_rows=3, max_age_s=60)
    box.open()
    assert box.count == 0
    aside = [p.name.rsplit("-", 1)[0] for p in tmp_path.glob("*.corrupt-*")]
    assert aside == [f"{FILE_NAME}.corrupt"]
    assert "is not a database" in caplog.text
    box.close()


async def test_a_failing_outbox_is_reported_and_retried(
    broker: Broker, fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that is full for a while (a stand-in: as root here, nothing refuses a write) is
    shown in /status; the events wait in memory and go out, in order, once it can be written."""
    plugin = MqttPlugin(settings(broker.port))
    said = transcripts(3)
    full = True
    with trio.fail_after(TIMEOUT):
        async with Subscriber(broker.port, [T.transcript]) as sub, fake.running(plugin, input=True):
            await connected(plugin)
            outbox = plugin.delivery.outbox
            real_add = outbox.add

            def add(*args: Any, **kwargs: Any) -> Any:
                if full:
                    raise sqlite3.OperationalError("database or disk is full")
                return real_add(*args, **kwargs)

            monkeypatch.setattr(outbox, "add", add)
            problems = fake.subscribe(PluginChanged)
            for event in said:
                fake.publish(event)
            problem = await problems.receive()
            assert isinstance(problem, PluginChanged)
            assert "database or disk is full" in (problem.error or "")
            full = False
            assert await Arrivals().until(sub, T.transcript, 3) == ids(said)
            await plugin.figures.until(lambda f: f.acked == 3 and f.waiting == 0)
            assert fake.reports[-1] is None


async def test_a_dead_broker_never_stalls_the_daemon(tmp_path: Path) -> None:
    """A broker that accepts the connection and never answers: the sink takes every transcript
    into the outbox at once, nothing is dropped, and stopping does not hang."""
    fake = FakeDaemon(name="mqtt", device_id=DEVICE, state_dir=tmp_path / "state", sink_buffer=4)
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    plugin = MqttPlugin(settings(port))
    held: list[trio.SocketStream] = []
    accepted = trio.Event()

    async def accept_and_ignore() -> None:
        while True:
            held.append(await listener.accept())
            accepted.set()

    said = transcripts(300)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_and_ignore)
            async with fake.running(plugin, input=True):
                await accepted.wait()
                for event in said:
                    fake.publish(event)  # never waits
                await plugin.figures.until(lambda f: f.stored == len(said))
                assert (plugin.figures.connected, plugin.figures.sent) == (False, 0)
                assert fake.status()["sinks"]["mqtt"]["dropped"] == 0
            nursery.cancel_scope.cancel()
    for stream in held:
        await stream.aclose()
    await listener.aclose()


# ---------------------------------------------------------------------- commands


async def test_commands_reach_the_daemon(broker: Broker, fake: FakeDaemon) -> None:
    plugin = MqttPlugin(settings(broker.port))
    with trio.fail_after(TIMEOUT):
        async with (
            Subscriber(broker.port, [T.result, T.volume]) as sub,
            fake.running(plugin, input=True),
        ):
            await connected(plugin)
            await sub.publish(T.cmd, "start")
            start = await fake.next_command()
            assert start == TurnCommand(Command.START, "mqtt")
            assert start.on_verdict is not None
            start.on_verdict(Verdict("accepted", "listening"))
            result = (await sub.next(T.result)).json()
            assert result == {"command": "start", "verdict": "accepted", "reason": "listening"}

            await sub.publish(T.cmd, '{"command": "commit", "reply": false, "id": "r1"}')
            commit = await fake.next_command()
            assert commit == TurnCommand(Command.COMMIT, "mqtt", reply=False)
            assert commit.on_verdict is not None
            commit.on_verdict(Verdict("conflict", "not listening"))
            result = (await sub.next(T.result)).json()
            assert result == {
                "command": "commit", "verdict": "conflict", "reason": "not listening", "id": "r1"
            }  # fmt: skip

            await sub.publish(T.cmd, "Toggle")
            assert await fake.next_command() == TurnCommand(Command.TOGGLE, "mqtt")

            await sub.publish(T.cmd, "volume 0.4")
            assert (await sub.next(T.result)).json()["verdict"] == "accepted"
            assert fake.volume == 0.4
            volume = await sub.next(T.volume)
            assert volume.payload == b"0.4"
            await sub.publish(T.cmd, '{"volume": 1.5}')
            refused = (await sub.next(T.result)).json()
            assert (refused["command"], refused["verdict"]) == ("volume", "invalid")
            assert "between 0.0 and 1.0" in refused["reason"]
            await sub.publish(T.cmd, "explode")
            invalid = (await sub.next(T.result)).json()
            assert (invalid["command"], invalid["verdict"]) == (None, "invalid")
            assert fake.volume == 0.4
    assert fake.commands_received == [
        TurnCommand(Command.START, "mqtt"),
        TurnCommand(Command.COMMIT, "mqtt", reply=False),
        TurnCommand(Command.TOGGLE, "mqtt"),
    ]
    async with Subscriber(broker.port, [T.volume]) as late:  # the volume is retained
        assert (await late.next()).payload == b"0.4"


@pytest.mark.parametrize(
    ("payload", "request_"),
    [
        (b"start", Request(Command.START)),
        (b" CANCEL\n", Request(Command.CANCEL)),
        (b'{"command": "toggle"}', Request(Command.TOGGLE)),
        (
            b'{"command": "commit", "reply": false, "id": 3}',
            Request(Command.COMMIT, reply=False, id=3),
        ),
        (b"volume 0.25", Request(volume=0.25)),
        (b'{"volume": 1}', Request(volume=1.0)),
    ],
)
def test_command_payloads(payload: bytes, request_: Request) -> None:
    assert parse(payload) == request_


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "unknown command"),
        (b"start now", "unknown command"),
        (b"volume loud", "not a number"),
        (b"{nope", "not valid JSON"),
        (b'{"command": "jump"}', "command must be one of"),
        (b'{"command": "commit", "reply": "no"}', "reply must be true or false"),
        (b'{"command": "start", "when": 1}', "unknown key(s): when"),
        (b'{"volume": true}', "volume must be a number"),
        (b"\xff", "not UTF-8"),
    ],
)
def test_bad_command_payloads(payload: bytes, why: str) -> None:
    with pytest.raises(Invalid, match=why.replace("(", r"\(").replace(")", r"\)")):
        parse(payload)


async def test_a_command_over_mqtt_starts_a_turn_in_the_real_daemon(
    broker: Broker, sim: RunningSim, tmp_path: Path
) -> None:
    from tests.test_daemon import daemon, next_state

    plugins = f"  mqtt: {{host: 127.0.0.1, port: {broker.port}, reconnect_max_s: 1}}\n"
    with trio.fail_after(TIMEOUT):
        async with (
            Subscriber(broker.port, [T.result, T.state, T.availability]) as sub,
            daemon(tmp_path, sim.url, plugins=plugins) as (pipe, _http, events),
        ):
            await pipe.ready.wait()
            assert (await sub.next(T.availability)).payload == b"online"
            await sub.publish(T.cmd, "start")
            assert (await sub.next(T.result)).json() == {
                "command": "start", "verdict": "accepted", "reason": "listening"
            }  # fmt: skip
            assert await next_state(events) is State.LISTENING
            while (await sub.next(T.state)).json()["state"] != "listening":
                pass
            await sub.publish(T.cmd, '{"command": "cancel", "id": 7}')
            assert (await sub.next(T.result)).json()["id"] == 7
            assert await next_state(events) is State.IDLE
    assert (tmp_path / "state" / FILE_NAME).exists()  # the outbox is in the state directory


# ---------------------------------------------------------------------- Home Assistant

REQUIRED = {
    "button": {"command_topic"},
    "sensor": {"state_topic"},
    "number": {"command_topic", "state_topic", "min", "max", "step"},
    "binary_sensor": {"state_topic", "payload_on", "payload_off", "device_class"},
}


async def test_home_assistant_discovery(broker: Broker, fake: FakeDaemon) -> None:
    plugin = MqttPlugin(settings(broker.port, discovery=True))
    with trio.fail_after(TIMEOUT):
        async with fake.running(plugin, input=True):
            await connected(plugin)
            async with Subscriber(broker.port, ["homeassistant/#"]) as sub:
                got = [await sub.next() for _ in range(6)]
    assert all(m.retain for m in got)
    found = {tuple(m.topic.split("/")[1:]): m.json() for m in got}
    assert set(found) == {
        ("button", DEVICE, "talk", "config"),
        ("sensor", DEVICE, "state", "config"),
        ("sensor", DEVICE, "last_user", "config"),
        ("sensor", DEVICE, "last_agent", "config"),
        ("number", DEVICE, "volume", "config"),
        ("binary_sensor", DEVICE, "connected", "config"),
    }
    for (component, *_), config in found.items():
        assert REQUIRED[component] <= set(config), component
        assert config["availability_topic"] == T.availability
        assert (config["payload_available"], config["payload_not_available"]) == (
            "online",
            "offline",
        )
        assert config["device"]["identifiers"] == [f"voiced_{DEVICE}"]
    assert len({c["unique_id"] for c in found.values()}) == 6
    button = found[("button", DEVICE, "talk", "config")]
    assert (button["command_topic"], button["payload_press"]) == (T.cmd, "toggle")
    state = found[("sensor", DEVICE, "state", "config")]
    assert (state["state_topic"], state["value_template"]) == (T.state, "{{ value_json.state }}")
    number = found[("number", DEVICE, "volume", "config")]
    assert (number["command_topic"], number["state_topic"]) == (T.cmd, T.volume)
    assert (number["min"], number["max"], number["step"]) == (0.0, 1.0, 0.05)
    assert parse(number["command_template"].replace("{{ value }}", "0.3").encode()) == Request(
        volume=0.3
    )
    connectivity = found[("binary_sensor", DEVICE, "connected", "config")]
    assert connectivity["device_class"] == "connectivity"
    assert (connectivity["state_topic"], connectivity["payload_on"]) == (T.availability, "online")
    assert connectivity["payload_off"] == "offline"
    users = found[("sensor", DEVICE, "last_user", "config")]
    assert users["state_topic"] == T.last("user")


def test_discovery_ids_are_safe_for_home_assistant() -> None:
    (topic, config), *_ = configs("ha", "Kiosk 3/Hall", T, qos=1, version="0")
    assert topic == "ha/button/Kiosk_3_Hall/talk/config"
    assert config["unique_id"] == "voiced_Kiosk_3_Hall_talk"


async def test_last_transcripts_are_retained_for_home_assistant(
    broker: Broker, fake: FakeDaemon
) -> None:
    plugin = MqttPlugin(settings(broker.port))
    said = transcripts(4)
    with trio.fail_after(TIMEOUT):
        async with fake.running(plugin, input=True):
            await connected(plugin)
            for event in said:
                fake.publish(event)
            await plugin.figures.until(lambda f: f.acked == len(said))
            async with Subscriber(broker.port, [T.last("user"), T.last("agent")]) as sub:
                last = {m.topic: m for m in [await sub.next(), await sub.next()]}
    assert last[T.last("user")].json()["id"] == said[2].id
    assert last[T.last("agent")].json()["id"] == said[3].id
    assert all(m.retain for m in last.values())


# ---------------------------------------------------------------------- security


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "mosquitto.passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(path), "kiosk", "s3cret-Pass-7788"], check=True
    )
    return path


async def test_password_never_reaches_logs_or_status(
    brokers: Callable[..., Broker],
    password_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="voiced.mqtt.paho")
    broker = brokers(password_file=password_file)
    broker.start()
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-Pass-7788\n")
    good = settings(broker.port, username="kiosk", password_file=str(secret))
    bad = settings(broker.port, username="kiosk", password="wrong-Pass-1122")
    right = FakeDaemon(name="mqtt", device_id=DEVICE, state_dir=tmp_path / "a")
    wrong = FakeDaemon(name="mqtt", device_id="other", state_dir=tmp_path / "b")
    with trio.fail_after(TIMEOUT):
        async with (
            Subscriber(
                broker.port, [T.availability], username="kiosk", password="s3cret-Pass-7788"
            ) as sub,
            right.running(MqttPlugin(good), input=True),
        ):
            assert (await sub.next()).payload == b"online"
        problems = wrong.subscribe(PluginChanged)
        async with wrong.running(MqttPlugin(bad), input=True):
            refused = await problems.receive()
    assert isinstance(refused, PluginChanged)
    assert refused.error is not None
    assert "not authorized" in refused.error.lower()
    shown = [
        caplog.text, repr(good), repr(bad), str(right.reports), str(wrong.reports),
        json.dumps(right.status()), json.dumps(wrong.status()), "\n".join(broker.lines),
    ]  # fmt: skip
    for text in shown:
        assert "s3cret-Pass-7788" not in text
        assert "wrong-Pass-1122" not in text


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "mqtt_password").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert MqttConfig(username="k").secret == "from-systemd"
    assert MqttConfig(username="k", password="inline").secret == "inline"
    (tmp_path / "pw").write_text("from-file\nignored\n")
    assert MqttConfig(username="k", password_file=str(tmp_path / "pw")).secret == "from-file"
    assert "from-systemd" not in repr(MqttConfig(username="k"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert MqttConfig().secret is None


@pytest.mark.parametrize(
    ("section", "error"),
    [
        ("{qos: 3}", "plugins.mqtt.qos: must be 0, 1 or 2"),
        ("{port: 0}", "plugins.mqtt.port: must be between 1 and 65535"),
        ("{topic_prefix: 'a/#'}", "plugins.mqtt.topic_prefix: must not contain the wildcards"),
        ("{topic_prefix: '/a'}", "plugins.mqtt.topic_prefix: must not start or end with /"),
        ("{password: x}", "plugins.mqtt.username: required with a password"),
        (
            "{username: u, password: x, password_file: f}",
            "plugins.mqtt.password_file: set password",
        ),
        (
            "{username: u, password_file: /nonexistent/pw}",
            "plugins.mqtt.password_file: cannot read",
        ),
        ("{tls: {key: k.pem}}", "plugins.mqtt.tls.key: needs cert"),
        ("{tls: yes please}", "plugins.mqtt.tls: expected a boolean or a mapping"),
        ("{outbox_max: 0}", "plugins.mqtt.outbox_max: must be at least 1"),
        ("{hots: x}", "plugins.mqtt.hots: unknown key .* did you mean 'host'"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, section: str, error: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"plugins:\n  mqtt: {section}\n")
    with pytest.raises(ConfigError, match=error):
        Plugins(load_config(path)).create_enabled()


def test_plugin_is_listed_as_an_input(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("plugins:\n  mqtt: {host: broker.local, tls: true}\n")
    (loaded,) = Plugins(load_config(path)).create_enabled()
    # An input that is stopped with the sinks, after the pipeline drains (its outbox).
    assert (loaded.spec.name, loaded.spec.input, loaded.spec.sink) == ("mqtt", True, True)
    assert isinstance(loaded.plugin, MqttPlugin)
    config = loaded.plugin.config
    fake = FakeDaemon(device_id="hall 2", state_dir=tmp_path)
    outbox = Outbox(tmp_path / FILE_NAME, max_rows=1, max_age_s=1)
    broker = Session(config, fake, outbox, Figures()).broker_settings()
    assert (broker.host, broker.port, broker.client_id) == ("broker.local", 8883, "voiced-hall_2")
    assert broker.tls is not None
    assert broker.tls.ca is None  # the system's CAs
    assert broker.availability == "voiced/hall 2/availability"
    assert broker.subscriptions == ("voiced/hall 2/cmd",)


async def test_tls_with_a_client_certificate(
    brokers: Callable[..., Broker], tmp_path: Path, fake: FakeDaemon
) -> None:
    certs = make_certs(tmp_path / "certs")
    tls_port = free_port()
    broker = brokers(
        extra=f"listener {tls_port} 127.0.0.1\ncafile {certs['ca']}\n"
        f"certfile {certs['server']}\nkeyfile {certs['server_key']}\nrequire_certificate true\n"
    )
    broker.start()
    tls = TlsConfig(ca=str(certs["ca"]), cert=str(certs["client"]), key=str(certs["client_key"]))
    plugin = MqttPlugin(settings(tls_port, tls=tls))
    stranger = TlsConfig(ca=str(certs["other_ca"]))
    doubter = FakeDaemon(name="mqtt", device_id="doubter", state_dir=tmp_path / "d")
    with trio.fail_after(TIMEOUT):
        async with (
            Subscriber(broker.port, [T.availability]) as sub,
            fake.running(plugin, input=True),
        ):
            assert (await sub.next()).payload == b"online"
        problems = doubter.subscribe(PluginChanged)
        async with doubter.running(MqttPlugin(settings(tls_port, tls=stranger)), input=True):
            refused = await problems.receive()
    assert isinstance(refused, PluginChanged)
    assert "CERTIFICATE_VERIFY_FAILED" in (refused.error or "")


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed, and an
    unrelated CA (openssl, EC keys: fast)."""
    folder.mkdir()
    p = {name: folder / f"{name}.pem" for name in (
        "ca", "ca_key", "server", "server_key", "client", "client_key", "other_ca", "other_key",
    )}  # fmt: skip
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    for ca, key, name in (("ca", "ca_key", "test-ca"), ("other_ca", "other_key", "other-ca")):
        run("req", "-x509", *ec, "-keyout", str(p[key]), "-out", str(p[ca]), "-days", "2",
            "-subj", f"/CN={name}")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for cert, key, name in (
        ("server", "server_key", "localhost"),
        ("client", "client_key", "kiosk"),
    ):
        csr = folder / f"{cert}.csr"
        run("req", *ec, "-keyout", str(p[key]), "-out", str(csr), "-subj", f"/CN={name}")
        run("x509", "-req", "-in", str(csr), "-CA", str(p["ca"]), "-CAkey", str(p["ca_key"]),
            "-CAcreateserial", "-out", str(p[cert]), "-days", "2",
            "-extfile", str(folder / "san.ext"))  # fmt: skip
    return p
