"""The ``http`` plugin's ``/metrics``: a registry of its own (never prometheus_client's global one)
whose counters and histograms are fed by the daemon's events, and a collector that reads the
devices' and the socket's own counts from ``daemon.status()`` at each scrape. prometheus_client is
imported only once the plugin runs (here, inside ``Metrics`` and the collector).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import trio

from voiced import Daemon
from voiced.events import ConnectionChanged, Event, TokensUsed, TurnEnded
from voiced.turn import Outcome

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Histogram buckets (seconds) of the turn latencies: a 5 ms commit to a 5 s first answer."""
SHOWN_STATES = ("idle", "listening", "thinking", "speaking", "error", "offline")


class Metrics:
    """The ``/metrics`` registry: counters and histograms fed by events, and the status read at
    scrape time. A registry of its own: never prometheus_client's global one."""

    def __init__(self, daemon: Daemon) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

        self.registry = registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=registry)  # process_*: CPU, memory, open files
        self.turns = Counter(
            "voiced_turns", "Turns ended, by outcome.", ["outcome"], registry=registry
        )
        for outcome in Outcome:
            self.turns.labels(str(outcome))
        self.latency = Histogram(
            "voiced_latency_seconds",
            "Turn latencies: commit (the press that ends listening to the commit on the wire), "
            "first_audio (commit to the first reply audio), first_play (that audio to the "
            "speaker).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for stage in ("commit", "first_audio", "first_play"):
            self.latency.labels(stage)
        self.tokens = Counter(
            "voiced_tokens", "Tokens the replies used.", ["direction", "kind"], registry=registry
        )
        for direction, kind in _TOKEN_KINDS:
            self.tokens.labels(direction, kind)
        self.renewals = Counter(
            "voiced_session_renewals", "Sessions renewed before they expired.", registry=registry
        )
        self.reconnects = Counter(
            "voiced_reconnects",
            "Connections to the realtime server that failed or were lost (each is retried).",
            registry=registry,
        )
        self.responses = Counter(
            "voiced_http_responses", "HTTP responses, by status code.", ["code"], registry=registry
        )
        self.dropped_clients = Counter(
            "voiced_http_events_clients_dropped",
            "/events clients dropped because they stopped reading.",
            registry=registry,
        )
        self.events_clients = 0
        self._status = _StatusCollector(daemon, self)
        registry.register(cast("Collector", self._status))

    async def follow(self, events: trio.abc.ReceiveChannel[Event]) -> None:
        async with events:
            async for event in events:
                self.take(event)

    def take(self, event: Event) -> None:
        if isinstance(event, TurnEnded):
            self.turns.labels(str(event.outcome)).inc()
            for stage, ms in event.latencies.items():
                self.latency.labels(stage).observe(ms / 1000)
        elif isinstance(event, TokensUsed):
            for direction, kind in _TOKEN_KINDS:
                used = getattr(event.usage, f"{direction}_{kind}")
                self.tokens.labels(direction, kind).inc(max(0, used))
        elif isinstance(event, ConnectionChanged) and not event.connected:
            (self.renewals if event.error is None else self.reconnects).inc()

    def scrape(self, accept: str) -> tuple[bytes, str]:
        """The exposition the scraper asked for (the text format unless it wants OpenMetrics),
        and its content type."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


_TOKEN_KINDS = (
    ("input", "text"),
    ("input", "audio"),
    ("input", "cached"),
    ("output", "text"),
    ("output", "audio"),
)
# fmt: off
_DEVICE_COUNTERS = (  # (status["audio"] role, its counter, the metric, its help, scale)
    ("input", "dropped_frames", "voiced_microphone_dropped_frames",
     "Microphone frames the pipeline did not take in time.", 1.0),
    ("input", "xruns", "voiced_microphone_xruns", "Microphone overruns.", 1.0),
    ("input", "reopens", "voiced_microphone_reopens", "Times the microphone was reopened.", 1.0),
    ("output", "underruns", "voiced_speaker_underruns", "Speaker underruns.", 1.0),
    ("output", "xruns", "voiced_speaker_xruns", "Speaker xruns.", 1.0),
    ("output", "dropped_ms", "voiced_speaker_dropped_seconds",
     "Reply audio dropped while the speaker was away.", 0.001),
    ("output", "reopens", "voiced_speaker_reopens", "Times the speaker was reopened.", 1.0),
)
# fmt: on


class _StatusCollector:
    """What the devices and the socket count themselves, read from ``daemon.status()`` at each
    scrape."""

    def __init__(self, daemon: Daemon, metrics: Metrics) -> None:
        self._daemon = daemon
        self._metrics = metrics
        self._started = trio.current_time()

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self._daemon.status()
        link = status.get("connection", {})
        for key, about in (
            ("connects", "Connections made to the realtime server."),
            ("events_sent", "Events sent to the realtime server."),
            ("malformed", "Server frames voiced could not read, ignored."),
            ("events_received", "Events received from the realtime server."),
        ):
            if key in link:
                yield CounterMetricFamily(f"voiced_{key}", about, value=link[key])
        yield GaugeMetricFamily(
            "voiced_connected",
            "Connected to the realtime server (1) or not.",
            value=float(bool(status.get("connected"))),
        )
        yield GaugeMetricFamily(
            "voiced_ready", "Ready for a turn (1) or not.", value=float(bool(status.get("ready")))
        )
        shown = (status.get("shown") or {}).get("state")
        state = GaugeMetricFamily(
            "voiced_state", "What the daemon shows: 1 for the current state.", labels=["state"]
        )
        for name in SHOWN_STATES:
            state.add_metric([name], float(name == shown))
        yield state
        audio = status.get("audio", {})
        for role, key, name, about, scale in _DEVICE_COUNTERS:
            value = audio.get(role, {}).get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield CounterMetricFamily(name, about, value=value * scale)
        volume = audio.get("output", {}).get("volume")
        if isinstance(volume, int | float):
            yield GaugeMetricFamily(
                "voiced_speaker_volume", "Speaker volume, 0 to 1.", value=volume
            )
        ignored = CounterMetricFamily(
            "voiced_server_events_ignored",
            "Server events not believed: they contradicted the turn in flight.",
            labels=["why"],
        )
        for why, count in status.get("ignored", {}).items():
            ignored.add_metric([why], count)
        yield ignored
        dropped = CounterMetricFamily(
            "voiced_sink_events_dropped",
            "Events dropped because a sink did not keep up.",
            labels=["sink"],
        )
        for sink, counts in status.get("sinks", {}).items():
            dropped.add_metric([sink], counts.get("dropped", 0))
        yield dropped
        yield GaugeMetricFamily(
            "voiced_uptime_seconds",
            "Seconds the daemon has been running (since its control API started).",
            value=trio.current_time() - self._started,
        )
        yield GaugeMetricFamily(
            "voiced_http_events_clients",
            "/events streams open.",
            value=self._metrics.events_clients,
        )
