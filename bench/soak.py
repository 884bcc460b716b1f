"""An accelerated soak: thousands of push-to-talk turns through ``voiced run``, with faults.

Usage: ``.venv/bin/python bench/soak.py [--turns N] [--embedded-turns M] [--quick]``. Prints one
JSON object on stdout; progress goes to stderr. See bench/README.md for what each figure means.

Two daemons are measured, one after the other, each a subprocess of this one, driven only
through the ``http`` plugin (``POST /start``, ``POST /commit``, the end of each turn read from
``GET /events``), with the ``null`` microphone and speaker:

- ``external``: ``realtime.url`` is a ``python -m voiced sim --pace 0`` in its own process (not
  recording). Between phases that process is restarted, with fault flags for the next phase: a
  reply reset mid-stream, a link reset mid-capture, a stalled reply, refused connections,
  garbage frames, sessions that expire every second, a server that accepts and never speaks.
- ``embedded``: no key and no URL, so the daemon runs its own simulator (``record=False``).

The daemon's RSS, open fds and threads (psutil) are sampled every ``--sample-every`` turns. Turns
run back to back as fast as the daemon takes them: memory grows with work done (turns, events,
connections), not with the hours between them, so N turns here stand for N turns of a kiosk's
months; the hours themselves are covered by ``bench/idle.py`` and by the session expiries.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # type: ignore[import-untyped]  # noqa: E402

from bench.idle import stop, tail  # noqa: E402
from bench.three_turns import free_port, log, rounded  # noqa: E402

PYTHON = sys.executable
MODEL = "gpt-realtime"
READY_TIMEOUT_S = 30.0
TURN_TIMEOUT_S = 120.0
"""A turn that has not ended this long after its commit is counted ``no_end`` (and cancelled)."""
OFFLINE_TIMEOUT_S = 120.0
"""How long the daemon may stay unready before the soak gives up."""
CONNECT_TIMEOUT_S = 2.0
"""The daemon's ``realtime.connect_timeout`` (default 10): a refused or silent server costs
this much per attempt."""
REPLY_TIMEOUT_S = 2.0
"""The daemon's ``realtime.reply_timeout_s`` (default 15): how long a stalled reply lasts."""
HOLD_S = 0.12
"""Seconds between ``/start`` and ``/commit``. The ``null`` microphone hears in real time and the
daemon discards a turn of less than 100 ms, so this bounds the rate: about 7 turns a second."""
LONG_HOLD_S = 0.35
"""The hold of the turns whose reply is cut: 350 ms of audio is a reply of 4 deltas."""
HEALTHY_AFTER_S = 10.0
"""``voiced.stages.transport.HEALTHY_AFTER``: how long a connection must last before the
reconnect backoff starts again from its shortest delay."""
SIM_LOG_MARKS = {
    "reset": "reset after",
    "refused": "sim refused a connection",
    "silent": "stays silent",
    "stalled": "stalls (fault)",
    "expired": "code 1001",
    "opened": "open: /v1/realtime",
}
"""What the simulator's log says of each fault, counted per phase."""


@dataclass(frozen=True)
class Phase:
    name: str
    flags: tuple[str, ...] = ()
    """``voiced sim`` fault flags for the phase."""
    turns: int = 0
    """Turns to run (started and ended, whatever the outcome)."""
    seconds: float = 0.0
    """Spread the turns over at least this long; with no turns, keep trying for this long."""
    hold_s: float = 0.0
    """How long each turn's button is held (0: ``HOLD_S``)."""
    note: str = ""

    @property
    def faulted(self) -> bool:
        return bool(self.flags)


def phases(turns: int, quick: bool) -> list[Phase]:
    """The external run's phases: the plain ones share ``turns``, the faulted ones are short."""
    few = 3
    churn = 40 if quick else 200
    plain = turns - 50 - 4 * few - 2 - churn - 5
    return [
        Phase("warmup", turns=50, note="not measured: imports, first allocations"),
        Phase("steady", turns=plain * 6 // 10),
        Phase("drop_mid_reply", ("--drop-after-deltas", "2"), turns=few, hold_s=LONG_HOLD_S,
              note="every reply reset (no close frame) after 2 of its 4 deltas"),
        Phase("drop_mid_capture", ("--drop-after-appends", "2"), turns=few,
              note="the link reset after 2 appends, while the pre-roll goes out"),
        Phase("stall", ("--stall-after-deltas", "1"), turns=2, hold_s=LONG_HOLD_S,
              note=f"every reply stops after 1 delta; reply_timeout_s {REPLY_TIMEOUT_S:g}"),
        Phase("refused", ("--refuse-connections", "3"), turns=few,
              note=f"3 connection attempts reset; connect_timeout {CONNECT_TIMEOUT_S:g}"),
        Phase("garbage", ("--garbage-every", "3"), turns=plain * 2 // 10,
              note="a garbage frame after every 3rd event, 7 kinds in turn"),
        Phase("renewal", ("--expire-after", "1.5"), turns=churn,
              note="sessions expire 1.5 s after they open: voiced renews them between turns"),
        Phase("expiry", ("--expire-after", "1"), turns=5, hold_s=1.5,
              note="sessions expire 1 s after they open, in the middle of 1.5 s presses"),
        Phase("silent_open", ("--silent-open",), seconds=8,
              note="accepted, never a session.created: no turn can start"),
        Phase("recovery", turns=plain - plain * 8 // 10 + few,
              note="plain again, to the end"),
    ]  # fmt: skip


# --------------------------------------------------------------------------- processes


def spawn(
    argv: list[str], log_path: Path, cwd: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )


def wait_for(what: str, check: Any, proc: subprocess.Popen[bytes], log_path: Path) -> Any:
    """Poll ``check()`` every 20 ms until it returns something true."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not (found := check()):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}: {tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready in {READY_TIMEOUT_S:g} s: {tail(log_path)}")
        time.sleep(0.02)
    return found


class Sim:
    """``python -m voiced sim`` in its own process, restarted with new flags on the same port."""

    def __init__(self, tmp: Path, key: str, env: dict[str, str]) -> None:
        self.key = key
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "sim.log"
        self._tmp = tmp
        self._env = env
        self._starts = 0

    def start(self, flags: tuple[str, ...]) -> None:
        self.stop()
        self._starts += 1
        mark = f"--- start {self._starts}: {' '.join(flags) or 'no faults'}\n"
        with self.log_path.open("a") as out:
            out.write(mark)
        argv = [PYTHON, "-m", "voiced", "sim", "--port", str(self.port), "--key", self.key]
        self.proc = spawn([*argv, "--pace", "0", *flags], self.log_path, self._tmp, self._env)

        def port() -> int | None:
            text = self.log_path.read_text(errors="replace")
            found = re.search(r"simulator on ws://127\.0\.0\.1:(\d+)/", text.rpartition(mark)[2])
            return int(found.group(1)) if found else None

        self.port = wait_for("voiced sim", port, self.proc, self.log_path)

    def marks(self) -> Counter[str]:
        """The fault marks in the log of the current process."""
        text = self.log_path.read_text(errors="replace").rpartition("--- start ")[2]
        return Counter({k: text.count(v) for k, v in SIM_LOG_MARKS.items() if v in text})

    def rss_mb(self) -> float | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        return float(psutil.Process(self.proc.pid).memory_info().rss / 2**20)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


def config_text(url: str | None, key: str | None, http_port: int) -> str:
    realtime = f"  url: '{url}'\n" if url else ""
    return (
        f"realtime:\n{realtime}  model: {MODEL}\n"
        f"  connect_timeout: {CONNECT_TIMEOUT_S}\n  reply_timeout_s: {REPLY_TIMEOUT_S}\n"
        + (f"auth: {{api_key: {key}}}\n" if key else "")
        + "audio:\n  input: {backend: 'null'}\n  output: {backend: 'null'}\n"
        + "  earcons: false\n"
        + f"plugins:\n  http: {{port: {http_port}, rate_limit: 0}}\n"
    )


# --------------------------------------------------------------------------- the driver


class Daemon:
    """``voiced run`` as a subprocess, and the HTTP client that drives its turns."""

    def __init__(
        self, tmp: Path, name: str, url: str | None, key: str | None, env: dict[str, str]
    ) -> None:
        self.http_port = free_port()
        path = tmp / f"{name}.yaml"
        path.touch(mode=0o600)  # it may hold a key: voiced warns about a readable one
        path.write_text(config_text(url, key, self.http_port))
        self.log_path = tmp / f"{name}.log"
        self.proc = spawn(
            [PYTHON, "-m", "voiced", "run", "--config", str(path)], self.log_path, tmp, env
        )
        self.ps = psutil.Process(self.proc.pid)
        self.ended: queue.Queue[dict[str, Any]] = queue.Queue()
        self._conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        wait_for("voiced run", self.ready, self.proc, self.log_path)
        self._events = threading.Thread(target=self._listen, daemon=True)
        self._events.start()

    def request(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        for attempt in (1, 2):
            try:
                self._conn.request(method, path)
                reply = self._conn.getresponse()
                return reply.status, json.loads(reply.read())
            except (OSError, http.client.HTTPException):
                self._conn.close()  # a stale keep-alive connection: once more, afresh
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/status")[1]

    def ready(self) -> bool:
        try:
            return bool(self.status()["ready"])
        except (OSError, http.client.HTTPException):
            return False

    def _listen(self) -> None:
        """Every ``turn_ended`` of ``/events`` into :attr:`ended`."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=None)
        conn.request("GET", "/events")
        reply = conn.getresponse()
        kind = b""
        while line := reply.readline():
            if line.startswith(b"event: "):
                kind = line[7:].strip()
            elif line.startswith(b"data: ") and kind == b"turn_ended":
                self.ended.put(json.loads(line[6:]))

    def turn(self, hold_s: float) -> str | None:
        """One push-to-talk turn; its outcome, or None if the daemon refused to start one."""
        while not self.ended.empty():
            self.ended.get_nowait()
        code, _ = self.request("POST", "/start")
        if code != 202:
            return None
        time.sleep(hold_s)
        self.request("POST", "/commit")  # refused when the turn is already over (lost)
        try:
            return str(self.ended.get(timeout=TURN_TIMEOUT_S)["outcome"])
        except queue.Empty:
            self.request("POST", "/cancel")
            return "no_end"

    def wait_ready(self) -> float:
        """Wait until the daemon can take a turn again; the seconds waited."""
        began = time.monotonic()
        while not self.ready():
            if time.monotonic() - began > OFFLINE_TIMEOUT_S:
                raise RuntimeError(f"the daemon stayed offline: {tail(self.log_path)}")
            time.sleep(0.02)
        return time.monotonic() - began

    def sample(self, turn: int, phase: str) -> dict[str, Any]:
        with self.ps.oneshot():
            return {
                "turn": turn,
                "phase": phase,
                "rss_mb": self.ps.memory_info().rss / 2**20,
                "fds": self.ps.num_fds(),
                "threads": self.ps.num_threads(),
            }

    def shut_down(self) -> dict[str, Any]:
        """SIGTERM; how long the daemon took and how it exited, and what its log says."""
        began = time.monotonic()
        self.proc.terminate()
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        text = self.log_path.read_text(errors="replace")
        errors = [line for line in text.splitlines() if " ERROR " in line]
        return {
            "exit_status": code,
            "shutdown_s": time.monotonic() - began,
            "log_errors": len(errors),
            "log_warnings": text.count(" WARNING "),
            "tracebacks": text.count("Traceback"),
            "first_errors": sorted({_shape(line) for line in errors})[:8],
        }


def _shape(line: str) -> str:
    """A log line without its time and numbers, to group alike lines."""
    return re.sub(r"\d+(\.\d+)?", "N", line.partition(" ")[2])[:160]


@dataclass
class Run:
    """Turns done, samples taken and notes, for one daemon."""

    sample_every: int
    turns: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)

    def drive(self, daemon: Daemon, phase: Phase) -> dict[str, Any]:
        """Run ``phase``'s turns (or its seconds) on ``daemon``; the phase's notes."""
        began = time.monotonic()
        connects = daemon.status()["connection"]["connects"]
        done, refused, offline_s = 0, 0, 0.0
        outcomes: Counter[str] = Counter()
        gap = phase.seconds / phase.turns if phase.turns else 0.0
        while done < phase.turns or (not phase.turns and time.monotonic() - began < phase.seconds):
            due = began + done * gap
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            outcome = daemon.turn(phase.hold_s or HOLD_S)
            if outcome is None:
                refused += 1
                if phase.turns:
                    offline_s += daemon.wait_ready()
                else:
                    time.sleep(0.05)
                continue
            done += 1
            self.turns += 1
            outcomes[outcome] += 1
            if self.turns % self.sample_every == 0:
                self.samples.append(daemon.sample(self.turns, phase.name))
        self.outcomes += outcomes
        wall = time.monotonic() - began
        return {
            "phase": phase.name,
            "flags": " ".join(phase.flags),
            "note": phase.note,
            "turns": done,
            "outcomes": dict(outcomes),
            "starts_refused": refused,
            "waited_offline_s": offline_s,
            "reconnects": daemon.status()["connection"]["connects"] - connects,
            "wall_s": wall,
            "turns_per_s": done / wall,
        }


def growth(samples: list[dict[str, Any]], start: int) -> float | None:
    """RSS growth in MB per 1000 turns: the least-squares slope over the samples after
    ``start`` turns (less noisy than end minus start)."""
    points = [(s["turn"], s["rss_mb"]) for s in samples if s["turn"] > start]
    if len(points) < 3:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return float(1000 * sxy / sxx)


def summary(run: Run, daemon: Daemon, wall_s: float, warmup: int) -> dict[str, Any]:
    measured = [s for s in run.samples if s["turn"] > warmup]
    first, last = measured[0], run.samples[-1]
    rss_delta = last["rss_mb"] - first["rss_mb"]
    turns = last["turn"] - first["turn"]
    return {
        "turns": run.turns,
        "outcomes": dict(run.outcomes),
        "wall_s": wall_s,
        "rss_mb": {
            "start": first["rss_mb"],
            "start_turn": first["turn"],
            "end": last["rss_mb"],
            "end_turn": last["turn"],
            "max": max(s["rss_mb"] for s in run.samples),
            "growth_per_1000_turns": 1000 * rss_delta / turns if turns else None,
            "slope_per_1000_turns": growth(run.samples, warmup),
        },
        "fds": {
            "start": first["fds"],
            "end": last["fds"],
            "max": max(s["fds"] for s in run.samples),
        },
        "threads": {
            "start": first["threads"],
            "end": last["threads"],
            "max": max(s["threads"] for s in run.samples),
        },
        "status_at_end": {k: daemon.status()[k] for k in ("outcomes", "connection", "ignored")},
    }


# --------------------------------------------------------------------------- the soak


def settle(sim: Sim, daemon: Daemon) -> float:
    """A plain simulator, and the daemon connected to it for longer than its backoff's
    ``healthy_after``: the next fault phase starts from a fresh backoff, not from where the last
    one left it. The seconds it took (the daemon idle, connected)."""
    began = time.monotonic()
    sim.start(())
    daemon.wait_ready()
    time.sleep(HEALTHY_AFTER_S + 0.5)
    return time.monotonic() - began


def external(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    key = f"sk-soak-{os.urandom(8).hex()}"
    sim = Sim(tmp, key, env)
    plan = phases(args.turns, args.quick)
    sim.start(plan[0].flags)
    url = f"ws://127.0.0.1:{sim.port}/v1/realtime"
    daemon = Daemon(tmp, "external", url, key, env)
    run = Run(args.sample_every)
    began = time.monotonic()
    try:
        for number, phase in enumerate(plan):
            settled = 0.0
            if number and plan[number - 1].faulted:
                settled = settle(sim, daemon)
            if number:
                sim.start(phase.flags)
            notes = run.drive(daemon, phase)
            notes["settled_before_s"] = settled
            notes["sim_log"] = dict(sim.marks())
            notes["sim_rss_mb"] = sim.rss_mb()
            run.phases.append(notes)
            if run.samples[-1:] and run.samples[-1]["turn"] == run.turns:
                run.samples[-1]["phase"] = phase.name
            else:
                run.samples.append(daemon.sample(run.turns, phase.name))
            log(
                f"external {phase.name:<17} {notes['turns']:>5} turns  "
                f"{notes['wall_s']:6.1f} s  {notes['outcomes']}  "
                f"rss {run.samples[-1]['rss_mb']:.1f} MB  fds {run.samples[-1]['fds']}"
            )
        wall = time.monotonic() - began
        result = summary(run, daemon, wall, plan[0].turns)
    finally:
        result_end = daemon.shut_down()
        sim.stop()
    result["phases"] = run.phases
    result["samples"] = run.samples
    result["end"] = result_end
    result["simulator"] = "python -m voiced sim --pace 0, own process, not recording"
    return result


def embedded(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> dict[str, Any]:
    # No key anywhere and no URL: the daemon starts the simulator built into it.
    bare = {k: v for k, v in env.items() if k not in ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY")}
    daemon = Daemon(tmp, "embedded", None, None, bare)
    url = daemon.status()["realtime"]["url"]
    run = Run(args.sample_every)
    began = time.monotonic()
    warmup = Phase("warmup", turns=100)
    try:
        run.drive(daemon, warmup)
        if run.samples[-1:] and run.samples[-1]["turn"] == run.turns:
            run.samples.pop()
        run.samples.append(daemon.sample(run.turns, "warmup"))
        notes = run.drive(daemon, Phase("turns", turns=args.embedded_turns))
        run.phases.append(notes)
        if run.samples[-1]["turn"] != run.turns:
            run.samples.append(daemon.sample(run.turns, "turns"))
        wall = time.monotonic() - began
        result = summary(run, daemon, wall, warmup.turns)
    finally:
        result_end = daemon.shut_down()
    log(
        f"embedded {run.turns} turns in {wall:.1f} s: {dict(run.outcomes)}  "
        f"rss {result['rss_mb']['start']:.1f} -> {result['rss_mb']['end']:.1f} MB"
    )
    result["phases"] = run.phases
    result["samples"] = run.samples
    result["end"] = result_end
    result["simulator"] = f"built into the daemon (record=False) at {url}"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=2000, help="external run's turns (2000)")
    parser.add_argument(
        "--embedded-turns", type=int, default=None, help="embedded run's turns (as --turns)"
    )
    parser.add_argument(
        "--sample-every", type=int, default=None, help="turns between samples (turns / 40)"
    )
    parser.add_argument("--quick", action="store_true", help="300 turns each, short faults")
    parser.add_argument(
        "--only", choices=("external", "embedded"), help="run one of the two daemons"
    )
    parser.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy the daemons' and simulator's logs here"
    )
    args = parser.parse_args()
    if args.quick:
        args.turns = min(args.turns, 300)
    if args.embedded_turns is None:
        args.embedded_turns = args.turns
    if args.sample_every is None:
        args.sample_every = max(10, args.turns // 40)
    if args.turns < 200 or args.embedded_turns < 100:
        parser.error("--turns must be at least 200 and --embedded-turns at least 100")
    with tempfile.TemporaryDirectory(prefix="voiced-soak-") as name:
        tmp = Path(name)
        env = {**os.environ, "STATE_DIRECTORY": str(tmp / "state")}  # never ~/.local/state
        began = time.monotonic()
        result: dict[str, Any] = {"turns_asked": args.turns, "quick": args.quick}
        if args.only in (None, "external"):
            result["external"] = external(args, tmp, env)
        if args.only in (None, "embedded"):
            result["embedded"] = embedded(args, tmp, env)
        result["wall_s"] = time.monotonic() - began
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for path in tmp.glob("*.log"):
                shutil.copy(path, args.keep_logs / path.name)
    runs = [result[name] for name in ("external", "embedded") if name in result]
    result["ok"] = all(
        r["end"]["exit_status"] == 0
        and r["end"]["tracebacks"] == 0
        and "no_end" not in r["outcomes"]
        for r in runs
    )
    result["machine"] = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(rounded(result), indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
