"""Tests for `voiced.yamlconf` (YAML → dataclasses, located errors) and `voiced.config` (schema).

Plain, synchronous and table-driven. Every error message is pinned whole with an anchored match,
including the ``file:line: key:`` prefix, because where an error points is half its value.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from voiced import config
from voiced.config import (
    AudioConfig,
    Config,
    RealtimeConfig,
    TranscriptionConfig,
    find_config,
    load_config,
    plugin_enabled,
    plugin_settings,
)
from voiced.errors import ConfigError
from voiced.yamlconf import FieldError, Located, build, load_document

SHIPPED = Path(__file__).parent.parent / "config.yaml"


@dataclass(frozen=True)
class Inner:
    name: str
    count: int = 0


@dataclass(frozen=True)
class Sample:
    """Every field type `build` supports."""

    text: str = ""
    count: int = 0
    ratio: float = 1.0
    flag: bool = False
    mode: Literal["wav", "null", "pyaudio"] = "wav"
    device: str | int | None = None
    tags: tuple[str, ...] = ()
    inner: Inner | None = None
    raw: dict[str, Located] = field(default_factory=dict)


@dataclass(frozen=True)
class Range:
    low: int = 0
    high: int = 1

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        if self.high > 100:
            raise FieldError("at most 100", field="high")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def sample(tmp_path: Path, text: str) -> Sample:
    return build(Sample, load_document(write(tmp_path, text)), "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("text: hello", Sample(text="hello")),
        ("count: 3", Sample(count=3)),
        ("ratio: 2", Sample(ratio=2.0)),
        ("ratio: 0.5", Sample(ratio=0.5)),
        ("flag: true", Sample(flag=True)),
        ("mode: pyaudio", Sample(mode="pyaudio")),
        ("mode: null", Sample(mode="null")),
        ("device: 3", Sample(device=3)),
        ("device: '3'", Sample(device="3")),
        ("device: USB Audio", Sample(device="USB Audio")),
        ("device: null", Sample()),
        ("tags: [a, b]", Sample(tags=("a", "b"))),
        ("inner: {name: x}", Sample(inner=Inner(name="x"))),
        ("inner: null", Sample()),
        ("", Sample()),
    ],
)
def test_build_converts(tmp_path: Path, text: str, expected: Sample) -> None:
    built = sample(tmp_path, text)
    assert built == expected
    assert type(built.ratio) is float


def test_build_passes_raw_sections_through(tmp_path: Path) -> None:
    raw = sample(tmp_path, "raw:\n  x:\n    deep: [1]\n").raw
    assert raw["x"].line == 2
    assert raw["x"].key == "raw.x"
    assert isinstance(raw["x"].value, dict)
    assert raw["x"].value["deep"].value == [Located(1, 3, raw["x"].file, "raw.x.deep[0]")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("count: fast", "1: count: expected an integer, got 'fast'"),
        ("count: true", "1: count: expected an integer, got true"),
        ("count: 1.5", "1: count: expected an integer, got 1.5"),
        ("ratio: false", "1: ratio: expected a number, got false"),
        ("text: 3", "1: text: expected a string, got 3"),
        ("text:", "1: text: expected a string, got null"),
        ("flag: maybe", "1: flag: expected a boolean, got 'maybe'"),
        ("mode: foo", "1: mode: expected one of wav, null, pyaudio, got 'foo'"),
        ("device: [1]", "1: device: expected a string, an integer or null, got a list"),
        ("tags: a", "1: tags: expected a list, got 'a'"),
        ("tags:\n  - a\n  - 3\n", "3: tags[1]: expected a string, got 3"),
        ("raw: [1]", "1: raw: expected a mapping, got a list"),
        ("inner: 3", "1: inner: expected a mapping or null, got 3"),
        ("\ninner: {}", "2: inner.name: required key is missing"),
        (
            "inner:\n  name: x\n  cont: 1\n",
            "3: inner.cont: unknown key (known: name, count) — did you mean 'count'?",
        ),
        (
            "text: a\nzzz: 1\n",
            "2: zzz: unknown key (known: text, count, ratio, flag, mode, device, tags, inner, raw)",
        ),
        (
            "text: !foo x",
            "1: text: invalid value: could not determine a constructor for the tag '!foo'",
        ),
    ],
)
def test_build_rejects(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=exactly(f"{path}:{expected}")):
        build(Sample, load_document(path), "")


def test_build_names_keys_under_the_given_path(tmp_path: Path) -> None:
    path = write(tmp_path, "plugins:\n  x:\n    count: fast\n")
    node = load_document(path)
    assert isinstance(node.value, dict)
    section = node.value["plugins"]
    assert isinstance(section.value, dict)
    with pytest.raises(
        ConfigError, match=exactly(f"{path}:3: plugins.x.count: expected an integer, got 'fast'")
    ):
        build(Sample, section.value["x"], "plugins.x")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("low: 5\nhigh: 2\n", "1: low must not exceed high"),
        ("range:\n  low: 5\n  high: 2\n", "1: range: low must not exceed high"),
        ("low: 1\nhigh: 200\n", "2: high: at most 100"),
    ],
)
def test_post_init_errors_are_located(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    node = load_document(path)
    assert isinstance(node.value, dict)
    key = "range" if "range" in node.value else ""
    with pytest.raises(ConfigError, match=exactly(f"{path}:{expected}")):
        build(Range, node.value.get("range", node), key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: b: c\n", "1: invalid YAML: mapping values are not allowed here"),
        (
            "a: 1\nb: [1, 2\nc: 3\n",
            "3: invalid YAML: expected ',' or ']', but got ':'"
            " (while parsing a flow sequence, line 2)",
        ),
        (
            "realtime:\n  voice: a\n  voice: b\n",
            "3: realtime.voice: duplicate key (first on line 2)",
        ),
        ("1: a\n", "1: keys must be strings (quote it), got 1"),
        (
            "x: &x {a: 1}\nrealtime:\n  <<: *x\n",
            "3: realtime: keys must be strings (quote it), got <<",
        ),
        ("plugins: !!set {a}\n", "1: plugins: unsupported YAML tag tag:yaml.org,2002:set"),
        ("- a\n", "1: expected a mapping, got a list"),
        (
            "realtime:\n  vocie: x\n",
            "2: realtime.vocie: unknown key (known: url, model, voice, "
            "instructions, transcription, connect_timeout, reply_timeout_s) — did you mean 'voice'?",
        ),
        (
            "realtime:\n  connect_timeout: 0\n",
            "2: realtime.connect_timeout: must be more than 0 seconds, got 0.0",
        ),
        (
            "realtime:\n  url: https://x\n",
            "2: realtime.url: expected a ws:// or wss:// URL, or sim, got 'https://x'",
        ),
        (
            "realtime:\n  url: wss://x/?model=m\n",
            "2: realtime.url: give the URL without a query; the model is realtime.model",
        ),
        (
            "audio:\n  input:\n    backend: wav\n",
            "2: audio.input.path: required when backend is wav",
        ),
        (
            "audio:\n  output:\n    backend: wav\n",
            "2: audio.output.path: required when backend is wav",
        ),
        (
            "audio:\n  input:\n    backend: null\n    device: 2\n",
            "4: audio.input.device: only used by backend pyaudio (backend is null)",
        ),
        (
            "audio:\n  input:\n    backend: wav\n    path: a.wav\n    rate: 48000\n",
            "5: audio.input.rate: only used by backend pyaudio (backend is wav)",
        ),
        (
            "audio:\n  output:\n    volume: 1.5\n",
            "3: audio.output.volume: must be between 0.0 and 1.0",
        ),
        (
            "audio:\n  input:\n    preroll_ms: -1\n",
            "3: audio.input.preroll_ms: must be between 0 and 5000 ms",
        ),
        (
            "audio:\n  max_turn_s: 0\n",
            "2: audio.max_turn_s: must be between 1 and 3600 seconds",
        ),
        (
            "audio:\n  on_max_turn: send\n",
            "2: audio.on_max_turn: expected one of commit, cancel, got 'send'",
        ),
        ("audio: [1]\n", "1: audio: expected a mapping, got a list"),
        ("plugins:\n  stdout: 3\n", "2: plugins.stdout: expected a mapping, got 3"),
    ],
)
def test_load_config_rejects(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=exactly(f"{path}:{expected}")):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = f"{path}: config file not found (pass --config FILE, or create ./config.yaml)"
    with pytest.raises(ConfigError, match=exactly(message)) as caught:
        load_config(path)
    assert (caught.value.file, caught.value.line) == (str(path), None)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=f"^{re.escape(f'{tmp_path}: cannot read config file: ')}.*Is a directory"
    ):
        load_config(tmp_path)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n"])
def test_empty_document_is_all_defaults(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert load_config(path) == Config(source=str(path))


ENV_CASES = [
    # (environment, YAML, the Sample it builds)
    ({"N": "8080"}, "count: ${N}", Sample(count=8080)),
    ({"N": "2.5"}, "ratio: ${N}", Sample(ratio=2.5)),
    ({"N": "8080"}, "text: '${N}'", Sample(text="8080")),
    ({"N": "8080"}, 'text: "${N}"', Sample(text="8080")),
    ({"N": "8080"}, "device: ${N}", Sample(device=8080)),
    ({}, "device: ${N:-}", Sample()),
    ({}, "text: ${N:-alloy}", Sample(text="alloy")),
    ({"N": ""}, "text: ${N:-alloy}", Sample(text="alloy")),
    ({"N": "echo"}, "text: ${N:-alloy}", Sample(text="echo")),
    ({"N": ""}, "text: '${N}'", Sample(text="")),
    ({"HOST": "pi"}, 'text: "http://${HOST}:8080"', Sample(text="http://pi:8080")),
    ({"HOST": "pi"}, "text: ${HOST}-${HOST}", Sample(text="pi-pi")),
    ({}, "text: a$$b", Sample(text="a$b")),
    ({}, "text: '$${N}'", Sample(text="${N}")),
    ({}, "text: cost $5", Sample(text="cost $5")),
    ({}, "tags:\n  - x${N:-1}\n", Sample(tags=("x1",))),
    ({"N": "[1, 2]"}, "text: ${N}", Sample(text="[1, 2]")),
]


@pytest.mark.parametrize(("env", "text", "expected"), ENV_CASES)
def test_env_substitution(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    text: str,
    expected: Sample,
) -> None:
    monkeypatch.delenv("N", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert sample(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "text: a\ncount: ${N}\n",
            "2: count: environment variable N is not set (set it, or write ${N:-default})",
        ),
        ("count: '${N:-x}'", "1: count: expected an integer, got 'x'"),
        (
            "text: ${1N}",
            "1: text: bad reference ${1N}: write ${NAME} or ${NAME:-default}, and $$ for $",
        ),
        (
            "text: '${N'",
            "1: text: bad reference ${N: write ${NAME} or ${NAME:-default}, and $$ for $",
        ),
    ],
)
def test_env_substitution_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    monkeypatch.delenv("N", raising=False)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=exactly(f"{path}:{expected}")):
        build(Sample, load_document(path), "")


def test_plugin_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        plugins:
          stdout:
          terminal: {}
          http:
            port: 1
          file:
            enabled: false
            path: t.jsonl
        """,
    )
    plugins = load_config(path).plugins
    assert list(plugins) == ["stdout", "terminal", "http", "file"]
    assert [plugin_enabled(section) for section in plugins.values()] == [True, True, True, False]
    assert plugins["stdout"] == Located({}, 2, str(path), "plugins.stdout")
    settings = plugin_settings(plugins["file"])
    assert isinstance(settings.value, dict)
    assert list(settings.value) == ["path"]
    assert (settings.line, settings.key) == (6, "plugins.file")


@pytest.mark.parametrize(("value", "got"), [("'no'", "'no'"), ("", "null"), ("1", "1")])
def test_plugin_enabled_must_be_a_boolean(tmp_path: Path, value: str, got: str) -> None:
    path = write(tmp_path, f"plugins:\n  http:\n    port: 1\n    enabled: {value}\n")
    section = load_config(path).plugins["http"]
    message = f"{path}:4: plugins.http.enabled: expected a boolean, got {got}"
    with pytest.raises(ConfigError, match=exactly(message)):
        plugin_enabled(section)


def test_transcription_null_turns_it_off(tmp_path: Path) -> None:
    path = write(tmp_path, "realtime:\n  transcription: null\n")
    assert load_config(path).realtime.transcription is None
    assert Config.default().realtime.transcription == TranscriptionConfig()


@pytest.mark.parametrize("text", ["audio:\n", "audio:\n  input:\n"])
def test_null_section_is_all_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text)).audio == AudioConfig()


def test_api_key_stays_out_of_repr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    loaded = load_config(write(tmp_path, "auth:\n  api_key: ${OPENAI_API_KEY}\n"))
    assert loaded.auth.api_key == "sk-secret"
    assert "sk-secret" not in repr(loaded)


@pytest.mark.parametrize(
    "text", ["auth:\n  api_key: ''\n", "auth:\n  api_key: ${OPENAI_API_KEY:-}\n"]
)
def test_empty_api_key_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert load_config(write(tmp_path, text)).auth.api_key is None


def test_shipped_config_loads_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    shipped = load_config(SHIPPED)
    assert shipped.source == str(SHIPPED)
    assert shipped.auth.api_key is None
    assert shipped.realtime.url is None
    # The file shows the defaults; it must not drift from them.
    assert (shipped.realtime, shipped.audio) == (RealtimeConfig(), AudioConfig())
    assert {name: plugin_enabled(section) for name, section in shipped.plugins.items()} == {
        "http": True,
        "terminal": True,
        "stdout": True,
        "file": True,
    }
    http = plugin_settings(shipped.plugins["http"]).value
    assert isinstance(http, dict)
    assert {key: node.value for key, node in http.items()} == {
        "host": "127.0.0.1",
        "port": 8787,
        "rate_limit": 20,
        "burst": 40,
    }


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.SEARCH_PATH == ("./config.yaml", "/etc/voiced/config.yaml")
    etc = tmp_path / "etc" / "config.yaml"
    monkeypatch.setattr(config, "SEARCH_PATH", ("./config.yaml", str(etc)))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    looked = f"no config file: looked for ./config.yaml and {etc} (pass --config FILE)"
    with pytest.raises(ConfigError, match=exactly(looked)):
        find_config(None)
    etc.parent.mkdir()
    etc.write_text("")
    assert find_config(None) == etc
    (work / "config.yaml").write_text("")
    assert find_config(None) == Path("config.yaml")
    assert find_config(str(etc)) == etc
    with pytest.raises(ConfigError, match=exactly("missing.yaml: config file not found")):
        find_config("missing.yaml")
