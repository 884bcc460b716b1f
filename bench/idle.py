"""What an idle kiosk costs: ``voiced run`` with its microphone open, against a bare floor.

Usage: ``.venv/bin/python bench/idle.py [--seconds S] [--runs N] [--profile FILE]``. Prints one
JSON object on stdout; progress goes to stderr. See bench/README.md for what each figure means.

A private PulseAudio (tests/soundserver.py) has a 48 kHz microphone and speaker (null sinks). Two
programs are measured in turn, each a subprocess of this one, for the same window once ready:

- ``voiced``: ``python -m voiced run --config C`` with the pyaudio backend on both devices at
  48 kHz and the ``http`` plugin, ready once ``GET /status`` says ``ready``.
- ``floor``: ``python -m bench.clients.idle_floor``: the same two PyAudio callback streams, soxr
  into a pre-roll ring, and one trio-websocket session; ready once it prints ``READY``.

Both talk to one ``python -m voiced sim`` in its own process, so its CPU is never counted. CPU is
the user+sys time of the measured process (all its threads) over the window, from psutil.
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
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # type: ignore[import-untyped]  # noqa: E402

from bench.clients.common import MODEL  # noqa: E402
from bench.three_turns import free_port, log, rounded, simulator  # noqa: E402
from tests.soundserver import Device, missing_programs, running_soundserver  # noqa: E402

PYTHON = sys.executable
RATE = 48_000
READY_TIMEOUT_S = 30.0
SETTLE_S = 3.0
"""Seconds between ready and the window: the first blocks, the first status requests."""
TARGETS = {"ratio_cpu": 1.15, "rss_over_floor_mb": 10.0}


def devices(channels: int) -> tuple[Device, Device]:
    suffix = "s" if channels == 2 else ""
    return Device(f"mic48{suffix}", RATE, channels), Device(f"spk48{suffix}", RATE, channels)


def config_text(mic: Device, speaker: Device, sim_port: int, key: str, http_port: int) -> str:
    device = "{{backend: pyaudio, device: {0.name}, rate: {0.rate}, channels: {0.channels}}}"
    return (
        f"realtime: {{url: 'ws://127.0.0.1:{sim_port}/v1/realtime', model: {MODEL}}}\n"
        f"auth: {{api_key: {key}}}\n"
        f"audio:\n  input: {device.format(mic)}\n  output: {device.format(speaker)}\n"
        f"plugins:\n  http: {{port: {http_port}}}\n"
    )


# --------------------------------------------------------------------------- one measured run


@dataclass
class Run:
    cpu_percent: float
    """User+sys CPU over wall time in the window, in percent of one core."""
    main_thread_cpu_percent: float
    """The same for the main thread alone (voiced's trio thread)."""
    rss_mb: float
    context_switches_per_s: float
    """Voluntary and involuntary, summed over the threads alive at the end: wake-ups."""
    threads: int
    machine_busy_percent: float
    """All cores, everything on the machine, during the window: how noisy the run was."""


def context_switches(pid: int) -> int:
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def main_thread_cpu(proc: psutil.Process) -> float:
    return next((t.user_time + t.system_time for t in proc.threads() if t.id == proc.pid), 0.0)


def window(pid: int, seconds: float) -> Run:
    proc = psutil.Process(pid)
    psutil.cpu_percent()  # starts the machine-wide count
    cpu0, main0, switches0 = proc.cpu_times(), main_thread_cpu(proc), context_switches(pid)
    wall0 = time.monotonic()
    time.sleep(seconds)
    cpu1, main1, switches1 = proc.cpu_times(), main_thread_cpu(proc), context_switches(pid)
    wall = time.monotonic() - wall0
    busy = psutil.cpu_percent()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return Run(
        cpu_percent=100 * cpu / wall,
        main_thread_cpu_percent=100 * (main1 - main0) / wall,
        rss_mb=proc.memory_info().rss / 2**20,
        context_switches_per_s=(switches1 - switches0) / wall,
        threads=proc.num_threads(),
        machine_busy_percent=busy,
    )


def status(http_port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=1) as reply:
            answer: dict[str, Any] = json.loads(reply.read())
            return answer
    except OSError:
        return None


def tail(path: Path) -> str:
    return " | ".join(path.read_text(errors="replace").splitlines()[-5:])


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(
    argv: list[str], log_path: Path, ready: Callable[[Path], Any], seconds: float, cwd: Path
) -> tuple[Run, Any]:
    """Spawn ``argv``, wait until ``ready(log_path)`` returns something, settle, measure."""
    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (found := ready(log_path)):
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[2]} exited {proc.returncode}: {tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{argv[2]} not ready in {READY_TIMEOUT_S:g} s: {tail(log_path)}"
                )
            time.sleep(0.1)
        time.sleep(SETTLE_S)
        run = window(proc.pid, seconds)
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[2]} exited {proc.returncode}: {tail(log_path)}")
        return run, found
    finally:
        stop(proc)


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Medians, and every run's values under ``runs``."""
    fields = list(vars(runs[0]))
    out: dict[str, Any] = {
        name: statistics.median(getattr(r, name) for r in runs) for name in fields
    }
    out["runs"] = {name: [getattr(r, name) for r in runs] for name in ("cpu_percent", "rss_mb")}
    return out


# --------------------------------------------------------------------------- the benchmark


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    mic, speaker = devices(args.channels)
    sim_port, http_port = free_port(), free_port()
    key = f"sk-bench-{os.urandom(8).hex()}"
    config = tmp / "voiced.yaml"
    config.write_text(config_text(mic, speaker, sim_port, key, http_port))
    url = f"ws://127.0.0.1:{sim_port}/v1/realtime?model={MODEL}"
    programs = {
        "voiced": [PYTHON, "-m", "voiced", "run", "--config", str(config)],
        "floor": [
            *(PYTHON, "-m", "bench.clients.idle_floor", "--url", url, "--key", key),
            *("--input", mic.name, "--output", speaker.name),
            *("--rate", str(RATE), "--channels", str(args.channels)),
        ],
    }
    opened: dict[str, Any] = {}

    def voiced_ready(_log: Path) -> dict[str, Any] | None:
        now = status(http_port)
        return now if now is not None and now["connected"] and now["ready"] else None

    def floor_ready(log_path: Path) -> bool:
        return "READY" in log_path.read_text(errors="replace").splitlines()

    readiness = {"voiced": voiced_ready, "floor": floor_ready}
    results: dict[str, list[Run]] = {name: [] for name in programs}
    with (
        running_soundserver(tmp / "sound", (mic, speaker)),
        simulator(sim_port, key, tmp / "sim.log"),
    ):
        log(
            f"sound server: {mic.name} and {speaker.name}, {RATE} Hz {args.channels} ch; "
            f"simulator on port {sim_port}; {args.runs} run(s) of {args.seconds:g} s each"
        )
        for n in range(1, args.runs + 1):
            order = list(programs) if n % 2 else list(reversed(programs))
            for name in order:
                cwd = tmp if name == "voiced" else REPO  # the floor imports bench.clients
                log_path = tmp / f"{name}.{n}.log"
                run, found = measure(programs[name], log_path, readiness[name], args.seconds, cwd)
                if name == "voiced":
                    opened = {k: found["audio"][k] for k in ("input", "output")}
                    for kind, device in opened.items():
                        if device["error"] is not None:
                            raise RuntimeError(f"voiced's {kind}: {device['error']}")
                results[name].append(run)
                log(
                    f"run {n}/{args.runs} {name:<6} cpu {run.cpu_percent:.2f} %  "
                    f"main thread {run.main_thread_cpu_percent:.2f} %  rss {run.rss_mb:.1f} MB  "
                    f"wakeups {run.context_switches_per_s:.0f}/s  "
                    f"machine busy {run.machine_busy_percent:.0f} %"
                )
        profile = None
        if args.profile:
            log(f"profiling voiced for {args.seconds:g} s into {args.profile}")
            argv = [PYTHON, "-m", "cProfile", "-o", str(args.profile), *programs["voiced"][1:]]
            measure(argv, tmp / "voiced.profile.log", voiced_ready, args.seconds, tmp)
            profile = str(args.profile)

    voiced, floor = summarize(results["voiced"]), summarize(results["floor"])
    ratio_cpu = voiced["cpu_percent"] / floor["cpu_percent"]
    over = voiced["rss_mb"] - floor["rss_mb"]
    return {
        "ok": ratio_cpu <= TARGETS["ratio_cpu"] and over <= TARGETS["rss_over_floor_mb"],
        "seconds": args.seconds,
        "runs": args.runs,
        "device": {
            "microphone": f"{mic.name}: {mic.rate} Hz, {mic.channels} ch (null sink monitor)",
            "speaker": f"{speaker.name}: {speaker.rate} Hz, {speaker.channels} ch (null sink)",
            "rate": RATE,
            "channels": args.channels,
            "voiced_opened": {
                kind: {k: d.get(k) for k in ("name", "rate", "channels")}
                for kind, d in opened.items()
            },
        },
        "voiced": voiced,
        "floor": floor,
        "ratio_cpu": ratio_cpu,
        "rss_over_floor_mb": over,
        "targets": TARGETS,
        "ratio_cpu_ok": ratio_cpu <= TARGETS["ratio_cpu"],
        "rss_ok": over <= TARGETS["rss_over_floor_mb"],
        "profile": profile,
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (20)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each, alternating (3)")
    parser.add_argument("--channels", type=int, choices=(1, 2), default=2, help="devices' (2)")
    parser.add_argument(
        "--profile",
        type=Path,
        help="afterwards, run voiced once more under cProfile for the window (not counted)",
    )
    args = parser.parse_args()
    if args.runs < 1 or args.seconds <= 0:
        parser.error("--runs must be at least 1 and --seconds positive")
    if args.profile:
        args.profile = args.profile.resolve()
    if missing := missing_programs():
        log(f"needs a sound server: missing {missing}")
        return 2
    with tempfile.TemporaryDirectory(prefix="voiced-bench-") as name:
        tmp = Path(name)
        os.environ["STATE_DIRECTORY"] = str(tmp / "state")  # never the user's ~/.local/state
        result = bench(args, tmp)
    print(json.dumps(rounded(result), indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
