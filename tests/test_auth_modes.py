"""``auth.mode``: which credentials each mode builds, which URL it needs, what check-config says
of it, and how a fatal failure (a person must act) differs from a transient one: retried only
every minute or more, shown as the state ``error``, and the error earcon sounded once."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.conftest import SIM_KEY, config_file
from voiced import actions as a
from voiced import protocol as p
from voiced.app import choose_url
from voiced.auth import ApiKey, AzureKey, Brokered, Ephemeral, find_credentials
from voiced.config import load_config
from voiced.errors import AuthRejected, ConfigError, ConnectionLost
from voiced.events import ConnectionChanged, DaemonState
from voiced.messages import Connected, Disconnected, TransportNews
from voiced.sim import Simulator
from voiced.stages.transport import Endpoint, LinkStats, Renew, run_transport
from voiced.status import Status
from voiced.turn import TurnController

KEY = "sk-modes-0123456789"
TOKEN = "vdt_device-token-0123456789"
OPENAI = "wss://api.openai.com/v1/realtime"


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def test_each_mode_builds_its_credentials(tmp_path: Path) -> None:
    def build(auth: str, url: str = OPENAI) -> object:
        return find_credentials(load_config(config_file(tmp_path, f"auth: {auth}\n")), url)

    assert build(f"{{api_key: {KEY}}}") == ApiKey(KEY, "auth.api_key")
    assert build(f"{{mode: azure, api_key: {KEY}}}") == AzureKey(KEY, "auth.api_key")
    ephemeral = build(f"{{mode: ephemeral, api_key: {KEY}, ttl_s: 30}}")
    assert isinstance(ephemeral, Ephemeral)
    assert ephemeral.mint_url == "https://api.openai.com/v1/realtime/client_secrets"
    assert ephemeral.ttl_s == 30
    assert ephemeral.session["model"] == "gpt-realtime-2"
    (tmp_path / "token").write_text(TOKEN + "\n")
    token_file = tmp_path / "token"
    brokered = build(
        f"{{mode: broker, broker_url: 'https://b', device_token_file: '{token_file}'}}"
    )
    assert isinstance(brokered, Brokered)
    assert (brokered.token, brokered.source) == (TOKEN, f"file {token_file}")
    assert brokered.ask == {
        "model": "gpt-realtime-2",
        "voice": "marin",
        "instructions": load_config(tmp_path / "config.yaml").realtime.instructions,
        "ttl_s": 60,
    }
    assert build("{mode: broker, broker_url: 'https://b.example'}") is None
    for secret in (ephemeral, brokered):
        assert KEY not in repr(secret)
        assert TOKEN not in repr(secret)


def test_the_device_token_from_a_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "voiced_device_token").write_text(TOKEN)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    config = load_config(config_file(tmp_path, "auth: {mode: broker, broker_url: 'http://b'}\n"))
    found = find_credentials(config, OPENAI)
    assert isinstance(found, Brokered)
    assert (found.token, found.source) == (TOKEN, "systemd credential voiced_device_token")


async def test_azure_sends_the_key_in_the_api_key_header() -> None:
    assert await AzureKey(KEY).headers() == [(b"api-key", KEY.encode())]


@pytest.mark.parametrize(
    ("auth", "url", "error"),
    [
        (
            "{mode: azure, api_key: k}",
            None,
            r"realtime.url: required for auth.mode azure: wss://<resource>",
        ),
        (
            "{mode: broker, broker_url: 'http://b', device_token: t}",
            "sim",
            r"realtime.url: the built-in simulator cannot take the broker's secrets",
        ),
        (
            "{mode: broker, broker_url: 'http://b'}",
            None,
            r"auth.device_token: no device token for the broker at http://b: set",
        ),
    ],
)
def test_a_url_that_does_not_fit_the_mode_is_a_config_error(
    tmp_path: Path, auth: str, url: str | None, error: str
) -> None:
    realtime = f"realtime: {{url: '{url}'}}\n" if url else ""
    path = config_file(tmp_path, f"{realtime}auth: {auth}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: {error}"):
        choose_url(load_config(path))


@pytest.mark.parametrize(
    ("auth", "error"),
    [
        ("{ttl_s: 5}", r":2: auth.ttl_s: must be between 10 and 7200"),
        ("{mode: broker}", r":1: auth.broker_url: required when mode is broker"),
        ("{mode: broker, broker_url: 'ftp://b'}", r":3: auth.broker_url: expected an http"),
        ("{mode: keys}", r":2: auth.mode: expected one of api_key, ephemeral, broker, azure"),
    ],
)
def test_a_bad_auth_section_names_file_line_and_key(tmp_path: Path, auth: str, error: str) -> None:
    path = config_file(tmp_path, "auth:\n  " + auth.strip("{}").replace(", ", "\n  ") + "\n")
    with pytest.raises(ConfigError, match=rf"^{path}{error}"):
        load_config(path)


def test_check_config_names_the_mode_and_where_the_secret_comes_from(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    path = config_file(
        tmp_path,
        "state_dir: .\n"  # relative paths are relative to it, and it to the working directory
        "auth: {mode: broker, broker_url: 'https://broker.example', device_token_file: token}\n",
    )
    result = subprocess.run(
        [sys.executable, "-m", "voiced", "check-config", "--config", str(path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        "  auth: broker: client secrets from the broker at https://broker.example "
        "(device token from file token)"
    ) in result.stdout.splitlines()
    assert TOKEN not in result.stdout + result.stderr


def test_a_fatal_failure_sounds_the_error_earcon_once_until_connected_again() -> None:
    turns = TurnController()
    why = "the server rejected the credentials"
    assert a.Chime("error") in turns.connection_lost(why, fatal=True)
    assert a.Chime("error") not in turns.connection_lost(why, fatal=True)  # tried again: quiet
    assert a.Chime("error") not in turns.connection_lost("refused", fatal=False)  # transient
    assert a.Chime("error") in turns.connection_lost(why, fatal=True)  # it came back: news
    turns.server_event(p.SessionUpdated("session.updated", {}))
    assert a.Chime("error") in turns.connection_lost(why, fatal=True)


def test_a_fatal_failure_is_shown_as_error_a_transient_one_as_offline() -> None:
    status = Status("ws://sim", "m")
    status.apply(ConnectionChanged(False, error="refused"))
    assert status.shown == DaemonState("offline", "refused")
    status.apply(ConnectionChanged(False, error="device revoked", fatal=True))
    assert status.shown == DaemonState("error", "device revoked")
    status.apply(ConnectionChanged(True))
    status.apply(ConnectionChanged(True, ready=True))
    assert status.shown == DaemonState("idle")


async def test_a_fatal_failure_is_retried_only_every_minute_or_more(
    nursery: trio.Nursery,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 401 at the handshake: waits of about 1, 2, 4 minutes, never a hot loop, one log line;
    once it works, a transient failure is retried within a second again."""
    sim = Simulator(api_key=SIM_KEY)
    sim.faults.handshake_status = 401
    sim.faults.expire_after = 30
    port = await nursery.start(sim.serve)
    endpoint = Endpoint(f"ws://127.0.0.1:{port}/v1/realtime", "m", ApiKey(SIM_KEY))
    _out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](1)
    in_send, in_recv = trio.open_memory_channel[TransportNews](64)
    nursery.start_soon(
        lambda: run_transport(endpoint, HELLO, out_recv, in_send, stats=LinkStats(), reconnect=True)
    )
    ends: list[tuple[float, type[BaseException]]] = []
    with trio.fail_after(3600), caplog.at_level(logging.ERROR, logger="voiced.transport"):
        async for news in in_recv:
            if isinstance(news, Disconnected):
                assert news.error is not None
                ends.append((trio.current_time(), type(news.error)))
                if len(ends) == 4:
                    sim.faults.handshake_status = None  # a person fixed it
                if len(ends) == 6:
                    break
            elif isinstance(news, Connected):
                continue
    kinds = [kind for _, kind in ends]
    assert kinds == [AuthRejected] * 4 + [ConnectionLost] * 2
    waits = [b - a for (a, _), (b, _) in itertools.pairwise(ends)]
    # 1, 2, then 4 minutes, each up to 20 % shorter so a fleet does not retry in lockstep.
    assert 48 <= waits[0] <= 60
    assert 96 <= waits[1] <= 120
    assert 192 <= waits[2] <= 240
    assert 30 <= waits[4] <= 31  # transient again: the session's 30 s, then under a second
    rejected = [r for r in caplog.records if "rejected the credentials" in r.getMessage()]
    assert len(rejected) == 1
    assert rejected[0].getMessage().endswith("trying again in 1 min")


HELLO = p.SessionUpdate(voice="marin", instructions="", transcription=None)
