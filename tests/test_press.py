"""``voiced.press.Presses``: a contact's transitions and the time in, commands out. Pure tables."""

from __future__ import annotations

import math

import pytest

from voiced.press import PressConfig, Presses
from voiced.turn import Command, TurnCommand

INF = math.inf

# (what happens, at, the commands it gives, the deadline after it)
Step = tuple[str, float, list[str], float]

CASES: dict[str, tuple[dict[str, object], list[Step]]] = {
    "hold: press starts, release commits": (
        {},
        [("press", 0.0, ["start"], INF), ("release", 1.0, ["commit"], INF)],
    ),
    "hold: no long press, however long it is held": (
        {"long_press_s": 1.5},
        [
            ("press", 0.0, ["start"], INF),
            ("tick", 100.0, [], INF),
            ("release", 101, ["commit"], INF),
        ],
    ),
    "toggle: a press toggles, its release does nothing, the next press toggles": (
        {"mode": "toggle"},
        [
            ("press", 0.0, ["toggle"], 1.5),
            ("release", 0.5, [], INF),
            ("press", 3.0, ["toggle"], 4.5),
            ("release", 3.2, [], INF),
        ],
    ),
    "toggle: a long press cancels, once, without waiting for the release": (
        {"mode": "toggle"},
        [
            ("press", 0.0, ["toggle"], 1.5),
            ("tick", 1.49, [], 1.5),
            ("tick", 1.5, ["cancel"], INF),
            ("tick", 9.0, [], INF),
            ("release", 10.0, [], INF),
            ("press", 11.0, ["toggle"], 12.5),
        ],
    ),
    "toggle: long_press_s null never cancels": (
        {"mode": "toggle", "long_press_s": None},
        [("press", 0.0, ["toggle"], INF), ("tick", 100.0, [], INF), ("release", 101, [], INF)],
    ),
    "toggle: releasing before the long press ends it": (
        {"mode": "toggle", "long_press_s": 2.0},
        [("press", 0.0, ["toggle"], 2.0), ("release", 1.0, [], INF), ("tick", 2.0, [], INF)],
    ),
    "bounce on a press gives one start": (
        {},
        [
            ("press", 0.0, ["start"], INF),
            ("release", 0.005, [], 0.03),
            ("press", 0.010, [], 0.03),
            ("release", 0.015, [], 0.03),
            ("press", 0.020, [], 0.03),
            ("tick", 0.03, [], INF),  # settled on the last level: still pressed
            ("release", 1.0, ["commit"], INF),
        ],
    ),
    "bounce on a release gives one commit": (
        {},
        [
            ("press", 0.0, ["start"], INF),
            ("release", 1.0, ["commit"], INF),
            ("press", 1.004, [], 1.03),
            ("release", 1.008, [], 1.03),
            ("tick", 1.03, [], INF),
            ("press", 2.0, ["start"], INF),
        ],
    ),
    "a press within the window after a release is taken once the window ends": (
        {},
        [
            ("press", 0.0, ["start"], INF),
            ("release", 1.0, ["commit"], INF),
            ("press", 1.01, [], 1.03),
            ("tick", 1.029, [], 1.03),
            ("tick", 1.03, ["start"], INF),
        ],
    ),
    "a tap shorter than the debounce window still commits": (
        {},
        [
            ("press", 0.0, ["start"], INF),
            ("release", 0.01, [], 0.03),
            ("tick", 0.03, ["commit"], INF),
        ],
    ),
    "toggle: bounce on a press toggles once and keeps the long press": (
        {"mode": "toggle"},
        [
            ("press", 0.0, ["toggle"], 1.5),
            ("release", 0.005, [], 0.03),
            ("press", 0.01, [], 0.03),
            ("tick", 0.03, [], 1.5),
            ("tick", 1.5, ["cancel"], INF),
        ],
    ),
    "debounce_s 0 takes every transition": (
        {"debounce_s": 0.0},
        [
            ("press", 0.0, ["start"], INF),
            ("release", 0.0, ["commit"], INF),
            ("press", 0.0, ["start"], INF),
        ],
    ),
    "a release with nothing pressed does nothing": (
        {},
        [("release", 0.0, [], INF), ("tick", 5.0, [], INF), ("press", 6.0, ["start"], INF)],
    ),
}


def run(presses: Presses, action: str, at: float) -> list[TurnCommand]:
    if action == "press":
        return presses.press(at)
    if action == "release":
        return presses.release(at)
    assert action == "tick"
    return presses.tick(at)


@pytest.mark.parametrize(("settings", "steps"), CASES.values(), ids=CASES.keys())
def test_presses(settings: dict[str, object], steps: list[Step]) -> None:
    presses = Presses(PressConfig(**settings), "button")  # type: ignore[arg-type]
    assert presses.deadline == INF
    for action, at, commands, deadline in steps:
        got = run(presses, action, at)
        assert [str(c.command) for c in got] == commands, (action, at)
        assert presses.deadline == pytest.approx(deadline), (action, at)
        assert all(c.source == "button" and c.reply for c in got)


@pytest.mark.parametrize(
    ("mode", "commands"),
    [("hold", ["start", "commit", "start"]), ("toggle", ["toggle", "toggle", "cancel"])],
)
def test_reply_false_is_carried_by_every_command(mode: str, commands: list[str]) -> None:
    presses = Presses(PressConfig(mode=mode, reply=False), "pedal")  # type: ignore[arg-type]
    got = presses.press(0.0) + presses.release(1.0) + presses.press(2.0) + presses.tick(3.5)
    assert got == [TurnCommand(Command(c), "pedal", reply=False) for c in commands]


def test_held_follows_the_debounced_level() -> None:
    presses = Presses(PressConfig(), "button")
    held = []
    for action, at in [("press", 0.0), ("release", 0.01), ("tick", 0.03)]:
        run(presses, action, at)
        held.append(presses.held)
    assert held == [True, True, False]  # the release within the window counts when it ends


def test_a_tick_at_exactly_the_deadline_settles() -> None:
    last, debounce = 1427.6327556905576, 0.01  # (last + debounce) - last < debounce in floats
    presses = Presses(PressConfig(debounce_s=debounce), "button")
    assert [c.command for c in presses.press(last)] == [Command.START]
    assert presses.release(last + debounce / 2) == []
    deadline = presses.deadline
    assert [c.command for c in presses.tick(deadline)] == [Command.COMMIT]
    assert presses.deadline == INF


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"long_press_s": 0.1}, "long_press_s"),
        ({"long_press_s": 31.0}, "long_press_s"),
        ({"debounce_s": -0.01}, "debounce_s"),
        ({"debounce_s": 1.5}, "debounce_s"),
    ],
)
def test_settings_are_checked(settings: dict[str, float], key: str) -> None:
    from voiced.yamlconf import FieldError

    with pytest.raises(FieldError) as caught:
        PressConfig(**settings)  # type: ignore[arg-type]
    assert caught.value.field == key
