"""Capture: which of the microphone's frames go out, and commands ordered after what was heard.

``AudioGate`` is pure: fed every captured frame and told the turn's state changes, it says which
frames to send. It keeps the pre-roll (the audio heard just before a press, so the first syllable
is never lost) in a ring with a running byte count, silences what the microphone hears while an
earcon plays, and in half duplex throws away what it hears while the agent speaks.
``run_intake`` lets commands in, each after every sample heard up to its arrival.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import trio

from voiced.audio import AudioFrame, bytes_of, silence
from voiced.devices.base import Microphone
from voiced.messages import Inbound
from voiced.turn import State, TurnCommand

EARCON_ECHO = 0.15
"""Seconds the microphone stays muted after an earcon: the speaker's latency and the room."""
PREROLL_SLACK = bytes_of(250)
"""Audio kept beyond the pre-roll: what arrives between a press and its handling (the
microphone's tail is gathered first), so the pre-roll is measured from the press itself."""


class AudioGate:
    """Decides, frame by frame, what of the microphone's audio is sent.

    Args:
        preroll_ms: audio from before a press sent with the turn.
        half_duplex: throw away what is heard while the agent speaks (instead of keeping it for
            a barge-in's pre-roll), so the agent never hears itself.
    """

    def __init__(self, *, preroll_ms: int = 0, half_duplex: bool = True) -> None:
        self._preroll_bytes = bytes_of(preroll_ms)
        self._half_duplex = half_duplex
        self._state = State.IDLE
        self._ring: deque[AudioFrame] = deque()
        self._ring_bytes = 0  # the sum of the ring's frame sizes, kept as it changes
        self._mute_until = -math.inf  # capture time until which the microphone hears an earcon

    def frame(self, frame: AudioFrame) -> AudioFrame | None:
        """The frame to send now (muted if an earcon was playing), or None when kept or dropped."""
        if self._state is State.LISTENING:
            if frame.captured_at <= self._mute_until:  # an earcon is playing: never send it
                return AudioFrame(silence(len(frame.pcm)), frame.captured_at)
            return frame
        if self._half_duplex and self._state is State.SPEAKING:
            self._ring.clear()
            self._ring_bytes = 0
            return None
        self._ring.append(frame)
        self._ring_bytes += len(frame.pcm)
        self._trim(self._ring_bytes - self._preroll_bytes - PREROLL_SLACK)
        return None

    def changed(self, new: State, press_at: float) -> list[AudioFrame]:
        """The turn's state is now ``new``; on listening, the pre-roll to send first: exactly
        ``preroll_ms`` from before the press at ``press_at``, then all heard since it."""
        self._state = new
        if new is not State.LISTENING:
            return []
        before = sum(len(f.pcm) for f in self._ring if f.captured_at <= press_at)
        self._trim(before - self._preroll_bytes)
        frames = list(self._ring)
        self._ring.clear()
        self._ring_bytes = 0
        return frames

    def mute(self, now: float, seconds: float) -> None:
        """An earcon of ``seconds`` starts playing at ``now`` (after any still playing)."""
        start = max(now, self._mute_until)
        self._mute_until = start + seconds + EARCON_ECHO

    def _trim(self, excess: int) -> None:
        """Drop ``excess`` bytes from the oldest end of the ring, to the sample."""
        while excess > 0:
            oldest = self._ring[0]
            if len(oldest.pcm) <= excess:
                self._ring.popleft()
                self._ring_bytes -= len(oldest.pcm)
                excess -= len(oldest.pcm)
            else:
                self._ring[0] = AudioFrame(oldest.pcm[excess:], oldest.captured_at)
                self._ring_bytes -= excess
                excess = 0


async def run_intake(
    commands: trio.abc.ReceiveChannel[TurnCommand],
    inbound: trio.MemorySendChannel[Inbound],
    microphone: Microphone | None,
) -> None:
    """Forward commands to the session, each after the audio heard up to that instant.

    The microphone's flush puts its tail into the session's channel first, so a commit always
    follows every sample heard before it. Each command is stamped with the moment it arrived.
    """
    async with commands, inbound:
        async for command in commands:
            command = dataclasses.replace(command, at=trio.current_time())  # the press
            if microphone is not None:
                await microphone.flush()
            try:
                inbound.send_nowait(command)
            except trio.WouldBlock:
                await inbound.send(command)
