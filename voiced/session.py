"""The session task: the I/O shell around the pure turn controller.

One task reads one inbound channel that carries, in the order they happened, captured audio,
input commands, server events, playback news and connection news. It asks the ``TurnController``
what to do and carries the actions out: gated audio and client events to the encoder, reply audio
to the decoder, stops to the player, transcripts and state changes to the sinks. Because every
producer writes into the same channel, a commit is handled after every frame heard before it.
It also measures each turn (button → commit on the wire → first reply audio → first sample
played) and keeps the live ``Status`` that ``/status`` shows.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from voiced import protocol as p
from voiced.audio import AudioFrame, Earcon, EndOfReply, bytes_of, ms_of, silence
from voiced.devices.base import AudioSink, AudioSource
from voiced.events import ConnectionChanged, StateChanged, Transcript, TurnEnded
from voiced.router import Broadcast, Inbound, Shutdown
from voiced.stages.playback import Player
from voiced.stages.transport import Connected, Disconnected, Wire
from voiced.turn import (
    Action,
    Changed,
    Command,
    EndPlayback,
    Notice,
    Play,
    Send,
    State,
    StopPlayback,
    TurnCommand,
    TurnController,
)

log = logging.getLogger("voiced.session")

EARCON_ECHO = 0.15
"""Seconds the microphone stays muted after an earcon: the speaker's latency and the room."""
PREROLL_SLACK = bytes_of(250)
"""Audio kept beyond the pre-roll: what arrives between a press and its handling (the
microphone's tail is gathered first), so the pre-roll is measured from the press itself."""
RECENT_IDS = 32
"""How many item and response ids are remembered to match late transcripts to their turn."""


@dataclass
class Status:
    """What ``/status`` shows; updated in place by the session."""

    url: str
    model: str
    microphone: AudioSource | None
    """None when the caller feeds audio itself (``voiced ask``)."""
    speaker: AudioSink
    state: State = State.IDLE
    turns: int = 0
    connected: bool = False
    ready: bool = False
    """Connected and the session configuration acknowledged (``session.updated``)."""
    last_error: str | None = None
    last_turn: TurnEnded | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    """How many turns ended each way (``completed``, ``too_short``...)."""
    wire: Wire = field(default_factory=Wire)
    """The transport's counters."""

    def to_json(self) -> dict[str, Any]:
        last = self.last_turn
        return {
            "state": str(self.state),
            "turns": self.turns,
            "connected": self.connected,
            "ready": self.ready,
            "realtime": {"url": self.url, "model": self.model},
            "audio": {
                "input": self.microphone.statistics() if self.microphone else {"name": "files"},
                "output": self.speaker.statistics(),
            },
            "last_error": self.last_error,
            "last_turn": None
            if last is None
            else {"turn": last.turn, "outcome": last.outcome, "latencies_ms": last.latencies},
            "outcomes": dict(self.outcomes),
            "connection": {
                "connects": self.wire.connects,
                "events_sent": self.wire.events_sent,
                "events_received": self.wire.events_received,
            },
        }


class Session:
    """Carries out the controller's decisions. Args are the ends it writes to.

    Args:
        to_encode: gated frames and client events, in wire order (closed on shutdown).
        to_decode: reply audio and end-of-reply markers (closed on shutdown).
        player: for immediate stops and the played position.
        broadcast: where events for the sinks go.
        status: the live status to keep up to date.
        preroll_ms: audio from before a press sent with the turn.
        half_duplex: throw away what the microphone hears while the agent speaks (instead of
            keeping it for a barge-in's pre-roll), so the agent never hears itself.
        earcons: sounds by name (``voiced.earcons.NAMES``); a missing name is not played.
    """

    def __init__(
        self,
        *,
        to_encode: trio.abc.SendChannel[AudioFrame | p.ClientEvent],
        to_decode: trio.abc.SendChannel[p.OutputAudioDelta | EndOfReply | Earcon],
        player: Player,
        broadcast: Broadcast,
        status: Status,
        preroll_ms: int = 0,
        half_duplex: bool = True,
        earcons: Mapping[str, bytes] | None = None,
    ) -> None:
        self._earcons = dict(earcons or {})
        self._mute_until = -math.inf  # trio time until which the microphone hears an earcon
        self.controller = TurnController()
        self._preroll: deque[AudioFrame] = deque()  # what was heard just before a press
        self._preroll_bytes = bytes_of(preroll_ms)
        self._press = 0.0  # trio time of the command being handled
        self._half_duplex = half_duplex
        self.ready = trio.Event()
        """Set the first time the server acknowledges the session configuration."""
        self._encode = to_encode
        self._decode = to_decode
        self._player = player
        self._broadcast = broadcast
        self.status = status
        self._turn = 0
        self._marks: dict[str, float] = {}
        self._outcome = "completed"
        self._turn_of: dict[str, int] = {}  # item or response id → turn

    async def run(self, inbound: trio.abc.ReceiveChannel[Inbound]) -> None:
        """Handle inbound messages until ``Shutdown``, then close downstream and drain."""
        async with inbound:
            async with self._encode, self._decode:
                async for msg in inbound:
                    if isinstance(msg, Shutdown):
                        break
                    await self._handle(msg)
            # Producers may still be finishing (the transport flushing, the player ending):
            # keep reading so that none of them blocks on a full channel.
            async for _ in inbound:
                pass

    async def _handle(self, msg: Inbound) -> None:
        if isinstance(msg, AudioFrame):
            if self.controller.listening:
                if msg.captured_at <= self._mute_until:  # an earcon is playing: never send it
                    msg = AudioFrame(silence(len(msg.pcm)), msg.captured_at)
                await self._send_audio(msg)
            elif self._half_duplex and self.controller.state is State.SPEAKING:
                self._preroll.clear()
            else:
                self._keep(msg)
        elif isinstance(msg, TurnCommand):
            starts = msg.command is Command.START or (
                msg.command is Command.TOGGLE and not self.controller.listening
            )
            if starts and not self.status.ready:
                # Nothing could answer: say so now rather than leave the person waiting.
                why = f" ({self.status.last_error})" if self.status.last_error else ""
                log.warning("%s ignored: not connected to the realtime server%s", msg.command, why)
                await self._earcon("error")
                return
            self._press = msg.at if msg.at is not None else trio.current_time()
            if not starts and msg.command is not Command.CANCEL:
                self._marks.setdefault("commit_pressed", msg.at or trio.current_time())
            if self.controller.state is State.SPEAKING and msg.command is not Command.COMMIT:
                # Stop the speaker before reading its position: the device keeps taking audio
                # meanwhile, and the truncate must say exactly what came out.
                self._player.stop(None)
            await self._apply(self.controller.command(msg, self._player.position()))
        elif isinstance(msg, EndOfReply):
            await self._apply(self.controller.playback_done(msg.response_id))
        elif isinstance(msg, Connected):
            self.status.connected = True
            self._broadcast.publish(ConnectionChanged(True))
        elif isinstance(msg, Disconnected):
            self.status.connected = self.status.ready = False
            self.status.last_error = str(msg.error)
            self._broadcast.publish(ConnectionChanged(False, str(msg.error)))
            self._outcome = "lost"
            await self._apply(self.controller.connection_lost())
        elif isinstance(msg, p.ServerEvent):
            await self._server_event(msg)

    async def _earcon(self, name: str) -> None:
        """Play an earcon, and mute the microphone for as long as the speaker plays it."""
        pcm = self._earcons.get(name)
        if pcm is None:
            return
        start = max(trio.current_time(), self._mute_until)
        self._mute_until = start + ms_of(len(pcm)) / 1000 + EARCON_ECHO
        await self._decode.send(Earcon(name, pcm))

    async def _send_audio(self, frame: AudioFrame) -> None:
        await self._encode.send(frame)
        self.controller.audio_sent(len(frame.pcm))

    def _keep(self, frame: AudioFrame) -> None:
        """Keep the audio heard lately: the pre-roll, and what may come in after the press
        while the microphone's tail is gathered."""
        self._preroll.append(frame)
        self._trim(sum(len(f.pcm) for f in self._preroll) - self._preroll_bytes - PREROLL_SLACK)

    def _trim(self, excess: int) -> None:
        """Drop ``excess`` bytes from the oldest end of the pre-roll, to the sample."""
        while excess > 0:
            oldest = self._preroll[0]
            if len(oldest.pcm) <= excess:
                self._preroll.popleft()
                excess -= len(oldest.pcm)
            else:
                self._preroll[0] = AudioFrame(oldest.pcm[excess:], oldest.captured_at)
                excess = 0

    async def _server_event(self, event: p.ServerEvent) -> None:
        if isinstance(event, p.SessionUpdated):
            self.status.ready = True
            self.status.last_error = None
            self.ready.set()
        elif isinstance(event, p.InputAudioBufferCommitted):
            self._remember(event.item_id)
        elif isinstance(event, p.ResponseCreated):
            self._remember(event.response_id)
        elif isinstance(event, p.InputTranscriptionCompleted):
            self._transcript("user", event.transcript, event.item_id, event.item_id)
        elif isinstance(event, p.OutputTranscriptDone):
            self._transcript("agent", event.transcript, event.item_id, event.response_id)
        elif isinstance(event, p.InputTranscriptionFailed):
            log.warning("transcription of %s failed: %s", event.item_id, event.message)
        elif isinstance(event, p.ErrorEvent) and event.code == "session_expired":
            log.info("the server ended the session: %s", event.message)
            return
        await self._apply(self.controller.server_event(event))

    async def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Play):
                if "first_audio" not in self._marks:
                    self._marks["first_audio"] = trio.current_time()
                await self._decode.send(action.delta)
            elif isinstance(action, Send):
                await self._encode.send(action.event)
                if isinstance(action.event, p.InputAudioBufferCommit):
                    await self._earcon("commit")
            elif isinstance(action, EndPlayback):
                await self._decode.send(EndOfReply(action.response_id))
            elif isinstance(action, StopPlayback):
                self._player.stop(action.response_id)
                self._outcome = "interrupted"
            elif isinstance(action, Changed):
                self._changed(action)
                if action.new is State.LISTENING:
                    # Exactly preroll_ms from before the press, then all heard since it.
                    before = sum(len(f.pcm) for f in self._preroll if f.captured_at <= self._press)
                    self._trim(before - self._preroll_bytes)
                    while self._preroll:  # the first syllable, heard before the press
                        await self._send_audio(self._preroll.popleft())
                    await self._earcon("listening")
            elif isinstance(action, Notice):
                if action.message.startswith("too short"):
                    self._outcome = "too_short"
                    await self._earcon("too_short")
                elif action.level == "error":
                    self._outcome = "failed"
                    await self._earcon("error")
                turn = f"turn {self._turn}: " if self._turn else ""
                getattr(log, action.level)("%s%s", turn, action.message)

    def _changed(self, change: Changed) -> None:
        self.status.state = change.new
        self._broadcast.publish(StateChanged(change.old, change.new, self.controller.turns))
        if change.new is State.LISTENING:
            if change.old is not State.IDLE:
                self._end_turn("interrupted")
            self._turn = self.status.turns = self.controller.turns
            self._marks = {}
            self._outcome = "completed"
        elif change.new is State.IDLE:
            self._end_turn(self._outcome)

    def _end_turn(self, outcome: str) -> None:
        marks, lat = self._marks, {}
        sent = self.status.wire.commit_sent_at
        if "commit_pressed" in marks and sent is not None and sent >= marks["commit_pressed"]:
            lat["commit"] = sent - marks["commit_pressed"]
            if "first_audio" in marks:
                lat["first_audio"] = marks["first_audio"] - sent
        played = self._player.first_sample
        if "first_audio" in marks and played is not None and played[1] >= marks["first_audio"]:
            lat["first_play"] = played[1] - marks["first_audio"]
        ended = TurnEnded(self._turn, outcome, {k: round(v * 1000, 1) for k, v in lat.items()})
        self.status.last_turn = ended
        self.status.outcomes[outcome] = self.status.outcomes.get(outcome, 0) + 1
        figures = ", ".join(f"{k} {v:g} ms" for k, v in ended.latencies.items())
        log.info("turn %d %s%s", ended.turn, outcome, f": {figures}" if figures else "")
        self._broadcast.publish(ended)

    def _remember(self, some_id: str) -> None:
        self._turn_of[some_id] = self._turn
        while len(self._turn_of) > RECENT_IDS:
            del self._turn_of[next(iter(self._turn_of))]

    def _transcript(
        self, role: Literal["user", "agent"], text: str, item_id: str, key: str
    ) -> None:
        turn = self._turn_of.get(key, self._turn)
        self._broadcast.publish(Transcript(role, text, turn, item_id, time.time()))
