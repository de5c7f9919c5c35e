"""Deribit API v2 over WebSocket (www.deribit.com)."""

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

CONNECTIONS_DOC = "https://docs.deribit.com/articles/connection-management-best-practices"
ACCESS_SCOPE_DOC = "https://docs.deribit.com/articles/access-scope"
RATE_LIMITS_DOC = "https://support.deribit.com/hc/en-us/articles/25944617523357-Rate-Limits"
HEARTBEAT_DOC = "https://docs.deribit.com/api-reference/session-management/public-set_heartbeat"

PROFILE = ExchangeProfile(
    name="deribit",
    displayName="Deribit",
    # HTTP and WebSocket count against the same 32 connections per IP: one domain for both.
    domain="www.deribit.com",
    # Production URL is seen in client code only; the test host is in the official docs.
    endpoint="wss://www.deribit.com/ws/api/v2",
    dialect=Dialect.DERIBIT,
    limits=[
        # New-connection rate: not published.
        Limit(
            name=LimitName.CONNECTION_ATTEMPTS,
            value=16,
            windowSeconds=60,
            scope=LimitScope.IP,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.ASSUMED,
            source=CONNECTIONS_DOC,
            note="Not published. Assumed 16 per minute per IP: half the 32 concurrent "
            "connections, so a full reconnect takes two minutes at most.",
        ),
        # 32 simultaneous connections per IP, HTTP requests in flight included; the 33rd gets
        # HTTP 429 -- CONNECTIONS_DOC.
        Limit(
            name=LimitName.CONCURRENT_CONNECTIONS,
            value=32,
            scope=LimitScope.IP,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.PUBLISHED,
            source=CONNECTIONS_DOC,
            note="HTTP requests in flight count too: keep back a share for REST traffic with "
            "the pool's reserved fraction.",
        ),
        # At most 16 sessions per API key (session:name scope) -- ACCESS_SCOPE_DOC.
        Limit(
            name=LimitName.CONCURRENT_CONNECTIONS,
            value=16,
            scope=LimitScope.API_KEY,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.PUBLISHED,
            source=ACCESS_SCOPE_DOC,
            note="16 named sessions per API key (a credential's keyId; credits count per "
            "sub-account, its accountId); connection-scoped auth is not counted, but every "
            "authenticated connection is planned against 16 (conservative).",
        ),
        # Subscriptions per connection: not published.
        Limit(
            name=LimitName.STREAMS_PER_CONNECTION,
            value=200,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.ASSUMED,
            source=CONNECTIONS_DOC,
            note="Not published. Assumed 200 channels per connection.",
        ),
        # Messages per connection: only per-sub-account credits are published.
        Limit(
            name=LimitName.MESSAGES_PER_CONNECTION,
            value=20,
            windowSeconds=1,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.ASSUMED,
            source=RATE_LIMITS_DOC,
            note="Not published per connection. Assumed the per-account sustained rate (20 "
            "requests/s), which no single connection may exceed anyway.",
        ),
        # Credits per sub-account: 500 per request, 50,000 max, refill 10,000/s -> about 20
        # requests/s with a burst of 100 -- RATE_LIMITS_DOC.
        Limit(
            name=LimitName.MESSAGES_PER_ACCOUNT,
            value=20,
            windowSeconds=1,
            burst=100,
            scope=LimitScope.ACCOUNT,
            shape=LimitShape.TOKEN_BUCKET,
            confidence=Confidence.PUBLISHED,
            source=RATE_LIMITS_DOC,
            note="Non-matching-engine requests. Out of credits: error 10028 and the session is "
            "terminated. Matching-engine limits are tiered by volume.",
        ),
        # Connection lifetime: not published.
        Limit(
            name=LimitName.MAX_CONNECTION_AGE,
            value=86400,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.DURATION,
            confidence=Confidence.ASSUMED,
            source=CONNECTIONS_DOC,
            note="Not published. Assumed 24 h: one rotation per connection per day.",
        ),
    ],
    # Opt-in public/set_heartbeat (interval >= 10 s); the server then sends test_request and the
    # client must answer with public/test or be closed -- HEARTBEAT_DOC.
    heartbeat=Heartbeat(
        direction=HeartbeatDirection.SERVER_PING,
        intervalSeconds=30,
        timeoutSeconds=60,
        countsAsMessage=True,
    ),
    connectTimeoutSeconds=10,
    deadConnectionTimeoutSeconds=120,
    notes="Heartbeats are opt-in: call public/set_heartbeat (>= 10 s) after connecting. 8 API "
    "keys per (sub)account, 20 sub-accounts. Test host: wss://test.deribit.com/ws/api/v2.",
)
