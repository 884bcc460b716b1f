"""What was said in the last turns, to carry into a fresh session (``resilience.carry_over_turns``).

A new session starts with an empty conversation: after a reconnect or a renewal the model would
not know what was just said. When asked to, the session adds the last turns' final transcripts
to the new conversation as text messages, before anything else. Only turns that completed are
carried (an interrupted answer's transcript is more than the person heard). Pure.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from voiced import protocol as p
from voiced.actions import Transcribed
from voiced.turn import Outcome


class Recall:
    """The final transcripts of the last ``turns`` completed turns."""

    def __init__(self, turns: int) -> None:
        self._said: dict[int, list[tuple[Literal["user", "assistant"], str]]] = {}
        self._kept: deque[list[tuple[Literal["user", "assistant"], str]]] = deque(maxlen=turns)

    def heard(self, said: Transcribed) -> None:
        """A transcript arrived; only the final ones count."""
        if self._kept.maxlen and said.final and said.text:
            role: Literal["user", "assistant"] = "user" if said.role == "user" else "assistant"
            self._said.setdefault(said.turn, []).append((role, said.text))

    def ended(self, turn: int, outcome: Outcome) -> None:
        """A turn ended: keep its words if it completed."""
        words = self._said.pop(turn, [])
        for earlier in [t for t in self._said if t < turn]:
            del self._said[earlier]  # a transcript that came too late for its turn
        if outcome is Outcome.COMPLETED and words:
            # The user's words first: the answer's transcript may arrive before theirs.
            self._kept.append(sorted(words, key=lambda w: w[0] != "user"))

    def items(self) -> list[p.ConversationItemCreate]:
        """The messages that carry the kept turns into a fresh conversation, oldest first."""
        return [
            p.ConversationItemCreate(role, text, event_id=f"carry_{n}")
            for n, (role, text) in enumerate(w for turn in self._kept for w in turn)
        ]
