"""Push-to-talk turns through real PyAudio devices on a private sound server, resampled both ways.

Usage: ``.venv/bin/python bench/audio_devices.py [--turns N] [--soak-minutes M]``. Prints one JSON
object on stdout; progress goes to stderr. See bench/README.md for what each figure means.

voiced runs in this process (``run_daemon``, driven over its ``http`` plugin the way
tests/test_realaudio.py drives it) on a PulseAudio of its own (tests/soundserver.py) whose
microphone and speaker are 48 kHz stereo null sinks: voiced converts to and from the 24 kHz mono
of the wire with soxr. espeak-ng speech is played into the microphone. The simulator
(``python -m voiced sim --pace 0.5 --jitter 0.04``: deltas of uneven sizes, each up to 40 ms early
or late, twice as fast as real time) runs in its own process, so its CPU is never counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import pyaudio  # noqa: E402
import trio  # noqa: E402

from bench.three_turns import free_port, log, rounded, wait_for_tcp  # noqa: E402
from tests.soundserver import (  # noqa: E402
    Device,
    SoundServer,
    align,
    missing_programs,
    running_soundserver,
    samples,
    speech,
)
from voiced.app import run_daemon  # noqa: E402
from voiced.config import load_config  # noqa: E402
from voiced.events import Event, StateChanged, Transcript, TurnEnded  # noqa: E402
from voiced.pipeline import Pipeline  # noqa: E402
from voiced.turn import State  # noqa: E402

MIC = Device("mic48s", 48_000, 2)
SPEAKER = Device("spk48s", 48_000, 2)
SIM_ARGS = ["--pace", "0.5", "--jitter", "0.04"]
SENTENCES = (  # uneven lengths, about 2.5 to 5 s
    "what is the weather like in the kitchen today",
    "turn the living room lights down to thirty percent",
    "remind me to call the plumber tomorrow morning at nine and add milk to the shopping list",
)
EARLY_S = 0.2  # the person is already speaking when the button goes down...
RELEASE_S = 0.2  # ...and lets it up a moment after the last word
TURN_TIMEOUT_S = 60.0
TARGETS = {"underruns": 0, "xruns": 0, "dropped_frames": 0}


@contextmanager
def simulator(port: int, key: str, log_path: Path) -> Iterator[None]:
    """``python -m voiced sim`` with jittered, uneven deltas, in its own process."""
    argv = [sys.executable, "-m", "voiced", "sim", "--port", str(port), "--key", key, *SIM_ARGS]
    with log_path.open("wb") as out:
        sim = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        try:
            wait_for_tcp(port, sim)
            yield
        finally:
            sim.terminate()
            try:
                sim.wait(5)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()


def config_text(sim_port: int, key: str, http_port: int) -> str:
    device = "{{backend: pyaudio, device: {0.name}, rate: {0.rate}, channels: {0.channels}}}"
    return (
        f"realtime: {{url: 'ws://127.0.0.1:{sim_port}/v1/realtime'}}\n"
        f"auth: {{api_key: {key}}}\n"
        f"audio:\n  input: {device.format(MIC)}\n  output: {device.format(SPEAKER)}\n"
        "  earcons: false\n"
        f"plugins:\n  http: {{port: {http_port}}}\n"
    )


@dataclass
class Driver:
    """Presses the buttons over HTTP and speaks into the microphone, like a person."""

    sound: SoundServer
    http: httpx.AsyncClient
    events: trio.abc.ReceiveChannel[Event]
    heard_ms: float = 0.0
    """Input audio committed so far, from the simulator's "heard N ms" user transcripts."""
    outcomes: Counter[str] = field(default_factory=Counter)

    async def next_event(self) -> Event:
        event = await self.events.receive()
        if isinstance(event, Transcript) and event.role == "user":
            self.heard_ms += float(event.text.split()[1])
        return event

    async def turn(self, pcm: bytes) -> TurnEnded:
        with trio.fail_after(TURN_TIMEOUT_S):
            player = await trio.to_thread.run_sync(self.sound.start_playing, MIC.name, pcm)
            await trio.sleep(EARLY_S)
            await self.http.post("/start")
            while True:
                event = await self.next_event()
                if isinstance(event, StateChanged) and event.new is State.LISTENING:
                    break
            await trio.to_thread.run_sync(player.wait)
            await trio.sleep(RELEASE_S)
            await self.http.post("/commit")
            while True:  # the state is IDLE again when TurnEnded comes
                event = await self.next_event()
                if isinstance(event, TurnEnded):
                    self.outcomes[event.outcome] += 1
                    return event


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values) if values else None,
        "max": max(values) if values else None,
        "values": values,
    }


async def measured_turns(
    driver: Driver, pipe: Pipeline, pcms: list[bytes], n: int
) -> dict[str, Any]:
    """``n`` turns back to back: latencies, and this process's CPU per second of audio."""
    heard0, played0 = driver.heard_ms, pipe.player.speaker.played_seconds()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    ended = []
    for i in range(n):
        ended.append(await driver.turn(pcms[i % len(pcms)]))
        log(f"turn {i + 1}/{n}: {ended[-1].outcome} {ended[-1].latencies}")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    audio = {
        "input": (driver.heard_ms - heard0) / 1000,
        "reply": pipe.player.speaker.played_seconds() - played0,
    }
    audio_s = audio["input"] + audio["reply"]
    return {
        "release_to_commit_ms": spread(
            [t.latencies["commit"] for t in ended if "commit" in t.latencies]
        ),
        "first_delta_to_device_ms": spread(
            [t.latencies["first_play"] for t in ended if "first_play" in t.latencies]
        ),
        "commit_to_first_delta_ms": spread(
            [t.latencies["first_audio"] for t in ended if "first_audio" in t.latencies]
        ),
        "cpu_per_audio_s": cpu / audio_s if audio_s else None,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_load": cpu / wall,
        "audio_s": audio,
    }


def counters(audio: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The device counters of ``/status``'s ``audio`` section."""
    inp, out = audio["input"], audio["output"]
    return {
        "underruns": out["underruns"],
        "xruns": inp["xruns"] + out["xruns"],
        "dropped_frames": inp["dropped_frames"],
        "output_dropped_ms": out["dropped_ms"],
        "reopens": inp["reopens"] + out["reopens"],
    }


async def soak(driver: Driver, pcms: list[bytes], minutes: float) -> dict[str, Any]:
    """Back-to-back turns for ``minutes``; each reply is recorded off the speaker's monitor."""

    async def status_counters() -> dict[str, int]:
        return counters((await driver.http.get("/status")).json()["audio"])

    first = last = await status_counters()
    fidelity: list[float] = []
    turns = underrun_turns = 0
    deadline = trio.current_time() + 60 * minutes
    while trio.current_time() < deadline:
        pcm = pcms[turns % len(pcms)]
        recording = await trio.to_thread.run_sync(driver.sound.record, SPEAKER.monitor)
        await driver.turn(pcm)
        # The device still holds the last few ms when the turn ends: record 200 ms more.
        await trio.to_thread.run_sync(recording.wait_for, recording.nbytes + 2 * 24_000 // 5)
        played = await trio.to_thread.run_sync(recording.stop)
        fidelity.append(align(samples(pcm), samples(played))[1])
        now = await status_counters()
        turns, underrun_turns = turns + 1, underrun_turns + (now["underruns"] > last["underruns"])
        last = now
        if turns % 10 == 0:
            left = (deadline - trio.current_time()) / 60
            log(f"soak: {turns} turns, {underrun_turns} with underruns, {left:.1f} min left")
    return {
        "minutes": minutes,
        "turns": turns,
        **{name: last[name] - first[name] for name in last},
        "turns_with_underruns": underrun_turns,
        "round_trip_fidelity_min": min(fidelity) if fidelity else None,
    }


async def bench(
    sound: SoundServer, sim_port: int, key: str, tmp: Path, turns: int, minutes: float
) -> dict[str, Any]:
    http_port = free_port()
    (tmp / "voiced.yaml").write_text(config_text(sim_port, key, http_port))
    config = load_config(tmp / "voiced.yaml")
    pcms = [speech(text) for text in SENTENCES]  # 24 kHz mono; PulseAudio makes it 48 kHz stereo
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        pipe: Pipeline = await nursery.start(
            partial(run_daemon, config, shutdown_trigger=stop.wait)
        )
        events = pipe.broadcast.subscribe("bench")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as http:
            await pipe.ready.wait()
            driver = Driver(sound, http, events)
            warmup = await driver.turn(pcms[0])  # the first reply opens the speaker's stream
            log(f"warm-up turn: {warmup.outcome} {warmup.latencies}")
            result = await measured_turns(driver, pipe, pcms, turns)
            log(f"soak: {minutes:g} min of back-to-back turns")
            result["soak"] = await soak(driver, pcms, minutes)
            result["status_at_end"] = (await http.get("/status")).json()["audio"]
        stop.set()
    result["warmup_turn_ms"] = warmup.latencies
    result["outcomes"] = dict(driver.outcomes)  # every turn: warm-up, measured and soak
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=5, help="measured turns (5)")
    parser.add_argument("--soak-minutes", type=float, default=10.0, help="soak length (10)")
    args = parser.parse_args()
    if args.turns < 1 or args.soak_minutes < 0:
        parser.error("--turns must be at least 1 and --soak-minutes not negative")
    if missing := missing_programs():
        log(f"needs a sound server: missing {missing}")
        return 2
    port, key = free_port(), f"sk-bench-{os.urandom(8).hex()}"
    with tempfile.TemporaryDirectory(prefix="voiced-bench-") as name:
        tmp = Path(name)
        os.environ["STATE_DIRECTORY"] = str(tmp / "state")  # never the user's ~/.local/state
        with (
            running_soundserver(tmp / "sound", (MIC, SPEAKER)) as sound,
            simulator(port, key, tmp / "sim.log"),
        ):
            result = trio.run(bench, sound, port, key, tmp, args.turns, args.soak_minutes)
    result = {
        "ok": set(result["outcomes"]) == {"completed"},
        "targets_met": all(result["soak"][name] <= top for name, top in TARGETS.items()),
        **result,
        "targets": TARGETS,
    }
    result["scenario"] = {
        "microphone": f"{MIC.name}: {MIC.rate} Hz, {MIC.channels} ch (null sink monitor)",
        "speaker": f"{SPEAKER.name}: {SPEAKER.rate} Hz, {SPEAKER.channels} ch (null sink)",
        "simulator": "python -m voiced sim " + " ".join(SIM_ARGS) + ", own process, not measured",
        "utterances_s": [len(speech(text)) / 48_000 for text in SENTENCES],
        "turns": args.turns,
        "in_process": "voiced and this driver (httpx requests, pacat spawns) share one "
        "process: cpu_s includes the driver's small share",
    }
    result["machine"] = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "portaudio": pyaudio.get_portaudio_version_text(),
        "pulseaudio": subprocess.run(
            ["pulseaudio", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }
    print(json.dumps(rounded(result), indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
