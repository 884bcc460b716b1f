"""The session task: one inbound channel in, each message dispatched to the pure pieces.

Every producer (microphone, inputs, transport, speaker) writes into the same channel, in the order
things happened, so a commit is handled after every frame heard before it. The session hands each
message to the one piece that decides about it (``TurnController`` for push-to-talk, ``AudioGate``
for captured audio, ``TurnMeter`` and ``Status`` for figures) and carries out the actions it gets
back: audio and client events to the encoder, reply audio to the decoder, stops to the player,
events to the sinks. It holds no rule of its own.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import trio

from voiced import actions as a
from voiced import protocol as p
from voiced.audio import AnswerAgain, AudioFrame, Earcon, EndOfReply, ms_of
from voiced.broadcast import Broadcast
from voiced.events import (
    ConnectionChanged,
    DeviceChanged,
    Event,
    PluginChanged,
    StateChanged,
    TokensUsed,
    Transcript,
    TurnEnded,
)
from voiced.messages import (
    Alive,
    CommitSent,
    Connected,
    Disconnected,
    Inbound,
    PlaybackStarted,
    RenewSession,
    Shutdown,
)
from voiced.recall import Recall
from voiced.stages.capture import AudioGate
from voiced.stages.playback import Player
from voiced.stages.transport import Renew
from voiced.status import Status, TurnMeter
from voiced.turn import State, TurnCommand, TurnController

log = logging.getLogger("voiced.session")


class Session:
    """Dispatches inbound messages to the pure pieces (``controller``, ``gate``, ``status``) and
    carries out their actions through the ends it writes to: ``to_encode`` (gated frames and
    client events, in wire order), ``to_decode`` (reply audio, end-of-reply markers, earcons),
    ``player`` (stops and the played position) and ``broadcast`` (events for the sinks). Both
    channels are closed on shutdown. ``earcons`` are the sounds by name; a missing one is silent.
    """

    def __init__(
        self,
        *,
        controller: TurnController,
        gate: AudioGate,
        status: Status,
        broadcast: Broadcast,
        to_encode: trio.abc.SendChannel[AudioFrame | p.ClientEvent | Renew],
        to_decode: trio.abc.SendChannel[a.Play | EndOfReply | AnswerAgain | Earcon],
        player: Player,
        earcons: Mapping[str, bytes] | None = None,
        recall: Recall | None = None,
    ) -> None:
        self.controller = controller
        self._recall = recall or Recall(0)
        self._gate = gate
        self._meter = TurnMeter()
        self._status = status
        self._broadcast = broadcast
        self._encode = to_encode
        self._decode = to_decode
        self._player = player
        self._earcons = dict(earcons or {})
        self._press = 0.0  # trio time of the command being handled
        self._session_id: str | None = None  # the realtime session's, for the events
        self._turn_audio: list[AudioFrame] = []  # every frame sent in the current turn
        self._answered = 0  # bytes of answer audio played in the current turn
        self._hello: p.SessionUpdate | None = None  # new session settings, for the renewal
        self.ready = trio.Event()
        """Set the first time the session is ready for a turn."""

    async def run(self, inbound: trio.abc.ReceiveChannel[Inbound]) -> None:
        """Handle inbound messages until ``Shutdown``, then close downstream and drain."""
        async with inbound:
            async with self._encode, self._decode:
                while not isinstance(msg := await self._next(inbound), Shutdown):
                    if msg is None:  # the stuck-button limit, or the server's silence limit
                        self._press = trio.current_time()  # it ends listening, like a press
                        await self._apply(self.controller.tick(self._press))
                    else:
                        await self._handle(msg)
            # Producers may still be finishing (the transport flushing, the player ending):
            # keep reading so that none of them blocks on a full channel.
            async for _ in inbound:
                pass

    async def _next(self, inbound: trio.abc.ReceiveChannel[Inbound]) -> Inbound | None:
        """The next message, or None at the controller's deadline."""
        deadline = self.controller.deadline
        try:
            if deadline == math.inf:  # most of the time: no cancel scope per audio frame
                return await inbound.receive()
            with trio.move_on_at(deadline):
                return await inbound.receive()
            return None
        except trio.EndOfChannel:
            return Shutdown()

    async def _handle(self, msg: Inbound) -> None:
        if isinstance(msg, AudioFrame):
            frame = self._gate.frame(msg)
            if frame is not None:
                await self._send_audio(frame)
        elif isinstance(msg, p.ServerEvent):
            self.controller.heard(trio.current_time())
            await self._apply(self.controller.server_event(msg))
        elif isinstance(msg, TurnCommand):
            self._press = msg.at if msg.at is not None else trio.current_time()
            actions = self.controller.command(msg, self._press)
            if msg.on_verdict is not None:
                verdict = actions[0]
                assert isinstance(verdict, a.Verdict)
                msg.on_verdict(verdict)
            await self._apply(actions)
        elif isinstance(msg, EndOfReply):
            await self._apply(self.controller.playback_done(msg.turn))
        elif isinstance(msg, PlaybackStarted):
            self._meter.mark("first_play", msg.at, msg.turn)
        elif isinstance(msg, CommitSent):
            self._meter.mark("commit_sent", msg.at)
        elif isinstance(msg, Connected):
            self._session_id = msg.session_id
            self._publish(ConnectionChanged(True))
        elif isinstance(msg, Disconnected):
            why = str(msg.error) if msg.error is not None else None
            fatal = msg.error is not None and msg.error.fatal
            self._publish(ConnectionChanged(False, error=why, fatal=fatal))
            lost = self.controller.connection_lost(
                why or "renewing the session", fatal=fatal, now=trio.current_time()
            )
            await self._apply(lost)
        elif isinstance(msg, RenewSession):
            self._hello = msg.hello or self._hello
            await self._apply(self.controller.renew())
        elif isinstance(msg, Alive):
            msg.answer()
        elif isinstance(msg, DeviceChanged | PluginChanged):
            self._publish(msg)

    async def _send_audio(self, frame: AudioFrame) -> None:
        """Send a frame of the turn being heard, and keep it: if the link drops, the turn is
        sent again on the next one (``Resend``). While the link is away it is only kept."""
        self._turn_audio.append(frame)
        if self.controller.ready:
            await self._encode.send(frame)
        self.controller.audio_sent(len(frame.pcm))

    def _publish(self, event: Event) -> None:
        shown = self._status.apply(event)
        self._broadcast.publish(event)
        if shown is not None:
            self._broadcast.publish(shown)

    async def _apply(self, actions: list[a.Action]) -> None:
        for action in actions:
            if isinstance(action, a.Play):
                self._meter.mark("first_audio", trio.current_time())
                self._answered += len(action.delta.audio)
                await self._decode.send(action)
            elif isinstance(action, a.Send):
                await self._encode.send(action.event)
            elif isinstance(action, a.EndPlayback):
                await self._decode.send(EndOfReply(action.turn))
            elif isinstance(action, a.StopPlayback):
                self._player.stop(action.turn)
            elif isinstance(action, a.Truncate):
                await self._encode.send(action.event(self._player.position()))
            elif isinstance(action, a.Changed):
                await self._changed(action)
            elif isinstance(action, a.Chime):
                await self._chime(action.name)
            elif isinstance(action, a.TurnOver):
                self._turn_over(action)
            elif isinstance(action, a.Transcribed):
                self._transcript(action)
            elif isinstance(action, a.Notice):
                turn = self.controller.turns
                getattr(log, action.level)("%s%s", f"turn {turn}: " if turn else "", action.message)
            elif isinstance(action, a.Spent):
                self._meter.spent(action.turn, action.usage)
                self._publish(TokensUsed(action.turn, action.usage))
            elif isinstance(action, a.Ready):
                if self.ready.is_set():  # a fresh session after the first: carry the last turns
                    for item in self._recall.items():
                        await self._encode.send(item)
                log.info("ready: the session is up, a press starts a turn")
                self._publish(ConnectionChanged(True, ready=True))
                self.ready.set()
            elif isinstance(action, a.Reconnect):
                await self._encode.send(Renew(self._hello))
                self._hello = None
            elif isinstance(action, a.Resend):
                # Ahead of the new answer: what the old link brought of this turn stays stopped.
                await self._decode.send(AnswerAgain(action.turn))
                log.info(
                    "turn %d: sending again what was heard (%d frames)",
                    action.turn,
                    len(self._turn_audio),
                )
                for frame in self._turn_audio:
                    await self._encode.send(frame)
            elif isinstance(action, a.Ignored):
                ignored = self._status.ignored
                ignored[action.why] = ignored.get(action.why, 0) + 1
                if action.first:
                    log.warning(
                        "not believed: %s (%s); counted in /status, logged once",
                        action.why,
                        action.event,
                    )

    async def _changed(self, change: a.Changed) -> None:
        if change.new is State.LISTENING:
            self._turn_audio, self._answered = [], 0
            self._meter.started(change.turn)
        elif change.old is State.LISTENING and change.new is State.THINKING:
            self._meter.mark("pressed", self._press)
        self._publish(StateChanged(change.old, change.new, change.turn))
        for frame in self._gate.changed(change.new, self._press):
            await self._send_audio(frame)  # the pre-roll: the first syllable, heard before

    async def _chime(self, name: str) -> None:
        """Play an earcon, and mute the microphone for as long as the speaker plays it."""
        pcm = self._earcons.get(name)
        if pcm is not None:
            self._gate.mute(trio.current_time(), ms_of(len(pcm)) / 1000)
            await self._decode.send(Earcon(name, pcm))

    def _transcript(self, said: a.Transcribed) -> None:
        self._recall.heard(said)
        at, session = time.time(), self._session_id
        self._publish(
            Transcript(
                said.role,
                said.text,
                said.turn,
                said.item_id,
                at,
                said.final,
                said.response_id,
                session,
            )
        )

    def _turn_over(self, over: a.TurnOver) -> None:
        heard = sum(len(frame.pcm) for frame in self._turn_audio)
        self._turn_audio = []  # the turn is answered (or given up): nothing to send again
        self._recall.ended(over.turn, over.outcome)
        meter = self._meter
        ended = TurnEnded(
            over.turn, over.outcome, meter.latencies(), over.reason, meter.usage, self._session_id
        )
        sizes = [f"heard {ms_of(heard):.0f} ms", f"answer {ms_of(self._answered):.0f} ms"]
        figures = ", ".join([*sizes, *(f"{k} {v:g} ms" for k, v in ended.latencies.items())])
        if meter.usage is not None:
            used = meter.usage
            figures += f"{', ' if figures else ''}tokens in {used.input} out {used.output}"
        why = f" ({over.reason})" if over.reason else ""
        log.info("turn %d %s%s%s", over.turn, over.outcome, why, f": {figures}" if figures else "")
        self._publish(ended)
