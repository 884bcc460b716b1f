"""Shared fixtures. The rules every test here follows:

- Real parts, not mocks: a real WebSocket to voiced's own simulator on loopback, real HTTP on
  loopback, real files. A fake stands in only for what cannot run here, and says so.
- No sleeps to wait for things: wait on the event itself (a status change, a broadcast event, a
  server record), or use trio's ``autojump_clock`` for timeouts and pacing.
- Every async test runs under ``trio.fail_after`` so a hang fails fast with a traceback.
- Speed and memory are measured by ``bench/``, never asserted here.
"""

from __future__ import annotations

import math
import wave
from array import array
from pathlib import Path

import pytest
import trio

from voiced.audio import RATE
from voiced.sim import Simulator

SIM_KEY = "test-key-not-a-secret"


def tone(seconds: float, *, freq: float = 440.0, seed: int = 0) -> bytes:
    """Deterministic 24 kHz mono PCM16: a chord whose pitches depend on ``seed``, with noise."""
    n = int(seconds * RATE)
    state = seed * 7919 + 1
    samples = array("h")
    for i in range(n):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF  # a tiny LCG: same bytes every run
        noise = (state >> 16) % 2001 - 1000
        t = i / RATE
        value = 8000 * math.sin(2 * math.pi * (freq + 37 * seed) * t) + 3000 * math.sin(
            2 * math.pi * 1.5 * (freq + 11 * seed) * t
        )
        samples.append(int(value) + noise)
    return samples.tobytes()


def write_wav(path: Path, pcm: bytes) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm)
    return path


def read_wav(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
        return wav.readframes(wav.getnframes())


def free_port() -> int:
    """A port nothing listens on right now (for a plugin that must be told its port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningSim:
    def __init__(self, sim: Simulator, port: int) -> None:
        self.sim = sim
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/v1/realtime"


@pytest.fixture
async def sim(nursery: trio.Nursery) -> RunningSim:
    """The simulator on a loopback port, accepting ``SIM_KEY``."""
    simulator = Simulator(api_key=SIM_KEY)
    port = await nursery.start(simulator.serve)
    return RunningSim(simulator, port)


@pytest.fixture(autouse=True)
def state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the daemon keeps its run-time state: private to each test (never ~/.local)."""
    directory = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(directory))
    return directory


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path
