"""``voiced.recall``: which words are carried into a fresh session."""

from __future__ import annotations

from voiced.actions import Transcribed
from voiced.recall import Recall
from voiced.turn import Outcome


def said(role: str, text: str, turn: int, final: bool = True) -> Transcribed:
    return Transcribed("user" if role == "user" else "agent", text, turn, f"item_{turn}", final)


def test_the_last_completed_turns_are_carried_the_users_words_first() -> None:
    recall = Recall(2)
    recall.heard(said("agent", "a1", 1))  # the answer's transcript may come first
    recall.heard(said("user", "u1", 1))
    recall.ended(1, Outcome.COMPLETED)
    recall.heard(said("user", "u2", 2))
    recall.ended(2, Outcome.INTERRUPTED)  # more was said than heard: not carried
    recall.heard(said("user", "u3 par", 3, final=False))  # a delta: not carried
    recall.heard(said("user", "u3", 3))
    recall.heard(said("agent", "a3", 3))
    recall.ended(3, Outcome.COMPLETED)
    recall.heard(said("user", "u4", 4))
    recall.heard(said("agent", "a4", 4))
    recall.ended(4, Outcome.COMPLETED)
    assert [(i.role, i.text) for i in recall.items()] == [
        ("user", "u3"),
        ("assistant", "a3"),
        ("user", "u4"),
        ("assistant", "a4"),
    ]


def test_off_by_default_carries_nothing() -> None:
    recall = Recall(0)
    recall.heard(said("user", "u1", 1))
    recall.ended(1, Outcome.COMPLETED)
    assert recall.items() == []
