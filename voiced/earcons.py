"""Earcons: the short sounds that tell a person what the daemon just did.

``listening`` (a press was heard: talk now), ``commit`` (what you said was sent), ``error`` (the
turn failed) and ``too_short`` (the press was too short to send). Each is built in, generated
here with no files needed, or a WAV file from the config (24 kHz mono PCM16), or turned off.
"""

from __future__ import annotations

import math
from array import array
from pathlib import Path

from voiced.audio import RATE
from voiced.config import EarconsConfig

NAMES = ("listening", "commit", "error", "too_short")

# (frequency in Hz, milliseconds) per note; 0 Hz is a rest.
_NOTES: dict[str, tuple[tuple[float, int], ...]] = {
    "listening": ((660.0, 70), (0.0, 15), (990.0, 90)),
    "commit": ((990.0, 60), (0.0, 15), (660.0, 70)),
    "error": ((220.0, 140), (0.0, 40), (196.0, 220)),
    "too_short": ((440.0, 50), (0.0, 50), (440.0, 50)),
}
LEVEL = 0.25
"""Peak level of the built-in sounds (of full scale): audible, never startling."""
RAMP_MS = 5
"""Fade in and out of each note, so that none clicks."""


def builtin(name: str) -> bytes:
    """A built-in earcon, 24 kHz mono PCM16."""
    samples = array("h")
    for freq, ms in _NOTES[name]:
        count = RATE * ms // 1000
        ramp = RATE * RAMP_MS // 1000
        for i in range(count):
            envelope = min(1.0, i / ramp, (count - 1 - i) / ramp)
            value = LEVEL * envelope * math.sin(2 * math.pi * freq * i / RATE) if freq else 0.0
            samples.append(int(32767 * value))
    return samples.tobytes()


def load_earcons(config: EarconsConfig | bool) -> dict[str, bytes]:
    """The earcons turned on, by name.

    Raises:
        DeviceError: a configured WAV file cannot be read or is not 24 kHz mono PCM16.
    """
    from voiced.devices.wav import read_wav

    if config is False:
        return {}
    chosen = EarconsConfig() if config is True else config
    sounds = {}
    for name in NAMES:
        setting = getattr(chosen, name)
        if setting is True:
            sounds[name] = builtin(name)
        elif isinstance(setting, str):
            sounds[name] = read_wav(Path(setting))
    return sounds
