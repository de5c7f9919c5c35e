"""Prometheus metrics of one gateway, read from its live state at scrape time (own registry).

Metric names (all prefixed `connquota_gateway_`):

- `connections{scope,key}` and `connection_slice{scope,key}`: connections at once per address
  (ip) and account, against the pod's slice; `limit{name,scope}`: the profile's limit values;
- `attempts_in_window{scope,key}` and `attempt_slice{scope,key}`: attempts still counted in
  the sliding log, against the slice; `attempts_total{scope,key}`: attempts granted;
- `messages_in_total`, `messages_out_total{kind}` (control, heartbeat);
- `reconnects_total{reason}`, `rate_limited_total{status}`, `quarantines{scope,key}`;
- `exchange_frames_dropped_total{reason}`, `book_checksum_mismatches_total`;
- `limiter_waits_total{reason}`: times a caller had to wait for a slice;
- `streams{state}` (desired, live), `connections_planned`, `plan_generation`;
- `consumers`, `consumer_frames_out_total`, `consumer_frames_dropped_total`,
  `slow_consumers_total`, `consumer_requests_refused_total{endpoint,reason}` (every error
  answer to a consumer: /v1/ws codes, native-protocol refusals, refused connections);
- `event_loop_lag_seconds`, `last_upstream_data_age_seconds`;
- `egress_check{address,state}`: 1 for each address's last egress check state (verified,
  mismatch, failed, unverified; see docs/egress.md), `egress_check_requests_total`: requests
  sent to IP-echo services (none of them to the exchange);
- `proxy_faults_total{address,kind}`, `proxy_fault{address,kind}` (1 while unresolved) and
  `proxy_attempts_total{address,outcome}` (`opened` or the fault kind) for proxy-mode
  addresses (kinds: unreachable, auth-refused, credentials-unreadable, upstream-refused,
  upstream-timeout, protocol, tunnel-closed);
- `delivery_seconds` (histogram): from the moment the gateway published an exchange message to
  its write to a consumer's socket, for the oldest frame of each write (a frame written in the
  step that published it, to a consumer with nothing queued, counts as 0);
- `lease_held` (1 while this pod holds its ordinal's Lease), and for a Kubernetes Lease
  `lease_duration_seconds` and `lease_last_renewal_timestamp_seconds` (wall-clock time the last
  successful renewal was sent: the alert on a Lease that stopped renewing reads it).

No label carries a secret: keys are address names and account ids from the plan.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from connquota.gateway.app import Gateway

P = "connquota_gateway_"
DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayCollector(Collector):
    """Reads the gateway's limiter, fleet and hub when Prometheus scrapes."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def collect(self) -> Iterator[Metric]:
        """Every metric of the module docstring."""
        gw = self.gw
        limiter, hub, stats = gw.limiter, gw.hub, gw.ctx.stats
        conns = GaugeMetricFamily(P + "connections", "Connections at once", labels=["scope", "key"])
        conn_slice = GaugeMetricFamily(
            P + "connection_slice", "Slice of connections at once", labels=["scope", "key"]
        )
        in_window = GaugeMetricFamily(
            P + "attempts_in_window", "Attempts in the sliding log", labels=["scope", "key"]
        )
        att_slice = GaugeMetricFamily(
            P + "attempt_slice", "Slice of attempts per window", labels=["scope", "key"]
        )
        for row in limiter.usage():
            labels = [row["scope"], row["key"]]
            conns.add_metric(labels, row["connections"])
            in_window.add_metric(labels, row["attemptsInWindow"])
            if row["connectionSlice"] is not None:
                conn_slice.add_metric(labels, row["connectionSlice"])
            if row["attemptSlice"] is not None:
                att_slice.add_metric(labels, row["attemptSlice"])
        yield from (conns, conn_slice, in_window, att_slice)
        limit = GaugeMetricFamily(
            P + "limit", "The profile's limit value", labels=["name", "scope"]
        )
        if limiter.plan is not None:
            for lim in limiter.plan.profile.limits:
                limit.add_metric([str(lim.name), str(lim.scope)], lim.value)
        yield limit
        attempts = CounterMetricFamily(
            P + "attempts", "Attempts granted by the limiter", labels=["scope", "key"]
        )
        for (scope, key), n in limiter.stats.attempts.items():
            attempts.add_metric([scope, key], n)
        yield attempts
        waits = CounterMetricFamily(P + "limiter_waits", "Waits for a slice", labels=["reason"])
        for reason, n in limiter.stats.waits.items():
            waits.add_metric([reason], n)
        yield waits
        m_in = CounterMetricFamily(P + "messages_in", "Text messages from the exchange")
        m_in.add_metric([], gw.ctx.text_in)
        yield m_in
        m_out = CounterMetricFamily(P + "messages_out", "Messages sent upstream", labels=["kind"])
        for kind, n in limiter.stats.messages.items():
            m_out.add_metric([kind], n)
        yield m_out
        reconnects = CounterMetricFamily(
            P + "reconnects", "Sessions ended or failed, by reason", labels=["reason"]
        )
        limited = CounterMetricFamily(
            P + "rate_limited", "429/418 answers from the exchange", labels=["status"]
        )
        dropped = CounterMetricFamily(
            P + "exchange_frames_dropped",
            "Frames from the exchange not delivered: error answers, unrecognised or binary frames",
            labels=["reason"],
        )
        refused = CounterMetricFamily(
            P + "consumer_requests_refused",
            "Consumer requests and connections refused (bad JSON, unknown op or stream, too many "
            "requests or streams, a bad URL, a missing token), by endpoint (v1, native)",
            labels=["endpoint", "reason"],
        )
        for stat, n in stats.items():
            if stat[0] == "consumer_refused":
                refused.add_metric([stat[1], stat[2]], n)
            elif stat[0] == "reconnect":
                reconnects.add_metric([stat[1]], n)
            elif stat[0] == "rate_limited":
                limited.add_metric([stat[1]], n)
            elif stat[0] == "dropped":
                dropped.add_metric([stat[1]], n)
        yield reconnects
        yield limited
        yield dropped
        yield refused
        mismatches = CounterMetricFamily(
            P + "book_checksum_mismatches",
            "Order-book checksums that disagreed with the merged book (the replay is dropped)",
        )
        mismatches.add_metric([], hub.books.diverged)
        yield mismatches
        quarantines = GaugeMetricFamily(
            P + "quarantines", "Quarantines in force (1)", labels=["scope", "key"]
        )
        for q in limiter.quarantines():
            quarantines.add_metric([str(q.scope), q.key], 1)
        yield quarantines
        streams = GaugeMetricFamily(P + "streams", "Streams by state", labels=["state"])
        streams.add_metric(["desired"], gw.fleet.desired_streams())
        streams.add_metric(["live"], gw.fleet.live_streams())
        yield streams
        planned = GaugeMetricFamily(P + "connections_planned", "Connections in the plan")
        planned.add_metric([], len(gw.fleet.connections))
        yield planned
        generation = GaugeMetricFamily(P + "plan_generation", "Plan generation enforced")
        generation.add_metric([], gw.fleet.enforced_generation or 0)
        yield generation
        consumers = GaugeMetricFamily(P + "consumers", "Local consumers connected")
        consumers.add_metric([], len(hub.consumers))
        yield consumers
        frames = CounterMetricFamily(P + "consumer_frames_out", "Frames queued to consumers")
        frames.add_metric([], hub.frames_out)
        yield frames
        dropped = CounterMetricFamily(
            P + "consumer_frames_dropped", "Oldest frames dropped for slow consumers (policy drop)"
        )
        dropped.add_metric([], hub.frames_dropped())
        yield dropped
        slow = CounterMetricFamily(P + "slow_consumers", "Consumers closed for being too slow")
        slow.add_metric([], gw.slow_consumers)
        yield slow
        lag = GaugeMetricFamily(P + "event_loop_lag_seconds", "Event-loop lag, last sample")
        lag.add_metric([], gw.loop_lag_s)
        yield lag
        age = GaugeMetricFamily(
            P + "last_upstream_data_age_seconds", "Seconds since the last upstream data"
        )
        if hub.last_data_mono is not None:
            age.add_metric([], time.monotonic() - hub.last_data_mono)
        yield age
        egress = GaugeMetricFamily(
            P + "egress_check",
            "1 for each address's last egress check state",
            labels=["address", "state"],
        )
        for result in gw.egress.results():
            egress.add_metric([result.address, result.state.value], 1)
        yield egress
        echo = CounterMetricFamily(
            P + "egress_check_requests", "Requests sent to IP-echo services (never the exchange)"
        )
        echo.add_metric([], gw.egress.echo_requests)
        yield echo
        proxy_faults = CounterMetricFamily(
            P + "proxy_faults",
            "Faults of each proxy-mode address's proxy, by kind",
            labels=["address", "kind"],
        )
        proxy_attempts = CounterMetricFamily(
            P + "proxy_attempts",
            "Exchange attempts sent through each address's proxy, by outcome",
            labels=["address", "outcome"],
        )
        proxy_down = GaugeMetricFamily(
            P + "proxy_fault",
            "1 while an address's proxy has an unresolved fault of this kind",
            labels=["address", "kind"],
        )
        for name, health in sorted(gw.egress.proxies.items()):
            for kind, n in sorted(health.faults.items()):
                proxy_faults.add_metric([name, kind], n)
            for outcome, n in sorted(health.attempts.items()):
                proxy_attempts.add_metric([name, outcome], n)
            if health.last_kind is not None:
                proxy_down.add_metric([name, health.last_kind.value], 1)
        yield proxy_faults
        yield proxy_attempts
        yield proxy_down
        yield from _lease_metrics(gw)


def _lease_metrics(gw: Gateway) -> Iterator[Metric]:
    lease = gw.lease
    held = GaugeMetricFamily(P + "lease_held", "1 while this pod holds its ordinal's Lease")
    held.add_metric([], 1.0 if lease.held else 0.0)
    dur = GaugeMetricFamily(P + "lease_duration_seconds", "The Lease's duration")
    last = GaugeMetricFamily(
        P + "lease_last_renewal_timestamp_seconds",
        "Wall-clock time the last successful Lease renewal was sent",
    )
    # A file lock (local runs) is never renewed: both stay empty.
    duration = getattr(lease, "duration_s", None)
    renewed = getattr(lease, "last_renew_mono", None)
    if duration is not None:
        dur.add_metric([], float(duration))
    if renewed:
        last.add_metric([], time.time() - (time.monotonic() - renewed))
    yield from (held, dur, last)


class DeliveryHistogram(Collector):
    """The delivery latency histogram of one gateway, counted in plain integers (a frame costs
    a few microseconds of gateway CPU per consumer: prometheus-client's Histogram takes a lock
    per observation) and exposed as a Prometheus histogram at scrape time."""

    def __init__(self, buckets: tuple[float, ...] = DELIVERY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        """Observations per bucket (not cumulative); the last one is +Inf."""
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds

    def observe_immediate(self) -> None:
        """One frame written in the step that published it (0 s)."""
        self.counts[0] += 1

    def collect(self) -> Iterator[Metric]:
        cumulative, running = [], 0
        for le, n in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += n
            cumulative.append((le, running))
        yield HistogramMetricFamily(
            P + "delivery_seconds",
            "Publish of an exchange message to its write to a consumer (oldest frame of each "
            "write; 0 for a frame written as it was published)",
            buckets=cumulative,
            sum_value=self.sum,
        )


def delivery_histogram() -> DeliveryHistogram:
    """The delivery latency histogram of one gateway (registered by `make_registry`)."""
    return DeliveryHistogram()


def make_registry(gateway: Gateway) -> CollectorRegistry:
    """A registry of its own holding the gateway collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    registry.register(gateway.delivery_seconds)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format."""
    return generate_latest(registry)
