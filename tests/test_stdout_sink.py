"""The ``stdout`` sink: text lines, JSON lines (the envelope), live deltas in both, a closed pipe;
and both sinks in ``voiced ask`` as a real process, against the simulator built into voiced."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.conftest import tone, write_wav
from voiced.events import (
    ConnectionChanged,
    DaemonState,
    Event,
    PluginChanged,
    StateChanged,
    Transcript,
    TurnEnded,
)
from voiced.testing import FakeDaemon
from voiced.turn import Outcome, State
from voiced_plugins.stdout import StdoutConfig, StdoutSink


def delta(text: str, item: str = "item_a", role: str = "agent") -> Transcript:
    return Transcript(role, text, 1, item, 1_700_000_001.0, final=False)  # type: ignore[arg-type]


USER = Transcript("user", "what time is it?", 1, "item_u", 1_700_000_000.125)
AGENT = Transcript("agent", "It is noon.", 1, "item_a", 1_700_000_002.0)
TURN = TurnEnded(1, Outcome.COMPLETED, {"commit": 12.0})
# The agent's words arrive while the user's transcript is still being made (as on the wire).
TALK: list[Event] = [
    delta("It "),
    delta("is "),
    USER,
    delta("noon."),
    ConnectionChanged(True, True),
    AGENT,
    StateChanged(State.IDLE, State.LISTENING, 2),
    TURN,
]


async def run_sink(config: StdoutConfig, events: list[Event]) -> FakeDaemon:
    fake = FakeDaemon()
    with trio.fail_after(10):
        async with fake.running(StdoutSink(config)):
            for event in events:
                fake.publish(event)
    return fake


async def test_text_prints_final_transcripts(capsys: pytest.CaptureFixture[str]) -> None:
    fake = await run_sink(StdoutConfig(), TALK)
    assert capsys.readouterr().out == "user: what time is it?\nagent: It is noon.\n"
    assert [s.kinds for s in fake.subscriptions] == [(Transcript,)]  # only what it prints


async def test_text_deltas_on_a_live_line_then_the_final_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    await run_sink(StdoutConfig(deltas=True), TALK)
    assert capsys.readouterr().out == (
        "agent> It is \n"  # the live line, ended by another transcript's line
        "user: what time is it?\n"
        "agent> noon.\n"  # picked up again on a line of its own
        "agent: It is noon.\n"
    )


async def test_text_deltas_left_open_are_ended_at_shutdown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    await run_sink(StdoutConfig(deltas=True), [delta("Hel"), delta("lo")])
    assert capsys.readouterr().out == "agent> Hello\n"


@pytest.mark.parametrize("deltas", [False, True])
async def test_json_lines_are_envelopes(capsys: pytest.CaptureFixture[str], deltas: bool) -> None:
    fake = await run_sink(StdoutConfig(format="json", deltas=deltas), TALK)
    lines = capsys.readouterr().out.splitlines()
    got = [json.loads(line) for line in lines]  # one object per line
    assert all(r["v"] == 1 and r["device_id"] == "test-kiosk" for r in got)
    seen = [(r["kind"], r.get("text", r.get("state", r.get("outcome")))) for r in got]
    live = [("transcript", "It "), ("transcript", "is ")] if deltas else []
    assert seen == [
        *live,
        ("transcript", "what time is it?"),
        *([("transcript", "noon.")] if deltas else []),
        ("transcript", "It is noon."),
        ("state", "listening"),  # what the daemon shows, from the StateChanged
        ("turn", "completed"),
    ]
    assert [r["final"] for r in got if r["kind"] == "transcript"] == (
        [False, False, True, False, True] if deltas else [True, True]
    )
    finals = [r for r in got if r.get("final")]
    assert [r["id"] for r in finals] == [USER.id, AGENT.id]
    assert next(r for r in got if r["kind"] == "turn")["id"] == TURN.id
    assert [s.kinds for s in fake.subscriptions] == [(Transcript, TurnEnded, DaemonState)]


async def test_json_keeps_text_as_utf8(capsys: pytest.CaptureFixture[str]) -> None:
    said = Transcript("agent", "Il est midi, déjà.\nVoilà.", 1, "item_a", 1_700_000_000.0)
    await run_sink(StdoutConfig(format="json"), [said])
    out = capsys.readouterr().out
    assert "déjà" in out  # not \\u escapes
    assert out.count("\n") == 1  # the newline inside the text is escaped
    assert json.loads(out)["text"] == "Il est midi, déjà.\nVoilà."


def text_stream(fd: int) -> io.TextIOWrapper:
    return open(fd, "w", encoding="utf-8")


def byte_stream(fd: int) -> io.BufferedReader:
    return open(fd, "rb")


async def test_closed_stdout_is_reported_once_then_cleared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read, write = os.pipe()
    os.close(read)  # nobody reads: writing fails with a broken pipe
    broken = text_stream(write)
    monkeypatch.setattr(sys, "stdout", broken)
    fake = FakeDaemon()
    changes = fake.subscribe(PluginChanged)
    with trio.fail_after(10):
        async with fake.running(StdoutSink(StdoutConfig())):
            fake.publish(USER)
            fake.publish(AGENT)
            error = await changes.receive()
            await trio.testing.wait_all_tasks_blocked()
            read, write = os.pipe()
            with byte_stream(read) as reader, text_stream(write) as works:
                monkeypatch.setattr(sys, "stdout", works)
                fake.publish(AGENT)
                assert await changes.receive() == PluginChanged("plugin", None)
                works.close()
                assert reader.read() == b"agent: It is noon.\n"
    assert isinstance(error, PluginChanged)
    assert "stdout sink: cannot write to standard output" in str(error.error)
    assert fake.reports == [error.error, None]  # once, however many lines failed
    with pytest.raises(OSError):  # noqa: PT011 (a broken pipe, whatever its errno name)
        broken.close()


# ---------------------------------------------------------------------- the real daemon


def test_voiced_ask_json_stdout_and_file_share_ids(tmp_path: Path) -> None:
    """``voiced ask`` with the built-in simulator: stdout JSON lines (deltas included) and the
    file carry the same envelopes, with the same ids."""
    transcripts = tmp_path / "t.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(
        "realtime: {url: sim}\n"
        "plugins:\n"
        "  stdout: {format: json, deltas: true}\n"
        f"  file: {{path: {transcripts}, max_bytes: 0}}\n"
    )
    wav = write_wav(tmp_path / "in.wav", tone(0.5))
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    out = str(tmp_path / "out.wav")
    result = subprocess.run(
        [sys.executable, "-m", "voiced", "ask", "--config", str(config), str(wav), "--out", out],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    written = [json.loads(line) for line in transcripts.read_text().splitlines()]
    finals = [(r["role"], r["text"]) for r in printed if r["kind"] == "transcript" and r["final"]]
    assert finals == [("user", "heard 500 ms"), ("agent", "echo of 500 ms")]
    assert [r["outcome"] for r in printed if r["kind"] == "turn"] == ["completed"]
    assert any(r["kind"] == "transcript" and not r["final"] for r in printed)  # live deltas
    # The file has no deltas; everything else it has, stdout printed too, with the same ids.
    assert all(r["final"] for r in written if r["kind"] == "transcript")
    by_id = {r["id"]: r for r in printed}
    assert [r["kind"] for r in written if r["kind"] != "state"] == ["transcript"] * 2 + ["turn"]
    for record in written:
        if record["kind"] != "state":  # states race the start: stdout may subscribe later
            assert by_id[record["id"]] == record
