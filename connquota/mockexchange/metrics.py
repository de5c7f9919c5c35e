"""Prometheus metrics of one mock exchange (a registry per instance, so tests can run many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class MockMetrics:
    """The counters and gauges ``/metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tcp_accepted = Counter(
            "mockexchange_tcp_accepted",
            "TCP connections accepted, by source IP",
            ["ip"],
            registry=r,
        )
        self.attempts = Counter(
            "mockexchange_connection_attempts",
            "Connection attempts counted against connectionAttempts (handshakes and TCP "
            "connections that never sent a request), by source IP",
            ["ip"],
            registry=r,
        )
        self.connections_open = Gauge(
            "mockexchange_connections_open",
            "Open exchange connections, by source IP",
            ["ip"],
            registry=r,
        )
        self.websockets_opened = Counter(
            "mockexchange_websockets_opened", "WebSocket connections opened", registry=r
        )
        self.handshake_refusals = Counter(
            "mockexchange_handshake_refusals",
            "Handshakes refused, by HTTP status",
            ["status"],
            registry=r,
        )
        self.violations = Counter(
            "mockexchange_violations",
            "Limit violations, by limit and scope",
            ["limit", "scope"],
            registry=r,
        )
        self.bans = Counter("mockexchange_ip_bans", "IP bans imposed", registry=r)
        self.server_closes = Counter(
            "mockexchange_server_closes",
            "Connections closed by the server, by close code",
            ["code"],
            registry=r,
        )
        self.frames_received = Counter(
            "mockexchange_frames_received",
            "Frames received from clients (pings and pongs included)",
            registry=r,
        )
        self.data_sent = Counter(
            "mockexchange_data_messages_sent", "Market-data messages queued to clients", registry=r
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
