"""voiced under systemd: notify messages received on a real datagram socket from a daemon
running in-process against the simulator, the watchdog stopping when the session loop is wedged
on purpose, and a reload (SIGHUP) in the middle of a turn."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from tests.conftest import SIM_KEY, RunningSim, free_port
from tests.test_auth_e2e import first_ready
from tests.test_daemon import elapse, next_event, next_state
from voiced.app import run_daemon
from voiced.config import load_config
from voiced.events import ConnectionChanged, DeviceChanged, Event, TurnEnded
from voiced.messages import Alive
from voiced.notify import Notifier
from voiced.pipeline import Pipeline
from voiced.session import Session
from voiced.turn import State


class Systemd:
    """The receiving end of ``NOTIFY_SOCKET``: a datagram socket the test binds."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "notify.sock")
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def close(self) -> None:
        self.sock.close()

    async def bind(self) -> None:
        await self.sock.bind(self.path)

    async def next(self) -> dict[str, str]:
        message = (await self.sock.recv(4096)).decode()
        return dict(line.split("=", 1) for line in message.split("\n"))

    async def until(self, key: str) -> dict[str, str]:
        while key not in (message := await self.next()):
            pass
        return message


@pytest.fixture
async def systemd(tmp_path: Path) -> AsyncIterator[Systemd]:
    listener = Systemd(tmp_path)
    await listener.bind()
    yield listener
    listener.close()


@pytest.mark.parametrize("abstract", [False, True])
async def test_the_notifier_speaks_to_a_path_or_an_abstract_socket(
    tmp_path: Path, abstract: bool
) -> None:
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        name = f"voiced-test-{free_port()}"
        await sock.bind("\0" + name if abstract else str(tmp_path / "n.sock"))
        notifier = Notifier("@" + name if abstract else str(tmp_path / "n.sock"))
        notifier.ready("idle")
        notifier.watchdog()
        assert await sock.recv(100) == b"READY=1\nSTATUS=idle"
        assert await sock.recv(100) == b"WATCHDOG=1"
    Notifier(None).ready("nothing happens outside systemd")


def config_text(tmp_path: Path, url: str, port: int, instructions: str, fmt: str) -> str:
    """A daemon on null audio (paced silence in, nothing out: no worker threads, so trio's
    virtual clock never races a device) with the http and stdout plugins."""
    return (
        f"realtime: {{url: '{url}', instructions: {instructions}}}\nauth: {{api_key: {SIM_KEY}}}\n"
        "audio: {input: {backend: null, preroll_ms: 0}, output: {backend: null}, earcons: false}\n"
        f"plugins:\n  http: {{port: {port}}}\n  stdout: {{format: {fmt}}}\n"
    )


async def test_ready_status_watchdog_and_stopping_in_order(
    systemd: Systemd, sim: RunningSim, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(tmp_path, sim.url, free_port(), "Be brief.", "text"))
    stop = trio.Event()
    notifier = Notifier(systemd.path, watchdog_usec=3_000_000)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_daemon(
                    load_config(path), shutdown_trigger=stop.wait, notifier=notifier,
                    task_status=task_status,
                )
            )  # fmt: skip
            ready = await systemd.next()
            assert ready == {"READY": "1", "STATUS": "idle"}
            pings = [await systemd.until("WATCHDOG") for _ in range(3)]
            assert pings == [{"WATCHDOG": "1"}] * 3
            stop.set()
            assert await systemd.until("STOPPING") == {
                "STOPPING": "1",
                "STATUS": "shutting down",
            }


async def test_a_wedged_session_loop_stops_the_watchdog(
    systemd: Systemd,
    sim: RunningSim,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The session loop hangs (wedged on purpose: a handler that never returns): the pings
    stop, so systemd's watchdog restarts the daemon; it is said once in the log."""
    wedge = trio.Event()
    handle = Session._handle

    async def wedged(self: Session, msg: object) -> None:
        if wedge.is_set() and isinstance(msg, Alive):
            await trio.sleep_forever()
        await handle(self, msg)  # type: ignore[arg-type]

    monkeypatch.setattr(Session, "_handle", wedged)
    path = tmp_path / "config.yaml"
    path.write_text(config_text(tmp_path, sim.url, free_port(), "Be brief.", "text"))
    notifier = Notifier(systemd.path, watchdog_usec=3_000_000)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run_daemon(
                    load_config(path), shutdown_trigger=trio.sleep_forever, notifier=notifier
                )
            )
            await systemd.until("WATCHDOG")
            wedge.set()
            last_ping = trio.current_time()
            with trio.move_on_after(30):  # ten watchdog periods
                await systemd.until("WATCHDOG")
                pytest.fail("a wedged daemon still pings the watchdog")
            assert trio.current_time() - last_ping >= 30
            nursery.cancel_scope.cancel()
    said = [r for r in caplog.records if "did not answer" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.ERROR


async def test_a_reload_mid_turn_drops_nothing_and_applies_from_the_next_session(
    systemd: Systemd,
    sim: RunningSim,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGHUP while the person speaks: the turn completes on the session it began on; the new
    instructions come with a fresh session once idle; the stdout sink restarts in its new
    format; systemd hears RELOADING=1, then READY=1."""
    path = tmp_path / "config.yaml"
    port = free_port()
    path.write_text(config_text(tmp_path, sim.url, port, "Be brief.", "text"))
    reload_send, reload_recv = trio.open_memory_channel[None](1)
    notifier = Notifier(systemd.path)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            pipe: Pipeline = await nursery.start(
                lambda task_status: run_daemon(
                    load_config(path), shutdown_trigger=trio.sleep_forever, reloads=reload_recv,
                    notifier=notifier, task_status=task_status,
                )
            )  # fmt: skip
            events: trio.abc.ReceiveChannel[Event] = pipe.broadcast.subscribe("test")
            await first_ready(pipe, events)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.post("/start")).status_code == 202
                await elapse(0.5)
            path.write_text(config_text(tmp_path, sim.url, port, "Be kind.", "json"))
            await reload_send.send(None)
            reloading = await systemd.until("RELOADING")
            assert int(reloading["MONOTONIC_USEC"]) > 0
            assert (await systemd.until("READY"))["READY"] == "1"
            await elapse(0.5)  # the person speaks on; the http input was restarted meanwhile
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.post("/commit")).status_code == 202
            ended = await next_event(events, TurnEnded)
            while len(sim.sim.connections) < 2 or not pipe.status()["ready"]:
                await next_event(events, ConnectionChanged)
            nursery.cancel_scope.cancel()
    assert (ended.turn, ended.outcome) == (1, "completed")
    first, second = sim.sim.connections
    assert first.received[0]["session"]["instructions"] == "Be brief."
    assert second.received[0]["session"]["instructions"] == "Be kind."
    assert first.committed_audio  # the turn was answered on the session it began on
    lines = capsys.readouterr().out.splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]  # every line in the new format
    assert kinds.count("transcript") == 2  # the turn's two transcripts, after the reload


async def test_a_bad_config_on_reload_is_refused_and_the_daemon_runs_on(
    systemd: Systemd,
    sim: RunningSim,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "config.yaml"
    port = free_port()
    path.write_text(config_text(tmp_path, sim.url, port, "Be brief.", "text"))
    reload_send, reload_recv = trio.open_memory_channel[None](1)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_daemon(
                    load_config(path), shutdown_trigger=trio.sleep_forever, reloads=reload_recv,
                    notifier=Notifier(systemd.path), task_status=task_status,
                )
            )  # fmt: skip
            path.write_text("realtime: {voise: x}\n")
            await reload_send.send(None)
            await systemd.until("RELOADING")
            assert (await systemd.until("READY"))["READY"] == "1"  # refused: running on
            while (await systemd.next()).get("STATUS") != "idle":
                pass  # and the session comes up as ever
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.get("/status")).json()["ready"] is True
            nursery.cancel_scope.cancel()
    (refused,) = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert "realtime.voise: unknown key" in refused
    assert len(sim.sim.connections) == 1  # the session was left alone


async def test_the_sample_utterance_never_reaches_a_real_server(
    sim: RunningSim, tmp_path: Path
) -> None:  # a real clock: PortAudio is probed in threads, under deadlines
    """``backend: auto`` with no microphone and a configured server: the daemon stays up,
    degraded (``/healthz`` says why), and a press sends nothing; the bundled sample is a demo
    of the simulator only."""
    pytest.importorskip("pyaudio")
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(
        f"realtime: {{url: '{sim.url}'}}\nauth: {{api_key: {SIM_KEY}}}\n"
        f"audio: {{input: {{backend: auto}}, output: {{backend: null}}, earcons: false}}\n"
        f"plugins: {{http: {{port: {port}}}}}\n"
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            pipe: Pipeline = await nursery.start(
                lambda task_status: run_daemon(
                    load_config(path), shutdown_trigger=trio.sleep_forever,
                    notifier=Notifier(None), task_status=task_status,
                )
            )  # fmt: skip
            events = pipe.broadcast.subscribe("test")
            await first_ready(pipe, events)
            while not pipe.status()["device_errors"]:
                await next_event(events, DeviceChanged)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                health = await http.get("/healthz")
                assert health.status_code == 503
                assert health.json()["error"].startswith("microphone: ")
                assert (await http.post("/start")).status_code == 202
                assert await next_state(events) is State.LISTENING
                await http.post("/commit")
                await next_event(events, TurnEnded)
            nursery.cancel_scope.cancel()
    (conn,) = sim.sim.connections
    assert not [e for e in conn.received if e["type"] == "input_audio_buffer.append"]
    assert conn.committed_audio == []


def test_sigterm_mid_answer_finishes_the_turn_and_exits_0(tmp_path: Path) -> None:
    """``voiced run`` as systemd runs it, against ``voiced sim`` answering in real time: SIGTERM
    while the answer streams lets the turn end, writes both transcripts and the turn to the
    file sink, closes the socket, and exits 0, well within systemd's stop timeout."""
    import re
    import signal
    import subprocess
    import sys
    import time

    sim = subprocess.Popen(
        [sys.executable, "-m", "voiced", "sim", "--port", "0", "--key", SIM_KEY, "--pace", "1"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sim.stderr is not None
    found = None
    while found is None:
        line = sim.stderr.readline()
        assert line, "voiced sim did not start"
        found = re.search(r"simulator on (ws://\S+)\?", line)
    port = free_port()
    path = tmp_path / "config.yaml"
    path.write_text(
        config_text(tmp_path, found.group(1), port, "Be brief.", "text")
        + f"  file: {{path: '{tmp_path / 't.jsonl'}'}}\n"
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "voiced", "run", "--config", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert daemon.stderr is not None
        for line in daemon.stderr:  # until the daemon says it is ready
            if "ready: the session is up" in line:
                break
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http,
            http.stream("GET", "/events") as stream,
        ):
            lines = stream.iter_lines()
            assert http.post("/start").status_code == 202
            time.sleep(1.0)  # the person speaks for a second (a real process: real time)
            assert http.post("/commit").status_code == 202
            for line in lines:
                if '"state": "speaking"' in line:
                    break
        stopped = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        assert time.monotonic() - stopped < 15
        log_text = daemon.stderr.read()
    finally:
        for proc in (daemon, sim):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
    assert "waiting up to 10 s for the turn being answered to end" in log_text
    written = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    kinds = [
        (e["kind"], e.get("role") or e.get("outcome")) for e in written if e["kind"] != "state"
    ]
    assert ("transcript", "user") in kinds
    assert ("transcript", "agent") in kinds
    assert ("turn", "completed") in kinds
