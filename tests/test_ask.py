"""``voiced ask`` against a server speaking the GA protocol on a real loopback WebSocket.

The issue's "done when": three 3-second utterances; the server receives every input sample
bit-exact; OUT.wav equals every reply sample the server sent, bit-exact; both transcripts of every
turn reach stdout and the file sink; the server sees zero protocol violations.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import trio

from tests.conftest import SIM_KEY, RunningSim, config_file, read_wav, tone, write_wav
from tests.sdkcheck import assert_valid_client_event
from voiced.app import ask
from voiced.config import load_config
from voiced.errors import AuthRejected, RequestRejected, ServerUnreachable


def _config(tmp_path: Path, url: str, key: str = SIM_KEY, extra: str = "") -> Path:
    return config_file(
        tmp_path,
        f"realtime:\n  url: {url}\nauth:\n  api_key: {key}\n"
        f"plugins:\n  stdout: {{}}\n  file:\n    path: {tmp_path / 't.jsonl'}\n{extra}",
    )


async def test_three_turns_bit_exact(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    utterances = [tone(3.0, seed=i) for i in range(3)]
    inputs = [write_wav(tmp_path / f"in{i}.wav", pcm) for i, pcm in enumerate(utterances)]
    out = tmp_path / "out.wav"
    config = load_config(_config(tmp_path, sim.url))
    with trio.fail_after(30):
        results = await ask(config, inputs, out)

    assert [r.outcome for r in results] == ["completed"] * 3
    (conn,) = sim.sim.connections
    assert conn.committed_audio == utterances  # every input sample, bit-exact, per turn
    assert read_wav(out) == b"".join(conn.reply_audio)  # every reply sample, in order
    assert len(conn.reply_audio) == 3
    # Zero protocol violations: every event voiced sent is valid under the SDK's types with no
    # unknown keys, and the server answered none of them with an error.
    for event in conn.received:
        assert_valid_client_event(event)
    assert conn.errors_sent == []
    # The appended audio is exactly the committed audio (nothing sent outside a turn).
    appended = b"".join(
        base64.b64decode(e["audio"])
        for e in conn.received
        if e["type"] == "input_audio_buffer.append"
    )
    assert appended == b"".join(utterances)
    hello = conn.received[0]
    assert hello["type"] == "session.update"
    assert hello["session"]["audio"]["input"]["turn_detection"] is None
    types = [e["type"] for e in conn.received if e["type"] != "input_audio_buffer.append"]
    assert types == ["session.update"] + ["input_audio_buffer.commit", "response.create"] * 3

    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln]
    assert lines == ["user: heard 3000 ms", "agent: echo of 3000 ms"] * 3
    records = [json.loads(ln) for ln in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [(r["turn"], r["outcome"]) for r in records if r["kind"] == "turn"] == [
        (turn, "completed") for turn in (1, 2, 3)
    ]
    said = [r for r in records if r["kind"] == "transcript"]
    assert [(r["turn"], r["role"], r["text"]) for r in said] == [
        (turn, role, text)
        for turn in (1, 2, 3)
        for role, text in (("user", "heard 3000 ms"), ("agent", "echo of 3000 ms"))
    ]


async def test_too_short_commit_sends_clear_not_commit(sim: RunningSim, tmp_path: Path) -> None:
    short = write_wav(tmp_path / "short.wav", tone(0.05))
    config = load_config(_config(tmp_path, sim.url))
    with trio.fail_after(10):
        results = await ask(config, [short], tmp_path / "out.wav")
    assert [r.outcome for r in results] == ["too_short"]
    (conn,) = sim.sim.connections
    types = [e["type"] for e in conn.received]
    assert "input_audio_buffer.commit" not in types
    assert "response.create" not in types
    assert types[-1] == "input_audio_buffer.clear"
    assert conn.errors_sent == []


async def test_wrong_key_is_stated_plainly(sim: RunningSim, tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, sim.url, key="sk-wrong"))
    with (
        trio.fail_after(10),
        pytest.RaisesGroup(
            pytest.RaisesExc(
                AuthRejected, match=r"^the server rejected the credentials: Incorrect API key"
            ),
            flatten_subgroups=True,
        ),
    ):
        await ask(config, [write_wav(tmp_path / "a.wav", tone(0.5))], tmp_path / "out.wav")
    assert sim.sim.connections[0].close_code == 3000


async def test_http_401_at_handshake_is_a_rejected_key(sim: RunningSim, tmp_path: Path) -> None:
    sim.sim.faults.handshake_status = 401
    config = load_config(_config(tmp_path, sim.url))
    with (
        trio.fail_after(10),
        pytest.RaisesGroup(
            pytest.RaisesExc(
                AuthRejected, match=r"^the server rejected the credentials \(HTTP 401 at "
            ),
            flatten_subgroups=True,
        ),
    ):
        await ask(config, [write_wav(tmp_path / "a.wav", tone(0.5))], tmp_path / "out.wav")


async def test_unreachable_server(tmp_path: Path) -> None:
    from tests.conftest import free_port

    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    config = load_config(_config(tmp_path, url))
    with (
        trio.fail_after(10),
        pytest.RaisesGroup(
            pytest.RaisesExc(ServerUnreachable, match=rf"^cannot reach {url}: "),
            flatten_subgroups=True,
        ),
    ):
        await ask(config, [write_wav(tmp_path / "a.wav", tone(0.5))], tmp_path / "out.wav")


async def test_wrong_path_is_a_request_error(sim: RunningSim, tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, f"ws://127.0.0.1:{sim.port}/v1/nothing"))
    with (
        trio.fail_after(10),
        pytest.RaisesGroup(
            pytest.RaisesExc(RequestRejected, match=r"^no realtime endpoint at .* \(HTTP 404\)"),
            flatten_subgroups=True,
        ),
    ):
        await ask(config, [write_wav(tmp_path / "a.wav", tone(0.5))], tmp_path / "out.wav")


async def test_server_error_fails_the_turn_and_says_why(
    sim: RunningSim, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim.sim.faults.fail_event = "response.create"
    config = load_config(_config(tmp_path, sim.url))
    inputs = [write_wav(tmp_path / "a.wav", tone(0.5)), write_wav(tmp_path / "b.wav", tone(0.5))]
    with trio.fail_after(10):
        results = await ask(config, inputs, tmp_path / "out.wav")
    # Each turn fails on its own; the session carries on to the next one.
    assert [r.outcome for r in results] == ["failed", "failed"]
    assert (
        "turn 1: server error: The server had an error while processing your request."
        in caplog.messages
    )
    (conn,) = sim.sim.connections
    assert [e["error"]["event_id"] for e in conn.errors_sent] == ["response_1", "response_2"]
