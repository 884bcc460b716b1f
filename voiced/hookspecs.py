"""The hook plugins implement: one, registration-only and synchronous.

A plugin module is registered under its entry-point name in the ``voiced`` group, which is also
the name of its section under ``plugins:`` in the config. Its ``voiced_plugin`` hook describes it;
the daemon validates the section into the plugin's config dataclass, creates the plugin, and
supervises its async ``run`` in its own nursery.
"""

from __future__ import annotations

import pluggy

from voiced.plugin_api import PluginSpec

PROJECT = "voiced"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def voiced_plugin() -> PluginSpec:  # type: ignore[empty-body]
    """Describe this plugin.

    Returns:
        The plugin's name (its entry-point name), a one-line description, the frozen dataclass
        its config section is validated into, and the factory that creates it from that config.
    """
