"""Plugins: built-ins load through entry points exactly like a third-party plugin would.

Third-party plugins here are real distributions (a ``.dist-info`` with ``entry_points.txt`` on
``sys.path``), found by ``importlib.metadata`` the way an installed package is.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest

from voiced.config import Config, load_config
from voiced.errors import ConfigError, PluginError
from voiced.plugins import DISABLE_ENV, Plugins

PLUGINS_DIR = Path(__file__).parent.parent / "plugins"


def test_entry_points_cover_every_builtin_module() -> None:
    # A module whose name starts with "_" is a plugin's private helper, not a plugin.
    modules = {p.stem for p in PLUGINS_DIR.glob("*.py") if not p.stem.startswith("_")}
    points = {ep.name: ep.value for ep in metadata.entry_points(group="voiced")}
    assert {f"voiced_plugins.{m}" for m in modules} <= set(points.values())
    for name, value in points.items():
        if value.startswith("voiced_plugins."):
            module = value.removeprefix("voiced_plugins.").partition(":")[0]
            assert not module.startswith("_"), f"{name} = {value}: a private helper, not a plugin"
            assert value == f"voiced_plugins.{name}"  # entry-point name = module = config section


def test_builtins_describe_themselves(tmp_path: Path) -> None:
    installed = {p.name: p for p in Plugins(Config.default()).installed()}
    for name in ("http", "stdout", "file", "terminal"):
        assert installed[name].state == "not configured"
        spec = installed[name].spec
        assert spec is not None
        assert spec.name == name
        assert spec.description
    assert {n for n, p in installed.items() if p.spec and p.spec.input} >= {"http", "terminal"}
    stdout = installed["stdout"].spec
    assert stdout is not None
    assert not stdout.input


def _config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path)


def test_disabled_plugin_is_not_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "voiced_plugins.file", raising=False)
    plugins = Plugins(_config(tmp_path, "plugins:\n  file: {enabled: false, path: x}\n"))
    assert "voiced_plugins.file" not in sys.modules
    assert plugins.create_enabled() == []
    assert {p.name: p.state for p in plugins.installed()}["file"] == "disabled"


def test_emergency_disable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_ENV, "stdout, http")
    plugins = Plugins(_config(tmp_path, "plugins:\n  stdout: {}\n  file: {path: t}\n"))
    assert [p.spec.name for p in plugins.create_enabled()] == ["file"]


def test_plugin_section_checked_by_its_dataclass(tmp_path: Path) -> None:
    config = _config(tmp_path, "plugins:\n  file:\n    pth: x\n")
    with pytest.raises(ConfigError, match=r"config.yaml:3: plugins.file.pth: unknown key"):
        Plugins(config).create_enabled()


def _dist(root: Path, name: str, entry_points: str, module: str, source: str) -> None:
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[voiced]\n{entry_points}\n")
    (root / f"{module}.py").write_text(source)


THIRD_PARTY = """
from dataclasses import dataclass
from voiced import PluginSpec, hookimpl

@dataclass(frozen=True)
class Cfg:
    topic: str = "voice"

class Sink:
    def __init__(self, config): self.config = config
    async def run(self, daemon, *, task_status): task_status.started()

@hookimpl
def voiced_plugin():
    return PluginSpec("beep", "a third-party sink", Cfg, Sink)
"""


def test_third_party_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dist(tmp_path, "voiced_beep", "beep = voiced_beep_mod", "voiced_beep_mod", THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = Plugins(_config(tmp_path, "plugins:\n  beep: {topic: kitchen}\n"))
    row = {p.name: p for p in plugins.installed()}["beep"]
    assert (row.state, row.origin) == ("enabled", "voiced_beep 1.0 (voiced_beep_mod)")
    (loaded,) = plugins.create_enabled()
    assert loaded.plugin.config.topic == "kitchen"  # type: ignore[attr-defined]


def test_plugin_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dist(
        tmp_path,
        "voiced_broken",
        "broken = voiced_broken_mod",
        "voiced_broken_mod",
        "import nope\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    message = r"^plugin 'broken' \(voiced_broken 1.0 \(voiced_broken_mod\)\) failed to import: ModuleNotFoundError"
    config = _config(tmp_path, "plugins:\n  broken: {}\n")
    with pytest.raises(PluginError, match=message):
        Plugins(config)  # configured: the daemon refuses to start
    Plugins(_config(tmp_path, "plugins:\n  stdout: {}\n"))  # not configured: not imported
    with pytest.raises(PluginError, match=message):
        Plugins(Config.default()).installed()  # `voiced plugins` says so
    monkeypatch.setenv(DISABLE_ENV, "broken")  # the way out for an operator
    assert {p.name: p.state for p in Plugins(config).installed()}["broken"] == "disabled"


def test_plugin_spec_must_match_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dist(
        tmp_path,
        "voiced_misnamed",
        "other = voiced_misnamed_mod",
        "voiced_misnamed_mod",
        THIRD_PARTY,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        PluginError,
        match=r"^plugin 'other': voiced_plugin\(\) must return a PluginSpec named 'other'",
    ):
        Plugins(_config(tmp_path, "plugins:\n  other: {}\n")).create_enabled()
