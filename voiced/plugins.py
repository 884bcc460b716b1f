"""Finding, checking and creating plugins: built-ins and third-party alike, through entry points.

Every plugin, the built-ins in ``voiced_plugins`` included, is an entry point in the ``voiced``
group. A plugin is on when its section is present under ``plugins:`` and off with
``enabled: false``; a disabled plugin is blocked before it is imported, and so is every name in
``VOICED_DISABLE_PLUGINS`` (comma-separated, for emergencies). A plugin that fails to import, or a
section that names no installed plugin, stops the daemon with an error that names it: for a
headless daemon, silence is worse than refusing to start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from voiced import hookspecs
from voiced.config import Config, plugin_enabled, plugin_settings
from voiced.errors import ConfigError, PluginError
from voiced.plugin_api import Plugin, PluginSpec
from voiced.yamlconf import build

DISABLE_ENV = "VOICED_DISABLE_PLUGINS"


@dataclass(frozen=True)
class Installed:
    """One entry point of the ``voiced`` group, as ``voiced plugins`` lists it."""

    name: str
    origin: str
    """``distribution version (module)``."""
    state: str
    """``enabled``, ``disabled`` (``enabled: false`` or the environment) or ``not configured``."""
    spec: PluginSpec | None
    """None when the plugin was not imported (disabled)."""


@dataclass(frozen=True)
class Loaded:
    """An enabled plugin, created from its validated config."""

    spec: PluginSpec
    plugin: Plugin


class Plugins:
    """The typed facade over pluggy's manager: nothing else touches ``pm.hook``."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._entry_points = {ep.name: ep for ep in metadata.entry_points(group=hookspecs.PROJECT)}
        emergency = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        self._disabled = emergency | {
            name for name, section in config.plugins.items() if not plugin_enabled(section)
        }
        for name, section in config.plugins.items():
            if name not in self._entry_points:
                known = ", ".join(sorted(self._entry_points)) or "none"
                raise ConfigError(
                    f"no plugin named {name!r} is installed (installed: {known})",
                    file=section.file,
                    line=section.line,
                    key=f"plugins.{name}",
                )
        for name in sorted(self._disabled):
            self._pm.set_blocked(name)
        # Only configured plugins are imported to run: start-up pays for nothing else.
        for name in config.plugins:
            self._register(name)
        self._pm.check_pending()

    def _register(self, name: str) -> None:
        if name in self._disabled or self._pm.has_plugin(name):
            return
        ep = self._entry_points[name]
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin {name!r} ({_origin(ep)}) failed to import: {exc!r}") from exc
        self._pm.register(module, name=name)

    def spec(self, name: str) -> PluginSpec:
        """The self-description of the registered plugin ``name``."""
        plugin = self._pm.get_plugin(name)
        impls = [i for i in self._pm.hook.voiced_plugin.get_hookimpls() if i.plugin is plugin]
        if plugin is None or not impls:
            raise PluginError(f"plugin {name!r} does not implement voiced_plugin()")
        spec: Any = impls[0].function()
        if not isinstance(spec, PluginSpec) or spec.name != name:
            raise PluginError(
                f"plugin {name!r}: voiced_plugin() must return a PluginSpec named {name!r}"
            )
        return spec

    def installed(self) -> list[Installed]:
        """Every installed plugin, where it comes from, and whether it is on.

        Raises:
            PluginError: an installed plugin fails to import.
        """
        out = []
        for name, ep in sorted(self._entry_points.items()):
            if name in self._disabled:
                out.append(Installed(name, _origin(ep), "disabled", None))
                continue
            self._register(name)
            state = "enabled" if name in self._config.plugins else "not configured"
            out.append(Installed(name, _origin(ep), state, self.spec(name)))
        return out

    def create_enabled(self) -> list[Loaded]:
        """Validate each enabled plugin's section and create the plugin.

        Raises:
            ConfigError: a section does not fit its plugin's config, naming file, line and key.
        """
        loaded = []
        for name, section in self._config.plugins.items():
            if name in self._disabled:
                continue
            spec = self.spec(name)
            settings = build(spec.config, plugin_settings(section), f"plugins.{name}")
            loaded.append(Loaded(spec, spec.create(settings)))
        return loaded


def _origin(ep: metadata.EntryPoint) -> str:
    dist = ep.dist
    where = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
    return f"{where} ({ep.value})"
