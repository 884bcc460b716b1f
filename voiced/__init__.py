"""voiced: a headless push-to-talk voice daemon speaking the OpenAI Realtime API.

This module is the plugin-author API: the ``hookimpl`` marker, ``PluginSpec``, the ``Daemon`` and
``Plugin`` protocols, commands and events. Names load on first use, so that ``voiced --help`` does
not pay for importing trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from voiced.events import ConnectionChanged as ConnectionChanged
    from voiced.events import DaemonState as DaemonState
    from voiced.events import DeviceChanged as DeviceChanged
    from voiced.events import Event as Event
    from voiced.events import PluginChanged as PluginChanged
    from voiced.events import StateChanged as StateChanged
    from voiced.events import TokensUsed as TokensUsed
    from voiced.events import Transcript as Transcript
    from voiced.events import TurnEnded as TurnEnded
    from voiced.hookspecs import PROJECT as PROJECT
    from voiced.hookspecs import hookimpl as hookimpl
    from voiced.plugin_api import Daemon as Daemon
    from voiced.plugin_api import Plugin as Plugin
    from voiced.plugin_api import PluginSpec as PluginSpec
    from voiced.turn import Command as Command
    from voiced.turn import Outcome as Outcome
    from voiced.turn import State as State
    from voiced.turn import TurnCommand as TurnCommand

_LAZY = {
    "ConnectionChanged": "voiced.events",
    "DaemonState": "voiced.events",
    "DeviceChanged": "voiced.events",
    "Event": "voiced.events",
    "PluginChanged": "voiced.events",
    "StateChanged": "voiced.events",
    "TokensUsed": "voiced.events",
    "Transcript": "voiced.events",
    "TurnEnded": "voiced.events",
    "PROJECT": "voiced.hookspecs",
    "hookimpl": "voiced.hookspecs",
    "Daemon": "voiced.plugin_api",
    "Plugin": "voiced.plugin_api",
    "PluginSpec": "voiced.plugin_api",
    "Command": "voiced.turn",
    "Outcome": "voiced.turn",
    "State": "voiced.turn",
    "TurnCommand": "voiced.turn",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'voiced' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
