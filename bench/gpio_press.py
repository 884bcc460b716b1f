"""A GPIO button's release → ``input_audio_buffer.commit`` at the server, through the real daemon.

Usage: ``.venv/bin/python bench/gpio_press.py [--turns N]``. Prints one JSON object on stdout;
progress goes to stderr. See bench/README.md for what each figure means.

voiced runs in this process (``run_daemon``) with the ``gpio`` plugin on gpiozero's mock pins
(``pin_factory: mock``: this process's ``MockFactory``), a looped, paced WAV microphone and a WAV
speaker. The simulator runs in this process too (``voiced.sim.Simulator``), so that the moment a
commit reaches it can be stamped: its session's record of received events is wrapped to note the
clock when a commit is appended. A turn: press (the pin driven low), wait for listening, hold
``HOLD_S``, release (the pin driven high) and wait for the turn to end. The release is driven
from the trio thread (as in the tests) for half the turns and from a worker thread (where a real
pin library calls back) for the other half.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import trio  # noqa: E402
from gpiozero import Device  # noqa: E402
from gpiozero.pins.mock import MockFactory  # noqa: E402

from bench.three_turns import log, rounded  # noqa: E402
from tests.conftest import tone, write_wav  # noqa: E402
from voiced.app import run_daemon  # noqa: E402
from voiced.config import load_config  # noqa: E402
from voiced.events import Event, StateChanged, TurnEnded  # noqa: E402
from voiced.pipeline import Pipeline  # noqa: E402
from voiced.sim import Simulator  # noqa: E402
from voiced.turn import State  # noqa: E402

BUTTON, LED = 17, 18
HOLD_S = 0.3  # the person speaks this long
TURN_TIMEOUT_S = 30.0
KEY = "sk-bench-gpio"
MODES = ("trio_thread", "worker_thread")


class StampedEvents(list[dict[str, Any]]):
    """The simulator session's ``received`` list, noting when each commit arrives."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        super().__init__(items)
        self.commits: list[float] = []
        self.arrived = trio.Event()

    def append(self, event: dict[str, Any]) -> None:
        super().append(event)
        if event.get("type") == "input_audio_buffer.commit":
            self.commits.append(time.perf_counter())
            self.arrived.set()


def config_text(tmp: Path, url: str) -> str:
    mic = write_wav(tmp / "mic.wav", tone(2.0, seed=3))
    return (
        f"realtime: {{url: '{url}'}}\nauth: {{api_key: {KEY}}}\n"
        f"audio:\n  input: {{backend: wav, path: '{mic}', loop: true}}\n"
        f"  output: {{backend: wav, path: '{tmp / 'spk.wav'}', realtime: false}}\n"
        "  earcons: false\n"
        f"plugins:\n  gpio: {{pin_factory: mock, button: {{pin: {BUTTON}}}, led: {{pin: {LED}}}}}\n"
    )


async def turn(
    pins: MockFactory, events: trio.abc.ReceiveChannel[Event], stamped: StampedEvents, mode: str
) -> tuple[float, TurnEnded]:
    """One press-and-release turn; the ms from the release to the commit at the simulator."""
    button = pins.pin(BUTTON)
    with trio.fail_after(TURN_TIMEOUT_S):
        button.drive_low()
        async for event in events:
            if isinstance(event, StateChanged) and event.new is State.LISTENING:
                break
        await trio.sleep(HOLD_S)
        stamped.arrived = trio.Event()
        released: list[float] = []

        def release() -> None:
            released.append(time.perf_counter())
            button.drive_high()

        if mode == "trio_thread":
            release()
        else:
            await trio.to_thread.run_sync(release)
        await stamped.arrived.wait()
        ms = (stamped.commits[-1] - released[0]) * 1000
        ended = None
        async for event in events:  # TurnEnded, and the state idle again
            if isinstance(event, TurnEnded):
                ended = event
            elif isinstance(event, StateChanged) and event.new is State.IDLE and ended:
                break
        assert ended is not None
        return ms, ended


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values) if values else None,
        "max": max(values) if values else None,
        "values": values,
    }


async def bench(tmp: Path, turns: int) -> dict[str, Any]:
    pins = MockFactory()
    Device.pin_factory = pins  # what the plugin's `pin_factory: mock` takes over
    simulator = Simulator(api_key=KEY)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(simulator.serve)
        url = f"ws://127.0.0.1:{port}/v1/realtime"
        (tmp / "voiced.yaml").write_text(config_text(tmp, url))
        stop = trio.Event()
        pipe: Pipeline = await nursery.start(
            partial(run_daemon, load_config(tmp / "voiced.yaml"), shutdown_trigger=stop.wait)
        )
        events = pipe.broadcast.subscribe("bench", StateChanged, TurnEnded)
        await pipe.ready.wait()
        session = simulator.connections[-1].session
        stamped = session.received = StampedEvents(session.received)
        await turn(pins, events, stamped, "trio_thread")  # warm-up, not measured
        results: dict[str, list[float]] = {mode: [] for mode in MODES}
        daemon_commit: list[float] = []
        outcomes: Counter[str] = Counter()
        for i in range(turns):
            mode = MODES[i % 2]
            ms, ended = await turn(pins, events, stamped, mode)
            results[mode].append(ms)
            outcomes[ended.outcome] += 1
            if "commit" in ended.latencies:
                daemon_commit.append(ended.latencies["commit"])
            log(f"turn {i + 1}/{turns} ({mode}): release → commit at the simulator {ms:.1f} ms")
        stop.set()
        nursery.cancel_scope.cancel()
    everything = [ms for mode in MODES for ms in results[mode]]
    return {
        "ok": set(outcomes) == {"completed"} and len(simulator.connections) == 1,
        "release_to_commit_at_sim_ms": spread(everything),
        "by_release_thread": {mode: spread(results[mode]) for mode in MODES},
        "daemon_commit_latency_ms": spread(daemon_commit),
        "outcomes": dict(outcomes),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=20, help="measured turns (20)")
    args = parser.parse_args()
    if args.turns < 2:
        parser.error("--turns must be at least 2 (one per release thread)")
    with tempfile.TemporaryDirectory(prefix="voiced-bench-") as name:
        tmp = Path(name)
        os.environ["STATE_DIRECTORY"] = str(tmp / "state")  # never the user's ~/.local/state
        result = trio.run(bench, tmp, args.turns)
    result["scenario"] = {
        "turns": args.turns,
        "hold_s": HOLD_S,
        "button": f"gpiozero MockFactory GPIO{BUTTON} (pull-up; low = pressed), debounce 30 ms",
        "microphone": "looped WAV, paced in real time (20 ms blocks)",
        "speaker": "WAV, not paced",
        "simulator": "voiced.sim.Simulator in this process (pace 0)",
    }
    result["machine"] = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    print(json.dumps(rounded(result), indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
