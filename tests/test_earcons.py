"""Earcons: the built-in sounds, and choosing them in the config."""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest

from tests.conftest import config_file, tone, write_wav
from voiced.config import load_config
from voiced.earcons import NAMES, builtin, load_earcons
from voiced.errors import DeviceError


@pytest.mark.parametrize("name", NAMES)
def test_builtin_sounds_are_soft_and_click_free(name: str) -> None:
    samples = array("h", builtin(name))
    assert 0.1 < len(samples) / 24000 < 0.5  # short
    assert max(abs(s) for s in samples) <= 0.25 * 32767  # never startling
    assert max(abs(samples[0]), abs(samples[-1])) < 200  # faded in and out: no click


def test_each_sound_is_its_own() -> None:
    assert len({builtin(name) for name in NAMES}) == len(NAMES)


def test_choosing_earcons(tmp_path: Path) -> None:
    chime = write_wav(tmp_path / "chime.wav", tone(0.2))
    config = load_config(
        config_file(tmp_path, f"audio:\n  earcons:\n    commit: false\n    error: '{chime}'\n")
    )
    sounds = load_earcons(config.audio.earcons)
    assert set(sounds) == {"listening", "error", "too_short"}
    assert sounds["error"] == tone(0.2)
    assert sounds["listening"] == builtin("listening")
    off = load_config(config_file(tmp_path, "audio:\n  earcons: false\n"))
    assert load_earcons(off.audio.earcons) == {}


def test_a_bad_earcon_file_is_named(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, "audio:\n  earcons:\n    listening: nope.wav\n"))
    with pytest.raises(DeviceError, match=r"^cannot read nope.wav: "):
        load_earcons(config.audio.earcons)


def test_an_unknown_earcon_is_a_config_error(tmp_path: Path) -> None:
    from voiced.errors import ConfigError

    with pytest.raises(ConfigError, match=r"config.yaml:3: audio.earcons.beep: unknown key"):
        load_config(config_file(tmp_path, "audio:\n  earcons:\n    beep: true\n"))
