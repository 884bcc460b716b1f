"""What ``voiced check-config`` checks beyond the schema, with no side effects: the files the
config names can be read, the folders voiced writes into exist or can be made. So that OK means
``voiced run`` would start, not just that the YAML is well formed.
"""

from __future__ import annotations

import os
from pathlib import Path

from voiced.config import Config, EarconsConfig
from voiced.devices.wav import read_wav
from voiced.earcons import NAMES
from voiced.errors import ConfigError, VoicedError
from voiced.saved import resolve, state_dir


def preflight(config: Config) -> None:
    """Check the files and folders ``config`` names.

    Raises:
        ConfigError: the first that would stop ``voiced run``, naming the key.
    """
    audio = config.audio
    if audio.input.backend == "wav" and audio.input.path is not None:
        _readable_wav(config, audio.input.path, "audio.input.path")
    if audio.output.backend == "wav" and audio.output.path is not None:
        _writable(config, resolve(audio.output.path, config.state_dir).parent, "audio.output.path")
    earcons = audio.earcons
    if isinstance(earcons, EarconsConfig):
        for name in NAMES:
            setting = getattr(earcons, name)
            if isinstance(setting, str):
                _readable_wav(config, setting, f"audio.earcons.{name}")
    _writable(config, state_dir(config.state_dir), "state_dir")


def _readable_wav(config: Config, path: str, key: str) -> None:
    try:
        read_wav(resolve(path, config.state_dir))
    except VoicedError as exc:
        raise ConfigError(str(exc), file=config.source, key=key) from None


def _writable(config: Config, folder: Path, key: str) -> None:
    """``folder`` exists and can be written, or its nearest existing parent can."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        why = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} cannot be written by this user"
    else:
        return
    raise ConfigError(f"voiced writes under {folder}, but {why}", file=config.source, key=key)
