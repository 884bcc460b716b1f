"""Three push-to-talk turns on one session: voiced against the openai SDK and a bare floor client.

Usage: ``.venv/bin/python bench/three_turns.py [--runs N]``. Prints one JSON object on stdout;
progress goes to stderr. See bench/README.md for what each figure means.

The simulator (``python -m voiced sim``) runs in its own process for the whole benchmark, so its
CPU is never counted. Each client is a subprocess of this one; its CPU time and peak RSS come from
``os.wait4`` (that child alone), and it reports on stderr its own CPU time and the wall clock at
the moment the session is connected (``CONNECTED_CPU=`` / ``CONNECTED_WALL=``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run as a script, the directory on sys.path is bench/; the clients import bench.clients.common.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.clients.common import (  # noqa: E402
    BYTES_PER_SECOND,
    INSTRUCTIONS,
    MODEL,
    RATE,
    TRANSCRIPTION_MODEL,
    VOICE,
    read_pcm,
    write_wav,
)

PYTHON = sys.executable
VOICED_SCRIPT = str(Path(sys.executable).parent / "voiced")
TURNS = 3
UTTERANCE_S = 3.0
CLIENT_TIMEOUT_S = 60.0
HELP_RUNS = 10
TARGETS = {
    "voiced_vs_floor_cpu_max": 1.5,
    "voiced_vs_sdk_cpu_max": 0.5,
    "voiced_peak_rss_mb_max": 45.0,
    "voiced_help_s_max": 0.3,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- inputs


def utterance(index: int) -> bytes:
    """A deterministic, speech-like 3 s PCM16 signal: a few harmonics of a pitch that differs
    per utterance, under a 3.5 Hz "syllable" envelope that fades in and out."""
    f0 = 120.0 + 45.0 * index
    samples = array("h")
    for i in range(int(RATE * UTTERANCE_S)):
        t = i / RATE
        envelope = math.sin(math.pi * t / UTTERANCE_S) ** 2
        envelope *= 0.55 + 0.45 * math.sin(2 * math.pi * 3.5 * t)
        voice = sum(math.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 5))
        samples.append(int(9000 * envelope * voice))
    if sys.byteorder == "big":
        samples.byteswap()  # the wire format is little-endian
    return samples.tobytes()


def voiced_config(base_url: str, key: str) -> str:
    """A voiced config with the same session settings the SDK and floor clients send."""
    return (
        f"realtime:\n  url: {base_url}/realtime\n  model: {MODEL}\n  voice: {VOICE}\n"
        f"  instructions: {json.dumps(INSTRUCTIONS)}\n"
        f"  transcription: {{model: {TRANSCRIPTION_MODEL}}}\n"
        f"auth:\n  api_key: {key}\nplugins:\n  stdout: {{}}\n"
    )


# --------------------------------------------------------------------------- the simulator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def simulator(port: int, key: str, log_path: Path) -> Iterator[None]:
    """``python -m voiced sim`` in its own process, accepting TCP, until the block ends."""
    with log_path.open("wb") as sim_log:
        sim = subprocess.Popen(
            [PYTHON, "-m", "voiced", "sim", "--port", str(port), "--key", key],
            stdin=subprocess.DEVNULL,
            stdout=sim_log,
            stderr=sim_log,
        )
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


def wait_for_tcp(port: int, sim: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sim.poll() is not None:
            raise RuntimeError(f"the simulator exited with status {sim.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the simulator did not accept TCP on port {port} in {timeout:g} s")


# --------------------------------------------------------------------------- one measured run


@dataclass
class Run:
    ok: bool
    cpu_s: float
    peak_rss_mb: float
    wall_s: float
    audio_s: float
    cpu_after_connect_s: float | None
    startup_to_ready_s: float | None
    problem: str


def marks(stderr: str) -> dict[str, float]:
    found = {}
    for line in stderr.splitlines():
        name, sep, value = line.partition("=")
        if sep and name in ("CONNECTED_CPU", "CONNECTED_WALL"):
            found[name] = float(value)
    return found


def measure(argv: list[str], out: Path, sent: bytes, stderr_path: Path) -> Run:
    """Spawn one client, wait for it with ``os.wait4``, and check its reply file."""
    out.unlink(missing_ok=True)
    with stderr_path.open("w+b") as stderr:
        spawned = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
        killer = threading.Timer(CLIENT_TIMEOUT_S, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        stderr.seek(0)
        text = stderr.read().decode(errors="replace")
    try:
        reply = read_pcm(out)
    except (OSError, EOFError, ValueError):
        reply = b""
    problem = ""
    if proc.returncode != 0:
        problem = f"exit status {proc.returncode}: " + " | ".join(text.splitlines()[-3:])
    elif reply != sent:
        problem = f"reply of {len(reply)} bytes is not the {len(sent)} bytes sent"
    cpu = usage.ru_utime + usage.ru_stime
    mark = marks(text)
    connected_cpu, connected_wall = mark.get("CONNECTED_CPU"), mark.get("CONNECTED_WALL")
    return Run(
        ok=not problem,
        cpu_s=cpu,
        peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        wall_s=wall,
        audio_s=(len(sent) + len(reply)) / BYTES_PER_SECOND,
        cpu_after_connect_s=None if connected_cpu is None else cpu - connected_cpu,
        startup_to_ready_s=None if connected_wall is None else connected_wall - spawned,
        problem=problem,
    )


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Medians of every figure, and their minimums under ``min``."""
    series: dict[str, list[float]] = {
        "cpu_s": [r.cpu_s for r in runs],
        "cpu_per_audio_s": [r.cpu_s / r.audio_s for r in runs if r.audio_s],
        "cpu_after_connect_per_audio_s": [
            r.cpu_after_connect_s / r.audio_s
            for r in runs
            if r.cpu_after_connect_s is not None and r.audio_s
        ],
        "peak_rss_mb": [r.peak_rss_mb for r in runs],
        "startup_to_ready_s": [
            r.startup_to_ready_s for r in runs if r.startup_to_ready_s is not None
        ],
        "wall_s": [r.wall_s for r in runs],
    }
    out: dict[str, Any] = {"ok": all(r.ok for r in runs), "runs": len(runs)}
    out["audio_s"] = statistics.median(r.audio_s for r in runs)
    for name, values in series.items():
        out[name] = statistics.median(values) if values else None
    out["min"] = {name: min(values) if values else None for name, values in series.items()}
    problems = [r.problem for r in runs if r.problem]
    if problems:
        out["problems"] = problems
    return out


def median_wall(argv: list[str], runs: int, cwd: str) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rounded(value: Any) -> Any:
    """``value`` with every float rounded to 4 significant digits, for reading."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


# --------------------------------------------------------------------------- the benchmark


def bench(runs: int, tmp: Path) -> dict[str, Any]:
    inputs = []
    for i in range(TURNS):
        path = tmp / f"in{i + 1}.wav"
        write_wav(path, utterance(i))
        inputs.append(path)
    sent = b"".join(read_pcm(path) for path in inputs)
    wavs = [str(path) for path in inputs]

    port, key = free_port(), f"sk-bench-{os.urandom(8).hex()}"
    base_url = f"ws://127.0.0.1:{port}/v1"
    config = tmp / "voiced.yaml"
    config.write_text(voiced_config(base_url, key))
    ask = ["--config", str(config), "--out", "{out}", *wavs]
    client = ["--base-url", base_url, "--key", key, "--model", MODEL, "--out", "{out}", *wavs]
    clients = {  # "{out}" stands for the client's reply file
        "voiced": [PYTHON, "-m", "bench.clients.voiced_client", str(config), "{out}", *wavs],
        "voiced_cli": [PYTHON, "-m", "voiced", "ask", *ask],
        "sdk": [PYTHON, "-m", "bench.clients.sdk_client", *client],
        "floor": [PYTHON, "-m", "bench.clients.floor_client", *client],
    }

    results: dict[str, list[Run]] = {name: [] for name in clients}
    with simulator(port, key, tmp / "sim.log"):
        log(f"simulator on {base_url}/realtime; {runs} run(s) per client")
        for n in range(1, runs + 1):
            for name, template in clients.items():
                out = tmp / f"{name}.out.wav"
                argv = [str(out) if arg == "{out}" else arg for arg in template]
                run = measure(argv, out, sent, tmp / f"{name}.{n}.stderr")
                results[name].append(run)
                log(
                    f"run {n}/{runs} {name:<10} cpu {run.cpu_s:.3f} s  "
                    f"rss {run.peak_rss_mb:.1f} MB  wall {run.wall_s:.3f} s  "
                    + ("ok" if run.ok else f"FAILED: {run.problem}")
                )

    log(f"timing --help, {HELP_RUNS} runs each")
    help_s = median_wall([PYTHON, "-m", "voiced", "--help"], HELP_RUNS, str(tmp))
    script_help_s = median_wall([VOICED_SCRIPT, "--help"], HELP_RUNS, str(tmp))

    summary = {name: summarize(runs_) for name, runs_ in results.items()}
    voiced, sdk, floor = summary["voiced"], summary["sdk"], summary["floor"]
    vs_floor = ratio(voiced["cpu_per_audio_s"], floor["cpu_per_audio_s"])
    vs_sdk = ratio(voiced["cpu_per_audio_s"], sdk["cpu_per_audio_s"])
    after = "cpu_after_connect_per_audio_s"
    peak_rss = max(voiced["peak_rss_mb"], summary["voiced_cli"]["peak_rss_mb"])
    return {
        "ok": all(s["ok"] for s in summary.values()),
        "scenario": {
            "turns": TURNS,
            "utterance_s": UTTERANCE_S,
            "append_ms": 100,
            "audio_s": voiced["audio_s"],
            "runs": runs,
            "simulator": "python -m voiced sim, own process, not measured",
            # Linux carries a process's pre-exec RSS high-water mark into ru_maxrss, so no
            # child's peak_rss_mb can read lower than this parent's peak at the time it spawned.
            "parent_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
        "clients": summary,
        "voiced_help_s": help_s,
        "voiced_script_help_s": script_help_s,
        "voiced_vs_floor_cpu": vs_floor,
        "voiced_vs_sdk_cpu": vs_sdk,
        "voiced_vs_floor_cpu_after_connect": ratio(voiced[after], floor[after]),
        "voiced_vs_sdk_cpu_after_connect": ratio(voiced[after], sdk[after]),
        "voiced_vs_floor_cpu_ok": vs_floor is not None
        and vs_floor <= TARGETS["voiced_vs_floor_cpu_max"],
        "voiced_vs_sdk_cpu_ok": vs_sdk is not None and vs_sdk <= TARGETS["voiced_vs_sdk_cpu_max"],
        "peak_rss_ok": peak_rss < TARGETS["voiced_peak_rss_mb_max"],
        "help_ok": max(help_s, script_help_s) < TARGETS["voiced_help_s_max"],
        "targets": TARGETS,
        "machine": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "machine": platform.machine(),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="runs per client (5)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="voiced-bench-") as tmp:
        result = bench(args.runs, Path(tmp))
    print(json.dumps(rounded(result), indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
