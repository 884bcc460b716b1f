"""Property-based tests (hypothesis): whatever a server frame, a config file or an HTTP request
holds, voiced answers with a value or with its own error, never with a stray exception.

- The server-event parser (``RealtimeProtocol.receive``): any text or bytes, any JSON, and above
  all near-valid events (every example of ``tests/test_protocol.py`` mutated: fields deleted,
  retyped, nested; audio deltas with broken base64; values nested past the parser's depth) give a
  ``ServerEvent`` whose fields have their declared types, or a ``RemoteProtocolError`` with a
  short message.
- The config loader (``load_config``): any bytes, any YAML (documents shaped by the schema and by
  each built-in plugin's config, with mistyped values, tags, anchors and aliases, ``${VAR}``
  references, very deep nesting) give a ``Config`` or a ``ConfigError``; so do
  ``plugin_enabled``, ``plugin_settings`` and ``build`` on every plugin section that loads.
- The HTTP API (the ``http`` plugin's ASGI application, called directly, no server): any body,
  query string, method and authorization gives one well-formed JSON response, 2xx or 4xx; and an
  ``http`` section that loads gives a rate limit the application can answer with.

Deterministic: every test runs derandomized (the same examples on every run, with no example
database), so CI sees what a laptop sees.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import importlib
import json
import math
import os
import re
import string
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints
from unittest import mock

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_protocol import PARSED
from tests.test_protocol import PASSIVE as PASSIVE_EXAMPLES
from voiced.actions import Verdict
from voiced.config import Config, load_config, plugin_enabled, plugin_settings
from voiced.errors import ConfigError, RemoteProtocolError
from voiced.protocol import RealtimeProtocol, ServerEvent
from voiced.server_events import PARSERS
from voiced.testing import FakeDaemon
from voiced.yamlconf import NOT_IN_YAML, Located, build
from voiced_plugins._http_app import App
from voiced_plugins._http_limits import RateLimit
from voiced_plugins._http_metrics import Metrics

T = TypeVar("T")

PROPERTIES = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Every test's settings: the same examples on every run, and no time limit per example (I/O)."""
ON_FILES = settings(
    PROPERTIES,
    suppress_health_check=[*PROPERTIES.suppress_health_check, HealthCheck.function_scoped_fixture],
)
"""For the tests that write their file into ``tmp_path``: one file, overwritten by each example."""

MAX_MESSAGE = 400
"""The longest error message a malformed frame may produce (it goes into one log line)."""


def _keys(value: object) -> Iterator[str]:
    """Every key of every mapping in ``value``, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


# --------------------------------------------------------------------------- JSON values

SEEDS: list[dict[str, Any]] = [payload for _, payload, _ in PARSED] + [
    payload for _, payload in PASSIVE_EXAMPLES
]
"""Valid GA events (checked against the SDK by ``tests/test_protocol.py``): where mutations start."""
KEYS = sorted(set(_keys(SEEDS)))
"""Every key the examples have, at any depth: the field names the parsers look for."""
DELTA = next(payload for payload in SEEDS if payload["type"] == "response.output_audio.delta")

HUGE = [10**400, -(10**400), 10**4000, 2**63, 2**64 + 1, -(2**63) - 1]
"""Integers past every fixed-size type (JSON allows them; int(str) stops at 4300 digits)."""

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE),
    st.floats(),  # NaN and ±Infinity among them: json.dumps writes them as literals
    st.text(max_size=12),
    st.sampled_from(KEYS),
    st.sampled_from(sorted(PARSERS)),
)
json_keys = st.sampled_from(KEYS) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=12,
)


# --------------------------------------------------------------------------- the server-event parser


def receive(frame: str | bytes) -> ServerEvent | None:
    """The event ``frame`` parses to, or None when it was refused with a short
    ``RemoteProtocolError``. Anything else raised fails the property."""
    try:
        event = RealtimeProtocol().receive(frame)
    except RemoteProtocolError as exc:
        refusal = str(exc)
    else:
        assert isinstance(event, ServerEvent)
        assert_well_typed(event)
        return event
    assert 0 < len(refusal) <= MAX_MESSAGE, refusal[:1000]
    return None


def assert_well_typed(value: object) -> None:
    """Every field of the dataclass ``value`` holds a value of its declared type (recursively)."""
    hints = get_type_hints(type(value))
    for field in dataclasses.fields(value):  # type: ignore[arg-type]
        item = getattr(value, field.name)
        assert _fits(item, hints[field.name]), f"{type(value).__name__}.{field.name} = {item!r}"
        if dataclasses.is_dataclass(item):
            assert_well_typed(item)


def _fits(value: object, hint: object) -> bool:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, member) for member in get_args(hint))
    if hint is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, dict)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    assert isinstance(hint, type), hint
    return isinstance(value, hint)


@st.composite
def frames(draw: st.DrawFn, events: st.SearchStrategy[object]) -> str | bytes:
    """An event as a text frame, or as a binary one in UTF-8, -16 or -32 (which ``json.loads``
    detects); lone surrogates pass into the bytes as they are, which is not UTF-8."""
    text = json.dumps(draw(events), ensure_ascii=draw(st.booleans()))
    encoding = draw(st.sampled_from([None, "utf-8", "utf-16", "utf-32"]))
    return text if encoding is None else text.encode(encoding, "surrogatepass")


def _containers(value: object, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every mapping and list in ``value``, itself first."""
    if isinstance(value, dict | list):
        yield path
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            yield from _containers(item, (*path, key))


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    """The value at ``path`` (keys and list indices) in ``value``, or None when there is none."""
    for key in path:
        keys = (
            value
            if isinstance(value, dict)
            else range(len(value))
            if isinstance(value, list)
            else ()
        )
        if key not in keys:
            return None
        value = value[key]
    return value


def _read_paths(event: dict[str, Any]) -> list[tuple[str, ...]]:
    """The path of every field the parser of ``event`` asks for, found by parsing it once with
    mappings that note each key they are asked for (the fields worth mutating)."""
    asked: set[tuple[str, ...]] = set()

    class Noting(dict[str, Any]):
        path: tuple[str, ...] = ()

        def get(self, key: str, default: Any = None) -> Any:
            asked.add((*self.path, key))
            return super().get(key, default)

        def __getitem__(self, key: str) -> Any:
            asked.add((*self.path, key))
            return super().__getitem__(key)

    def noting(value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            mapping = Noting({k: noting(v, (*path, k)) for k, v in value.items()})
            mapping.path = path
            return mapping
        return [noting(item, path) for item in value] if isinstance(value, list) else value

    PARSERS[event["type"]](event["type"], noting(event, ()))
    return sorted(asked)


READ = {seed["type"]: _read_paths(seed) for seed in SEEDS if seed["type"] in PARSERS}
"""By event type: the paths of the fields its parser reads."""
NEW = "\x00new"
"""The key of a field to add."""


@st.composite
def near_valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one to five mutations, half of them of a field its parser reads."""
    event: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 5))):
        kind = event.get("type")
        paths = READ.get(kind, []) if isinstance(kind, str) else []
        read = [path for path in paths if isinstance(_at(event, path[:-1]), dict)]
        targeted = draw(st.booleans())
        if read and targeted:
            *where, key = draw(st.sampled_from(read))
            _mutate(draw, _at(event, tuple(where)), key)
        else:
            container = _at(event, draw(st.sampled_from(list(_containers(event)))))
            keys = list(container) if isinstance(container, dict) else list(range(len(container)))
            _mutate(draw, container, draw(st.sampled_from([*keys, NEW])))
    return event


def _mutate(draw: st.DrawFn, container: Any, key: Any) -> None:
    """Delete ``container[key]``, set it to another JSON value, or nest it in a list or an
    object; or, when there is none (or ``key`` is `NEW`), add one."""
    if key not in (container if isinstance(container, dict) else range(len(container))):
        if isinstance(container, list):
            container.append(draw(json_values))
        else:
            container[draw(json_keys) if key == NEW else key] = draw(json_values)
        return
    action = draw(st.sampled_from(["delete", "retype", "nest"]))
    if action == "delete":
        del container[key]
    elif action == "retype":
        container[key] = draw(json_values)
    else:
        container[key] = draw(st.sampled_from([[container[key]], {"value": container[key]}]))


def test_every_parsed_event_type_has_an_example_to_mutate() -> None:
    assert {seed["type"] for seed in SEEDS} >= set(PARSERS)
    for seed in SEEDS:
        assert receive(json.dumps(seed)) is not None


@settings(PROPERTIES, max_examples=300)
@given(frame=frames(near_valid_events()))
def test_near_valid_events_parse_or_are_refused(frame: str | bytes) -> None:
    receive(frame)


@settings(PROPERTIES, max_examples=150)
@given(
    frame=frames(
        json_values
        | st.builds(
            lambda kind, fields: {**fields, "type": kind},
            st.sampled_from(sorted(PARSERS)),
            st.dictionaries(json_keys, json_values, max_size=6),
        )
    )
)
def test_any_json_parses_or_is_refused(frame: str | bytes) -> None:
    receive(frame)


JSONISH = string.digits + '{}[]":,.-+eE \n\\/utrfalsnNIiy"'


@settings(PROPERTIES, max_examples=150)
@given(frame=st.text() | st.binary() | st.text(alphabet=JSONISH, max_size=40))
def test_any_text_or_bytes_parses_or_is_refused(frame: str | bytes) -> None:
    receive(frame)


def _nested(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "0" + "}" * depth


@settings(PROPERTIES, max_examples=60)
@given(
    seed=st.sampled_from(SEEDS),
    key=json_keys,
    depth=st.integers(1, 2000) | st.sampled_from([900, 990, 1000, 50_000]),
    kind=st.sampled_from(["list", "object"]),
)
def test_deeply_nested_values_parse_or_are_refused(
    seed: dict[str, Any], key: str, depth: int, kind: str
) -> None:
    hole = "\x00hole"
    text = json.dumps({**seed, key: hole}).replace(json.dumps(hole), _nested(depth, kind))
    receive(text)
    receive(text.encode())


B64 = string.ascii_letters + string.digits + "+/="
deltas = st.one_of(
    st.binary(max_size=48).map(lambda pcm: base64.b64encode(pcm).decode("ascii")),
    st.binary(min_size=1, max_size=48).map(lambda pcm: base64.b64encode(pcm).decode()[:-1]),
    st.text(alphabet=B64, max_size=24),
    st.text(alphabet=B64 + "-_ \n\t\x00é", max_size=24),
    json_values,
)


@settings(PROPERTIES, max_examples=150)
@given(delta=deltas)
def test_audio_delta_is_its_base64_or_refused(delta: object) -> None:
    """An audio delta is taken only as strict base64 (padding, alphabet, no blanks)."""
    try:
        expected = base64.b64decode(delta, validate=True) if isinstance(delta, str) else None
    except ValueError:  # binascii.Error, or text that is not ASCII
        expected = None
    event = receive(json.dumps({**DELTA, "delta": delta}))
    assert (event.audio if event is not None else None) == expected  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the config loader


@dataclasses.dataclass(frozen=True)
class Raw:
    """A YAML token written as it is (a plain scalar, resolved by YAML: ``0x1F``, ``~``)."""

    text: str


@dataclasses.dataclass(frozen=True)
class Tagged:
    tag: str
    value: object


@dataclasses.dataclass(frozen=True)
class Anchored:
    name: str
    value: object


@dataclasses.dataclass(frozen=True)
class Alias:
    name: str


BUILTINS = ("file", "gpio", "hotkey", "http", "mqtt", "stdout", "terminal")
SPECS = {
    name: importlib.import_module(f"voiced_plugins.{name}").voiced_plugin() for name in BUILTINS
}
"""Each built-in plugin's ``PluginSpec``, from its own hook."""

ENV = {
    "VOICED_TEST_PORT": "8080",
    "VOICED_TEST_EMPTY": "",
    "VOICED_TEST_WORD": "marin",
    "VOICED_TEST_HUGE": "9" * 400,
    "VOICED_TEST_HEX": "0x" + "f" * 4000,
    "VOICED_TEST_NAN": ".nan",
    "VOICED_TEST_YAML": "{a: [1, *x]}",
    "VOICED_TEST_BAD_INT": "0x_",
    "VOICED_TEST_BAD_DATE": "2001-13-40",
}
"""The environment while a config is loaded; ``VOICED_TEST_UNSET`` is unset."""
REFERENCES = [
    *(f"${{{name}}}" for name in ENV),
    "${VOICED_TEST_UNSET}",
    "${VOICED_TEST_UNSET:-7}",
    "${VOICED_TEST_EMPTY:-default}",
    "${VOICED_TEST_UNSET:-}",
    "$$",
    "$${VOICED_TEST_PORT}",
    "$",
    "${",
    "${}",
    "${1BAD}",
    "${VOICED_TEST_PORT",
    "${VOICED_TEST_PORT:7}",
]
PLAIN = [
    "~", "null", "Null", "NULL", "yes", "no", "on", "off", "y", "n", "True", "FALSE", "0x1F",
    "0o17", "017", "0b101", "+12", "-0", "1_000", "1:30", "190:20:30.15", "1.5e+3", "1e3", ".5",
    "._", "0x_", "0b_", "-._", ".nan", ".NaN", ".inf", "-.inf", "+.INF", "2001-12-14",
    "2001-12-14t21:59:43.10-05:00", "2001-13-40", "0001-01-01", "9999-12-31t23:59:59+23:59",
    "", "=", "<<", "!", "&", "*", "%", "@", "`", "-", "?", ":", ",", "|", ">", "'", '"',
    "#comment", "- a", "? a", "a: b", "'single'", '"\\x41\\u00e9"', '"\\u12"', "|\n  block",
    ">-\n folded", "9" * 400, "0x" + "f" * 4000, "-" + "1" * 5000,
]  # fmt: skip
"""Plain scalars YAML resolves on its own, and tokens that are no scalar at all."""
TAGS = [
    "!!str", "!!int", "!!float", "!!bool", "!!null", "!!binary", "!!timestamp", "!!set", "!!map",
    "!!seq", "!!omap", "!!pairs", "!!merge", "!!value", "!!yaml", "!local", "!",
    "!!python/object:os.system", "!!python/name:os.system", "!<tag:yaml.org,2002:int>",
    "!<tag:example.com,2000:x>",
]  # fmt: skip
"""Tags of every kind: YAML's own (each constructor, on any scalar), local, unknown, Python's."""

references = st.builds(
    "".join, st.lists(st.sampled_from(REFERENCES) | st.text(max_size=3), min_size=1, max_size=3)
)
yaml_scalars = st.one_of(
    json_scalars,
    st.sampled_from(PLAIN).map(Raw),
    references,  # quoted: a string, once expanded
    references.map(Raw),  # plain: resolved again once expanded (`port: ${PORT}` is an int)
    st.sampled_from([Alias("a"), Alias("b")]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(json_keys | st.sampled_from(PLAIN).map(Raw), inner, max_size=4),
        st.builds(Tagged, st.sampled_from(TAGS), inner),
        st.builds(Anchored, st.sampled_from(["a", "b"]), inner),
    ),
    max_leaves=10,
)

STRINGS = st.text(max_size=12) | st.sampled_from(
    [
        "", " ", "sim", "ws://127.0.0.1:1/v1/realtime", "wss://x/y", "ws://x?model=a",
        "http://h", "https://h/v1", "ftp://h", "auto", "wav", "null", "pyaudio", "text", "json",
        "hold", "toggle", "17", "99", "GPIO17", "gpio4", "BOARD11", "J8:11", "\u00b2", "\u0661\u0667",
        "KEY_F13", "KEY_SPACE", "space", "BTN_LEFT", "/dev/input/event99", "USB Foot Switch",
        "127.0.0.1", "0.0.0.0", "::1", "localhost", "", "0123456789abcdef0123",
        "0123456789 abcdef0123", "voiced/kiosk", "voiced/+/x", "/voiced", "a//b",
        "relative/transcripts.jsonl", "/tmp", "/tmp/", "/" + "a" * 5000, "/a\x00b",
        "/proc/self/x/y", "missing-token-file", "marin", "en",
    ]
)  # fmt: skip
NAMED = {
    "key": st.sampled_from(["KEY_F13", "KEY_SPACE", "BTN_LEFT", "space", "f13", "KEY_NOPE"]),
    "pin": st.integers(0, 60) | st.sampled_from(["17", "GPIO17", "BOARD11", "J8:11", "banana"]),
    "device": st.sampled_from(["/dev/input/event99", "USB Foot Switch", " "]),
}
"""Fields whose plausible values no type says: the way past their checks."""
INTS = st.integers(-5, 70_000) | st.integers() | st.sampled_from(HUGE)
FLOATS = st.floats() | st.integers(-5, 5000) | st.sampled_from([0.0, 0.5, 1.0, 1e-320, 1e308])


@st.composite
def mostly(draw: st.DrawFn, good: st.SearchStrategy[T], bad: st.SearchStrategy[Any]) -> Any:
    """Seven times in eight ``good``; else ``bad``."""
    return draw(good) if draw(st.integers(0, 7)) else draw(bad)


def schema_values(hint: object) -> st.SearchStrategy[Any]:
    """Values that fit the type hint ``hint`` of a config field, or nearly (the ranges and
    cross-checks behind the types are the point); a dataclass gives a mapping of some of its
    fields (every required one), each mostly of its type, and now and then a key it does not
    know."""
    origin, args = get_origin(hint), get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = get_type_hints(hint)
        required: dict[str, st.SearchStrategy[Any]] = {}
        optional: dict[str, st.SearchStrategy[Any]] = {}
        for field in dataclasses.fields(hint):
            if field.init and not field.metadata.get(NOT_IN_YAML):
                given = (
                    required
                    if field.default is field.default_factory is dataclasses.MISSING
                    else optional
                )
                fitting = schema_values(hints[field.name])
                if field.name in NAMED:
                    fitting = mostly(NAMED[field.name], fitting)
                given[field.name] = mostly(fitting, yaml_values)
        if hint is Config:
            optional["plugins"] = mostly(plugin_sections(), yaml_values)
        mappings = st.fixed_dictionaries(required, optional=optional)
        return mostly(
            mappings, st.builds(lambda m, k, v: {**m, k: v}, mappings, json_keys, yaml_values)
        )
    if origin in (Union, types.UnionType):
        return st.one_of([schema_values(member) for member in args])
    if origin is Literal:
        return st.sampled_from(args)
    if origin is tuple:
        return st.lists(schema_values(args[0]), max_size=3)
    if origin is dict or hint is Located:
        return yaml_values
    simple: dict[object, st.SearchStrategy[Any]] = {
        str: STRINGS, int: INTS, float: FLOATS, bool: st.booleans(), type(None): st.none()
    }  # fmt: skip
    return simple[hint]


def plugin_sections() -> st.SearchStrategy[dict[str, Any]]:
    """A ``plugins:`` mapping: built-in plugins' sections, mostly shaped by their config, each
    with or without ``enabled``, and now and then a plugin no one installed."""
    sections = {
        name: st.builds(
            lambda section, enabled: (
                section if enabled is None else {**section, "enabled": enabled}
            ),
            schema_values(spec.config),
            st.none() | mostly(st.booleans(), yaml_values),
        )
        for name, spec in SPECS.items()
    }
    return st.fixed_dictionaries({}, optional={**sections, "someone_elses": yaml_values})


def flow(value: object) -> str:
    """``value`` in YAML's flow style."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Tagged):
        return f"{value.tag} {flow(value.value)}"
    if isinstance(value, Anchored):
        return f"&{value.name} {flow(value.value)}"
    if isinstance(value, Alias):
        return f"*{value.name}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key_text(k)}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(item) for item in value) + "]"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float):
        return _yaml_float(value)
    return json.dumps(value) if isinstance(value, str) else str(value)


def _yaml_float(value: float) -> str:
    """A float as YAML 1.1 resolves it: ``.nan``, ``.inf``, and always a dot in the mantissa."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    mantissa, _, exponent = repr(value).partition("e")
    mantissa = mantissa if "." in mantissa else mantissa + ".0"
    return f"{mantissa}e{int(exponent):+d}" if exponent else mantissa


def key_text(key: object) -> str:
    if isinstance(key, Raw):
        return key.text
    assert isinstance(key, str)
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else json.dumps(key)


def document(tree: object) -> str:
    """``tree`` as a YAML document: mappings in block style two levels down, flow below."""

    def block(mapping: dict[Any, Any], indent: int) -> Iterator[str]:
        for key, value in mapping.items():
            head = " " * indent + key_text(key) + ":"
            if isinstance(value, dict) and value and indent < 4:
                yield head
                yield from block(value, indent + 2)
            else:
                yield f"{head} {flow(value)}"

    if isinstance(tree, dict):
        return "".join(line + "\n" for line in block(tree, 0))
    return flow(tree) + "\n"


def load(path: Path, content: str | bytes) -> Config | None:
    """Write ``content`` to ``path`` and load it: the config, or None when it was refused with a
    ``ConfigError``. Every plugin section of a config that loads is checked the same way."""
    path.write_bytes(
        content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    )
    with mock.patch.dict(os.environ, ENV):
        os.environ.pop("VOICED_TEST_UNSET", None)
        config = refused(load_config, path)
        if config is not None:
            assert isinstance(config, Config)
            assert_no_nan(config)
            for name, section in config.plugins.items():
                check_plugin_section(name, section)
    return config


def check_plugin_section(name: str, section: Located) -> object:
    """What the daemon does with a section at startup, each step a value or a ``ConfigError``:
    the built plugin config, or None."""
    enabled = refused(plugin_enabled, section)
    assert enabled is None or isinstance(enabled, bool)
    settings = refused(plugin_settings, section)
    if settings is None or name not in SPECS:
        return None
    built = refused(build, SPECS[name].config, settings, f"plugins.{name}")
    assert built is None or isinstance(built, SPECS[name].config)
    assert_no_nan(built)
    return built


def assert_no_nan(value: object) -> None:
    """No setting of a built config is NaN, which every range check (``x < 0``) lets through
    (the raw plugin sections, ``Located``, are not settings yet)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, Located | type):
        for field in dataclasses.fields(value):
            assert_no_nan(getattr(value, field.name))
    elif isinstance(value, tuple):
        for item in value:
            assert_no_nan(item)
    else:
        assert not (isinstance(value, float) and math.isnan(value)), value


def refused(function: Callable[..., T], *args: Any) -> T | None:
    """``function(*args)``, or None when it raised ``ConfigError`` (with a message)."""
    try:
        return function(*args)
    except ConfigError as exc:
        refusal = str(exc)
    assert refusal
    return None


@settings(ON_FILES, max_examples=250)
@given(tree=schema_values(Config))
def test_config_shaped_documents_load_or_are_refused(tmp_path: Path, tree: dict[str, Any]) -> None:
    load(tmp_path / "config.yaml", document(tree))


@settings(ON_FILES, max_examples=150)
@given(tree=yaml_values | st.dictionaries(json_keys, yaml_values, max_size=5))
def test_any_yaml_document_loads_or_is_refused(tmp_path: Path, tree: object) -> None:
    load(tmp_path / "config.yaml", document(tree))


YAMLISH = string.ascii_lowercase[:6] + string.digits[:3] + " :-[]{},!&*|>'\"#%@`?~$\n\t\\"


@settings(ON_FILES, max_examples=150)
@given(content=st.binary() | st.text() | st.text(alphabet=YAMLISH, max_size=60))
def test_any_bytes_load_or_are_refused(tmp_path: Path, content: str | bytes) -> None:
    load(tmp_path / "config.yaml", content)


def _deep_block(depth: int) -> str:
    return "".join(" " * i + "k:\n" for i in range(depth))


def _laughs(levels: int) -> str:
    """Aliases of aliases: ``levels`` levels of ten, 10**levels values once expanded."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "plugins:\n  laughs:\n" + "".join(f"    {line}\n" for line in lines)


SPECIAL_DOCUMENTS = {
    "mapping-holds-its-alias": "plugins:\n  http: &a {x: *a}\n",
    "list-holds-its-alias": "plugins:\n  http: &a [*a]\n",
    "section-holds-its-alias": "realtime: &r\n  model: *r\n",
    "merge-key": "base: &base {voice: marin}\nrealtime:\n  <<: *base\n",
    "undefined-alias": "realtime: {<<: [*undefined]}\n",
    "aliases-of-aliases-small": _laughs(3),
    "aliases-of-aliases": _laughs(9),
    "two-documents": "a: 1\n---\nb: 2\n",
    "yaml-directive": "%YAML 1.1\n---\ndevice_id: kiosk\n",
    "yaml-directive-unknown": "%YAML 9.9\n---\ndevice_id: kiosk\n",
    "tag-directive": "%TAG ! tag:example.com,2000:\n---\ndevice_id: !kiosk x\n",
    "byte-order-mark": "\ufeffdevice_id: kiosk\n",
    "tab-after-colon": "device_id:\tkiosk\n",
    "tab-indent": "realtime:\n\tmodel: x\n",
    "next-line-character": "device_id: \x85kiosk\n",
    "nul": "device_id: \x00\n",
    "lone-surrogate": "device_id: \ud800\n",
    "complex-key-list": "? [a, b]\n: c\n",
    "complex-key-mapping": "? {a: b}\n: c\n",
    "duplicate-plugin": "plugins: {http: {port: 8080}, http: {port: 8081}}\n",
    "empty": "",
    "empty-document": "---\n",
    "document-end": "...\n",
    "comment": "# only a comment\n",
    "deep-lists": "a: " + _nested(1000, "list") + "\n",
    "deep-lists-in-plugin": "plugins:\n  http: " + _nested(600, "list") + "\n",
    "deep-lists-at-top": _nested(600, "list") + "\n",
    "deep-lists-tagged": "device_id: !!str " + _nested(600, "list") + "\n",
    "deep-flow-mappings": "a: " + "{a: " * 1500 + "}" * 1500 + "\n",
    "deep-block-mappings": _deep_block(1500),
    "nested-but-not-too-deep": "plugins:\n  http: " + _nested(200, "list") + "\n",
}
"""Documents no generator is likely to write: aliases that hold themselves or multiply,
directives, odd characters, nesting past the YAML parser's recursion."""


@pytest.mark.parametrize("content", SPECIAL_DOCUMENTS.values(), ids=SPECIAL_DOCUMENTS.keys())
def test_special_documents_load_or_are_refused(tmp_path: Path, content: str) -> None:
    load(tmp_path / "config.yaml", content)


@settings(ON_FILES, max_examples=200)
@given(name=st.sampled_from(BUILTINS), section=st.data())
def test_plugin_sections_build_or_are_refused(
    tmp_path: Path, name: str, section: st.DataObject
) -> None:
    """Each built-in plugin's section on its own, so that every plugin gets its share."""
    config = SPECS[name].config
    tree = section.draw(mostly(schema_values(config), yaml_values))
    load(tmp_path / "config.yaml", document({"plugins": {name: tree}}))


# --------------------------------------------------------------------------- the HTTP API

TOKEN = "0123456789abcdef-token"
COMMANDS = ["/start", "/commit", "/cancel", "/toggle"]
PATHS = ["/volume", "/status", "/healthz", "/nope", "/start/", "//start", "", "/VOLUME"]


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


async def ask(
    app: App,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    chunks: tuple[bytes, ...] = (b"",),
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> Answer:
    """Call the ASGI application as hypercorn would, with the body in ``chunks``; its answer,
    checked to be exactly one response start and one body."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
        "root_path": "", "headers": list(headers), "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8787),
    }  # fmt: skip
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        sent.append(message)

    await app(scope, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"], sent
    start, body = sent
    assert not body.get("more_body")
    return Answer(start["status"], dict(start["headers"]), body["body"])


def _strict(constant: str) -> object:
    raise AssertionError(f"not strict JSON: {constant}")


def assert_well_formed(answer: Answer, head: bool) -> Any:
    """A 2xx or 4xx JSON answer whose content-length is its body's (the one a HEAD leaves out);
    its JSON value."""
    assert 200 <= answer.status < 500, answer
    assert answer.headers[b"content-type"] == b"application/json"
    if head:
        assert answer.body == b""
        return None
    assert int(answer.headers[b"content-length"]) == len(answer.body)
    return json.loads(answer.body, parse_constant=_strict)


async def answer_commands(fake: FakeDaemon) -> None:
    """Accept every command, as a daemon that is ready would."""
    while True:
        command = await fake.next_command()
        assert command.on_verdict is not None
        command.on_verdict(Verdict("accepted", "ok"))


numbers = st.sampled_from(HUGE) | st.integers() | st.floats() | st.floats(0.0, 1.0)
"""Volumes: huge integers, NaN and ±Infinity among them."""
DEEP = st.integers(1, 2100) | st.sampled_from([999, 1000, 2048])
bodies = st.one_of(
    st.fixed_dictionaries({"volume": numbers}).map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries({"reply": st.booleans() | json_values}).map(
        lambda value: json.dumps(value).encode()
    ),
    st.dictionaries(st.sampled_from(["volume", "reply", "x"]), numbers | json_values, max_size=3)
    .map(lambda value: json.dumps(value).encode()),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"", b" \n", b"NaN", b"Infinity", b'{"volume": NaN}', b'{"volume": 1e999}',
            b'{"volume": -1e999}', b'{"volume": -0.0}', b'{"volume": 1' + b"0" * 400 + b"}",
            b'{"volume": ' + b"9" * 5000 + b"}", b'{"volume": 0.5', b"\xff\xfe",
            b'{"reply": false}', b'{"reply": "false"}', b'{"reply": false, "reply": true}',
            b'\xef\xbb\xbf{"reply": false}', b"x" * 4097,
        ]
    ),
    DEEP.map(lambda depth: ("[" * depth + "]" * depth).encode()),
    DEEP.map(lambda depth: ('{"volume":' * depth + "1" + "}" * depth).encode()),
)  # fmt: skip
"""Request bodies: JSON of every shape (the volume and reply ones first), bytes, broken JSON,
nested past the parser's depth, over ``MAX_BODY``."""
QUERY_PARTS = [
    "reply=true", "reply=false", "reply=FALSE", "reply=", "reply=maybe", "reply", "reply=%66alse",
    "reply=%zz", "%", "&&", "x=1;reply=true", "reply=true&reply=false", "reply=f%00",
]  # fmt: skip
queries = st.binary(max_size=24) | st.builds(
    lambda parts: "&".join(parts).encode(),
    st.lists(st.sampled_from(QUERY_PARTS) | st.text(max_size=6), max_size=3),
)
authorizations = st.sampled_from(
    [None, f"bearer   {TOKEN} ".encode(), b"Bearer", b"Bearer x", b"Basic dXNlcjpwYXNz",
     f"Bearer {TOKEN}\xe9".encode("latin-1"), b"\xff\xfe"]
) | st.binary(max_size=20)  # fmt: skip
LENGTHS = [b"", b"-1", b"1e3", b"\xef\xbc\x91", b"99999999999999999999"]
"""Content-length headers that are not the body's length."""


@st.composite
def requests(
    draw: st.DrawFn, paths: st.SearchStrategy[str], methods: st.SearchStrategy[str]
) -> dict[str, Any]:
    """A request (``ask``'s arguments): the body in one or two chunks, its content-length mostly
    right (else missing or wrong), the token mostly right (else any authorization), any query."""
    body = draw(bodies)
    cut = draw(st.integers(0, len(body)))
    chunks = (body[:cut], body[cut:]) if draw(st.booleans()) else (body,)
    right = str(len(body)).encode()
    length = draw(
        mostly(st.just(right), st.none() | st.sampled_from(LENGTHS) | st.binary(max_size=4))
    )
    authorization = draw(mostly(st.just(f"Bearer {TOKEN}".encode()), authorizations))
    headers = [(b"content-length", length), (b"authorization", authorization)]
    return {
        "method": draw(methods),
        "path": draw(paths),
        "query": draw(queries),
        "chunks": chunks,
        "headers": tuple((name, value) for name, value in headers if value is not None),
    }


def answered(request: dict[str, Any]) -> tuple[Answer, Any, FakeDaemon]:
    """``request``'s answer from the application run by a daemon that accepts every command,
    checked well formed; its JSON value; the daemon."""

    async def main() -> Answer:
        app = App(fake, Metrics(fake), TOKEN, RateLimit(0.0, 1), 1)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_commands, fake)
                answer = await ask(app, **request)
                nursery.cancel_scope.cancel()
        return answer

    fake = FakeDaemon(name="http")
    fake.status_values["audio"] = {"output": {"volume": 0.5}}
    answer = trio.run(main)
    return answer, assert_well_formed(answer, request["method"] == "HEAD"), fake


@settings(PROPERTIES, max_examples=200)
@given(request=requests(st.just("/volume"), st.just("POST")))
def test_any_volume_body_gets_a_well_formed_answer(request: dict[str, Any]) -> None:
    answer, value, fake = answered(request)
    if answer.status == 200:
        assert value == {"volume": fake.volume}
        assert fake.volume is not None
        assert 0.0 <= fake.volume <= 1.0
    else:
        assert fake.volume is None


@settings(PROPERTIES, max_examples=200)
@given(request=requests(st.sampled_from(COMMANDS), st.just("POST")))
def test_any_command_request_gets_a_well_formed_answer(request: dict[str, Any]) -> None:
    answer, _, fake = answered(request)
    assert (answer.status == 202) == bool(fake.commands_received)


@settings(PROPERTIES, max_examples=100)
@given(
    request=requests(
        st.sampled_from([*COMMANDS, *PATHS]), st.sampled_from(["POST", "GET", "HEAD", "PUT"])
    )
)
def test_any_request_gets_a_well_formed_answer(request: dict[str, Any]) -> None:
    answered(request)


RATES = st.sampled_from([5e-324, 1e-320, 1e-300, 1e300, math.inf, math.nan]) | FLOATS
limits = st.fixed_dictionaries(
    {
        "rate_limit": mostly(RATES, yaml_values),
        "burst": mostly(st.integers(1, 3), st.sampled_from(HUGE) | INTS | yaml_values),
    }
)
"""``rate_limit`` and ``burst`` of an ``http`` section: near 0, huge, infinite, NaN."""


@settings(ON_FILES, max_examples=150)
@given(
    section=st.builds(
        lambda base, limit: {**base, **limit},
        mostly(st.just({}), schema_values(SPECS["http"].config)),
        limits,
    ),
    pauses=st.lists(
        st.floats(0.0, 1e6) | st.sampled_from([0.0, 1e-9, 1e300]), min_size=1, max_size=8
    ),
)
def test_an_http_section_that_loads_gives_an_app_that_answers(
    tmp_path: Path, section: object, pauses: list[float]
) -> None:
    """Whatever ``rate_limit`` and ``burst`` got past the config, the rate limit built from them
    lets the application answer (200, or 429 with a whole Retry-After)."""
    config = load(tmp_path / "config.yaml", document({"plugins": {"http": section}}))
    http: Any = config and check_plugin_section("http", config.plugins["http"])
    if http is None:
        return

    async def main() -> None:
        now = [0.0]
        fake = FakeDaemon(name="http")
        limit = RateLimit(http.rate_limit, http.burst, clock=lambda: now[0])
        app = App(fake, Metrics(fake), http.bearer, limit, 1)
        bearer = (
            () if http.bearer is None else ((b"authorization", f"Bearer {http.bearer}".encode()),)
        )
        for i, pause in enumerate(pauses):
            now[0] += pause
            answer = await ask(app, "GET", "/status", headers=bearer)
            assert answer.status in ((200,) if i == 0 else (200, 429))  # burst is at least 1
            assert_well_formed(answer, False)
            if answer.status == 429:
                assert answer.headers[b"retry-after"].isdigit()

    trio.run(main)


def test_aliases_of_aliases_are_refused_not_expanded(tmp_path: Path) -> None:
    """A "billion laughs" document (10**9 values once expanded) is refused at once."""
    path = tmp_path / "config.yaml"
    path.write_text(_laughs(9))
    with pytest.raises(ConfigError, match=r"aliases"):
        load_config(path)
