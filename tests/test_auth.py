"""Where the API key comes from (`voiced.auth.find_api_key`), what check-config says of it, and
the warning for a config file that holds the key where others can read it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import config_file
from voiced.auth import ApiKey, find_api_key
from voiced.config import load_config
from voiced.errors import ConfigError

KEY = "test-key-0123456789"


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def test_the_sources_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_directory: Path
) -> None:
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "openai_api_key").write_text("from-credential\n")
    state_directory.mkdir()  # a relative key file is in the state directory, like every path
    (state_directory / "key").write_text("from-file\nignored second line\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    path = config_file(tmp_path, "auth: {api_key: from-config, api_key_file: key}\n")
    os.chmod(path, 0o600)
    monkeypatch.chdir(tmp_path)
    assert find_api_key(load_config(path)) == ApiKey("from-config", "auth.api_key")
    path.write_text("auth: {api_key: '', api_key_file: key}\n")
    assert find_api_key(load_config(path)) == ApiKey("from-file", "file key")
    path.write_text("auth: {api_key: ''}\n")
    found = find_api_key(load_config(path))
    assert found == ApiKey("from-credential", "systemd credential openai_api_key")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert find_api_key(load_config(path)) is None


def test_the_key_is_never_in_a_repr() -> None:
    assert KEY not in repr(ApiKey(KEY, "auth.api_key"))
    assert ApiKey(KEY, "file /etc/voiced/key").describe() == "API key from file /etc/voiced/key"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, r"cannot read the API key from .*missing: No such file or directory$"),
        ("\n", r".*missing holds no API key$"),
    ],
)
def test_a_key_file_that_cannot_serve_is_a_config_error(
    tmp_path: Path, content: str | None, error: str
) -> None:
    key_file = tmp_path / "missing"
    if content is not None:
        key_file.write_text(content)
    path = config_file(tmp_path, f"auth: {{api_key_file: '{key_file}'}}\n")
    with pytest.raises(ConfigError, match=rf"^{path}: auth.api_key_file: {error}") as caught:
        find_api_key(load_config(path))
    assert caught.value.__cause__ is None  # nothing of the file rides along in a traceback


def test_a_config_file_holding_the_key_readable_by_others_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = config_file(tmp_path, f"auth: {{api_key: {KEY}}}\n")
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="voiced.auth"):
        find_api_key(load_config(path))
    (warning,) = caplog.messages
    assert warning.startswith(f"{path} holds the API key and others can read it: `chmod 600")
    assert KEY not in warning
    caplog.clear()
    os.chmod(path, 0o600)
    find_api_key(load_config(path))
    assert caplog.messages == []


def test_a_key_from_the_environment_is_not_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    path = config_file(tmp_path, "auth: {api_key: '${OPENAI_API_KEY}'}\n")
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="voiced.auth"):
        assert find_api_key(load_config(path)) == ApiKey(KEY, "auth.api_key")
    assert caplog.messages == []


def test_check_config_says_where_the_key_comes_from_never_the_key(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(KEY + "\n")
    path = config_file(
        tmp_path,
        "realtime: {url: 'wss://api.openai.com/v1/realtime'}\n"
        f"auth: {{api_key_file: '{tmp_path / 'key'}'}}\n",
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY")
    }
    result = subprocess.run(
        [sys.executable, "-m", "voiced", "check-config", "--config", str(path)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"  auth: api_key: API key from file {tmp_path / 'key'}" in result.stdout.splitlines()
    assert KEY not in result.stdout + result.stderr
