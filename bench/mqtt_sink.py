"""What the MQTT sink sustains and adds: transcripts per second through the outbox to PUBACK, the
latency from a transcript event to its PUBACK, and the RSS the plugin adds to ``voiced run``.

Usage: ``.venv/bin/python bench/mqtt_sink.py [--transcripts N] [--samples M] [--runs R]``. Prints
one JSON object on stdout; progress goes to stderr. See bench/README.md.

A local mosquitto (``tests/mqttbroker.py``) on a free loopback port. Throughput and latency run
the plugin in this process under ``voiced.testing.FakeDaemon`` (no pipeline), with its outbox on
a temporary directory: ``throughput`` publishes N final transcripts at once (the durable
subscription queues them all) and times until the broker has acknowledged every one and the
outbox is empty; ``latency`` publishes one transcript at a time, the next once the previous is
out of the outbox, and times each from ``publish`` to the PUBACK (and to its outbox commit). RSS
compares ``python -m voiced run`` (null audio, the built-in simulator) without plugins and with
``mqtt`` only, each measured once connected and settled.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # type: ignore[import-untyped]  # noqa: E402
import trio  # noqa: E402

from bench.three_turns import free_port, log, rounded  # noqa: E402
from tests.mqttbroker import Broker  # noqa: E402
from voiced.events import Transcript  # noqa: E402
from voiced.testing import FakeDaemon  # noqa: E402
from voiced_plugins.mqtt import MqttConfig, MqttPlugin  # noqa: E402

PYTHON = sys.executable
READY_TIMEOUT_S = 30.0
SETTLE_S = 2.0
TEXT = "What time does the museum close on Sundays, and is the café still open after six?"


def transcript(i: int) -> Transcript:
    return Transcript("user" if i % 2 else "agent", TEXT, i // 2 + 1, f"item_{i}", time.time())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- in this process


async def throughput(port: int, state: Path, n: int) -> dict[str, float]:
    fake = FakeDaemon(name="mqtt", device_id="bench", state_dir=state)
    plugin = MqttPlugin(MqttConfig(host="127.0.0.1", port=port))
    events = [transcript(i) for i in range(n)]
    with trio.fail_after(300):
        async with fake.running(plugin, input=True):
            await plugin.figures.until(lambda f: f.connected)
            cpu0, start = time.process_time(), time.perf_counter()
            for event in events:
                fake.publish(event)
            await plugin.figures.until(lambda f: f.stored == n)
            stored = time.perf_counter() - start
            await plugin.figures.until(lambda f: f.acked == n and f.waiting == 0)
            done, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {
        "transcripts": n,
        "seconds": done,
        "transcripts_per_s": n / done,
        "stored_per_s": n / stored,
        "cpu_ms_per_transcript": 1000 * cpu / n,
    }


async def latency(port: int, state: Path, samples: int) -> dict[str, float]:
    fake = FakeDaemon(name="mqtt", device_id="bench", state_dir=state)
    plugin = MqttPlugin(MqttConfig(host="127.0.0.1", port=port))
    to_ack: list[float] = []
    to_outbox: list[float] = []
    with trio.fail_after(300):
        async with fake.running(plugin, input=True):
            await plugin.figures.until(lambda f: f.connected)
            assert plugin.delivery is not None
            acked = trio.Event()
            plugin.delivery.on_ack = lambda _id: acked.set()
            for i in range(samples + 5):  # the first five warm up
                acked = trio.Event()
                start = time.perf_counter()
                fake.publish(transcript(i))
                await plugin.figures.until(lambda f: f.stored > i)  # noqa: B023
                stored = time.perf_counter()
                await acked.wait()
                end = time.perf_counter()
                if i >= 5:
                    to_outbox.append(1000 * (stored - start))
                    to_ack.append(1000 * (end - start))
                await plugin.figures.until(lambda f: f.waiting == 0)
    return {
        "samples": samples,
        "to_puback_ms_median": statistics.median(to_ack),
        "to_puback_ms_p95": percentile(to_ack, 0.95),
        "to_puback_ms_max": max(to_ack),
        "to_outbox_ms_median": statistics.median(to_outbox),
        "to_outbox_ms_p95": percentile(to_outbox, 0.95),
    }


# --------------------------------------------------------------------------- voiced run


def daemon_rss(tmp: Path, port: int, with_mqtt: bool) -> float:
    """RSS (MB) of ``voiced run`` once up (and connected to the broker), after settling."""
    name = "mqtt" if with_mqtt else "bare"
    plugins = f"  mqtt: {{host: 127.0.0.1, port: {port}}}\n" if with_mqtt else "  {}\n"
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / f"{name}.yaml"
    config.write_text(
        "realtime: {url: sim}\nauth: {api_key: ''}\n"
        "audio:\n  input: {backend: null}\n  output: {backend: null}\n  earcons: false\n"
        f"plugins:\n{plugins}"
    )
    log_path = tmp / f"{name}.log"
    marks = ["plugins up"] + (["mqtt: connected to"] if with_mqtt else [])
    env = {**os.environ, "STATE_DIRECTORY": str(tmp / f"state-{name}")}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "voiced", "run", "--config", str(config)],
            cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(m in log_path.read_text(errors="replace") for m in marks):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"voiced run ({name}) not ready: {log_path.read_text()[-500:]}")
            time.sleep(0.05)
        time.sleep(SETTLE_S)
        rss: float = psutil.Process(proc.pid).memory_info().rss / 2**20
        return rss
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- the benchmark


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    broker = Broker(tmp / "broker", free_port())
    broker.start()
    try:
        runs: dict[str, list[dict[str, float]]] = {"throughput": [], "latency": []}
        for run in range(args.runs):
            log(f"run {run + 1}/{args.runs}: {args.transcripts} transcripts, then latency")
            state = tmp / f"state-{run}"
            runs["throughput"].append(
                trio.run(throughput, broker.port, state / "t", args.transcripts)
            )
            runs["latency"].append(trio.run(latency, broker.port, state / "l", args.samples))
        rss: dict[str, list[float]] = {"without": [], "with": []}
        for run in range(args.runs):
            log(f"RSS {run + 1}/{args.runs}: voiced run without and with the mqtt plugin")
            rss["without"].append(daemon_rss(tmp / f"rss-{run}", broker.port, with_mqtt=False))
            rss["with"].append(daemon_rss(tmp / f"rss-{run}", broker.port, with_mqtt=True))
    finally:
        broker.kill()

    def medians(rows: list[dict[str, float]]) -> dict[str, float]:
        return {key: statistics.median(row[key] for row in rows) for key in rows[0]}

    without, with_ = statistics.median(rss["without"]), statistics.median(rss["with"])
    return {
        "scenario": {
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
            f"{platform.release()}",
            "python": platform.python_version(),
            "runs": args.runs,
            "transcript_bytes": len(TEXT.encode()),
        },
        "throughput": {**medians(runs["throughput"]), "runs": runs["throughput"]},
        "latency": {**medians(runs["latency"]), "runs": runs["latency"]},
        "rss_mb": {"without": without, "with": with_, "added": with_ - without, "runs": rss},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--transcripts", type=int, default=5000, help="throughput run (5000)")
    parser.add_argument("--samples", type=int, default=300, help="latency samples (300)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each (3)")
    args = parser.parse_args()
    if min(args.transcripts, args.samples, args.runs) < 1:
        parser.error("--transcripts, --samples and --runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="voiced-bench-") as name:
        result = bench(args, Path(name))
    print(json.dumps(rounded(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
