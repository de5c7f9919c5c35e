"""Kraken spot WebSocket v2 (ws.kraken.com)."""

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

INTRO_DOC = "https://docs.kraken.com/exchange/guides/websockets/introduction"
HEARTBEAT_DOC = "https://docs.kraken.com/api/docs/websocket-v2/heartbeat/"
HANDSHAKE_429 = "https://github.com/knowm/XChange/issues/3733"
MSG_RATE = "https://github.com/bitrich-info/xchange-stream/issues/502"

PROFILE = ExchangeProfile(
    name="kraken",
    displayName="Kraken spot (WebSocket v2)",
    # Public and private (ws-auth.kraken.com) hosts sit behind the same Cloudflare front; whether
    # they share budgets is unknown, so they are one domain.
    domain="ws.kraken.com",
    endpoint="wss://ws.kraken.com/v2",
    # Private channels (executions, balances) on ws-auth, each subscribe carrying the token
    # from REST GetWebSocketsToken -- docs/exchange-dialects.md (Kraken private).
    privateEndpoint="wss://ws-auth.kraken.com/v2",
    dialect=Dialect.KRAKEN,
    limits=[
        # No published connection rate; handshakes go through Cloudflare, which answers 429 --
        # HANDSHAKE_429 (Kraken support quoted in an issue thread).
        Limit(
            name=LimitName.CONNECTION_ATTEMPTS,
            value=20,
            windowSeconds=60,
            scope=LimitScope.IP,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.ASSUMED,
            source=HANDSHAKE_429,
            note="Not published; Cloudflare answers floods with 429. Assumed 20 per minute per "
            "IP (Bitfinex's published public figure).",
        ),
        # No published concurrent-connection cap.
        Limit(
            name=LimitName.CONCURRENT_CONNECTIONS,
            value=50,
            scope=LimitScope.IP,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.ASSUMED,
            source=INTRO_DOC,
            note="Not published. Assumed 50 per IP: reopenable within 3 minutes at the assumed "
            "attempt rate.",
        ),
        # No published streams-per-connection cap.
        Limit(
            name=LimitName.STREAMS_PER_CONNECTION,
            value=100,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.ASSUMED,
            source=INTRO_DOC,
            note="Not published. Assumed 100 symbol-channel streams per connection.",
        ),
        # No fixed published message rate; the server answers "Exceeded msg rate" -- MSG_RATE.
        Limit(
            name=LimitName.MESSAGES_PER_CONNECTION,
            value=2,
            windowSeconds=1,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.ASSUMED,
            source=MSG_RATE,
            note="Not published (dynamic; the server replies 'Exceeded msg rate'). Assumed 2 "
            "messages/s: subscribe requests carry symbol lists and heartbeats come from the "
            "server, so clients need few messages.",
        ),
        # Connection lifetime: not published.
        Limit(
            name=LimitName.MAX_CONNECTION_AGE,
            value=86400,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.DURATION,
            confidence=Confidence.ASSUMED,
            source=INTRO_DOC,
            note="Not published. Assumed 24 h: one rotation per connection per day.",
        ),
    ],
    # Server heartbeat about every second without other traffic, once subscribed -- HEARTBEAT_DOC.
    heartbeat=Heartbeat(
        direction=HeartbeatDirection.SERVER_HEARTBEAT,
        intervalSeconds=1,
        timeoutSeconds=10,
        countsAsMessage=False,
    ),
    connectTimeoutSeconds=10,
    deadConnectionTimeoutSeconds=60,
    notes="Every number here is assumed: Kraken publishes no WebSocket connection, subscription "
    "or message-rate limits. Private: wss://ws-auth.kraken.com/v2 with a REST-issued token "
    "(use within 15 min; valid while a private subscription stays active). Clients may send "
    '{"method":"ping"}.',
)
