"""Wires the data path: opens the bounded channels and starts the stages in one nursery.

capture ─┐
inputs ──┴─► session ─► encode ─► transport ⇄ server; transport ─► session ─► decode ─► playback

Shutdown drains from the source: the edge (capture and command intake) is cancelled first, then
``Shutdown`` is sent to the session, which closes the encoder's and decoder's channels; the
transport sends what is queued and closes; playback plays what is queued, within a grace period.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import trio

from voiced import protocol as p
from voiced.actions import Play
from voiced.audio import AnswerAgain, AudioFrame, Earcon, EndOfReply, ReplyAudio
from voiced.broadcast import Broadcast
from voiced.devices.base import Microphone, Speaker
from voiced.events import DeviceChanged
from voiced.messages import Inbound, RenewSession, Shutdown
from voiced.recall import Recall
from voiced.session import Session
from voiced.stages.capture import AudioGate, run_intake
from voiced.stages.decode import run_decode
from voiced.stages.encode import run_encode
from voiced.stages.playback import Player
from voiced.stages.transport import Endpoint, LinkStats, Reconnecting, Renew, run_transport
from voiced.status import Status
from voiced.turn import TurnCommand, TurnController

log = logging.getLogger("voiced.pipeline")

INBOUND_BUFFER = 256
"""Session inbound: ~5 s of 20 ms frames. Full: capture drops frames (counted), commands and
server events wait. The session does no I/O of its own, so it fills only when the socket stalls."""
ENCODE_BUFFER = 64
"""Session → encode. Full: the session waits, and capture drops behind it."""
OUTBOUND_BUFFER = 64
"""Encode → transport: 6.4 s of 100 ms appends. Full: encode waits on the socket."""
DECODE_BUFFER = 256
"""Session → decode: reply deltas. Full: the session waits for the speaker (replies arrive
faster than real time and are played at real time)."""
PLAYBACK_BUFFER = 16
"""Decode → playback: kept small so a stop discards little that was already decoded."""
COMMAND_BUFFER = 32
"""Inputs → intake. Full: an input waits (a person cannot press that fast)."""
SHUTDOWN_GRACE = 5.0
"""Seconds for queued audio to be sent and played at shutdown before it is cut."""


@dataclass
class Pipeline:
    """A running data path.

    Attributes:
        commands: send ``TurnCommand``s here (clone it for each input).
        inbound: the session's inbound channel, for drivers that feed audio themselves.
        ready: set the first time the session is ready for a turn.
        broadcast: subscribe here for events.
        player: the speaker's owner.
    """

    commands: trio.MemorySendChannel[TurnCommand]
    inbound: trio.MemorySendChannel[Inbound]
    ready: trio.Event
    broadcast: Broadcast
    player: Player
    _status: Status
    _stats: LinkStats
    _microphone: Microphone | None

    def status(self) -> dict[str, Any]:
        """The JSON-ready snapshot ``/status`` shows."""
        devices = {"input": self._microphone.statistics} if self._microphone else {}
        devices["output"] = self.player.speaker.statistics
        return self._status.to_json(
            devices=devices,
            link={
                "connects": self._stats.connects,
                "events_sent": self._stats.events_sent,
                "events_received": self._stats.events_received,
            },
            dropped=self.broadcast.dropped(),
        )

    async def renew(self) -> None:
        """Ask for a fresh session as soon as the daemon is idle."""
        await self.inbound.send(RenewSession())


@asynccontextmanager
async def open_pipeline(
    endpoint: Endpoint,
    hello: p.SessionUpdate,
    *,
    microphone: Microphone | None,
    speaker: Speaker,
    reconnect: Reconnecting,
    controller: TurnController | None = None,
    gate: AudioGate | None = None,
    earcons: Mapping[str, bytes] | None = None,
    recall: Recall | None = None,
) -> AsyncIterator[Pipeline]:
    """Run the data path for the body of the ``async with``; drain it on the way out.

    Args:
        endpoint: the realtime server.
        hello: the session configuration, sent first on every connection.
        microphone: the microphone, or None when the caller feeds ``inbound`` itself.
        speaker: the speaker.
        reconnect: when the transport retries (``voiced.stages.transport.run_transport``).
        controller: the push-to-talk rules (default: the defaults).
        gate: what of the captured audio is sent (default: no pre-roll, half duplex).
        earcons: the sounds played on listening, commit, error and too short, by name.
        recall: the turns carried into a fresh session (default: none).
    """
    inbound_send, inbound_recv = trio.open_memory_channel[Inbound](INBOUND_BUFFER)
    encode_send, encode_recv = trio.open_memory_channel[AudioFrame | p.ClientEvent | Renew](
        ENCODE_BUFFER
    )
    out_send, out_recv = trio.open_memory_channel[p.ClientEvent | Renew](OUTBOUND_BUFFER)
    decode_send, decode_recv = trio.open_memory_channel[Play | EndOfReply | AnswerAgain | Earcon](
        DECODE_BUFFER
    )
    play_send, play_recv = trio.open_memory_channel[ReplyAudio | EndOfReply | AnswerAgain | Earcon](
        PLAYBACK_BUFFER
    )
    command_send, command_recv = trio.open_memory_channel[TurnCommand](COMMAND_BUFFER)
    broadcast = Broadcast()
    status = Status(endpoint.url, endpoint.model, endpoint.credentials.describe())
    stats = LinkStats()
    # Device failures and recoveries reach the session as messages, and every sink as events.
    if microphone is not None:
        microphone.watch(_telling(inbound_send, "microphone"))
    speaker.watch(_telling(inbound_send, "speaker"))
    player = Player(speaker)
    session = Session(
        controller=controller or TurnController(),
        gate=gate or AudioGate(),
        status=status,
        broadcast=broadcast,
        to_encode=encode_send,
        to_decode=decode_send,
        player=player,
        earcons=earcons or {},
        recall=recall or Recall(0),
    )
    async with trio.open_nursery() as core:
        core.start_soon(session.run, inbound_recv)
        core.start_soon(run_encode, encode_recv, out_send)
        core.start_soon(
            partial(run_transport, stats=stats, reconnect=reconnect),
            endpoint,
            hello,
            out_recv,
            inbound_send.clone(),
        )
        core.start_soon(run_decode, decode_recv, play_send)
        await core.start(player.run, play_recv, inbound_send.clone())
        async with trio.open_nursery() as edge:
            if microphone is not None:
                await edge.start(microphone.run, inbound_send.clone())
            edge.start_soon(run_intake, command_recv, inbound_send.clone(), microphone)
            yield Pipeline(
                command_send, inbound_send, session.ready, broadcast, player, status, stats,
                microphone,
            )  # fmt: skip
            edge.cancel_scope.cancel()
        async with inbound_send:
            await inbound_send.send(Shutdown())
        core.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE
    broadcast.close()


def _telling(
    inbound: trio.MemorySendChannel[Inbound], device: Literal["microphone", "speaker"]
) -> Callable[[str, str | None], None]:
    """A device's ``watch`` callback that tells the session (never waiting: a device task)."""

    def changed(name: str, error: str | None) -> None:
        try:
            inbound.send_nowait(DeviceChanged(device, name, error))
        except trio.WouldBlock:
            log.warning("%s %s: %s (the session is behind; not shown)", device, name, error)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # shutting down

    return changed
