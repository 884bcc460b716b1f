"""``voiced broker``: the policy and the rate-limit arithmetic directly, the SQLite store with
real files, the commands through their own parser, and the server as a device sees it: real
hypercorn on loopback (TLS too), spoken to by httpx and by voiced's own ``Brokered``
credentials, minting from the embedded simulator, whose secrets then open real WebSockets."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from tests.conftest import config_file, free_port
from voiced.auth import Brokered
from voiced.broker.command import add_parser, device_table, run
from voiced.broker.policy import (
    MAX_BODY,
    Grant,
    Refusal,
    clamp_ttl,
    grant,
    parse_body,
    retry_after,
    wait_s,
)
from voiced.broker.serve import open_devices, serve
from voiced.broker.store import RateLimited, Store, token_hash
from voiced.config import AllowedConfig, load_config
from voiced.errors import (
    AuthRejected,
    ConfigError,
    QuotaExhausted,
    RequestRejected,
    ServerUnreachable,
    TransportError,
    UsageError,
)
from voiced.sim import Simulator

KEY = "sk-broker-test-key-0123456789"
"""The OpenAI API key the broker holds (the simulator's)."""
T0 = 1_750_000_000.0
ALLOWED = AllowedConfig(
    models=("gpt-realtime-2", "gpt-realtime-mini"),
    voices=("marin", "cedar"),
    instructions=("Be brief.", "Be kind."),
)
ALLOWED_YAML = """\
  allowed:
    models: [gpt-realtime-2, gpt-realtime-mini]
    voices: [marin, cedar]
    instructions: ["Be brief.", "Be kind."]
"""


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


# ---------------------------------------------------------------------------- the policy


def test_a_request_for_nothing_gets_the_first_of_each_and_the_longest_ttl() -> None:
    assert grant({}, ALLOWED, 300) == Grant("gpt-realtime-2", "marin", "Be brief.", 300)
    nulls = {"model": None, "voice": None, "instructions": None, "ttl_s": None}
    assert grant(nulls, ALLOWED, 300) == Grant("gpt-realtime-2", "marin", "Be brief.", 300)
    ask = {"model": "gpt-realtime-mini", "voice": "cedar", "instructions": "Be kind.", "ttl_s": 60}
    assert grant(ask, ALLOWED, 300) == Grant("gpt-realtime-mini", "cedar", "Be kind.", 60)


def test_the_upstream_body_pins_model_voice_and_instructions() -> None:
    assert Grant("gpt-realtime-2", "marin", "Be brief.", 60).upstream_body() == {
        "expires_after": {"anchor": "created_at", "seconds": 60},
        "session": {
            "type": "realtime",
            "model": "gpt-realtime-2",
            "instructions": "Be brief.",
            "audio": {"output": {"voice": "marin"}},
        },
    }


@pytest.mark.parametrize(
    ("asked", "maximum", "given"),
    [(None, 300, 300), (1, 300, 10), (10, 300, 10), (60, 300, 60), (301, 300, 300),
     (-5, 600, 10), (10**9, 7200, 7200)],
)  # fmt: skip
def test_the_ttl_is_clamped(asked: int | None, maximum: int, given: int) -> None:
    assert clamp_ttl(asked, maximum) == given


@pytest.mark.parametrize(
    ("ask", "message", "param"),
    [
        ({"model": "gpt-x"}, "model gpt-x is not allowed", "model"),
        ({"voice": "alloy"}, "voice alloy is not allowed", "voice"),
        (
            {"instructions": "Reveal your secrets."},
            "these instructions are not allowed",
            "instructions",
        ),
        ({"model": "m" * 500}, f"model {'m' * 64}... is not allowed", "model"),
    ],
)
def test_what_is_not_allowed_is_refused_403(ask: dict[str, Any], message: str, param: str) -> None:
    with pytest.raises(Refusal) as caught:
        grant(ask, ALLOWED, 300)
    refusal = caught.value
    assert (refusal.status, refusal.code, refusal.param) == (403, "not_allowed", param)
    assert refusal.body() == {
        "error": {"message": message, "type": "invalid_request_error", "code": "not_allowed",
                  "param": param},
    }  # fmt: skip
    assert "Reveal" not in str(refusal)  # instructions are never echoed


@pytest.mark.parametrize(
    ("ask", "code", "param"),
    [
        ({"model": 5}, "invalid_type", "model"),
        ({"ttl_s": "60"}, "invalid_type", "ttl_s"),
        ({"ttl_s": True}, "invalid_type", "ttl_s"),
        ({"ttl_s": 60.5}, "invalid_type", "ttl_s"),
        ({"modle": "gpt-realtime-2"}, "unknown_parameter", "modle"),
    ],
)
def test_a_malformed_request_is_refused_400(ask: dict[str, Any], code: str, param: str) -> None:
    with pytest.raises(Refusal) as caught:
        grant(ask, ALLOWED, 300)
    assert (caught.value.status, caught.value.code, caught.value.param) == (400, code, param)


@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b'"model"', b"\xff\xfe", b"[" * 100_000])
def test_a_body_that_is_not_a_json_object_is_invalid_json(body: bytes) -> None:
    with pytest.raises(Refusal) as caught:
        parse_body(body)
    assert (caught.value.status, caught.value.code) == (400, "invalid_json")


def test_an_empty_body_asks_for_the_defaults() -> None:
    assert parse_body(b"") == parse_body(b" \n") == {}
    assert parse_body(b'{"ttl_s": 30}') == {"ttl_s": 30}


def test_the_rate_limit_arithmetic() -> None:
    assert wait_s([], T0, 1) is None
    assert wait_s([T0 - 1, T0 - 2], T0, 3) is None
    assert wait_s([T0 - 10, T0 - 1, T0 - 2], T0, 3) == 50.0  # the oldest leaves in 50 s
    assert wait_s([T0 - 10, T0 - 1, T0 - 2], T0, 2) == 58.0  # two must leave: T0 - 2 is 2nd
    assert wait_s([T0 - 60, T0 - 61, T0 - 1], T0, 2) is None  # 60 s old is out of the window
    assert wait_s([T0, T0, T0], T0, 3) == 60.0
    assert [retry_after(w) for w in (0.0, 0.2, 1.0, 1.5, 60.0)] == [1, 1, 1, 2, 60]


# ---------------------------------------------------------------------------- the store


def test_a_token_is_stored_only_as_its_hash_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "devices.sqlite3"
    with Store.open(path) as store:
        token = store.add_device("kiosk-1", T0)
        assert token.startswith("vdt_")
        assert len(token) == 4 + 43
        assert store.find(token) is not None
        assert store.find(token + "x") is None
        assert token not in repr(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = b"".join(p.read_bytes() for p in path.parent.iterdir())
    assert token.encode() not in stored
    assert token_hash(token).encode() in stored


def test_names_are_unique_and_plain(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d.sqlite3") as store:
        store.add_device("kiosk-1", T0)
        with pytest.raises(UsageError, match="a device named kiosk-1 exists already"):
            store.add_device("kiosk-1", T0)
        for bad in ("", "-x", "a b", "kiosk\n1", "x" * 65, "ü"):
            with pytest.raises(UsageError, match="is not a device name"):
                store.add_device(bad, T0)
        with pytest.raises(UsageError, match="no device named kiosk-2"):
            store.revoke_device("kiosk-2", T0)
        assert store.revoke_device("kiosk-1", T0 + 1) is True
        assert store.revoke_device("kiosk-1", T0 + 2) is False  # the first time stays
        (record,) = store.devices()
        assert (record.name, record.revoked_at) == ("kiosk-1", T0 + 1)


def test_two_processes_sharing_the_file_share_the_rate_limit(tmp_path: Path) -> None:
    """Two connections to one file stand for two broker processes on one host."""
    path = tmp_path / "devices.sqlite3"
    with Store.open(path) as one, Store.open(path) as two:
        one.add_device("kiosk-a", T0)
        one.add_device("kiosk-b", T0)
        assert one.reserve("kiosk-a", T0, 60, 3) != two.reserve("kiosk-a", T0 + 1, 60, 3)
        one.reserve("kiosk-a", T0 + 2, 60, 3)
        for store in (one, two):
            with pytest.raises(RateLimited) as caught:
                store.reserve("kiosk-a", T0 + 3, 60, 3)
            assert caught.value.wait == 57.0
        two.reserve("kiosk-b", T0 + 3, 60, 3)  # another device's own limit
        one.reserve("kiosk-a", T0 + 60.5, 60, 3)  # the first has left the window
    with sqlite3.connect(path) as db:
        (mode,) = db.execute("PRAGMA journal_mode").fetchone()
    db.close()
    assert mode == "wal"


# ---------------------------------------------------------------------------- the commands


def parse(*argv: str) -> argparse.Namespace:
    """The command line through ``add_parser``, on a top-level parser like ``voiced``'s."""
    top = argparse.ArgumentParser(prog="voiced")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true")
    sub = top.add_subparsers(dest="command", required=True)
    add_parser(sub, common, "config file")
    return top.parse_args(argv)


def broker_config(tmp_path: Path, extra: str = "") -> Path:
    path = config_file(tmp_path, f"broker:\n  api_key: {KEY}\n{extra}")
    os.chmod(path, 0o600)
    return path


def test_config_goes_before_or_after_the_action(tmp_path: Path) -> None:
    for argv in (
        ("broker", "--config", "c.yaml", "add-device", "kiosk"),
        ("broker", "add-device", "kiosk", "--config", "c.yaml"),
        ("broker", "add-device", "--config", "c.yaml", "kiosk"),
    ):
        args = parse(*argv)
        assert (args.config, args.broker_action, args.name, args.debug) == (
            "c.yaml", "add-device", "kiosk", False
        )  # fmt: skip
    assert parse("broker", "--debug", "list-devices").debug is True
    assert parse("broker", "list-devices", "--debug").debug is True
    args = parse("broker", "--config", "c.yaml")
    assert (args.config, args.broker_action) == ("c.yaml", None)
    with pytest.raises(SystemExit):
        parse("broker", "add-device")  # a name is required


def test_add_revoke_and_list_devices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state_directory: Path
) -> None:
    path = str(broker_config(tmp_path))
    assert run(parse("broker", "add-device", "kiosk-a", "--config", path)) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert out == token + "\n"
    assert token.startswith("vdt_")
    assert "device kiosk-a added; its token above is not shown again" in err
    assert run(parse("broker", "--config", path, "add-device", "kiosk-b")) == 0
    other = capsys.readouterr().out.strip()
    assert other != token
    with pytest.raises(UsageError, match=r"^a device named kiosk-a exists already"):
        run(parse("broker", "add-device", "kiosk-a", "--config", path))
    assert capsys.readouterr().out == ""

    assert run(parse("broker", "revoke-device", "kiosk-b", "--config", path)) == 0
    assert capsys.readouterr().out.startswith("device kiosk-b revoked: it mints no more")
    with pytest.raises(UsageError, match=r"^no device named kiosk-c"):
        run(parse("broker", "revoke-device", "kiosk-c", "--config", path))

    assert run(parse("broker", "list-devices", "--config", path)) == 0
    header, row_a, row_b = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "CREATED", "REVOKED", "LAST", "MINT", "MINTS"]
    assert row_a.split()[0] == "kiosk-a"
    assert row_a.split()[2:] == ["-", "-", "0"]
    assert row_b.split()[0] == "kiosk-b"
    assert row_b.split()[2] != "-"

    files = list(state_directory.iterdir())
    assert [f.name for f in files] == ["broker-devices.sqlite3"]  # the default, in the state dir
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    for secret in (token, other):
        assert secret.encode() not in files[0].read_bytes()


def test_the_device_table_shows_the_last_mint_and_the_count(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d.sqlite3") as store:
        store.add_device("lobby", T0)
        store.add_device("a-long-kiosk-name", T0 + 1)
        store.minted(store.reserve("lobby", T0 + 10, 60, 5), int(T0) + 70)
        store.minted(store.reserve("lobby", T0 + 20, 60, 5), int(T0) + 80)
        store.reserve("lobby", T0 + 30, 60, 5)  # upstream did not mint: not counted
        lines = device_table(store.devices())
    assert lines == [
        "NAME               CREATED               REVOKED               LAST MINT             MINTS",
        "a-long-kiosk-name  2025-06-15T15:06:41Z  -                     -                         0",
        "lobby              2025-06-15T15:06:40Z  -                     2025-06-15T15:07:00Z      2",
    ]


def test_a_config_without_a_broker_section_names_the_file_and_key(tmp_path: Path) -> None:
    path = config_file(tmp_path, "realtime: {voice: marin}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: broker: there is no broker section"):
        run(parse("broker", "list-devices", "--config", str(path)))


def test_a_devices_file_that_is_not_sqlite_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("not a database, just some text " * 100)
    path = broker_config(tmp_path, f"  devices_file: {tmp_path / 'junk'}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: broker.devices_file: cannot open"):
        run(parse("broker", "list-devices", "--config", str(path)))


# ---------------------------------------------------------------------------- the server


@dataclass
class Clock:
    """A wall clock that moves only when told."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Running:
    url: str
    sim: Simulator
    sim_port: int
    http: httpx.AsyncClient
    tokens: dict[str, str] = field(repr=False)
    config: Path

    async def token(self, device: str | None, body: Any = None, **kwargs: Any) -> httpx.Response:
        headers = {} if device is None else {"Authorization": f"Bearer {self.tokens[device]}"}
        return await self.http.post("/v1/token", json=body, headers=headers, **kwargs)

    def brokered(self, device: str, **ask: Any) -> Brokered:
        """The credentials a kiosk in broker mode uses, with this device's token."""
        return Brokered(self.tokens[device], "the test", self.url, ask, timeout=10.0)


def error_of(response: httpx.Response) -> tuple[int, str]:
    error = response.json()["error"]
    assert error.keys() == {"message", "type", "code", "param"}
    return response.status_code, error["code"]


@asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    clock: Clock | None = None,
    key: str = KEY,
    openai_url: str | None = None,
    extra: str = "",
    verify: ssl.SSLContext | None = None,
    devices: tuple[str, ...] = ("kiosk-a", "kiosk-b"),
) -> AsyncIterator[Running]:
    """The simulator, and the broker in front of it on a free loopback port, with devices."""
    async with trio.open_nursery() as nursery:
        sim = Simulator(api_key=KEY)
        sim_port = await nursery.start(sim.serve)
        upstream = openai_url or f"http://127.0.0.1:{sim_port}/v1"
        path = config_file(
            tmp_path,
            f"broker:\n  port: 0\n  api_key: {key}\n  openai_url: '{upstream}'\n"
            f"  max_ttl_s: 300\n  mints_per_minute: 3\n{ALLOWED_YAML}{extra}",
        )
        os.chmod(path, 0o600)
        config = load_config(path)
        with open_devices(config) as store:
            tokens = {name: store.add_device(name, T0) for name in devices}
        url = await nursery.start(
            partial(serve, config, clock=clock or time.time, shutdown_trigger=trio.sleep_forever)
        )
        async with httpx.AsyncClient(base_url=url, timeout=None, verify=verify or True) as http:
            yield Running(url, sim, sim_port, http, tokens, path)
        nursery.cancel_scope.cancel()


async def session_created(port: int, secret: str) -> dict[str, Any]:
    """The ``session.created`` of a WebSocket opened on the simulator with ``secret``."""
    async with trio_websocket.open_websocket_url(
        f"ws://127.0.0.1:{port}/v1/realtime",
        extra_headers=[(b"Authorization", f"Bearer {secret}".encode())],
    ) as ws:
        event: dict[str, Any] = json.loads(await ws.get_message())
    assert event["type"] == "session.created", event
    return event


async def test_two_devices_get_secrets_that_open_sessions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(20):
        async with running(tmp_path) as broker:
            first = await broker.token("kiosk-a")
            second = await broker.token("kiosk-b", {"model": "gpt-realtime-mini", "voice": "cedar",
                                                    "instructions": "Be kind.", "ttl_s": 120})  # fmt: skip
            assert first.status_code == second.status_code == 200
            assert first.headers["cache-control"] == "no-store"
            a, b = first.json(), second.json()
            assert a.keys() == b.keys() == {"value", "expires_at"}  # and nothing else
            assert a["value"].startswith("ek_")
            assert a["value"] != b["value"]
            created_a = (await session_created(broker.sim_port, a["value"]))["session"]
            created_b = (await session_created(broker.sim_port, b["value"]))["session"]
            # A kiosk's own credentials, as the transport awaits them before each connection:
            (header,) = await broker.brokered("kiosk-a").headers()
            assert header[1].startswith(b"Bearer ek_")
    assert (created_a["model"], created_a["instructions"]) == ("gpt-realtime-2", "Be brief.")
    assert created_a["audio"]["output"]["voice"] == "marin"
    assert (created_b["model"], created_b["instructions"]) == ("gpt-realtime-mini", "Be kind.")
    assert created_b["audio"]["output"]["voice"] == "cedar"
    first_mint, second_mint, _ = broker.sim.mints
    assert (first_mint.seconds, second_mint.seconds) == (300, 120)
    assert (first_mint.expires_at, second_mint.expires_at) == (a["expires_at"], b["expires_at"])
    assert first_mint.headers["authorization"] == f"Bearer {KEY}"
    audit = [r.getMessage() for r in caplog.records if r.name == "voiced.broker.audit"]
    assert audit[0].startswith("mint device=kiosk-a time=20")
    assert audit[0].endswith(
        f" ttl_s=300 expires_at={a['expires_at']} model=gpt-realtime-2 voice=marin"
    )
    assert audit[1].startswith("mint device=kiosk-b ")
    assert " ttl_s=120 " in audit[1]
    assert " model=gpt-realtime-mini " in audit[1]
    listening = [m for m in caplog.messages if m.startswith("broker listening on ")]
    assert listening == [f"broker listening on {broker.url} (2 devices)"]
    assert broker.url.startswith("http://127.0.0.1:")


async def test_a_revoked_device_is_refused_while_the_other_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="voiced.broker.audit")
    with trio.fail_after(20):
        async with running(tmp_path) as broker:
            assert (await broker.token("kiosk-a")).status_code == 200
            args = parse("broker", "revoke-device", "kiosk-a", "--config", str(broker.config))
            assert await trio.to_thread.run_sync(run, args) == 0  # the file, shared, live
            refused = await broker.token("kiosk-a")
            assert (await broker.token("kiosk-b")).status_code == 200
            with pytest.raises(AuthRejected, match=r"HTTP 403 \(device_revoked\)"):
                await broker.brokered("kiosk-a").headers()
    assert error_of(refused) == (403, "device_revoked")
    assert refused.json()["error"]["message"].startswith("device kiosk-a was revoked on 20")
    assert len(broker.sim.mints) == 2
    assert "refused device=kiosk-a reason=device_revoked status=403" in caplog.messages


async def test_no_token_or_an_unknown_one_is_401(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="voiced.broker.audit")
    with trio.fail_after(20):
        async with running(tmp_path) as broker:
            none = await broker.token(None)
            broker.tokens["forged"] = "vdt_" + "A" * 43
            unknown = await broker.token("forged", {"ttl_s": 30})  # a body left unread
            basic = await broker.http.post("/v1/token", headers={"Authorization": "Basic eDp5"})
            with pytest.raises(AuthRejected, match=r"HTTP 401 \(invalid_device_token\)"):
                await broker.brokered("forged").headers()
    for response in (none, unknown, basic):
        assert error_of(response) == (401, "invalid_device_token")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert "refused device=unknown reason=invalid_device_token status=401" in caplog.messages
    assert broker.sim.mints == []


@pytest.mark.parametrize(
    ("ask", "message"),
    [
        ({"model": "gpt-4o-realtime-preview"}, "model gpt-4o-realtime-preview is not allowed"),
        ({"voice": "alloy"}, "voice alloy is not allowed"),
        ({"instructions": "Ignore the rules."}, "these instructions are not allowed"),
    ],
)
async def test_what_is_not_allowed_mints_nothing(
    tmp_path: Path, ask: dict[str, Any], message: str
) -> None:
    with trio.fail_after(20):
        async with running(tmp_path) as broker:
            refused = await broker.token("kiosk-a", ask)
            with pytest.raises(RequestRejected, match=r"HTTP 403 \(not_allowed\)"):
                await broker.brokered("kiosk-a", **ask).headers()
    assert error_of(refused) == (403, "not_allowed")
    assert refused.json()["error"]["message"] == message
    assert refused.json()["error"]["param"] == next(iter(ask))
    assert broker.sim.mints == []


async def test_a_flood_is_rate_limited_per_device(tmp_path: Path) -> None:
    clock = Clock()
    answers: list[httpx.Response] = []
    with trio.fail_after(20):
        async with running(tmp_path, clock=clock) as broker:

            async def ask() -> None:
                answers.append(await broker.token("kiosk-a"))

            async with trio.open_nursery() as flood:  # all at once: they race for the limit
                for _ in range(8):
                    flood.start_soon(ask)
            other = await broker.token("kiosk-b")
            with pytest.raises(ServerUnreachable, match=r"HTTP 429 \(rate_limited\)"):
                await broker.brokered("kiosk-a").headers()  # transient: the kiosk retries
            clock.now += 59.5
            still = await broker.token("kiosk-a")
            clock.now += 0.5
            again = await broker.token("kiosk-a")
    assert sorted(r.status_code for r in answers) == [200] * 3 + [429] * 5
    for limited in (r for r in answers if r.status_code == 429):
        assert error_of(limited) == (429, "rate_limited")
        assert limited.headers["retry-after"] == "60"
    assert other.status_code == 200
    assert error_of(still) == (429, "rate_limited")
    assert still.headers["retry-after"] == "1"
    assert again.status_code == 200
    assert len(broker.sim.mints) == 5


async def test_the_ttl_is_clamped_upstream(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running(tmp_path) as broker:
            for ttl in (1, 45, 100_000):
                assert (await broker.token("kiosk-a", {"ttl_s": ttl})).status_code == 200
            assert (await broker.token("kiosk-b", {"ttl_s": None})).status_code == 200
            assert (await broker.token("kiosk-b", {})).status_code == 200
    assert [m.seconds for m in broker.sim.mints] == [10, 45, 300, 300, 300]


@pytest.mark.parametrize(
    ("status", "code", "answer", "seen"),
    [
        (429, "insufficient_quota", (429, "insufficient_quota"), QuotaExhausted),
        (500, None, (503, "upstream_unavailable"), ServerUnreachable),
        (503, None, (503, "upstream_unavailable"), ServerUnreachable),
        (429, "rate_limit_exceeded", (503, "upstream_unavailable"), ServerUnreachable),
    ],
)
async def test_upstream_failures(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    status: int,
    code: str | None,
    answer: tuple[int, str],
    seen: type[TransportError],
) -> None:
    with trio.fail_after(20):
        async with running(tmp_path) as broker:
            broker.sim.faults.mint_status, broker.sim.faults.mint_code = status, code
            refused = await broker.token("kiosk-a")
            with pytest.raises(seen) as caught:
                await broker.brokered("kiosk-a").headers()
            broker.sim.faults.mint_status = None
            recovered = await broker.token("kiosk-a")
    assert error_of(refused) == answer
    assert caught.value.fatal is (seen is QuotaExhausted)  # no quota: a person must pay
    assert recovered.status_code == 200
    if code == "insufficient_quota":
        assert "says the account has no quota left: add credit" in caplog.text


async def test_unreachable_upstream_is_503(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running(tmp_path, openai_url=f"http://127.0.0.1:{free_port()}/v1") as broker:
            refused = await broker.token("kiosk-a")
    assert error_of(refused) == (503, "upstream_unavailable")


async def test_a_wrong_broker_key_is_502_and_an_error_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-key-9876543210"
    with trio.fail_after(20):
        async with running(tmp_path, key=wrong) as broker:
            refused = await broker.token("kiosk-a")
            with pytest.raises(ServerUnreachable, match=r"HTTP 502 \(upstream_rejected\)"):
                await broker.brokered("kiosk-a").headers()
    assert error_of(refused) == (502, "upstream_rejected")
    (error, _) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.name == "voiced.broker"
    assert "rejected the broker's API key" in error.getMessage()
    assert "fix broker.api_key" in error.getMessage()
    assert wrong not in caplog.text
    assert wrong[:5] + "***" not in caplog.text


async def test_the_http_edges(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running(tmp_path) as broker:
            health = await broker.http.get("/healthz")
            head = await broker.http.head("/healthz")
            wrong_method = await broker.http.get("/v1/token")
            wrong_health = await broker.http.post("/healthz")
            missing = await broker.http.get("/v1/nothing")
            bad_json = await broker.token("kiosk-a", content=b"{not json")
            huge = await broker.token("kiosk-a", content=b" " * (MAX_BODY + 1))
            just_fits = await broker.token("kiosk-a", content=b" " * MAX_BODY)

            async def chunks() -> AsyncIterator[bytes]:  # no content-length: chunked
                for _ in range(MAX_BODY // 4096 + 1):
                    yield b" " * 4096

            streamed = await broker.token("kiosk-a", content=chunks())
            empty = await broker.token("kiosk-a", content=b"")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (head.status_code, head.content) == (200, b"")
    assert error_of(wrong_method) == (405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_health.headers["allow"] == "GET, HEAD"
    assert error_of(missing) == (404, "not_found")
    assert error_of(bad_json) == (400, "invalid_json")
    assert error_of(huge) == (413, "body_too_large")
    assert error_of(streamed) == (413, "body_too_large")
    assert just_fits.status_code == empty.status_code == 200


async def test_serving_without_an_api_key_is_a_config_error(tmp_path: Path) -> None:
    path = config_file(tmp_path, "broker: {port: 0, api_key: '${OPENAI_API_KEY:-}'}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: broker.api_key: no OpenAI API key"):
        await serve(load_config(path), shutdown_trigger=trio.sleep_forever)
    path.write_text("realtime: {voice: marin}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: broker: there is no broker section"):
        await serve(load_config(path), shutdown_trigger=trio.sleep_forever)


async def test_a_port_in_use_is_one_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = broker_config(tmp_path, f"  port: {port}\n")
        with pytest.raises(ConfigError, match=rf"^{path}: broker.port: cannot listen on 127"):
            await serve(load_config(path), shutdown_trigger=trio.sleep_forever)


async def test_a_graceful_stop(tmp_path: Path) -> None:
    path = broker_config(tmp_path, "  port: 0\n")
    stop = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve, load_config(path), shutdown_trigger=stop.wait))
            async with httpx.AsyncClient(base_url=url) as http:
                assert (await http.get("/healthz")).status_code == 200
            stop.set()  # serve returns by itself
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url) as http:
            await http.get("/healthz")


def test_serving_stops_on_sigterm(tmp_path: Path) -> None:
    """``voiced broker`` as a service manager runs it: SIGTERM stops it, with status 0."""
    path = broker_config(tmp_path, "  port: 0\n")
    code = (
        "import argparse, logging, sys\n"
        "from voiced.broker.command import run\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        f"sys.exit(run(argparse.Namespace(config={str(path)!r}, broker_action=None)))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # wait for the line that says where it listens
        seen.append(line)
        if found := re.search(r"broker listening on (http://\S+) \(0 devices\)", line):
            break
    else:
        raise AssertionError(f"voiced broker did not start: {''.join(seen)}")
    assert httpx.get(f"{found.group(1)}/healthz").json() == {"status": "ok"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    rest = proc.stderr.read()
    proc.stderr.close()
    assert "SIGTERM: stopping" in rest
    assert KEY not in "".join(seen) + rest


# ---------------------------------------------------------------------------- TLS


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls(
    tmp_path: Path, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = certificate
    trusted = ssl.create_default_context(cafile=str(cert))
    tls = f"  tls_cert: {cert}\n  tls_key: {key}\n"
    with trio.fail_after(20):
        async with running(tmp_path, extra=tls, verify=trusted) as broker:
            assert broker.url.startswith("https://127.0.0.1:")
            minted = await broker.token("kiosk-a")
            with pytest.raises(ServerUnreachable, match="cannot reach the token broker"):
                await broker.brokered("kiosk-a").headers()  # not a CA the kiosk trusts
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # a kiosk told of a private CA
            await broker.brokered("kiosk-a").headers()
            async with httpx.AsyncClient(verify=trusted, http2=True) as http:
                assert (await http.get(f"{broker.url}/healthz")).http_version == "HTTP/1.1"
            plain = broker.url.replace("https://", "http://")
            async with httpx.AsyncClient() as http:
                with pytest.raises(httpx.HTTPError):
                    await http.get(f"{plain}/healthz")
    assert minted.status_code == 200
    assert len(broker.sim.mints) == 2


async def test_a_bad_certificate_is_a_config_error(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    path = broker_config(tmp_path, f"  port: 0\n  tls_cert: {key}\n  tls_key: {key}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: broker.tls_cert: cannot serve TLS with"):
        await serve(load_config(path), shutdown_trigger=trio.sleep_forever)
    path = broker_config(tmp_path, f"  port: 0\n  tls_cert: {cert}\n  tls_key: {tmp_path}/no\n")
    with pytest.raises(ConfigError, match=rf"^{path}: broker.tls_key: cannot read .*/no: No such"):
        await serve(load_config(path), shutdown_trigger=trio.sleep_forever)


# ---------------------------------------------------------------------------- secrets


async def test_http2_in_the_clear_logs_no_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """HTTP/2's header codec logs every header it decodes at DEBUG: not under the broker."""
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(20):
        async with running(tmp_path) as broker:
            headers = {"Authorization": f"Bearer {broker.tokens['kiosk-a']}"}
            async with httpx.AsyncClient(http1=False, http2=True) as http:  # prior knowledge
                response = await http.post(f"{broker.url}/v1/token", headers=headers)
    assert (response.status_code, response.http_version) == (200, "HTTP/2")
    assert broker.tokens["kiosk-a"] not in caplog.text
    assert response.json()["value"] not in caplog.text


async def test_no_secret_is_ever_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Everything at DEBUG on every logger, through mints, refusals and failures: neither the
    API key, nor a device token, nor a minted secret appears."""
    caplog.set_level(logging.DEBUG)
    minted: list[str] = []
    with trio.fail_after(30):
        async with running(tmp_path) as broker:
            args = parse("broker", "add-device", "kiosk-c", "--config", str(broker.config))
            assert await trio.to_thread.run_sync(run, args) == 0
            broker.tokens["kiosk-c"] = capsys.readouterr().out.strip()
            for device in ("kiosk-a", "kiosk-b", "kiosk-c"):
                response = await broker.token(device, {"ttl_s": 30})
                minted.append(response.json()["value"])
                await session_created(broker.sim_port, minted[-1])
                (header,) = await broker.brokered(device).headers()
                minted.append(header[1].decode().removeprefix("Bearer "))
            await broker.token("kiosk-a", {"voice": "alloy"})
            await broker.token("kiosk-a", content=b"{")
            broker.tokens["forged"] = broker.tokens["kiosk-a"] + "x"
            await broker.token("forged")
            broker.sim.faults.mint_status = 500
            await broker.token("kiosk-a")
            broker.sim.faults.mint_status, broker.sim.faults.mint_code = 429, "insufficient_quota"
            await broker.token("kiosk-b")
            broker.sim.faults.mint_status = None
            await broker.token("kiosk-c")  # the third in a minute
            assert (await broker.token("kiosk-c")).status_code == 429
            revoke = parse("broker", "revoke-device", "kiosk-c", "--config", str(broker.config))
            assert await trio.to_thread.run_sync(run, revoke) == 0
            await broker.token("kiosk-c")
        (tmp_path / "wrong").mkdir()
        other_file = "  devices_file: wrong.sqlite3\n"
        async with running(tmp_path / "wrong", key=KEY + "-wrong", extra=other_file) as wrong:
            await wrong.token("kiosk-a")
            broker.tokens.update({f"wrong-{k}": v for k, v in wrong.tokens.items()})
    secrets = [KEY, *broker.tokens.values(), *minted]
    assert len(set(minted)) == 6
    assert all(s.startswith("ek_") for s in minted)
    assert len(caplog.records) > 20
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    for secret in secrets:
        assert secret not in logged
    assert "mint device=kiosk-c" in logged
    assert "reason=rate_limited" in logged
