"""How fast voiced notices a broken link, and how fast it is ready again once the link is back.

Usage: ``.venv/bin/python bench/link.py [--runs N]``. Prints one JSON object on stdout; progress
goes to stderr. See bench/README.md.

``voiced sim`` runs in its own process; ``voiced run`` (null audio, the http plugin) connects to it
through a TCP proxy in this process (tests/netproxy.py, in a trio thread) that breaks the network:

- ``dead``: every byte stops with the sockets left open (a pulled cable). Measured: from the cut
  to ``/status`` saying ``connected: false`` (the ping finds it), then from healing the network
  to ``/status`` saying ``ready`` again.
- ``killed``: every connection is closed and new ones are refused for 2 s (a killed server).
  Measured: from the server being back to ``ready``.

``/status`` is polled every 20 ms, so each figure is up to 20 ms late.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import trio  # noqa: E402

from bench.three_turns import free_port, log, rounded, simulator  # noqa: E402
from tests.netproxy import NetProxy  # noqa: E402

PYTHON = sys.executable
KEY = "sk-bench-link"
POLL_S = 0.02
HEALTHY_S = 11.0
"""Seconds connected before each fault: longer than the transport's healthy period, so every
outage is a new one and backs off from its first delay (back-to-back outages back off more)."""
TIMEOUT_S = 60.0


class ProxyThread:
    """A ``NetProxy`` served by trio in a thread of its own; ``call`` runs a method in it."""

    def __init__(self, target_port: int) -> None:
        self.proxy = NetProxy(target_port)
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.proxy.serve)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        stop = self._stop
        if stop is not None:
            self.call(stop.set)
        self._thread.join(10)

    def call(self, action: Callable[[], object]) -> None:
        trio.from_thread.run_sync(action, trio_token=self._token)


def status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as answer:
        result: dict[str, Any] = json.load(answer)
        return result


def wait_until(port: int, check: Callable[[dict[str, Any]], bool]) -> float:
    """Poll ``/status`` until ``check`` holds; the monotonic time it was seen."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if check(status(port)):
                return time.monotonic()
        except OSError:
            pass
        time.sleep(POLL_S)
    raise RuntimeError("voiced did not get there in time")


def bench(runs: int, tmp: Path) -> dict[str, Any]:
    sim_port, http_port = free_port(), free_port()
    noticed, back_dead, back_killed = [], [], []
    with simulator(sim_port, KEY, tmp / "sim.log"), ProxyThread(sim_port) as net:
        proxy = net.proxy

        def refuse(refusing: bool) -> None:
            proxy.refuse = refusing

        config = tmp / "config.yaml"
        config.write_text(
            f"realtime: {{url: '{proxy.url}'}}\nauth: {{api_key: {KEY}}}\n"
            "audio: {input: {backend: null}, output: {backend: null}, earcons: false}\n"
            f"plugins: {{http: {{port: {http_port}}}}}\n"
        )
        with (tmp / "voiced.log").open("wb") as out:
            daemon = subprocess.Popen(
                [PYTHON, "-m", "voiced", "run", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        try:
            wait_until(http_port, lambda s: s["ready"])
            for run in range(runs):
                log(f"run {run + 1}/{runs}")
                time.sleep(HEALTHY_S)  # a lasting connection: the next outage backs off afresh
                cut = time.monotonic()
                net.call(proxy.cut)
                noticed.append(wait_until(http_port, lambda s: not s["connected"]) - cut)
                healed = time.monotonic()
                net.call(proxy.heal)
                back_dead.append(wait_until(http_port, lambda s: s["ready"]) - healed)
                time.sleep(HEALTHY_S)
                net.call(lambda: refuse(True))
                net.call(proxy.drop)
                wait_until(http_port, lambda s: not s["connected"])
                time.sleep(2.0)  # the server is away for two seconds
                allowed = time.monotonic()
                net.call(lambda: refuse(False))
                back_killed.append(wait_until(http_port, lambda s: s["ready"]) - allowed)
        finally:
            daemon.terminate()
            daemon.wait(10)

    def figures(values: list[float]) -> dict[str, float]:
        return {"median_s": statistics.median(values), "max_s": max(values)}

    result: dict[str, Any] = rounded(
        {
            "runs": runs,
            "dead_link_noticed": figures(noticed),
            "ready_after_dead_link_healed": figures(back_dead),
            "ready_after_killed_server_back": figures(back_killed),
            "poll_s": POLL_S,
        }
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(bench(args.runs, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
