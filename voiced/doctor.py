"""``voiced doctor``: the checks a person debugging a kiosk at 2 a.m. would run by hand.

The config loads; the realtime endpoint answers the WebSocket handshake with a session; the
microphone delivers two seconds of audio at a usable level; the speaker takes a test tone. Each
check prints one line, and a line saying what to do when it fails.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from voiced import devices
from voiced import protocol as p
from voiced.audio import RATE, AudioFrame
from voiced.config import Config
from voiced.errors import VoicedError
from voiced.saved import running_daemon

RECORD_SECONDS = 2.0
TONE_SECONDS = 1.0
SILENT_DBFS = -60.0
"""Below this peak level the microphone is taken for muted or disconnected."""
CLIPPING_DBFS = -0.5
"""At or above this peak level the microphone clips: turn its gain down."""


@dataclass(frozen=True)
class Finding:
    """One check's result: ``ok``, what was seen, and (when not ok) what to do."""

    check: str
    ok: bool
    seen: str
    fix: str = ""


def level_dbfs(pcm: bytes) -> tuple[float, float]:
    """Peak and RMS level of PCM16 audio, in dB below full scale (-inf for silence)."""
    samples = array("h", pcm)
    if not samples:
        return -math.inf, -math.inf
    peak = max(abs(s) for s in samples) / 32768
    rms = math.sqrt(sum(s * s for s in samples) / len(samples)) / 32768

    def db(x: float) -> float:
        return 20 * math.log10(x) if x > 0 else -math.inf

    return db(peak), db(rms)


def tone(seconds: float, freq: float = 440.0, level: float = 0.3) -> bytes:
    """A sine tone, 24 kHz mono PCM16, faded in and out."""
    count = int(seconds * RATE)
    ramp = RATE // 100
    return array(
        "h",
        (
            int(32767 * level * min(1.0, i / ramp, (count - 1 - i) / ramp)
                * math.sin(2 * math.pi * freq * i / RATE))
            for i in range(count)
        ),
    ).tobytes()  # fmt: skip


async def check_realtime(config: Config) -> Finding:
    """The endpoint accepts the key and opens a session."""
    from voiced.app import open_endpoint, session_update
    from voiced.messages import Connected, TransportNews
    from voiced.stages.transport import LinkStats, Renew, run_transport

    async with open_endpoint(config) as endpoint:
        out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](1)
        in_send, in_recv = trio.open_memory_channel[TransportNews](16)
        hello = session_update(config)
        failure: VoicedError | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    lambda: run_transport(
                        endpoint, hello, out_recv, in_send, stats=LinkStats(), reconnect=False
                    )
                )
                async for news in in_recv:
                    if isinstance(news, Connected):
                        await out_send.aclose()  # that is all: close the session cleanly
                        break
        except* VoicedError as group:
            failure = group.exceptions[0]  # type: ignore[assignment]
    if failure is not None:
        return Finding("realtime", False, str(failure), FIX_REALTIME)
    return Finding("realtime", True, f"{endpoint.url} answered with a session")


FIX_REALTIME = (
    "check the network, realtime.url and realtime.model, and the key in OPENAI_API_KEY "
    "(or auth.api_key); `voiced check-config` shows what is configured"
)


async def check_microphone(config: Config, seconds: float = RECORD_SECONDS) -> Finding:
    """Two seconds from the microphone, and their level."""
    send, receive = trio.open_memory_channel[AudioFrame](1024)
    heard = bytearray()
    async with devices.open_microphone(config.audio.input) as microphone:
        with trio.move_on_after(seconds + 3):
            async with trio.open_nursery() as nursery:
                await nursery.start(microphone.run, send)
                with trio.move_on_after(seconds):
                    async for frame in receive:
                        heard += frame.pcm
                nursery.cancel_scope.cancel()
    name = str(microphone.statistics().get("name"))
    error = microphone.statistics().get("error")
    if error or len(heard) < RATE * seconds:  # 2 bytes a sample: less than half arrived
        why = error or f"only {len(heard) / 2 / RATE:.1f} s of audio arrived"
        return Finding("microphone", False, f"{name}: {why}", _fix_device("input"))
    peak, rms = level_dbfs(bytes(heard))
    seen = f"{name}: {seconds:g} s, peak {peak:.1f} dBFS, rms {rms:.1f} dBFS"
    if peak < SILENT_DBFS:
        fix = "unmute it, raise its gain (alsamixer, audio.input.gain), or choose another device"
        return Finding("microphone", False, seen + " (silent)", fix)
    if peak >= CLIPPING_DBFS:
        return Finding("microphone", False, seen + " (clipping)", "lower its gain")
    return Finding("microphone", True, seen)


async def check_speaker(config: Config) -> Finding:
    """The speaker takes a one-second tone. A WAV speaker (or ``auto``'s fallback) gets it in a
    temporary file: the doctor never writes into a file the daemon uses."""
    with tempfile.TemporaryDirectory(prefix="voiced-doctor-") as scratch:
        output = config.audio.output
        if output.backend == "wav":
            output = dataclasses.replace(output, path=str(Path(scratch) / "tone.wav"))
        fallback = Path(scratch) / "tone.wav"
        async with devices.open_speaker(output, fallback=fallback) as speaker:
            await speaker.open()
            await speaker.play(tone(TONE_SECONDS))
            await speaker.drain()
    stats = speaker.statistics()
    if stats.get("error") or stats.get("dropped_ms"):
        why = stats.get("error") or "the tone was dropped"
        return Finding("speaker", False, f"{stats.get('name')}: {why}", _fix_device("output"))
    return Finding("speaker", True, f"{stats.get('name')}: played a {TONE_SECONDS:g} s tone")


def _fix_device(kind: str) -> str:
    return (
        f"`voiced devices` lists what there is; set audio.{kind}.device to one of them "
        "(an index, a name or a part of one)"
    )


CHECKS: tuple[tuple[str, Callable[[Config], Awaitable[Finding]], str], ...] = (
    ("realtime", check_realtime, FIX_REALTIME),
    ("microphone", check_microphone, _fix_device("input")),
    ("speaker", check_speaker, _fix_device("output")),
)


async def run_doctor(config: Config, say: Callable[[Finding], None]) -> bool:
    """Run every check, ``say`` each finding as it comes; True when all are fine."""
    pid = running_daemon(config.state_dir)
    if pid is not None:
        seen = f"a voiced daemon (pid {pid}) runs with this config's state directory"
        say(Finding("daemon", True, seen + ": its devices may be busy; its files are left alone"))
    ok = True
    for name, check, fix in CHECKS:
        try:
            finding = await check(config)
        except VoicedError as exc:  # the check could not even start (a missing file, no key)
            finding = Finding(name, False, str(exc), fix)
        say(finding)
        ok = ok and finding.ok
    return ok
