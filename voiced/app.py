"""The daemon's lifecycle, and the batch ``ask``: config in, a running pipeline, a clean exit.

``run_daemon`` holds the state directory, chooses the server and the devices (saying plainly
what it chose; ``voiced.endpoint``), opens the pipeline, starts the plugins (``voiced.plugged``),
tells systemd how it goes (``voiced.service``), reloads the config on SIGHUP, and on SIGINT/SIGTERM
(or a test's trigger) shuts down from the source: inputs first, a turn being answered may end,
then the pipeline drains and the sinks read what is left. ``ask`` runs one turn per input file
on one session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from voiced import devices
from voiced.audio import AudioFrame, bytes_of
from voiced.broadcast import Subscription
from voiced.config import AudioConfig, Config, load_config
from voiced.devices.wav import WavSpeaker, read_wav
from voiced.earcons import load_earcons
from voiced.endpoint import OPENAI_URL as OPENAI_URL
from voiced.endpoint import choose_url as choose_url
from voiced.endpoint import describe_auth as describe_auth
from voiced.endpoint import open_endpoint as open_endpoint
from voiced.endpoint import session_update as session_update
from voiced.errors import ConfigError, VoicedError
from voiced.events import TurnEnded
from voiced.messages import RenewSession
from voiced.notify import Notifier
from voiced.pipeline import Pipeline, open_pipeline
from voiced.plugged import SINK_GRACE, Plugged, start_plugins
from voiced.plugged import device_id as device_id
from voiced.plugins import Plugins
from voiced.recall import Recall
from voiced.saved import SavedState, daemon_lock, resolve, saved_state_file
from voiced.service import status_line, supervise
from voiced.stages.capture import AudioGate
from voiced.stages.encode import APPEND_MS
from voiced.turn import Command, TurnCommand, TurnController

log = logging.getLogger("voiced")

STOP_GRACE = 10.0
"""Seconds a turn being answered may take to end when the daemon is asked to stop."""


def _controller(config: Config) -> TurnController:
    """The push-to-talk rules with the configured limits."""
    audio, keep = config.audio, config.resilience
    return TurnController(
        max_turn_s=audio.max_turn_s,
        on_max_turn=audio.on_max_turn,
        silence_s=config.realtime.reply_timeout_s,
        hold_s=keep.hold_audio_s,
        retry_window_s=keep.retry_window_s,
    )


@asynccontextmanager
async def _signals() -> AsyncIterator[
    tuple[Callable[[], Awaitable[None]], trio.abc.ReceiveChannel[None]]
]:
    """A shutdown trigger that returns on the first SIGINT/SIGTERM, and a channel that gets
    one item per SIGHUP (reload the config).

    The receiver stays installed until the daemon has shut down, so that a second signal
    (``timeout`` and a terminal both forwarding one) is noted instead of interrupting the drain.
    """
    stop = (signal.SIGINT, signal.SIGTERM)
    reload_send, reload_recv = trio.open_memory_channel[None](1)
    with trio.open_signal_receiver(*stop, signal.SIGHUP) as signals:
        first = trio.Event()

        async def watch() -> None:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: reloading %s", "later" if first.is_set() else "the config")
                    with contextlib.suppress(trio.WouldBlock):  # one reload pending is enough
                        reload_send.send_nowait(None)
                    continue
                log.info(
                    "%s: %s", name, "already shutting down" if first.is_set() else "shutting down"
                )
                first.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            yield first.wait, reload_recv
            nursery.cancel_scope.cancel()


async def run_daemon(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    reloads: trio.abc.ReceiveChannel[None] | None = None,
    notifier: Notifier | None = None,
    task_status: trio.TaskStatus[Pipeline] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGINT/SIGTERM (or ``shutdown_trigger`` returns), reloading the
    config on SIGHUP (or each item of ``reloads``), telling systemd how it goes.

    Args:
        config: the configuration.
        shutdown_trigger: awaited; when it returns, the daemon shuts down. Default: a signal.
        reloads: each item asks for a reload of the config file. Default: SIGHUP.
        notifier: where systemd is told (default: ``$NOTIFY_SOCKET``, when there is one).
        task_status: gets the running pipeline once every plugin is up.

    Raises:
        VoicedError: the config, a device or a plugin is wrong at startup.
    """
    if shutdown_trigger is None:
        async with _signals() as (on_signal, on_hangup):
            await run_daemon(
                config, shutdown_trigger=on_signal, reloads=on_hangup, notifier=notifier,
                task_status=task_status,
            )  # fmt: skip
        return
    with daemon_lock(config.state_dir):
        await _run(
            config, shutdown_trigger, reloads, notifier or Notifier.from_environment(), task_status
        )


async def _run(
    config: Config,
    shutdown_trigger: Callable[[], Awaitable[None]],
    reloads: trio.abc.ReceiveChannel[None] | None,
    notifier: Notifier,
    task_status: trio.TaskStatus[Pipeline],
) -> None:
    plugins = Plugins(config).create_enabled()
    saved = SavedState(saved_state_file(config.state_dir))
    audio = _resolved(config)
    async with (
        devices.open_microphone(audio.input, demo=choose_url(config) == "sim") as microphone,
        devices.open_speaker(
            audio.output, fallback=resolve(devices.DEFAULT_SPEAKER, config.state_dir)
        ) as speaker,
        open_endpoint(config) as endpoint,
        trio.open_nursery() as sinks,
    ):
        speaker.volume = _volume(config, saved)
        async with open_pipeline(
            endpoint, session_update(config), microphone=microphone, speaker=speaker,
            reconnect=True, controller=_controller(config),
            recall=Recall(config.resilience.carry_over_turns),
            gate=AudioGate(preroll_ms=audio.input.preroll_ms, half_duplex=audio.half_duplex),
            earcons=load_earcons(audio.earcons),
        ) as pipe:  # fmt: skip
            plugged = Plugged(pipe, saved, sinks)
            await plugged.start(config, plugins)
            log.info("plugins up: %s", ", ".join(s.spec.name for s in plugins) or "none")
            async with trio.open_nursery() as service:
                ready_within = config.realtime.connect_timeout + 5
                await service.start(partial(supervise, pipe, notifier, ready_within=ready_within))
                task_status.started(pipe)
                reload = partial(_reload, pipe, plugged, notifier)
                await _until_stopped(shutdown_trigger, reloads, reload)
                notifier.stopping()
                plugged.stop_inputs()
                await _settle(pipe)
                service.cancel_scope.cancel()
        # The pipeline has drained and ended every event channel: sinks write out the rest.
        sinks.cancel_scope.deadline = trio.current_time() + SINK_GRACE


async def _settle(pipe: Pipeline) -> None:
    """Shutting down mid-turn: a turn being heard is cancelled (nobody will hear its answer);
    one being answered may finish, for up to ``STOP_GRACE`` seconds, so its transcripts reach
    the sinks."""
    async with pipe.broadcast.subscribe("shutdown", TurnEnded) as ended:
        state = pipe.status()["state"]
        if state == "listening":
            await pipe.inbound.send(TurnCommand(Command.CANCEL, "shutdown"))
        elif state != "idle":
            log.info("waiting up to %g s for the turn being answered to end", STOP_GRACE)
            with trio.move_on_after(STOP_GRACE):
                await ended.receive()


async def _until_stopped(
    stop: Callable[[], Awaitable[None]],
    reloads: trio.abc.ReceiveChannel[None] | None,
    reload: Callable[[], Awaitable[None]],
) -> None:
    """Until ``stop`` returns, reload the config for each item of ``reloads``."""
    async with trio.open_nursery() as nursery:

        async def stopper() -> None:
            await stop()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stopper)
        if reloads is not None:
            async for _ in reloads:
                await reload()


async def _reload(pipe: Pipeline, plugged: Plugged, notifier: Notifier) -> None:
    """Read the config file again and apply what can be applied while running: the session's
    settings (from the next session, once idle, so no turn is dropped) and the plugins. What
    needs a restart is named in the log."""
    notifier.reloading()
    config = plugged.config
    try:
        if config.source is None:
            raise ConfigError("no config file to reload")
        new = load_config(config.source)
        plugins = Plugins(new).create_enabled()
    except VoicedError as exc:
        log.error("reload refused, the running config stays: %s", exc)
        notifier.ready(status_line(pipe.status()))
        return
    hello = session_update(new)
    if hello != session_update(config):
        await pipe.inbound.send(RenewSession(hello))
        log.info("reload: new session settings, from the next session (taken once idle)")
    fixed = [key for key in RESTART_ONLY if _at(config, key) != _at(new, key)]
    try:
        restarted = await plugged.start(new, plugins)
    except VoicedError as exc:
        log.error("reload: a plugin failed to start: %s; the previous plugins run again", exc)
        await plugged.start(config, Plugins(config).create_enabled())
        restarted = []
    if restarted:
        log.info("reload: plugins (re)started: %s", ", ".join(restarted))
    if fixed:
        log.warning("reload: %s changed: restart voiced to apply it", ", ".join(fixed))
    notifier.ready(status_line(pipe.status()))


RESTART_ONLY = (
    "state_dir",
    "realtime.url",
    "realtime.model",
    "realtime.connect_timeout",
    "realtime.reply_timeout_s",
    "auth",
    "audio",
    "resilience",
)
"""What a reload cannot change while running: it is named in the log instead."""


def _at(config: Config, key: str) -> object:
    value: object = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


def _resolved(config: Config) -> AudioConfig:
    """The audio settings with relative WAV paths resolved (see ``voiced.saved.resolve``)."""
    audio = config.audio
    if audio.input.path is not None:
        path = str(resolve(audio.input.path, config.state_dir))
        audio = dataclasses.replace(audio, input=dataclasses.replace(audio.input, path=path))
    if audio.output.path is not None:
        path = str(resolve(audio.output.path, config.state_dir))
        audio = dataclasses.replace(audio, output=dataclasses.replace(audio.output, path=path))
    return audio


def _volume(config: Config, saved: SavedState) -> float:
    """The volume last set at run time (``POST /volume``), unless ``audio.output.volume`` in
    the config has changed since: an operator's edit wins over a kiosk's old setting."""
    volume = saved.values.get("volume")
    configured = config.audio.output.volume
    if not (isinstance(volume, int | float) and 0.0 <= volume <= 1.0):
        return configured
    if saved.values.get("volume_configured", configured) != configured:
        log.info(
            "volume %.2f from the config (changed since %.2f was set at run time)",
            configured,
            volume,
        )
        return configured
    log.info(
        "volume %.2f, as set at run time (%s; audio.output.volume wins once changed)",
        volume,
        saved.path,
    )
    return float(volume)


async def ask(
    config: Config, inputs: Sequence[Path], out: Path, *, turn_timeout: float = 120.0
) -> list[TurnEnded]:
    """One session, one push-to-talk turn per input file, all reply audio into ``out``.

    Args:
        config: the configuration (its audio section is not used).
        inputs: WAV files, 24 kHz mono PCM16, sent as fast as the pipeline takes them.
        out: the WAV file that gets every reply, in order.
        turn_timeout: seconds a turn may take before the run fails.

    Returns:
        How each turn ended, in order.

    Raises:
        VoicedError: bad input, a rejected key, an unreachable server, a timed-out turn.
    """
    utterances = [read_wav(path) for path in inputs]
    sinks_only = [s for s in Plugins(config).create_enabled() if not s.spec.input]
    speaker = WavSpeaker(out, realtime=False)
    results: list[TurnEnded] = []
    async with open_endpoint(config) as endpoint, trio.open_nursery() as sinks:
        async with open_pipeline(
            endpoint, session_update(config), microphone=None, speaker=speaker,
            reconnect="once_connected", controller=_controller(config),
        ) as pipe:  # fmt: skip
            events = pipe.broadcast.subscribe("ask", TurnEnded)
            saved = SavedState(saved_state_file(config.state_dir))
            await start_plugins(sinks, sinks_only, pipe, saved, config)
            with trio.fail_after(config.realtime.connect_timeout + 5):
                await pipe.ready.wait()
            for pcm in utterances:
                with trio.move_on_after(turn_timeout) as scope:
                    results.append(await _turn(pipe, pcm, events))
                if scope.cancelled_caught:
                    n = len(results) + 1
                    raise VoicedError(f"turn {n} got no reply in {turn_timeout:g} s")
        sinks.cancel_scope.deadline = trio.current_time() + SINK_GRACE
    return results


async def _turn(pipe: Pipeline, pcm: bytes, events: Subscription) -> TurnEnded:
    await pipe.inbound.send(TurnCommand(Command.START, "ask"))
    step = bytes_of(APPEND_MS)  # a file needs no live pacing: frames the size of an append
    for start in range(0, len(pcm), step):
        await pipe.inbound.send(AudioFrame(pcm[start : start + step], trio.current_time()))
    await pipe.inbound.send(TurnCommand(Command.COMMIT, "ask"))
    async for event in events:
        if isinstance(event, TurnEnded):
            return event
    raise VoicedError("the session ended before the turn did")
