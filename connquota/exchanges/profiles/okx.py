"""OKX v5 public WebSocket (ws.okx.com)."""

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

CONNECT_DOC = "https://www.okx.com/docs-v5/en/#overview-websocket-connect"
SUBSCRIBE_DOC = "https://www.okx.com/docs-v5/en/#overview-websocket-subscribe"

PROFILE = ExchangeProfile(
    name="okx",
    displayName="OKX v5",
    # Public, private and business paths share the host and its per-IP connect rate.
    domain="ws.okx.com",
    endpoint="wss://ws.okx.com:8443/ws/v5/public",
    dialect=Dialect.OKX,
    limits=[
        # 3 connection requests per second per IP -- CONNECT_DOC.
        Limit(
            name=LimitName.CONNECTION_ATTEMPTS,
            value=3,
            windowSeconds=1,
            scope=LimitScope.IP,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.PUBLISHED,
            source=CONNECT_DOC,
        ),
        # No published cap on concurrent connections per IP.
        Limit(
            name=LimitName.CONCURRENT_CONNECTIONS,
            value=100,
            scope=LimitScope.IP,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.ASSUMED,
            source=CONNECT_DOC,
            note="Not published. Assumed 100 per IP: at 3 attempts/s a full reconnect takes "
            "about 34 s.",
        ),
        # 30 connections per private channel per sub-account; over it, new subscriptions get
        # channel-conn-count-error -- CONNECT_DOC §Connection count limit.
        Limit(
            name=LimitName.CONCURRENT_CONNECTIONS,
            value=30,
            scope=LimitScope.ACCOUNT,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.PUBLISHED,
            source=CONNECT_DOC,
            note="Counted per private channel (orders, account, positions, balance_and_position, "
            "liquidation-warning, account-greeks) per sub-account; planned as 30 connections per "
            "account in total, which is stricter.",
        ),
        # Streams per connection: not published.
        Limit(
            name=LimitName.STREAMS_PER_CONNECTION,
            value=200,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.ASSUMED,
            source=SUBSCRIBE_DOC,
            note="Not published (only the 64 KB subscribe payload is). Assumed 200.",
        ),
        # Messages per connection other than subscribe/login: not published.
        Limit(
            name=LimitName.MESSAGES_PER_CONNECTION,
            value=5,
            windowSeconds=1,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.ASSUMED,
            source=CONNECT_DOC,
            note="Not published. Assumed 5 messages/s (Binance's figure): pings are sent at most "
            "every 25 s, so this only paces bursts.",
        ),
        # 480 subscribe/unsubscribe/login requests per hour per connection -- CONNECT_DOC.
        Limit(
            name=LimitName.CONTROL_MESSAGES_PER_CONNECTION,
            value=480,
            windowSeconds=3600,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.PUBLISHED,
            source=CONNECT_DOC,
        ),
        # Total length of channels in one subscribe <= 64 KB (official); older SDKs cite 4096
        # bytes -- SUBSCRIBE_DOC.
        Limit(
            name=LimitName.SUBSCRIBE_PAYLOAD_BYTES,
            value=4096,
            scope=LimitScope.MESSAGE,
            shape=LimitShape.SIZE,
            confidence=Confidence.SECONDARY,
            source=SUBSCRIBE_DOC,
            note="Sources conflict: the official page says 64 KB, older SDKs (crypto-ws-client) "
            "4096 bytes. The conservative 4096 is taken.",
        ),
        # Connection lifetime: not published.
        Limit(
            name=LimitName.MAX_CONNECTION_AGE,
            value=86400,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.DURATION,
            confidence=Confidence.ASSUMED,
            source=CONNECT_DOC,
            note="Not published. Assumed 24 h (Binance's and KuCoin's figure): rotating daily "
            "costs one attempt per connection per day; an earlier drop is an ordinary reconnect.",
        ),
    ],
    # Client sends the text 'ping' when idle for less than 30 s; 30 s without data -> close.
    # -- CONNECT_DOC
    heartbeat=Heartbeat(
        direction=HeartbeatDirection.CLIENT_PING,
        intervalSeconds=25,
        timeoutSeconds=30,
        countsAsMessage=True,
    ),
    connectTimeoutSeconds=10,
    deadConnectionTimeoutSeconds=30,
    notes="A connection with no subscription within 30 s of connecting is closed. Login per "
    "connection counts toward the 480/h budget; the signed timestamp expires after 30 s. "
    "Private: /ws/v5/private, business: /ws/v5/business; EEA host wseea.okx.com, demo "
    "wspap.okx.com.",
)
