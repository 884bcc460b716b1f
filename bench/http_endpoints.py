"""What ``/metrics`` and ``/events`` add to an idle daemon's CPU.

Usage: ``.venv/bin/python bench/http_endpoints.py [--seconds S] [--runs N] [--clients C]``.
Prints one JSON object on stdout; progress goes to stderr. See bench/README.md.

One ``python -m voiced run`` (null microphone and speaker, the ``http`` plugin) talks to a
``python -m voiced sim`` in its own process. Once it is ready, windows of ``--seconds`` alternate:
``quiet``, nobody connected to the control API; ``busy``, a scraper fetching ``/metrics`` every
second and ``--clients`` ``/events`` streams open (threads of this process, never counted). CPU is
the user+sys time of the voiced process (all its threads) over the window, from psutil.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.clients.common import MODEL  # noqa: E402
from bench.idle import Run, status, stop, tail, window  # noqa: E402
from bench.three_turns import free_port, log, rounded, simulator  # noqa: E402

PYTHON = sys.executable
READY_TIMEOUT_S = 30.0
SETTLE_S = 2.0
"""Seconds after the clients connect (or leave) before a window: the first scrape, the first
events."""
SCRAPE_EVERY_S = 1.0


class Load:
    """A scraper of ``/metrics`` every second and ``clients`` open ``/events`` streams."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.stopping = threading.Event()
        self.scrapes: list[float] = []
        """Seconds each scrape took."""
        self.page_bytes = 0
        self.failures: list[str] = []
        self.events = 0
        self.keep_alives = 0
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []
        self._threads = [threading.Thread(target=self._scrape, daemon=True)]
        self._threads += [
            threading.Thread(target=self._listen, daemon=True) for _ in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        with self._lock:
            for connection in self._connections:
                if connection.sock is not None:
                    connection.sock.shutdown(socket.SHUT_RDWR)  # wakes its reader
        for thread in self._threads:
            thread.join(10)

    def _scrape(self) -> None:
        url = f"http://127.0.0.1:{self.port}/metrics"
        due = time.monotonic()
        while not self.stopping.is_set():
            start = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    self.page_bytes = len(reply.read())
                self.scrapes.append(time.monotonic() - start)
            except OSError as exc:
                self.failures.append(f"scrape: {exc}")
            due += SCRAPE_EVERY_S
            self.stopping.wait(max(0.0, due - time.monotonic()))

    def _listen(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        with self._lock:
            self._connections.append(connection)
        try:
            connection.request("GET", "/events")
            response = connection.getresponse()
            if response.status != 200:
                raise OSError(f"/events answered {response.status}")
            while line := response.readline():
                if line.startswith(b"event: "):
                    self.events += 1
                elif line.startswith(b":"):
                    self.keep_alives += 1
        except OSError as exc:
            if not self.stopping.is_set():
                self.failures.append(f"events: {exc}")
        finally:
            connection.close()


def config_text(sim_port: int, key: str, http_port: int) -> str:
    return (
        f"realtime: {{url: 'ws://127.0.0.1:{sim_port}/v1/realtime', model: {MODEL}}}\n"
        f"auth: {{api_key: {key}}}\n"
        "audio:\n  input: {backend: null}\n  output: {backend: null}\n  earcons: false\n"
        f"plugins:\n  http: {{port: {http_port}}}\n"
    )


def median_of(runs: list[Run]) -> dict[str, Any]:
    return {
        "cpu_percent": statistics.median(r.cpu_percent for r in runs),
        "main_thread_cpu_percent": statistics.median(r.main_thread_cpu_percent for r in runs),
        "context_switches_per_s": statistics.median(r.context_switches_per_s for r in runs),
        "rss_mb": statistics.median(r.rss_mb for r in runs),
        "machine_busy_percent": statistics.median(r.machine_busy_percent for r in runs),
        "runs": [r.cpu_percent for r in runs],
    }


def bench(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sim_port, http_port = free_port(), free_port()
    key = f"sk-bench-{os.urandom(8).hex()}"
    config = tmp / "voiced.yaml"
    config.write_text(config_text(sim_port, key, http_port))
    quiet: list[Run] = []
    busy: list[Run] = []
    scrapes: list[float] = []
    page_bytes = events = keep_alives = 0
    failures: list[str] = []
    with simulator(sim_port, key, tmp / "sim.log"):
        log_path = tmp / "voiced.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [PYTHON, "-m", "voiced", "run", "--config", str(config)],
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not ((now := status(http_port)) and now["ready"]):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"voiced did not get ready: {tail(log_path)}")
                time.sleep(0.1)
            time.sleep(SETTLE_S)
            log(f"voiced ready; {args.runs} run(s) of {args.seconds:g} s quiet, then busy")
            for n in range(1, args.runs + 1):
                quiet.append(window(proc.pid, args.seconds))
                with Load(http_port, args.clients) as load:
                    time.sleep(SETTLE_S)
                    busy.append(window(proc.pid, args.seconds))
                scrapes += load.scrapes
                page_bytes = load.page_bytes
                events += load.events
                keep_alives += load.keep_alives
                failures += load.failures
                log(
                    f"run {n}/{args.runs}: quiet {quiet[-1].cpu_percent:.2f} %, busy "
                    f"{busy[-1].cpu_percent:.2f} % ({len(load.scrapes)} scrapes, "
                    f"{load.events} events, {load.keep_alives} keep-alives)"
                )
                time.sleep(SETTLE_S)
            if proc.poll() is not None:
                raise RuntimeError(f"voiced exited {proc.returncode}: {tail(log_path)}")
        finally:
            stop(proc)
    q, b = median_of(quiet), median_of(busy)
    added = b["cpu_percent"] - q["cpu_percent"]
    per_scrape_ms = 10 * added * SCRAPE_EVERY_S  # % of a core over one scrape interval, in ms
    return {
        "ok": not failures and len(scrapes) > 0 and events >= args.clients * args.runs,
        "seconds": args.seconds,
        "runs": args.runs,
        "scenario": {
            "audio": "null microphone and speaker, no turns",
            "scrape_every_s": SCRAPE_EVERY_S,
            "events_clients": args.clients,
        },
        "quiet": q,
        "busy": b,
        "added_cpu_percent": added,
        "added_cpu_ms_per_scrape_interval": per_scrape_ms,
        "scrape_ms": {
            "median": 1000 * statistics.median(scrapes) if scrapes else None,
            "max": 1000 * max(scrapes) if scrapes else None,
            "count": len(scrapes),
        },
        "metrics_page_bytes": page_bytes,
        "events_received": events,
        "keep_alives_received": keep_alives,
        "failures": failures[:10],
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=20.0, help="each window (20)")
    parser.add_argument("--runs", type=int, default=3, help="quiet/busy pairs (3)")
    parser.add_argument("--clients", type=int, default=3, help="/events streams when busy (3)")
    args = parser.parse_args()
    if args.runs < 1 or args.seconds <= 0 or args.clients < 0:
        parser.error("--runs must be at least 1, --seconds positive, --clients 0 or more")
    with tempfile.TemporaryDirectory(prefix="voiced-bench-") as name:
        tmp = Path(name)
        os.environ["STATE_DIRECTORY"] = str(tmp / "state")  # never the user's ~/.local/state
        result = bench(args, tmp)
    print(json.dumps(rounded(result), indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
