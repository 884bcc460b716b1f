"""The simulated client-secret endpoint, sans-IO: a request in, the HTTP answer out.

``POST /v1/realtime/client_secrets`` (and Azure's ``/openai/v1/realtime/client_secrets``) trades
the API key for an ephemeral ``ek_...`` secret that opens sessions until it expires (protocol §2,
§8). :func:`route` answers what is not a mint (404, 405); :class:`Minter` checks the key, the
body (:func:`parse_mint_body`) and the fault switches, and records every secret it issues, which
:class:`~voiced.sim.session.SimSession` then accepts as a bearer token. Errors have the shape of
OpenAI's REST errors. No trio, no sockets: the wall clock is a callable.
"""

from __future__ import annotations

import http
import itertools
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voiced.sim.auth import credential, key_problem
from voiced.sim.config import apply_update, default_session
from voiced.sim.schema import SESSION_SHAPE, Problem, Shape, find_unknown, invalid_type

MINT_PATHS = ("/v1/realtime/client_secrets", "/openai/v1/realtime/client_secrets")
"""OpenAI's path, then Azure's."""
MAX_BODY_BYTES = 1024 * 1024
MIN_TTL_S = 10
MAX_TTL_S = 7200
DEFAULT_TTL_S = 600
DEFAULT_MODEL = "gpt-realtime"
"""The model of a secret minted without ``session.model``."""

_BODY_SHAPE: Shape = {"expires_after": {"anchor": None, "seconds": None}, "session": SESSION_SHAPE}
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
    "not valid JSON.)"
)
_FAULT_ERRORS: dict[str, tuple[str, str]] = {
    "insufficient_quota": (
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "rate_limit_exceeded": (
        "requests",
        "Rate limit reached for requests. Please try again in 1s.",
    ),
}
"""Fault codes with the error ``type`` and message the real API pairs them with."""


@dataclass
class SimMint:
    """The record of one successful mint, for tests (the value and headers are secrets)."""

    value: str = field(repr=False)
    """The ``ek_...`` secret."""
    expires_at: int
    """Unix seconds (on the simulator's clock) after which it opens no new session."""
    seconds: int
    """The TTL asked for (or the default)."""
    session: dict[str, Any]
    """The effective session a connection opened with this secret starts with."""
    headers: dict[str, str] = field(repr=False)
    """The request headers, names lower-cased (includes the API key: never log them)."""


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: a status, a JSON body, and any extra headers."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def phrase(self) -> str:
        return status_phrase(self.status)


def status_phrase(status: int) -> str:
    """The standard reason phrase of ``status``, or ``HTTP <status>`` for an unknown one."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def error_reply(status: int, problem: Problem, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """An OpenAI-style REST error: ``{"error": {"message", "type", "code", "param"}}``."""
    error = {
        "message": problem.message,
        "type": problem.type,
        "code": problem.code,
        "param": problem.param,
    }
    return Reply(status, {"error": error}, headers)


def route(method: str, path: str) -> Reply | None:
    """The answer to a request that is not a mint, or None for ``POST`` to a mint path."""
    if path not in MINT_PATHS:
        return error_reply(404, Problem(None, f"Invalid URL ({method} {path})"))
    if method != "POST":
        problem = Problem(None, f"Method {method} not allowed for {path}; use POST.")
        return error_reply(405, problem, (("Allow", "POST"),))
    return None


def too_large() -> Reply:
    message = f"The request body is larger than the maximum of {MAX_BODY_BYTES} bytes."
    return error_reply(413, Problem(None, message))


def bad_request(message: str, status: int = 400) -> Reply:
    """A request HTTP itself could not parse (431: its head was too large)."""
    return error_reply(status, Problem(None, message))


def parse_mint_body(body: bytes) -> tuple[int, dict[str, Any] | None] | Problem:
    """Validate a mint request's body (empty means ``{}``).

    Returns:
        The TTL in seconds and the ``session`` asked for (None: the defaults), or the problem
        that makes it a 400.
    """
    if not body.strip():
        return DEFAULT_TTL_S, None
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return Problem(None, _BAD_JSON)
    if not isinstance(request, dict):
        return invalid_type("body", "an object", request)
    problem = find_unknown(request, _BODY_SHAPE)
    if problem is not None:
        return problem
    expires = request.get("expires_after") or {}
    anchor = expires.get("anchor")
    if anchor not in (None, "created_at"):
        message = f"Invalid value: '{anchor}'. Supported values are: 'created_at'."
        return Problem("invalid_value", message, "expires_after.anchor")
    seconds = expires.get("seconds")
    if seconds is None:
        seconds = DEFAULT_TTL_S
    param = "expires_after.seconds"
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        return invalid_type(param, "an integer", seconds)
    if not MIN_TTL_S <= seconds <= MAX_TTL_S:
        low = seconds < MIN_TTL_S
        bound = f">= {MIN_TTL_S}" if low else f"<= {MAX_TTL_S}"
        message = (
            f"Invalid '{param}': integer {'below minimum' if low else 'above maximum'} value. "
            f"Expected a value {bound}, but got {seconds} instead."
        )
        code = "integer_below_min_value" if low else "integer_above_max_value"
        return Problem(code, message, param)
    return seconds, request.get("session")


def mint_session(
    update: dict[str, Any] | None, *, session_id: str, expires_at: int
) -> dict[str, Any] | Problem:
    """The effective session of a secret: the defaults, changed by the body's ``session``."""
    model = (update or {}).get("model")
    if model is None:
        model = DEFAULT_MODEL
    elif not isinstance(model, str) or not model:
        return invalid_type("session.model", "a non-empty string", model)
    session = default_session(session_id=session_id, model=model, expires_at=expires_at)
    if update is None:
        return session
    return apply_update(session, update, voice_locked=False)


class Minter:
    """Issues client secrets for one API key, and remembers them.

    Args:
        api_key: the only key that may mint.
        clock: the wall clock, Unix seconds, for ``expires_at``.
        record: keep every mint in :attr:`mints`. False: keep only the secrets that have not
            expired (each mint forgets the expired ones), so a long-running server stays small.
    """

    def __init__(self, *, api_key: str, clock: Callable[[], float], record: bool = True) -> None:
        self.mints: list[SimMint] = []
        """Every successful mint, in order (when recording)."""
        self.secrets: dict[str, SimMint] = {}
        """The same mints by value: what a connection may present as its bearer token."""
        self._record = record
        self._api_key = api_key
        self._clock = clock
        self._ids = itertools.count(1)

    def mint(
        self,
        headers: Mapping[str, str],
        body: bytes,
        *,
        fault_status: int | None = None,
        fault_code: str | None = None,
    ) -> Reply:
        """Answer one ``POST`` to a mint path (header names lower-cased).

        ``fault_status`` (with ``fault_code``) answers a request with the right key with that
        error instead, as when the account is out of quota or the server fails.
        """
        key = credential(headers)
        if key != self._api_key:
            return error_reply(401, key_problem(key))
        if fault_status is not None:
            return error_reply(fault_status, _fault(fault_status, fault_code))
        parsed = parse_mint_body(body)
        if isinstance(parsed, Problem):
            return error_reply(400, parsed)
        seconds, update = parsed
        expires_at = int(self._clock()) + seconds
        session_id = f"sess_mint_{next(self._ids):04d}"
        session = mint_session(update, session_id=session_id, expires_at=expires_at)
        if isinstance(session, Problem):
            return error_reply(400, session)
        value = f"ek_{secrets.token_hex(16)}"
        record = SimMint(value, expires_at, seconds, session, dict(headers))
        if self._record:
            self.mints.append(record)
        else:
            now = self._clock()
            for old in [v for v, m in self.secrets.items() if now >= m.expires_at]:
                del self.secrets[old]
        self.secrets[value] = record
        return Reply(200, {"value": value, "expires_at": expires_at, "session": session})


def _fault(status: int, code: str | None) -> Problem:
    if code in _FAULT_ERRORS:
        kind, message = _FAULT_ERRORS[code]
        return Problem(code, message, type=kind)
    if status >= 500:
        message = "The server had an error while processing your request. Sorry about that!"
        return Problem(code, message, type="server_error")
    return Problem(code, status_phrase(status))
