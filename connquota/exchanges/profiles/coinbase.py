"""Coinbase Advanced Trade market-data WebSocket (advanced-trade-ws.coinbase.com)."""

from __future__ import annotations

from connquota.api.limits import (
    Confidence,
    Dialect,
    ExchangeProfile,
    Heartbeat,
    HeartbeatDirection,
    Limit,
    LimitName,
    LimitScope,
    LimitShape,
)

APP_RATE_DOC = (
    "https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-rate-limits"
)
BUSINESS_RATE_DOC = (
    "https://docs.cdp.coinbase.com/coinbase-business/advanced-trade-apis/websocket/"
    "websocket-rate-limits"
)
OVERVIEW_DOC = (
    "https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-overview"
)
HEARTBEATS_DOC = (
    "https://docs.cdp.coinbase.com/api-reference/advanced-trade-api/websocket/heartbeats.md"
)

PROFILE = ExchangeProfile(
    name="coinbase",
    displayName="Coinbase Advanced Trade",
    # The user-order host (advanced-trade-ws-user.coinbase.com) may or may not share the per-IP
    # budgets; unclear, so use one domain for both.
    domain="advanced-trade-ws.coinbase.com",
    endpoint="wss://advanced-trade-ws.coinbase.com",
    # "User Order Data Endpoint": the user channel (JWT per message) and heartbeats.
    privateEndpoint="wss://advanced-trade-ws-user.coinbase.com",
    dialect=Dialect.COINBASE,
    limits=[
        # 8 connections per second per IP (APP_RATE_DOC) vs 750 per second (BUSINESS_RATE_DOC):
        # the official pages conflict; take the conservative 8/s.
        Limit(
            name=LimitName.CONNECTION_ATTEMPTS,
            value=8,
            windowSeconds=1,
            scope=LimitScope.IP,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.PUBLISHED,
            source=APP_RATE_DOC,
            note="Sources conflict: coinbase-app page 8/s, coinbase-business page 750/s "
            f"({BUSINESS_RATE_DOC}); an older beta page said 1 every 4 s. The conservative "
            "current figure, 8/s, is taken.",
        ),
        # Unauthenticated messages: 8 per second per IP -- APP_RATE_DOC.
        Limit(
            name=LimitName.MESSAGES_PER_IP,
            value=8,
            windowSeconds=1,
            scope=LimitScope.IP,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.PUBLISHED,
            source=APP_RATE_DOC,
            note="The older page said 100 messages/s; the current pages say 8/s (taken).",
        ),
        # Concurrent connections: not published.
        Limit(
            name=LimitName.CONCURRENT_CONNECTIONS,
            value=50,
            scope=LimitScope.IP,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.ASSUMED,
            source=APP_RATE_DOC,
            note="Not published. Assumed 50 per IP: every connection must subscribe within 5 s "
            "and messages are capped at 8/s per IP, so a few connections per IP is all a "
            "fleet can set up quickly.",
        ),
        # Streams (product x channel) per connection: not published.
        Limit(
            name=LimitName.STREAMS_PER_CONNECTION,
            value=100,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.ASSUMED,
            source=OVERVIEW_DOC,
            note="Not published (one channel per subscribe message; product_ids list length not "
            "published). Assumed 100 streams.",
        ),
        # Messages per connection: only the per-IP 8/s is published.
        Limit(
            name=LimitName.MESSAGES_PER_CONNECTION,
            value=8,
            windowSeconds=1,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.ASSUMED,
            source=APP_RATE_DOC,
            note="Not published per connection. Assumed the per-IP 8/s, which already bounds "
            "any one connection.",
        ),
        # Connection lifetime: not published.
        Limit(
            name=LimitName.MAX_CONNECTION_AGE,
            value=86400,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.DURATION,
            confidence=Confidence.ASSUMED,
            source=OVERVIEW_DOC,
            note="Not published. Assumed 24 h: one rotation per connection per day.",
        ),
    ],
    # No client ping op: subscribe to `heartbeats` (one message per second); most channels close
    # within 60-90 s without updates -- HEARTBEATS_DOC.
    heartbeat=Heartbeat(
        direction=HeartbeatDirection.SERVER_HEARTBEAT,
        intervalSeconds=1,
        timeoutSeconds=60,
        countsAsMessage=False,
    ),
    connectTimeoutSeconds=10,
    deadConnectionTimeoutSeconds=90,
    notes="Send subscribe within 5 s of connecting or be disconnected. One channel per "
    "subscribe message. Auth: a JWT in each subscribe message, valid 2 minutes. User orders: "
    "wss://advanced-trade-ws-user.coinbase.com. (Coinbase Exchange, a different product: 8 "
    "req/s burst 20 per IP; 10 subscriptions per product-channel per account.)",
)
