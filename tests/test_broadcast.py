"""Fan-out of events: every subscriber its own bounded queue, publishing never waits."""

from __future__ import annotations

import inspect
import logging
import operator

import pytest
import trio
import trio.testing

from voiced.broadcast import Broadcast, Subscription
from voiced.events import (
    ConnectionChanged,
    DeviceChanged,
    Event,
    StateChanged,
    Transcript,
    TurnEnded,
)
from voiced.turn import Outcome, State


def transcript(n: int) -> Transcript:
    return Transcript("user", f"words {n}", n, f"item_{n}", 1_700_000_000.0 + n)


def state(n: int) -> StateChanged:
    return StateChanged(State.IDLE, State.LISTENING, n)


EVENTS: list[Event] = [
    state(1),
    transcript(1),
    TurnEnded(1, Outcome.COMPLETED, {"commit": 12.5}),
    ConnectionChanged(False, error="gone"),
    transcript(2),
    DeviceChanged("speaker", "null", None),
    state(2),
    TurnEnded(2, Outcome.TOO_SHORT, reason="short"),
]


async def drain(subscription: Subscription) -> list[Event]:
    return [event async for event in subscription]


@pytest.mark.parametrize(
    "kinds",
    [(), (Transcript,), (StateChanged, TurnEnded), (ConnectionChanged, DeviceChanged)],
)
async def test_every_subscriber_gets_what_it_asked_for_in_order(
    kinds: tuple[type[Event], ...],
) -> None:
    broadcast = Broadcast()
    wanted = broadcast.subscribe("wanted", *kinds)
    everything = broadcast.subscribe("everything")
    for event in EVENTS:
        broadcast.publish(event)
    broadcast.close()
    with trio.fail_after(5):
        got, all_of_them = await drain(wanted), await drain(everything)
    expected = [e for e in EVENTS if not kinds or isinstance(e, kinds)]
    assert list(map(operator.is_, got, expected)) == [True] * len(expected)  # the same objects
    assert list(map(operator.is_, all_of_them, EVENTS)) == [True] * len(EVENTS)
    assert len(got) == len(expected)
    assert len(all_of_them) == len(EVENTS)


async def test_full_queue_drops_the_new_event_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broadcast = Broadcast()
    slow = broadcast.subscribe("slow", size=2)
    keeping_up = broadcast.subscribe("keeping-up", size=100)
    with caplog.at_level(logging.WARNING, logger="voiced.broadcast"):
        for n in range(1, 8):
            broadcast.publish(state(n))
    assert slow.dropped == 5
    assert broadcast.dropped() == {"slow": 5, "keeping-up": 0}
    warnings = [r for r in caplog.records if r.name == "voiced.broadcast"]
    assert len(warnings) == 1
    assert "slow" in warnings[0].getMessage()
    broadcast.close()
    with trio.fail_after(5):
        assert await drain(slow) == [state(1), state(2)]  # the oldest kept, the new dropped
        assert await drain(keeping_up) == [state(n) for n in range(1, 8)]


@pytest.mark.parametrize("durable", [True, False])
async def test_durable_subscriber_never_drops_a_transcript(durable: bool) -> None:
    broadcast = Broadcast()
    outbox = broadcast.subscribe("outbox", durable=durable, size=2)
    published: list[Event] = [transcript(1), state(1), transcript(2), transcript(3)]
    published += [state(2), transcript(4), TurnEnded(4, Outcome.COMPLETED), transcript(5)]
    for event in published:
        broadcast.publish(event)
    broadcast.close()
    with trio.fail_after(5):
        got = await drain(outbox)
    if durable:  # queued beyond its size; other kinds still dropped when full
        assert got == [transcript(1), state(1), *map(transcript, range(2, 6))]
        assert outbox.dropped == 2
    else:
        assert got == [transcript(1), state(1)]
        assert outbox.dropped == 6


async def test_publishing_never_waits() -> None:
    assert not inspect.iscoroutinefunction(Broadcast.publish)
    broadcast = Broadcast()
    nobody_reads = broadcast.subscribe("nobody-reads", size=4)
    durable = broadcast.subscribe("durable", Transcript, durable=True, size=1)
    with trio.CancelScope() as scope:  # noqa: ASYNC100 (that it holds no await is the point)
        scope.cancel()  # any checkpoint in publish would raise Cancelled here
        for n in range(10_000):
            broadcast.publish(transcript(n))
    assert not scope.cancelled_caught
    assert nobody_reads.dropped == 10_000 - 4
    assert durable.dropped == 0


async def test_close_ends_subscriptions_after_what_is_queued() -> None:
    broadcast = Broadcast()
    subscription = broadcast.subscribe("sink")
    broadcast.publish(transcript(1))
    broadcast.publish(transcript(2))
    broadcast.close()
    broadcast.publish(transcript(3))  # after the end: nobody gets it
    with trio.fail_after(5):
        assert await subscription.receive() == transcript(1)
        assert await drain(subscription) == [transcript(2)]
        with pytest.raises(trio.EndOfChannel):
            await subscription.receive()


@pytest.mark.parametrize("how", ["close", "aclose"])
async def test_subscriber_that_closed_gets_nothing_more(how: str) -> None:
    broadcast = Broadcast()
    closed = broadcast.subscribe("closed")
    other = broadcast.subscribe("other")
    broadcast.publish(transcript(1))
    with trio.fail_after(5):
        if how == "close":
            closed.close()
        else:
            await closed.aclose()
        broadcast.publish(transcript(2))
        with pytest.raises(trio.ClosedResourceError):
            await closed.receive()
        assert closed.dropped == 0  # not counted as falling behind
        broadcast.close()
        assert await drain(other) == [transcript(1), transcript(2)]
        with pytest.raises(trio.ClosedResourceError):
            await closed.receive()


async def test_waiting_receiver_wakes_on_publish_and_on_close() -> None:
    broadcast = Broadcast()
    subscription = broadcast.subscribe("sink", Transcript)
    got: list[Event] = []
    ended = trio.Event()

    async def read() -> None:
        async for event in subscription:
            got.append(event)
        ended.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            broadcast.publish(state(1))  # not wanted: no wake-up that delivers anything
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            broadcast.publish(transcript(1))
            await trio.testing.wait_all_tasks_blocked()
            assert got == [transcript(1)]
            broadcast.publish(transcript(2))
            broadcast.publish(transcript(3))
            await trio.testing.wait_all_tasks_blocked()
            assert got == [transcript(1), transcript(2), transcript(3)]
            assert not ended.is_set()
            broadcast.close()
            await ended.wait()
    assert got == [transcript(1), transcript(2), transcript(3)]


async def test_receiver_waiting_when_its_subscriber_closes_is_told_so() -> None:
    broadcast = Broadcast()
    subscription = broadcast.subscribe("sink")
    outcome: list[type[BaseException]] = []

    async def read() -> None:
        try:
            await subscription.receive()
        except trio.ClosedResourceError as exc:
            outcome.append(type(exc))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            subscription.close()
    assert outcome == [trio.ClosedResourceError]


def test_drops_of_one_subscriber_s_several_subscriptions_add_up() -> None:
    broadcast = Broadcast()
    first = broadcast.subscribe("plugin", size=1)
    second = broadcast.subscribe("plugin", size=2)
    for _ in range(4):
        broadcast.publish(StateChanged(State.IDLE, State.LISTENING, 1))
    assert (first.dropped, second.dropped) == (3, 2)
    assert broadcast.dropped() == {"plugin": 5}


def test_a_closed_subscription_is_forgotten() -> None:
    """A reader that went away (an SSE client) leaves nothing behind."""
    broadcast = Broadcast()
    kept = broadcast.subscribe("kept")
    gone = broadcast.subscribe("gone")
    gone.close()
    broadcast.publish(StateChanged(State.IDLE, State.LISTENING, 1))
    assert broadcast.dropped() == {"kept": 0}
    assert kept.dropped == 0
