"""Secrets never leak: every auth path runs with recognisable fake secrets, right and wrong, and
everything an operator or an attacker could read is scanned for them: every log record at DEBUG
(voiced's and every library's, tracebacks included), ``/status``, ``/healthz``, the state events,
exception messages, and the output of the commands run as a user runs them."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.conftest import config_file, tone, write_wav
from tests.test_auth_e2e import first_failure, first_ready
from tests.test_daemon import daemon
from voiced.sim import Simulator

KEY = "sk-CANARYKEY-7f3a9c1e5b2d"
WRONG = "sk-CANARYWRONG-4e8d2b6a90"
CANARIES = (KEY, WRONG, KEY[3:], WRONG[3:])  # the bare key too, in case a prefix is cut


@pytest.fixture(autouse=True)
def everything_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every library's records reach caplog


class Leaks:
    """What may be read, gathered for one scan at the end."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.seen: list[str] = []

    def secrets(self) -> list[str]:
        return [*CANARIES, *(mint.value for mint in self.sim.mints)]

    def check(self, caplog: pytest.LogCaptureFixture) -> None:
        text = "\n".join([caplog.text, *self.seen])
        assert caplog.records, "nothing was logged: the scan would prove nothing"
        for secret in self.secrets():
            assert secret not in text


async def run_until_connected_or_refused(
    leaks: Leaks, tmp_path: Path, url: str, auth: str, *, refused: bool, realtime: str = ""
) -> dict[str, object]:
    """Run the daemon until it is ready, or refused; keep what it showed; its status."""
    with trio.fail_after(20):
        async with daemon(tmp_path, url, auth=auth, realtime=realtime) as (pipe, http, events):
            if refused:
                leaks.seen.append(repr(await first_failure(pipe, events)))
            else:
                await first_ready(pipe, events)
            for path in ("/status", "/healthz"):
                leaks.seen.append((await http.get(path)).text)
            return pipe.status()


@pytest.mark.parametrize(
    ("mode", "path"), [("api_key", "/v1"), ("ephemeral", "/v1"), ("azure", "/openai/v1")]
)
async def test_no_mode_shows_its_key_right_or_wrong(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, path: str
) -> None:
    sim = Simulator(api_key=KEY)
    url = f"ws://127.0.0.1:{await nursery.start(sim.serve)}{path}/realtime"
    leaks = Leaks(sim)
    good = f"{{mode: {mode}, api_key: {KEY}}}"
    await run_until_connected_or_refused(leaks, tmp_path, url, good, refused=False)
    bad = f"{{mode: {mode}, api_key: {WRONG}}}"
    refusal = await run_until_connected_or_refused(leaks, tmp_path, url, bad, refused=True)
    assert refusal["fatal"]
    leaks.check(caplog)


async def test_the_commands_show_no_key(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``voiced ask --debug`` refused in each mode, and ``check-config --debug`` of a config file
    that holds the key where others can read it, as separate processes."""
    sim = Simulator(api_key=KEY)
    port = await nursery.start(sim.serve)
    wav = write_wav(tmp_path / "in.wav", tone(0.3))
    leaks = Leaks(sim)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    for mode in ("api_key", "ephemeral"):
        path = config_file(
            tmp_path,
            f"realtime: {{url: 'ws://127.0.0.1:{port}/v1/realtime'}}\n"
            f"auth: {{mode: {mode}, api_key: {WRONG}}}\n",
        )
        os.chmod(path, 0o644)
        for args in (
            ["ask", "--config", str(path), str(wav), "--out", str(tmp_path / "o.wav")],
            ["check-config", "--config", str(path)],
        ):
            command = [sys.executable, "-m", "voiced", *args, "--debug"]
            with trio.fail_after(60):
                done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False, env=env)  # fmt: skip
            out = (done.stdout + done.stderr).decode()
            assert out.strip(), "the command said nothing: the scan would prove nothing"
            leaks.seen.append(out)
    assert any("holds the API key and others can read it" in text for text in leaks.seen)
    assert any("rejected the credentials" in text for text in leaks.seen)
    leaks.check(caplog)


async def test_broker_mode_shows_no_device_token_key_or_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kiosk with its device token, and with an unknown one, through the broker to the
    simulator: neither token, nor the broker's key, nor a minted secret is shown anywhere."""
    from tests.test_broker import KEY as BROKER_KEY
    from tests.test_broker import running

    (tmp_path / "broker").mkdir()
    async with running(tmp_path / "broker") as broker:
        leaks = Leaks(broker.sim)
        url = f"ws://127.0.0.1:{broker.sim_port}/v1/realtime"
        for token, refused in ((broker.tokens["kiosk-a"], False), ("vdt_CANARYUNKNOWN", True)):
            auth = f"{{mode: broker, broker_url: '{broker.url}', device_token: {token}}}"
            leaks.seen.append(repr(await run_until_connected_or_refused(
                leaks, tmp_path, url, auth, refused=refused, realtime=", instructions: Be brief."
            )))  # fmt: skip
        secrets = [*broker.tokens.values(), BROKER_KEY, "vdt_CANARYUNKNOWN", *leaks.secrets()]
    text = "\n".join([caplog.text, *leaks.seen])
    assert "device_revoked" not in text  # (the unknown token is refused as unknown)
    assert "invalid_device_token" in text
    for secret in secrets:
        assert secret not in text
