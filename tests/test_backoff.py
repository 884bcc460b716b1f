"""The reconnect backoff: delays, jitter, when it resets, and which failures are news."""

from __future__ import annotations

import pytest

from voiced.backoff import Backoff, Retry


def never_jitter() -> float:
    return 0.0


def most_jitter() -> float:
    return 1.0


def test_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(start=0.5, cap=5.0, random=never_jitter)
    delays = [backoff.failed(float(t), "down").delay for t in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


@pytest.mark.parametrize("jitter", [0.0, 0.2, 0.5, 1.0])
def test_jitter_only_shortens_a_delay_and_by_at_most_its_fraction(jitter: float) -> None:
    nominal = [0.5, 1.0, 2.0, 4.0, 4.0]
    for random in (never_jitter, most_jitter, lambda: 0.5):
        backoff = Backoff(start=0.5, cap=4.0, jitter=jitter, random=random)
        for t, delay in enumerate(nominal):
            got = backoff.failed(float(t), "down").delay
            assert delay * (1 - jitter) <= got <= delay
    full = Backoff(start=0.5, cap=4.0, jitter=jitter, random=most_jitter)
    assert full.failed(0.0, "down").delay == pytest.approx(0.5 * (1 - jitter))


def test_jitter_differs_between_kiosks() -> None:
    a = Backoff(start=1.0, jitter=0.2, random=never_jitter)
    b = Backoff(start=1.0, jitter=0.2, random=lambda: 0.5)
    assert (a.failed(0.0, "down").delay, b.failed(0.0, "down").delay) == (1.0, 0.9)


@pytest.mark.parametrize(
    ("healthy_for", "delay", "news"),
    [
        (10.0, 0.5, True),  # worked for healthy_after: a new outage, from the start again
        (60.0, 0.5, True),
        (9.9, 4.0, False),  # accepted, then dropped at once: still the same outage
        (0.0, 4.0, False),
    ],
)
def test_reset_only_after_a_healthy_period(healthy_for: float, delay: float, news: bool) -> None:
    backoff = Backoff(start=0.5, cap=30.0, healthy_after=10.0, random=never_jitter)
    for t in range(3):  # 0.5, 1, 2
        backoff.failed(float(t), "refused")
    backoff.succeeded(100.0)
    assert backoff.failed(100.0 + healthy_for, "refused") == Retry(delay=delay, news=news)


def test_a_flapping_link_keeps_backing_off() -> None:
    backoff = Backoff(start=0.5, cap=8.0, healthy_after=10.0, random=never_jitter)
    delays = []
    now = 0.0
    for _ in range(6):
        retry = backoff.failed(now, "closed at once")
        delays.append(retry.delay)
        now += retry.delay
        backoff.succeeded(now)
        now += 1.0  # works for a second, then drops
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_healthy_period_counts_from_the_first_success() -> None:
    backoff = Backoff(start=0.5, healthy_after=10.0, random=never_jitter)
    backoff.failed(0.0, "down")
    backoff.failed(1.0, "down")
    backoff.succeeded(2.0)
    backoff.succeeded(11.0)  # still working: not a new start of health
    assert backoff.failed(12.0, "down") == Retry(delay=0.5, news=True)


def test_no_reset_without_a_success() -> None:
    backoff = Backoff(start=0.5, healthy_after=10.0, random=never_jitter)
    backoff.failed(0.0, "down")
    assert backoff.failed(1000.0, "down") == Retry(delay=1.0, news=False)


def test_news_only_for_distinct_failures_and_new_outages() -> None:
    backoff = Backoff(healthy_after=10.0, random=never_jitter)
    steps: list[tuple[str, float, str]] = [
        ("failed", 0.0, "refused"),
        ("failed", 1.0, "refused"),
        ("failed", 2.0, "timed out"),
        ("failed", 3.0, "timed out"),
        ("failed", 4.0, "refused"),
        ("succeeded", 5.0, ""),
        ("failed", 6.0, "refused"),  # a short success: the same outage
        ("failed", 7.0, "reset by peer"),
        ("succeeded", 8.0, ""),
        ("failed", 18.0, "reset by peer"),  # after a healthy period: a new outage
        ("failed", 19.0, "reset by peer"),
    ]
    news = []
    for what, now, why in steps:
        if what == "failed":
            news.append(backoff.failed(now, why).news)
        else:
            backoff.succeeded(now)
    assert news == [True, False, True, False, True, False, True, True, False]


def test_failing_is_the_last_failure_until_a_success() -> None:
    backoff = Backoff()
    seen = [backoff.failing]
    backoff.failed(0.0, "refused")
    seen.append(backoff.failing)
    backoff.failed(1.0, "timed out")
    seen.append(backoff.failing)
    backoff.succeeded(2.0)
    seen.append(backoff.failing)
    backoff.failed(3.0, "timed out")
    seen.append(backoff.failing)
    assert seen == [None, "refused", "timed out", None, "timed out"]


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"start": 0.0}, "start <= cap"),
        ({"start": 5.0, "cap": 1.0}, "start <= cap"),
        ({"healthy_after": -1.0}, "healthy_after"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
    ],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Backoff(**kwargs)  # type: ignore[arg-type]
