"""Tests for the simulator's client-secret endpoint, served on the WebSocket's own port.

Real loopback throughout: httpx posts to ``/v1/realtime/client_secrets`` (or Azure's path) and
trio-websocket connects with what came back. Expiry moves an injected wall clock, never sleeps.
The body validation is sans-IO (:func:`voiced.sim.mint.parse_mint_body`) and is also driven
directly. Same rules as ``test_sim.py``, whose helpers these tests share.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from openai.types.realtime import ClientSecretCreateResponse
from trio_websocket import ConnectionClosed

from tests.sdkcheck import assert_valid_server_event
from tests.test_sim import KEY, RESOURCE, auth, error_of, open_tcp_ws, recv, start
from voiced.sim import SimFaults, SimMint, Simulator
from voiced.sim.mint import DEFAULT_TTL_S, MAX_BODY_BYTES, parse_mint_body
from voiced.sim.schema import Problem

T0 = 1_800_000_000.0
MINT = "/v1/realtime/client_secrets"
AZURE_MINT = "/openai/v1/realtime/client_secrets"
SESSION = {
    "type": "realtime",
    "model": "gpt-realtime-2",
    "instructions": "Answer in French.",
    "audio": {"output": {"voice": "marin"}},
}


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def http_client(port: int) -> httpx.AsyncClient:
    """An HTTP client for the simulator served on loopback ``port``."""
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")


def error_body(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "code", "param"}
    return error


async def refused(port: int, resource: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """Connect, expect the error event and then the close 3000; returns the error."""
    async with open_tcp_ws(port, resource, headers) as ws:
        error = error_of(await recv(ws))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
    assert closed.value.reason is not None
    assert (closed.value.reason.code, closed.value.reason.reason) == (
        3000,
        "invalid_request_error.invalid_api_key",
    )
    return error


async def test_mint_then_connect_with_the_secret(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY, clock=Clock())
        port = await start(nursery, sim)
        async with http_client(port) as http:
            body = {"expires_after": {"anchor": "created_at", "seconds": 120}, "session": SESSION}
            response = await http.post(MINT, json=body, headers=bearer())
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        minted = response.json()
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime-2"
        async with trio_websocket.open_websocket_url(
            url, extra_headers=auth(minted["value"])
        ) as ws:
            created = await recv(ws)
        # The plain API key still opens a session on the same port.
        async with trio_websocket.open_websocket_url(
            f"ws://127.0.0.1:{port}{RESOURCE}", extra_headers=auth()
        ) as ws:
            plain = await recv(ws)

    ClientSecretCreateResponse.model_validate(minted)
    assert minted["value"].startswith("ek_")
    assert len(minted["value"]) > 20
    assert minted["expires_at"] == T0 + 120
    session = minted["session"]
    assert (session["object"], session["type"]) == ("realtime.session", "realtime")
    assert session["id"].startswith("sess_")
    assert session["model"] == "gpt-realtime-2"
    assert session["instructions"] == "Answer in French."
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["expires_at"] == minted["expires_at"]

    assert created["type"] == "session.created"
    assert_valid_server_event(created)
    opened = created["session"]
    assert (opened["model"], opened["instructions"]) == ("gpt-realtime-2", "Answer in French.")
    assert opened["audio"]["output"]["voice"] == "marin"
    assert opened["id"] == "sess_0001"
    assert opened["expires_at"] == T0 + 3600
    assert sim.connections[0].session.config == opened

    assert plain["type"] == "session.created"
    assert plain["session"]["model"] == "gpt-realtime"
    assert plain["session"]["audio"]["output"]["voice"] == "alloy"

    (record,) = sim.mints
    assert isinstance(record, SimMint)
    assert (record.value, record.expires_at, record.seconds) == (minted["value"], T0 + 120, 120)
    assert record.session == session
    assert record.headers["authorization"] == f"Bearer {KEY}"
    assert minted["value"] not in repr(record)
    assert KEY not in repr(record)


async def test_mint_without_a_body_gets_the_defaults(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY, clock=Clock())
        port = await start(nursery, sim)
        async with http_client(port) as http:
            response = await http.post(MINT, headers=bearer())

    assert response.status_code == 200
    minted = response.json()
    ClientSecretCreateResponse.model_validate(minted)
    assert minted["expires_at"] == T0 + DEFAULT_TTL_S
    assert minted["session"]["model"] == "gpt-realtime"
    assert sim.mints[0].seconds == DEFAULT_TTL_S


@pytest.mark.parametrize(
    ("headers", "code", "message"),
    [
        (
            bearer("sk-abcdefghijklmnxyz"),
            "invalid_api_key",
            "Incorrect API key provided: sk-ab***yz.",
        ),
        (
            {"api-key": "sk-abcdefghijklmnxyz"},
            "invalid_api_key",
            "Incorrect API key provided: sk-ab***yz.",
        ),
        ({}, None, "You didn't provide an API key."),
        ({"Authorization": f"Basic {KEY}"}, None, "You didn't provide an API key."),
    ],
)
async def test_mint_with_a_wrong_or_missing_key_is_401(
    nursery: trio.Nursery, headers: dict[str, str], code: str | None, message: str
) -> None:
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY)
        port = await start(nursery, sim)
        async with http_client(port) as http:
            response = await http.post(MINT, json={"session": SESSION}, headers=headers)

    assert response.status_code == 401
    error = error_body(response)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, None)
    assert error["message"].startswith(message)
    assert "abcdefghijklmn" not in error["message"]
    assert sim.mints == []


async def test_a_minted_secret_cannot_mint(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY)
        port = await start(nursery, sim)
        async with http_client(port) as http:
            value = (await http.post(MINT, headers=bearer())).json()["value"]
            response = await http.post(MINT, headers=bearer(value))

    assert response.status_code == 401
    assert error_body(response)["code"] == "invalid_api_key"
    assert len(sim.mints) == 1


async def test_azure_path_and_api_key_header(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY)
        port = await start(nursery, sim)
        async with http_client(port) as http:
            response = await http.post(
                AZURE_MINT, json={"session": SESSION}, headers={"api-key": KEY}
            )
        url = f"ws://127.0.0.1:{port}/openai/v1/realtime?model=my-deployment"
        async with trio_websocket.open_websocket_url(
            url, extra_headers=[(b"api-key", KEY.encode())]
        ) as ws:
            created = await recv(ws)
        async with trio_websocket.open_websocket_url(
            url, extra_headers=auth(response.json()["value"])
        ) as ws:
            from_secret = await recv(ws)
        wrong = await refused(port, "/openai/v1/realtime?model=x", [(b"api-key", b"wrong-key-123")])

    assert response.status_code == 200
    assert sim.mints[0].headers["api-key"] == KEY
    assert created["type"] == "session.created"
    assert created["session"]["model"] == "my-deployment"
    assert from_secret["session"]["model"] == "gpt-realtime-2"
    assert wrong["code"] == "invalid_api_key"


async def test_secret_opens_sessions_until_it_expires(nursery: trio.Nursery) -> None:
    clock = Clock()
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY, clock=clock)
        port = await start(nursery, sim)
        async with http_client(port) as http:
            body = {"expires_after": {"seconds": 10}}
            value = (await http.post(MINT, json=body, headers=bearer())).json()["value"]
        url = f"ws://127.0.0.1:{port}{RESOURCE}"
        clock.now = T0 + 9.5  # one secret may open several sessions before it expires
        for _ in range(2):
            async with trio_websocket.open_websocket_url(url, extra_headers=auth(value)) as ws:
                assert (await recv(ws))["type"] == "session.created"
        clock.now = T0 + 10
        error = await refused(port, RESOURCE, auth(value))
        await sim.connections[-1].closed.wait()

    assert sim.mints[0].expires_at == T0 + 10
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert error["message"].startswith(f"Incorrect API key provided: {value[:5]}***")
    assert value not in error["message"]
    assert [conn.close_code for conn in sim.connections] == [None, None, 3000]


async def test_unknown_secret_is_refused(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY)
        port = await start(nursery, sim)
        error = await refused(port, RESOURCE, auth("ek_" + "0" * 32))
        # A secret is a bearer token only: Azure's api-key header takes the API key alone.
        async with http_client(port) as http:
            value = (await http.post(MINT, headers=bearer())).json()["value"]
        as_api_key = await refused(port, RESOURCE, [(b"api-key", value.encode())])

    assert error["code"] == "invalid_api_key"
    assert error["message"].startswith("Incorrect API key provided: ek_00***00.")
    assert as_api_key["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"expires_after": {"seconds": 5}}, "integer_below_min_value", "expires_after.seconds"),
        ({"expires_after": {"seconds": 8000}}, "integer_above_max_value", "expires_after.seconds"),
        ({"expires_after": {"seconds": "x"}}, "invalid_type", "expires_after.seconds"),
        ({"expires_after": {"anchor": "now"}}, "invalid_value", "expires_after.anchor"),
        ({"session": {"type": "realtime", "voice": "marin"}}, "unknown_parameter", "session.voice"),
        ({"session": {"model": "m"}}, "missing_required_parameter", "session.type"),
        (
            {"session": {"type": "realtime", "audio": {"output": {"voice": "nobody"}}}},
            "invalid_value",
            "session.audio.output.voice",
        ),
    ],
)
async def test_bad_body_is_400_naming_the_param(
    nursery: trio.Nursery, body: dict[str, Any], code: str, param: str
) -> None:
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY)
        port = await start(nursery, sim)
        async with http_client(port) as http:
            response = await http.post(MINT, json=body, headers=bearer())

    assert response.status_code == 400
    error = error_body(response)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert sim.mints == []


async def test_non_json_body_is_400(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY)
        port = await start(nursery, sim)
        async with http_client(port) as http:
            response = await http.post(MINT, content=b"seconds=600", headers=bearer())

    assert response.status_code == 400
    error = error_body(response)
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", None, None)
    assert error["message"].startswith("We could not parse the JSON body of your request.")


async def test_oversized_body_is_413(nursery: trio.Nursery) -> None:
    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * (MAX_BODY_BYTES // 4)

    with trio.fail_after(10):
        sim = Simulator(api_key=KEY)
        port = await start(nursery, sim)
        async with http_client(port) as http:
            sized = await http.post(
                MINT, content=b" " * (MAX_BODY_BYTES + 1) + b"{}", headers=bearer()
            )
            streamed = await http.post(MINT, content=chunked(), headers=bearer())
            fine = await http.post(MINT, content=b" " * 1000 + b"{}", headers=bearer())

    assert sized.status_code == 413
    assert streamed.status_code == 413
    assert error_body(sized)["type"] == "invalid_request_error"
    assert fine.status_code == 200
    assert len(sim.mints) == 1


async def test_other_methods_are_405_and_other_paths_404(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY)
        port = await start(nursery, sim)
        async with http_client(port) as http:
            get = await http.get(MINT, headers=bearer())
            azure_put = await http.put(AZURE_MINT, json={}, headers=bearer())
            unknown = await http.post("/v1/realtime/sessions", json={}, headers=bearer())
            plain_get = await http.get("/v1/realtime?model=x")

    for response in (get, azure_put):
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        error_body(response)
    assert unknown.status_code == 404
    assert error_body(unknown)["message"] == "Invalid URL (POST /v1/realtime/sessions)"
    assert plain_get.status_code == 404
    assert get.headers["connection"] == "close"
    assert sim.mints == []


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (429, "insufficient_quota", "insufficient_quota"),
        (429, "rate_limit_exceeded", "requests"),
        (500, None, "server_error"),
        (503, "overloaded", "server_error"),
    ],
)
async def test_mint_faults(nursery: trio.Nursery, status: int, code: str | None, kind: str) -> None:
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY, faults=SimFaults(mint_status=status, mint_code=code))
        port = await start(nursery, sim)
        async with http_client(port) as http:
            faulted = await http.post(MINT, json={"session": SESSION}, headers=bearer())
            wrong_key = await http.post(MINT, headers=bearer("wrong-key-123"))
            sim.faults.mint_status = None
            healed = await http.post(MINT, json={"session": SESSION}, headers=bearer())

    assert faulted.status_code == status
    error = error_body(faulted)
    assert (error["code"], error["type"]) == (code, kind)
    assert error["message"]
    assert wrong_key.status_code == 401  # the key is checked first
    assert healed.status_code == 200
    assert len(sim.mints) == 1


async def test_raw_clients_do_not_upset_the_server(nursery: trio.Nursery) -> None:
    """Garbage gets a 400, a client that leaves at once nothing; the server keeps serving."""
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY)
        port = await start(nursery, sim)
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        await silent.aclose()
        async with http_client(port) as http:
            response = await http.post(MINT, headers=bearer())

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert response.status_code == 200


async def test_no_log_record_holds_a_key_or_secret(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-key-for-the-log-test"
    with trio.fail_after(10):
        sim = Simulator(api_key=KEY, clock=Clock())
        port = await start(nursery, sim)
        async with http_client(port) as http:
            minted = await http.post(MINT, json={"session": SESSION}, headers=bearer())
            value = minted.json()["value"]
            azure = (await http.post(AZURE_MINT, headers={"api-key": KEY})).json()["value"]
            await http.post(MINT, headers=bearer(wrong))
        # httpx logs its URLs, so a key in the query string goes over a raw socket; so does a
        # malformed header line holding the key (h11 quotes the line in its error).
        requests = [
            f"POST {target} HTTP/1.1\r\nHost: sim\r\napi-key: {KEY}\r\nContent-Length: 0\r\n\r\n"
            for target in (f"{AZURE_MINT}?api-key={KEY}", f"/nowhere?api-key={KEY}")
        ]
        requests.append(f"POST {MINT} HTTP/1.1\r\nHost: sim\r\nBearer {KEY}\r\n\r\n")
        answers = []
        for request in requests:
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(request.encode())
                answers.append(b"")
                while chunk := await stream.receive_some():
                    answers[-1] += chunk
        # trio-websocket's open_websocket_url logs its URL: this client logs nothing.
        resource = f"/openai/v1/realtime?model=m&api-key={KEY}"
        async with open_tcp_ws(port, resource, auth(value)) as ws:
            assert (await recv(ws))["type"] == "session.created"
        await refused(port, RESOURCE, auth(wrong))
        await refused(port, RESOURCE, auth(azure + "x"))

    assert [answer.split(b" ")[1] for answer in answers] == [b"200", b"404", b"400"]
    messages = [record.getMessage() for record in caplog.records]
    assert any("client_secrets" in message for message in messages)
    secrets = [KEY, wrong, *(mint.value for mint in sim.mints)]
    assert len(secrets) == 5
    assert {value, azure} < set(secrets)
    for message in [*messages, caplog.text]:
        for secret in secrets:
            assert secret not in message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", (DEFAULT_TTL_S, None)),
        (b"{}", (DEFAULT_TTL_S, None)),
        (b'{"expires_after": null, "session": null}', (DEFAULT_TTL_S, None)),
        (b'{"expires_after": {"anchor": "created_at", "seconds": 10}}', (10, None)),
        (b'{"expires_after": {"seconds": 7200}}', (7200, None)),
        (b'{"session": {"type": "realtime"}}', (DEFAULT_TTL_S, {"type": "realtime"})),
    ],
)
def test_parse_mint_body_accepts(body: bytes, expected: tuple[int, Any]) -> None:
    assert parse_mint_body(body) == expected


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"[]", "invalid_type", "body"),
        (b"\xff\xfe{", None, None),
        (b"{", None, None),
        (b"[" * 100_000, None, None),
        (b'{"expires_after": {"seconds": 9}}', "integer_below_min_value", "expires_after.seconds"),
        (
            b'{"expires_after": {"seconds": 7201}}',
            "integer_above_max_value",
            "expires_after.seconds",
        ),
        (b'{"expires_after": {"seconds": 60.0}}', "invalid_type", "expires_after.seconds"),
        (b'{"expires_after": {"seconds": true}}', "invalid_type", "expires_after.seconds"),
        (b'{"expires_after": {"anchor": "expires_at"}}', "invalid_value", "expires_after.anchor"),
        (b'{"expires_after": 600}', "invalid_type", "expires_after"),
        (b'{"expires_after": {"ttl": 600}}', "unknown_parameter", "expires_after.ttl"),
        (b'{"session": "realtime"}', "invalid_type", "session"),
        (b'{"ttl": 600}', "unknown_parameter", "ttl"),
    ],
)
def test_parse_mint_body_refuses(body: bytes, code: str | None, param: str | None) -> None:
    problem = parse_mint_body(body)
    assert isinstance(problem, Problem)
    assert (problem.code, problem.param) == (code, param)
