"""The ``voiced`` command: argument parsing, logging, ``trio.run``, and exit statuses.

Exit status: 0 done; 2 bad config or usage (one clear line); 1 any other failure (one clear line,
no traceback unless ``--debug``). Heavy imports happen inside the subcommands, so that
``voiced --help`` answers at once on a Raspberry Pi.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from voiced import __version__

if TYPE_CHECKING:
    from voiced.config import Config
from voiced.errors import ConfigError, UsageError, VoicedError
from voiced.logs import LogFormat, formatter

log = logging.getLogger("voiced")

CONFIG_HELP = "config file (default: ./config.yaml, then /etc/voiced/config.yaml)"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    top = _Parser(
        prog="voiced",
        description="A headless push-to-talk voice daemon for the OpenAI Realtime API.",
        epilog="Run 'voiced COMMAND --help' for a command's options.",
    )
    top.add_argument("--version", action="version", version=f"voiced {__version__}")
    # The global options go before or after the command: after it, an option left out must
    # not undo one given before (hence SUPPRESS: no default there).
    for parser, default in ((top, False), (common := _Parser(add_help=False), argparse.SUPPRESS)):
        parser.add_argument(
            "--debug", action="store_true", default=default, help="log everything; show tracebacks"
        )
        parser.add_argument(
            "--log-format",
            choices=("text", "json"),
            default="text" if default is False else default,
            help="log lines as text (under systemd: with the journal's priorities) or JSON",
        )
    top.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the daemon",
        description="Run the daemon until SIGINT or SIGTERM. Talk with the configured inputs: "
        "Enter in the terminal, or POST /start and /commit on the HTTP port.",
    )
    run.add_argument("--config", metavar="FILE", help=CONFIG_HELP, default=argparse.SUPPRESS)

    ask = sub.add_parser(
        "ask",
        parents=[common],
        help="one turn per WAV file, replies into one WAV file",
        description="Open one session and run one push-to-talk turn per input file, in order. "
        "Exits 0 when every turn ended with its reply. Transcripts go to the configured sinks.",
    )
    ask.add_argument("--config", metavar="FILE", help=CONFIG_HELP, default=argparse.SUPPRESS)
    ask.add_argument("inputs", nargs="+", type=Path, metavar="IN.wav", help="24 kHz mono PCM16")
    ask.add_argument("--out", required=True, type=Path, metavar="OUT.wav", help="reply audio")
    ask.add_argument("--timeout", type=float, default=120.0, help="seconds per turn (120)")

    sim = sub.add_parser(
        "sim",
        parents=[common],
        help="run the built-in Realtime simulator",
        description="Serve the GA Realtime protocol on a loopback WebSocket: replies echo the "
        "committed audio, transcripts are deterministic ('heard 2140 ms'). The fault options "
        "make every new connection misbehave as a real server, proxy or network can.",
    )
    sim.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    sim.add_argument("--port", type=int, default=8765, help="port (8765; 0 picks a free one)")
    sim.add_argument(
        "--key",
        default=os.environ.get("VOICED_SIM_KEY", "sk-sim"),
        help="the bearer key clients must send ($VOICED_SIM_KEY, else sk-sim)",
    )
    sim.add_argument(
        "--pace", type=float, default=0.0, help="seconds per second of reply audio (0: at once)"
    )
    sim.add_argument(
        "--think", type=float, default=0.0, help="seconds before each reply starts (0)"
    )
    sim.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="seconds each delta may come early or late, with uneven sizes (0)",
    )
    sim.add_argument(
        "--record",
        action="store_true",
        help="keep every event and all the audio of every connection in memory (for "
        "debugging; memory grows with every turn). Default: keep only what live sessions need",
    )
    faults = sim.add_argument_group(
        "faults", "Each applies to every connection from the start (default: none)."
    )
    faults.add_argument(
        "--refuse-connections",
        type=int,
        default=0,
        metavar="N",
        help="reset the next N connection attempts at once, before the HTTP request is read",
    )
    faults.add_argument(
        "--handshake-status",
        type=int,
        metavar="STATUS",
        help="reject every WebSocket upgrade with this HTTP status (e.g. 401, 503)",
    )
    faults.add_argument(
        "--silent-open",
        action="store_true",
        help="accept the WebSocket, then never send session.created (pings are answered)",
    )
    faults.add_argument(
        "--drop-after-appends",
        type=int,
        metavar="N",
        help="reset the connection (no close frame) after receiving N input_audio_buffer.append",
    )
    faults.add_argument(
        "--drop-after-deltas",
        type=int,
        metavar="N",
        help="reset the connection (no close frame) after sending N audio deltas of a reply",
    )
    faults.add_argument(
        "--stall-after-deltas",
        type=int,
        metavar="N",
        help="after N audio deltas of a reply, send nothing more for it (pings are answered)",
    )
    faults.add_argument(
        "--garbage-every",
        type=int,
        metavar="N",
        help="after every N-th event, also send a garbage frame (bad JSON, an array, no type, "
        "an unknown type, missing fields, binary, JSON nested 100000 deep)",
    )
    faults.add_argument(
        "--expire-after",
        type=float,
        metavar="SECONDS",
        help="end each session after SECONDS with session_expired and close 1001",
    )
    faults.add_argument(
        "--fail-event",
        metavar="TYPE",
        help="answer client events of TYPE (e.g. input_audio_buffer.commit) with a server_error",
    )
    faults.add_argument(
        "--fail-count",
        type=int,
        metavar="N",
        help="fail only the first N --fail-event events of each connection (default: all)",
    )

    sub.add_parser(
        "devices",
        parents=[common],
        help="list audio devices with their channels and default rates",
        description="List the input and output devices PortAudio sees ('*' marks the "
        "defaults). Use an index, a name or a part of a name as audio.input.device / "
        "audio.output.device.",
    )

    doctor = sub.add_parser(
        "doctor",
        parents=[common],
        help="check the config, the realtime endpoint, the microphone and the speaker",
        description="Check that the config loads, the realtime endpoint answers the handshake "
        "with a session, the microphone delivers two seconds of audio at a usable level, and "
        "the speaker takes a test tone. Prints what is wrong and the fix; exits 1 if anything is.",
    )
    doctor.add_argument("--config", metavar="FILE", help=CONFIG_HELP, default=argparse.SUPPRESS)

    check = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the config file and the plugins' sections",
        description="Load the config and every enabled plugin's section; print what would run.",
    )
    check.add_argument("--config", metavar="FILE", help=CONFIG_HELP, default=argparse.SUPPRESS)

    status = sub.add_parser(
        "status",
        parents=[common],
        help="whether a daemon runs on the config, and the state it keeps (the volume)",
        description="Say whether a daemon holds this config's state directory (and its pid), "
        "what it keeps there (the volume set at run time, and whether the config's wins), "
        "and, when its http plugin is on, what /status says.",
    )
    status.add_argument("--config", metavar="FILE", help=CONFIG_HELP, default=argparse.SUPPRESS)

    plugins = sub.add_parser(
        "plugins",
        parents=[common],
        help="list installed plugins, where they come from, and whether they are on",
        description="List every plugin in the 'voiced' entry-point group.",
    )
    plugins.add_argument("--config", metavar="FILE", help=CONFIG_HELP, default=argparse.SUPPRESS)

    from voiced.broker import command as broker  # argparse only: cheap, like the rest

    broker.add_parser(sub, common, CONFIG_HELP)
    return top


def _logging(debug: bool, log_format: LogFormat) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler])
    for noisy in (
        "trio-websocket",
        "voiced.http.server",
        "voiced.broker.server",
        "httpx",
        "httpcore",
    ):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    # hpack (HTTP/2 headers, under hypercorn) logs every header it decodes, bearer tokens too.
    logging.getLogger("hpack").setLevel(logging.WARNING)


def _load(path: str | None) -> Config:
    from voiced.config import find_config, load_config

    return load_config(find_config(path))


def _cmd_run(args: argparse.Namespace) -> int:
    import trio

    from voiced.app import run_daemon

    trio.run(run_daemon, _load(args.config))
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    import trio

    from voiced.app import ask

    config = _load(args.config)
    results = trio.run(lambda: ask(config, args.inputs, args.out, turn_timeout=args.timeout))
    failed = [r for r in results if r.outcome != "completed"]
    if failed:
        raise VoicedError(", ".join(f"turn {r.turn} ended {r.outcome}" for r in failed))
    log.info("%d turn(s) completed; replies in %s", len(results), args.out)
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    import dataclasses

    import trio

    from voiced.sim import SimFaults, Simulator

    # Each fault option's dest is the name of its SimFaults field.
    names = [f.name for f in dataclasses.fields(SimFaults) if hasattr(args, f.name)]
    try:
        faults = SimFaults(**{name: getattr(args, name) for name in names})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    on = [f"{name}={getattr(faults, name)}" for name in names if getattr(args, name)]

    async def serve() -> None:
        sim = Simulator(
            api_key=args.key,
            pace=args.pace,
            think=args.think,
            jitter=args.jitter,
            faults=faults,
            record=args.record,
        )
        async with trio.open_nursery() as nursery:
            port = await nursery.start(lambda task_status: sim.serve(
                host=args.host, port=args.port, task_status=task_status
            ))  # fmt: skip
            log.info("simulator on ws://%s:%d/v1/realtime?model=any", args.host, port)
            log.info(
                "simulator faults: %s; %s",
                ", ".join(on) or "none",
                "recording everything" if args.record else "not recording",
            )

    trio.run(serve)
    return 0


def _cmd_devices(args: argparse.Namespace) -> int:
    from voiced.devices import soundcard_module

    soundcard_module()  # PyAudio is there, or one line on how to get it
    from voiced.devices.portaudio import list_devices, open_portaudio

    pa = open_portaudio()
    try:
        devices = list_devices(pa)
    finally:
        pa.terminate()
    for kind in ("input", "output"):
        print(f"{kind}s:")
        rows = [d for d in devices if d.channels(kind)]
        for d in rows:
            mark = "*" if (d.default_input if kind == "input" else d.default_output) else " "
            print(f"  {mark} {d.index:>3}  {d.name:<40} {d.channels(kind):>2} ch  {d.rate} Hz")
        if not rows:
            print("    none (is a sound server running, or a device plugged in?)")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    import trio

    from voiced.doctor import Finding, run_doctor

    if not args.debug:  # the findings say it all; the log would repeat it
        logging.getLogger().setLevel(logging.WARNING)

    def say(finding: Finding) -> None:
        print(f"{'ok  ' if finding.ok else 'FAIL'}  {finding.check:<10}  {finding.seen}")
        if finding.fix:
            print(f"      {'':<10}  fix: {finding.fix}")
        sys.stdout.flush()

    try:
        config = _load(args.config)
    except ConfigError as exc:
        say(Finding("config", False, str(exc), "edit the file; `voiced check-config` re-checks it"))
        return 1
    say(Finding("config", True, str(config.source)))
    return 0 if trio.run(run_doctor, config, say) else 1


def _cmd_check_config(args: argparse.Namespace) -> int:
    from voiced.app import choose_url, describe_auth
    from voiced.checks import preflight
    from voiced.plugins import Plugins

    config = _load(args.config)
    loaded = Plugins(config).create_enabled()
    lines = [
        f"  realtime: {choose_url(config)} (model {config.realtime.model})",
        f"  auth: {describe_auth(config)}",
    ]
    preflight(config)  # the files it names, the folders it writes: only then is it OK
    print(f"{config.source}: OK")
    print("\n".join(lines))
    print(f"  microphone: {config.audio.input.backend}; speaker: {config.audio.output.backend}")
    print(f"  plugins: {', '.join(p.spec.name for p in loaded) or 'none'}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import json
    import urllib.request

    from voiced.saved import SavedState, running_daemon, saved_state_file, state_dir

    config = _load(args.config)
    pid = running_daemon(config.state_dir)
    print(f"daemon: {f'running (pid {pid})' if pid else 'not running'}")
    print(f"state directory: {state_dir(config.state_dir)}")
    saved = SavedState(saved_state_file(config.state_dir))
    volume, configured = saved.values.get("volume"), config.audio.output.volume
    if not isinstance(volume, int | float):
        print(f"volume: {configured:g}, from the config (none set at run time)")
    elif saved.values.get("volume_configured", configured) != configured:
        print(f"volume: {configured:g}, from the config (changed since {volume:g} was set)")
    else:
        print(f"volume: {volume:g}, set at run time ({saved.path}); the config says {configured:g}")
    http = config.plugins.get("http")
    if pid and http is not None and isinstance(http.value, dict):
        port = getattr(http.value.get("port"), "value", 8787)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as answer:
                print(f"live: {json.dumps(json.load(answer))}")
        except OSError as exc:  # a 503 is an answer too
            body = getattr(exc, "read", lambda: b"")()
            print(f"live: {body.decode(errors='replace').strip() or exc}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from voiced.config import Config
    from voiced.plugins import Plugins

    try:
        config = _load(args.config)
    except ConfigError:
        if args.config is not None:
            raise
        config = Config.default()  # no config file: list what is installed, all unconfigured
    for plugin in Plugins(config).installed():
        about = plugin.spec.description if plugin.spec else ""
        print(f"{plugin.name:<10} {plugin.state:<15} {plugin.origin}  {about}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "ask": _cmd_ask,
    "sim": _cmd_sim,
    "devices": _cmd_devices,
    "doctor": _cmd_doctor,
    "check-config": _cmd_check_config,
    "plugins": _cmd_plugins,
    "status": lambda args: _cmd_status(args),
    "broker": lambda args: _broker(args),
}


def _broker(args: argparse.Namespace) -> int:
    from voiced.broker import command

    return command.run(args)


def _first_voiced_error(exc: BaseException) -> VoicedError | None:
    if isinstance(exc, VoicedError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_voiced_error(inner)
            if found is not None:
                return found
    return None


def _only_interrupts(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_interrupts(inner) for inner in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``voiced`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    _logging(args.debug, args.log_format)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        if _only_interrupts(exc):
            return 130
        error = _first_voiced_error(exc)
        if args.debug:
            log.exception("failed")
        if error is None:
            log.error("unexpected error: %r (run with --debug for the traceback)", exc)
            return 1
        log.error("%s", error)
        return 2 if isinstance(error, ConfigError | UsageError) else 1


def run() -> None:
    """Console-script entry point: exit with ``main``'s status."""
    sys.exit(main())
