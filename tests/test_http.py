"""The ``http`` input: real hypercorn on loopback, spoken to by httpx (and by raw sockets where a
client must misbehave), driven through ``FakeDaemon``, and through the real daemon against the
simulator where the verdicts, the metrics and the events must be the daemon's own."""

from __future__ import annotations

import hmac
import json
import logging
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import voiced_plugins.http as http
from tests.conftest import RunningSim, config_file, free_port
from tests.test_daemon import daemon, elapse, next_event, next_state
from voiced.actions import Verdict
from voiced.cli import main
from voiced.config import load_config
from voiced.errors import ConfigError
from voiced.events import (
    ConnectionChanged,
    DeviceChanged,
    StateChanged,
    TokensUsed,
    Transcript,
    TurnEnded,
)
from voiced.plugins import Plugins
from voiced.protocol import Usage
from voiced.testing import FakeDaemon
from voiced.turn import Command, Outcome, State
from voiced.yamlconf import FieldError
from voiced_plugins.http import HttpConfig, HttpInput, RateLimit

TOKEN = "s3cret-token-0123456789abcdef"
USER = Transcript("user", "what time is it?", 1, "item_u1", 1_700_000_000.125)


@asynccontextmanager
async def served(
    fake: FakeDaemon | None = None, **settings: Any
) -> AsyncIterator[tuple[FakeDaemon, HttpInput, httpx.AsyncClient]]:
    """The plugin on a free loopback port, run by ``fake``, and a client for it (no timeouts:
    the tests' own ``fail_after`` bounds them, and they may run on a virtual clock)."""
    fake = fake or FakeDaemon(name="http")
    plugin = HttpInput(HttpConfig(**{"port": 0, **settings}))
    async with (
        fake.running(plugin, input=True),
        httpx.AsyncClient(base_url=plugin.bound[0], timeout=None) as client,
    ):
        yield fake, plugin, client


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a ``/metrics`` page, by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def port_of(plugin: HttpInput) -> int:
    return int(plugin.bound[0].rsplit(":", 1)[1])


ENVELOPE_HEAD = {"v", "id", "kind", "time", "device_id", "session_id"}


def body(data: dict[str, Any]) -> dict[str, Any]:
    """An event's data without the envelope's common fields (checked here, once): the fields
    that say what happened."""
    if "v" not in data:
        return data  # a state change: not an envelope
    assert data.keys() >= ENVELOPE_HEAD
    assert (data["v"], data["device_id"]) == (1, "test-kiosk")
    assert len(data["id"]) == 32
    return {k: v for k, v in data.items() if k not in ENVELOPE_HEAD}


def transcript_body(event: Transcript) -> dict[str, Any]:
    """What ``/events`` says of a transcript, besides the envelope's common fields."""
    return {
        "turn": event.turn, "role": event.role, "text": event.text, "final": event.final,
        "item_id": event.item_id, "response_id": event.response_id,
    }  # fmt: skip


class Events:
    """A ``/events`` stream read as (event name, JSON); comments come as (":", text)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> tuple[str, Any]:
        name = None
        async for line in self._lines:
            if line.startswith(":"):
                return ":", line[1:].strip()
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name is not None:
                return name, body(json.loads(line.removeprefix("data: ")))
        raise StopAsyncIteration

    async def rest(self) -> list[tuple[str, Any]]:
        """Everything until the stream ends (raising if it was cut off, not ended). Every
        test reads its httpx streams to their end: an abandoned one leaves httpx's generators
        to the garbage collector, which warns."""
        out = []
        while True:
            try:
                out.append(await self.next())
            except StopAsyncIteration:
                return out


@asynccontextmanager
async def events_of(client: httpx.AsyncClient) -> AsyncIterator[Events]:
    async with client.stream("GET", "/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        yield Events(response)


@asynccontextmanager
async def raw_events(plugin: HttpInput, rcvbuf: int | None = None) -> AsyncIterator[Any]:
    """A client of ``/events`` on a bare socket, open once the server counts it."""
    assert plugin.app is not None
    before = plugin.app.events_clients
    with trio.socket.socket() as sock:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port_of(plugin)))
        await sock.send(b"GET /events HTTP/1.1\r\nhost: x\r\n\r\n")
        while plugin.app.events_clients == before:
            await trio.testing.wait_all_tasks_blocked()
        yield sock


async def answer(fake: FakeDaemon, verdict: Verdict) -> None:
    """Give the next command the daemon would have given."""
    command = await fake.next_command()
    assert command.on_verdict is not None
    command.on_verdict(verdict)


# ---------------------------------------------------------------------- commands and verdicts


@pytest.mark.parametrize(
    ("verdict", "status", "body"),
    [
        (Verdict("accepted", "listening"), 202, {"accepted": "start", "reason": "listening"}),
        (Verdict("conflict", "already listening"), 409, {"refused": "start", "error": "already listening"}),
        (Verdict("unavailable", "not connected"), 503, {"refused": "start", "error": "not connected"}),
    ],
)  # fmt: skip
async def test_the_answer_is_the_verdict(verdict: Verdict, status: int, body: Any) -> None:
    with trio.fail_after(10):
        async with served() as (fake, _plugin, client), trio.open_nursery() as nursery:
            nursery.start_soon(answer, fake, verdict)
            response = await client.post("/start")
            assert (response.status_code, response.json()) == (status, body)
            (sent,) = fake.commands_received
            assert (sent.command, sent.source, sent.reply) == (Command.START, "http", True)


async def test_every_command_and_reply_false() -> None:
    with trio.fail_after(10):
        async with served() as (fake, _plugin, client):
            for command in Command:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(answer, fake, Verdict("accepted", "ok"))
                    response = await client.post(f"/{command}")
                assert response.json() == {"accepted": str(command), "reason": "ok"}
            good: list[dict[str, Any]] = [
                {"params": {"reply": "false"}},
                {"json": {"reply": False}},
            ]
            for how in good:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(answer, fake, Verdict("accepted", "ok"))
                    assert (await client.post("/commit", **how)).status_code == 202
            sent = fake.commands_received
            assert [c.command for c in sent] == [*Command, Command.COMMIT, Command.COMMIT]
            assert [c.reply for c in sent] == [True] * len(Command) + [False, False]
            bad: list[dict[str, Any]] = [
                {"params": {"reply": "maybe"}},
                {"json": {"reply": "no"}},
                {"json": [False]},
                {"content": b"not json"},
                {"params": {"reply": "true"}, "json": {"reply": False}},
            ]
            for how in bad:
                response = await client.post("/commit", **how)
                assert response.status_code == 400, how
                assert response.json()["error"]
            assert len(fake.commands_received) == len(sent)  # nothing sent for a bad request


async def test_no_verdict_in_time_is_503(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with served() as (fake, _plugin, client):
            started = trio.current_time()
            response = await client.post("/toggle")  # nobody gives a verdict: a wedged daemon
            assert (response.status_code, response.json()) == (
                503,
                {"refused": "toggle", "error": "the daemon gave no answer within 3 s"},
            )
            assert trio.current_time() - started == pytest.approx(http.VERDICT_TIMEOUT)
            assert len(fake.commands_received) == 1


async def test_commit_while_idle_is_409_through_the_daemon(sim: RunningSim, tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with daemon(tmp_path, sim.url) as (pipe, client, events):
            await pipe.ready.wait()
            for path, reason in (
                ("/commit", "nothing is being recorded (idle)"),
                ("/cancel", "nothing to cancel (idle)"),
            ):
                response = await client.post(path)
                assert (response.status_code, response.json()) == (
                    409,
                    {"refused": path[1:], "error": reason},
                )
            response = await client.post("/start")
            assert (response.status_code, response.json()) == (
                202,
                {"accepted": "start", "reason": "listening"},
            )
            assert await next_state(events) is State.LISTENING
            assert (await client.post("/start")).json() == {
                "refused": "start",
                "error": "already listening",
            }
            assert (await client.post("/cancel")).status_code == 202
            assert await next_state(events) is State.IDLE


async def test_start_while_not_ready_is_503_through_the_daemon(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    with trio.fail_after(20):
        async with daemon(tmp_path, url) as (_pipe, client, events):
            await next_event(events, ConnectionChanged)  # the first attempt failed
            response = await client.post("/start")
            assert response.status_code == 503
            assert response.json()["refused"] == "start"
            assert response.json()["error"].startswith(
                f"not connected to the realtime server (cannot reach {url}"
            )
            assert (await client.get("/status")).json()["state"] == "idle"


async def test_commit_without_reply_through_the_daemon(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(20):
        async with daemon(tmp_path, sim.url) as (pipe, client, events):
            await pipe.ready.wait()
            assert (await client.post("/start")).status_code == 202
            assert await next_state(events) is State.LISTENING
            await elapse(0.5)  # the person speaks
            response = await client.post("/commit?reply=false")
            assert response.status_code == 202
            seen = []
            async for event in events:
                if isinstance(event, TurnEnded):
                    assert event.outcome is Outcome.COMPLETED
                if isinstance(event, StateChanged):
                    seen.append(event.new)
                    break
            assert seen == [State.IDLE]  # straight back: no thinking, no answer
    (conn,) = sim.sim.connections
    types = [e["type"] for e in conn.received]
    assert "input_audio_buffer.commit" in types
    assert "response.create" not in types


# ---------------------------------------------------------------------- the other endpoints


async def test_unknown_paths_and_wrong_methods() -> None:
    with trio.fail_after(10):
        async with served() as (fake, _plugin, client):
            response = await client.get("/nope")
            assert response.status_code == 404
            assert response.json()["error"] == "no such endpoint: /nope"
            assert "POST /commit" in response.json()["endpoints"]
            assert "GET /metrics" in response.json()["endpoints"]
            for method, path, allow in (
                ("GET", "/start", "POST"),
                ("HEAD", "/commit", "POST"),
                ("PUT", "/volume", "GET, POST, HEAD"),
                ("POST", "/status", "GET, HEAD"),
                ("DELETE", "/events", "GET, HEAD"),
                ("POST", "/metrics", "GET, HEAD"),
            ):
                response = await client.request(method, path)
                assert (response.status_code, response.headers["allow"]) == (405, allow)
                if method != "HEAD":
                    assert response.json()["error"].startswith("use ")
    assert fake.commands_received == []


async def test_head_works_wherever_get_does() -> None:
    with trio.fail_after(10):
        async with served() as (fake, _plugin, client):
            fake.status_values["audio"] = {"output": {"volume": 0.5}}
            for path in ("/status", "/healthz", "/volume", "/metrics"):
                got, head = await client.get(path), await client.head(path)
                assert (head.status_code, head.content) == (got.status_code, b"")
                assert head.headers["content-type"] == got.headers["content-type"]
                if path != "/metrics":  # the metrics change between two scrapes
                    assert head.headers["content-length"] == str(len(got.content))
            head = await client.head("/events")
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert fake.subscriptions[1:] == []  # no stream was opened (the metrics' only)


async def test_status_and_health() -> None:
    with trio.fail_after(10):
        async with served() as (fake, _plugin, client):
            fake.status_values.update(turns=7, outcomes={"completed": 6, "too_short": 1})
            response = await client.get("/status")
            assert (response.status_code, response.json()) == (200, fake.status())
            assert response.headers["content-type"] == "application/json"
            response = await client.get("/healthz")
            assert (response.status_code, response.json()) == (200, {"ok": True, "error": None})
            fake.publish(ConnectionChanged(False, error="connection refused"))
            response = await client.get("/healthz")
            assert (response.status_code, response.json()) == (
                503,
                {"ok": False, "error": "connection refused"},
            )


async def test_volume() -> None:
    with trio.fail_after(10):
        async with served() as (fake, _plugin, client):
            response = await client.get("/volume")
            assert (response.status_code, response.json()) == (
                503,
                {"error": "the speaker reports no volume"},
            )
            fake.status_values["audio"] = {"output": {"name": "null", "volume": 0.7}}
            assert (await client.get("/volume")).json() == {"volume": 0.7}
            response = await client.post("/volume", json={"volume": 0.4})
            assert (response.status_code, response.json()) == (200, {"volume": 0.4})
            assert fake.volume == 0.4
            response = await client.post("/volume", json={"volume": 1})
            assert (response.status_code, response.text) == (200, '{"volume": 1.0}\n')
            assert isinstance(fake.volume, float)
            fake.volume = None
            for body in (b"", b"[0.4]", b"{}", b'{"volume": "0.4"}', b'{"volume": true}',
                         b'{"volume": 1.5}', b'{"volume": -0.1}'):  # fmt: skip
                response = await client.post("/volume", content=body)
                assert (response.status_code, response.json()) == (
                    400,
                    {"error": 'send {"volume": 0.0-1.0}'},
                ), body
            assert fake.volume is None


async def raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` as it is (never all of a body, here), then read until the server
    closes the connection."""
    with trio.socket.socket() as sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(request)
        answer = b""
        while chunk := await sock.recv(65536):
            answer += chunk
        return answer


async def test_oversized_body_is_413_and_not_read() -> None:
    with trio.fail_after(10):
        async with served() as (fake, plugin, client):
            body = b'{"volume": 0.5, "pad": "' + b"x" * http.MAX_BODY + b'"}'
            response = await client.post("/volume", content=body)
            assert (response.status_code, response.json()) == (
                413,
                {"error": f"the body is over {http.MAX_BODY} bytes"},
            )
            # A length over the limit is refused before any of the body is read, and a
            # chunked body as soon as it passes the limit: the server never waits for the
            # rest (which never comes here), and closes the connection.
            for request in (
                b"POST /commit HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n",
                b"POST /commit HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                + b"1000\r\n" + b"x" * 4096 + b"\r\n" + b"10\r\n" + b"y" * 16 + b"\r\n",
            ):  # fmt: skip
                answer = await raw_request(port_of(plugin), request)
                assert answer.startswith(b"HTTP/1.1 413 "), answer
            assert fake.volume is None
            assert fake.commands_received == []


# ---------------------------------------------------------------------- the token


def test_loopback_needs_no_token_and_anywhere_else_does() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert HttpConfig(host=host).bearer is None
    for host in ("0.0.0.0", "", "192.168.1.20", "kiosk.local", "::"):
        with pytest.raises(FieldError, match="not loopback") as caught:
            HttpConfig(host=host)
        assert caught.value.field == "token"
    assert HttpConfig(host="0.0.0.0", token=TOKEN).bearer == TOKEN
    assert TOKEN not in repr(HttpConfig(host="0.0.0.0", token=TOKEN))


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert HttpConfig(host="0.0.0.0", token_file=str(path)).bearer == TOKEN
    for kwargs, field, message in (
        ({"token_file": str(tmp_path / "none")}, "token_file", "cannot read .*none: No such file"),
        ({"token": TOKEN, "token_file": str(path)}, "token_file", "not both"),
        ({"token": "short"}, "token", "at least 16 characters"),
        ({"token": "with a space in it 123"}, "token", "no spaces"),
    ):
        with pytest.raises(FieldError, match=message) as caught:
            HttpConfig(**kwargs)
        assert caught.value.field == field
    path.write_text("\n")
    with pytest.raises(FieldError, match="is empty"):
        HttpConfig(token_file=str(path))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("  http:\n    host: 0.0.0.0\n", r"config.yaml:2: plugins.http.token: required when host is '0.0.0.0', which is not loopback"),
        ("  http:\n    port: 70000\n", r"config.yaml:3: plugins.http.port: must be between 0 and 65535"),
        ("  http:\n    port: -1\n", r"config.yaml:3: plugins.http.port: must be between 0 and 65535"),
        ("  http:\n    burst: 0\n", r"config.yaml:3: plugins.http.burst: must be at least 1"),
    ],
)  # fmt: skip
def test_check_config_rejects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, section: str, message: str
) -> None:
    path = config_file(tmp_path, "plugins:\n" + section)
    with pytest.raises(ConfigError, match=message):
        Plugins(load_config(path)).create_enabled()
    caplog.clear()
    assert main(["check-config", "--config", str(path)]) == 2
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.getMessage().startswith(str(path))


async def test_token_is_required_everywhere_but_healthz(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with trio.fail_after(10):
        async with served(host="0.0.0.0", token=TOKEN) as (fake, plugin, _):
            url = f"http://127.0.0.1:{port_of(plugin)}"
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/healthz")).status_code == 200
                for path in ("/status", "/metrics", "/events", "/volume", "/nope"):
                    response = await client.get(path)
                    assert response.status_code == 401, path
                    assert response.headers["www-authenticate"] == 'Bearer realm="voiced"'
                response = await client.post("/start", headers={"authorization": "Bearer nope"})
                assert response.status_code == 401
                assert response.headers["www-authenticate"] == (
                    'Bearer realm="voiced", error="invalid_token"'
                )
                assert compared[-1] == (b"nope", TOKEN.encode())
                basic = await client.get("/status", headers={"authorization": f"Basic {TOKEN}"})
                assert basic.status_code == 401
                client.headers["authorization"] = f"Bearer {TOKEN}"
                status = await client.get("/status")
                assert status.status_code == 200
                assert compared[-1] == (TOKEN.encode(), TOKEN.encode())
                assert (await client.get("/metrics")).status_code == 200
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(answer, fake, Verdict("accepted", "listening"))
                    assert (await client.post("/start")).status_code == 202
    assert TOKEN not in status.text
    assert TOKEN not in caplog.text
    assert "0.0.0.0" in caplog.text  # the log did say where it listens


# ---------------------------------------------------------------------- rate limit


def test_rate_limit_is_a_token_bucket_per_client() -> None:
    now = [0.0]
    limit = RateLimit(rate=20, burst=40, clock=lambda: now[0])
    assert [limit.take("a") for _ in range(40)] == [0.0] * 40
    assert limit.take("a") == pytest.approx(0.05)  # one more token in 1/20 s
    assert limit.take("b") == 0.0  # every client has its own bucket
    now[0] = 0.05
    assert limit.take("a") == 0.0
    assert limit.take("a") > 0
    now[0] = 100.0  # a long rest fills the bucket, never past its size
    assert [limit.take("a") for _ in range(41)].count(0.0) == 40
    assert RateLimit(rate=0, burst=1).take("a") == RateLimit(rate=0, burst=1).take("a") == 0.0


def test_rate_limit_forgets_idle_clients() -> None:
    now = [0.0]
    limit = RateLimit(rate=1, burst=1, clock=lambda: now[0])
    for n in range(http.RATE_CLIENTS):
        limit.take(f"10.0.{n // 256}.{n % 256}")
    now[0] = 5.0  # all of them are full again
    limit.take("newcomer")
    assert limit.take("10.0.0.0") == 0.0  # forgotten, so a full bucket again
    assert len(limit._buckets) <= 2


async def test_flood_gets_429(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with served(rate_limit=20, burst=40) as (_fake, _plugin, client):
            codes = [(await client.get(p)).status_code for p in ["/status"] * 38 + ["/healthz"]]
            assert codes == [200] * 39
            assert (await client.get("/metrics")).status_code == 200  # the 40th
            for path in ("/healthz", "/metrics", "/status", "/nope"):
                response = await client.get(path)
                assert response.status_code == 429, path
                assert response.headers["retry-after"] == "1"
                assert response.json()["retry_after_s"] == pytest.approx(0.05)
            # Another client (127.0.0.2 is loopback too) has a bucket of its own.
            transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
            async with httpx.AsyncClient(base_url=client.base_url, transport=transport) as other:
                assert (await other.get("/status")).status_code == 200
            await trio.sleep(0.075)  # one token and a half come back
            assert (await client.get("/status")).status_code == 200
            assert (await client.get("/status")).status_code == 429


# ---------------------------------------------------------------------- /metrics


def test_prometheus_client_is_imported_only_when_running() -> None:
    code = "import sys, voiced_plugins.http; print(sorted({'prometheus_client', 'hypercorn'} & {m.split('.')[0] for m in sys.modules}))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout == "[]\n", result.stderr


async def test_metrics_from_events_and_status(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with served() as (fake, _plugin, client):
            fake.status_values.update(
                audio={
                    "input": {"name": "mic", "dropped_frames": 3, "xruns": 2},
                    "output": {"name": "spk", "underruns": 5, "dropped_ms": 1500, "volume": 0.8},
                },
                connection={"connects": 4, "events_sent": 10, "events_received": 12},
            )
            fake.publish(TurnEnded(1, Outcome.COMPLETED, {"commit": 7.0, "first_audio": 300.0}))
            fake.publish(TurnEnded(2, Outcome.TOO_SHORT))
            fake.publish(TokensUsed(1, Usage(10, 200, 5, 30, 400)))
            fake.publish(TokensUsed(2, Usage(1, 2, 0, 3, 4)))
            fake.publish(ConnectionChanged(False))  # a renewal
            fake.publish(ConnectionChanged(False, error="gone"))  # a reconnect
            fake.publish(DeviceChanged("speaker", "spk", "unplugged"))
            await trio.sleep(12.5)
            response = await client.get("/metrics")
            assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            got = metrics(response.text)

    def one(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert one("voiced_turns_total", outcome="completed") == 1
    assert one("voiced_turns_total", outcome="too_short") == 1
    assert one("voiced_turns_total", outcome="lost") == 0
    assert one("voiced_latency_seconds_count", stage="commit") == 1
    assert one("voiced_latency_seconds_bucket", stage="commit", le="0.005") == 0
    assert one("voiced_latency_seconds_bucket", stage="commit", le="0.01") == 1
    assert one("voiced_latency_seconds_sum", stage="first_audio") == pytest.approx(0.3)
    assert one("voiced_latency_seconds_count", stage="first_play") == 0
    assert one("voiced_latency_seconds_bucket", stage="first_play", le="5.0") == 0
    tokens = {(d, k): one("voiced_tokens_total", direction=d, kind=k) for d, k in http._TOKEN_KINDS}
    assert tokens == {
        ("input", "text"): 11,
        ("input", "audio"): 202,
        ("input", "cached"): 5,
        ("output", "text"): 33,
        ("output", "audio"): 404,
    }
    assert one("voiced_session_renewals_total") == 1
    assert one("voiced_reconnects_total") == 1
    assert one("voiced_connects_total") == 4
    assert one("voiced_events_received_total") == 12
    assert one("voiced_microphone_dropped_frames_total") == 3
    assert one("voiced_microphone_xruns_total") == 2
    assert one("voiced_speaker_underruns_total") == 5
    assert one("voiced_speaker_dropped_seconds_total") == 1.5
    assert one("voiced_speaker_volume") == 0.8
    assert one("voiced_sink_events_dropped_total", sink="http") == 0
    assert (one("voiced_connected"), one("voiced_ready")) == (0, 0)
    shown = {s: one("voiced_state", state=s) for s in http.SHOWN_STATES}
    assert shown == {s: float(s == "offline") for s in http.SHOWN_STATES}
    assert one("voiced_uptime_seconds") == pytest.approx(12.5)
    # A registry of its own: the process-wide one knows nothing of voiced.
    assert not any(f.name.startswith("voiced") for f in prometheus_client.REGISTRY.collect())


async def test_metrics_after_a_real_turn(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(20):
        async with daemon(tmp_path, sim.url) as (pipe, client, events):
            await pipe.ready.wait()
            await client.post("/start")
            await elapse(0.5)  # the person speaks
            await client.post("/commit")
            used: Usage | None = None
            async for event in events:
                if isinstance(event, TokensUsed):
                    used = event.usage
                if isinstance(event, TurnEnded):
                    ended = event
                    break
            got = metrics((await client.get("/metrics")).text)

    def one(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert ended.outcome is Outcome.COMPLETED
    assert one("voiced_turns_total", outcome="completed") == 1
    for stage, ms in ended.latencies.items():
        assert one("voiced_latency_seconds_count", stage=stage) == 1
        assert one("voiced_latency_seconds_sum", stage=stage) == pytest.approx(ms / 1000)
    assert set(ended.latencies) == {"commit", "first_audio", "first_play"}
    assert used is not None
    assert used.input_audio > 0
    assert used.output_audio > 0
    for direction, kind in http._TOKEN_KINDS:
        value = getattr(used, f"{direction}_{kind}")
        assert one("voiced_tokens_total", direction=direction, kind=kind) == value
    assert one("voiced_connects_total") == 1
    assert (one("voiced_connected"), one("voiced_ready")) == (1, 1)
    assert one("voiced_state", state="idle") == 1
    assert one("voiced_http_responses_total", code="202") == 2
    assert one("voiced_sink_events_dropped_total", sink="stdout") == 0


# ---------------------------------------------------------------------- /events


async def test_events_stream(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with served() as (fake, plugin, client), events_of(client) as stream:
            assert await stream.next() == ("daemon_state", {"state": "idle", "reason": None})
            assert plugin.app is not None
            assert plugin.app.events_clients == 1
            fake.publish(StateChanged(State.IDLE, State.LISTENING, 1))
            fake.publish(TokensUsed(1, Usage()))  # not streamed
            fake.publish(USER)
            fake.publish(TurnEnded(1, Outcome.FAILED, {"commit": 5.0}, "server error", Usage(1)))
            assert [await stream.next() for _ in range(4)] == [
                ("state_changed", {"old": "idle", "new": "listening", "turn": 1}),
                ("daemon_state", {"state": "listening", "reason": None}),
                ("transcript", {"role": "user", "text": "what time is it?", "turn": 1,
                                "final": True, "item_id": "item_u1", "response_id": None}),
                ("turn_ended", {"turn": 1, "outcome": "failed", "latencies_ms": {"commit": 5.0},
                                "reason": "server error",
                                "usage": {"input_text": 1, "input_audio": 0, "input_cached": 0,
                                          "output_text": 0, "output_audio": 0}}),
            ]  # fmt: skip
            started = trio.current_time()
            assert await stream.next() == (":", "keep-alive")  # nothing happens for a while
            assert trio.current_time() - started == pytest.approx(http.KEEP_ALIVE_S)
            fake.end()
            assert await stream.rest() == []


async def test_events_end_cleanly_when_the_daemon_is_done() -> None:
    with trio.fail_after(10):
        async with served() as (fake, plugin, client):
            async with events_of(client) as stream:
                await stream.next()
                fake.publish(USER)
                fake.end()  # the daemon's events end, as at its shutdown
                assert await stream.rest() == [("transcript", transcript_body(USER))]
            assert (await client.get("/status")).status_code == 200  # the rest goes on
            assert plugin.app is not None
            assert plugin.app.events_clients == 0


async def test_events_end_cleanly_at_shutdown() -> None:
    fake = FakeDaemon()
    plugin = HttpInput(HttpConfig(port=0))
    with trio.fail_after(10):
        async with httpx.AsyncClient(timeout=None) as client:
            async with trio.open_nursery() as nursery:
                await nursery.start(plugin.run, fake)
                request = client.build_request("GET", f"{plugin.bound[0]}/events")
                stream = Events(await client.send(request, stream=True))
                await stream.next()
                nursery.cancel_scope.cancel()  # the daemon stops its inputs; events go on
            # The stream was ended, not cut (httpx raises on a cut chunked stream).
            assert await stream.rest() == []
            await stream.response.aclose()
    fake.end()


async def test_events_client_that_goes_away() -> None:
    with trio.fail_after(10):
        async with served() as (fake, plugin, _client):
            assert plugin.app is not None
            async with raw_events(plugin) as sock:
                while b"event: daemon_state" not in await sock.recv(65536):
                    pass
            while plugin.app.events_clients:  # the server notices the connection closed
                await trio.testing.wait_all_tasks_blocked()
            (subscription,) = [s for s in fake.subscriptions if s.kinds == tuple(http.STREAMED)]
            for _ in range(300):
                fake.publish(USER)
            assert subscription.dropped == 0  # closed: it queues nothing, so drops nothing


async def test_a_client_that_stops_reading_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    big = Transcript("agent", "x" * 65536, 1, "item_a1", 0.0)
    with trio.fail_after(20):
        async with served() as (fake, plugin, client), events_of(client) as healthy:
            assert plugin.app is not None
            await healthy.next()
            async with raw_events(plugin, rcvbuf=4096) as stuck:
                published = 0
                while plugin.app.events_clients == 2:  # it reads nothing, the other all
                    fake.publish(big)  # publishing never waits for a client
                    published += 1
                    assert await healthy.next() == ("transcript", transcript_body(big))
                    await trio.testing.wait_all_tasks_blocked()
                assert published <= http.EVENTS_QUEUE + 64  # its queue, and what the sockets took
                # Its connection is closed: reading now, it finds the end of what was sent.
                while await stuck.recv(65536):
                    pass
            assert "/events: a client stopped reading; its stream is closed" in caplog.messages
            # The daemon and the other client go on.
            fake.publish(USER)
            assert (await healthy.next())[0] == "transcript"
            got = metrics((await client.get("/metrics")).text)
            assert got[("voiced_http_events_clients_dropped_total", ())] == 1
            assert got[("voiced_http_events_clients", ())] == 1
            fake.end()
            assert await healthy.rest() == []


async def test_too_many_event_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "MAX_EVENTS_CLIENTS", 2)
    with trio.fail_after(10):
        async with (
            served() as (_fake, plugin, client),
            raw_events(plugin),
            raw_events(plugin),
        ):
            response = await client.get("/events")
            assert (response.status_code, response.json()) == (
                503,
                {"error": "2 /events streams are open already"},
            )


async def test_events_across_a_real_turn(
    sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(20):
        async with httpx.AsyncClient(timeout=None) as reader:
            async with daemon(tmp_path, sim.url) as (pipe, client, events):
                await pipe.ready.wait()
                request = reader.build_request("GET", f"{client.base_url}/events")
                stream = Events(await reader.send(request, stream=True))
                assert await stream.next() == ("daemon_state", {"state": "idle", "reason": None})
                await client.post("/start")
                await elapse(0.5)  # the person speaks
                await client.post("/commit")
                await next_event(events, TurnEnded)
            # The daemon has shut down: the stream was ended, not cut.
            got = await stream.rest()
            await stream.response.aclose()
    shown = [data["state"] for name, data in got if name == "daemon_state"]
    assert shown == ["listening", "thinking", "speaking", "idle"]
    assert got[-1] == ("daemon_state", {"state": "idle", "reason": None})
    changes = [(data["old"], data["new"]) for name, data in got if name == "state_changed"]
    assert changes == [
        ("idle", "listening"),
        ("listening", "thinking"),
        ("thinking", "speaking"),
        ("speaking", "idle"),
    ]
    heard = len(sim.sim.connections[0].committed_audio[0]) // 48
    said = {(d["role"], d["text"]) for name, d in got if name == "transcript" and d["final"]}
    assert said == {("user", f"heard {heard} ms"), ("agent", f"echo of {heard} ms")}
    (ended,) = [data for name, data in got if name == "turn_ended"]
    assert (ended["turn"], ended["outcome"]) == (1, "completed")
    assert set(ended["latencies_ms"]) == {"commit", "first_audio", "first_play"}
    assert ended["usage"]["output_audio"] > 0


# ---------------------------------------------------------------------- binding


def test_bind_failure_is_one_line_and_exit_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = config_file(
            tmp_path,
            "realtime: {url: sim}\naudio:\n  input: {backend: null}\n  output: {backend: null}\n"
            f"plugins:\n  http: {{port: {port}}}\n",
        )
        assert main(["run", "--config", str(path)]) == 2
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.getMessage() == (
        f"plugins.http.port: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(choose another port, or 0 for a free one)"
    )


async def test_bad_address_names_the_host() -> None:
    with (
        trio.fail_after(10),
        pytest.raises(
            ConfigError, match=r"^plugins\.http\.host: cannot listen on 192\.0\.2\.1:0: "
        ),
    ):
        async with served(host="192.0.2.1", token=TOKEN):
            pytest.fail("it listened")
