"""Real clients for mock-exchange tests: aiohttp and websockets bound to loopback addresses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import aiohttp

from connquota.exchanges.dialects import binance, bybit, coinbase, deribit, kraken, okx
from connquota.testing.waiting import wait_until  # noqa: F401 (tests import it from here)

DIALECTS = ["binance", "okx", "bybit", "kraken", "deribit", "coinbase"]
PROFILE_OF = {"binance": "binance-spot", "okx": "okx", "bybit": "bybit", "kraken": "kraken",
              "deribit": "deribit", "coinbase": "coinbase"}  # fmt: skip
WIRE: dict[str, ModuleType] = {"binance": binance, "okx": okx, "bybit": bybit, "kraken": kraken,
                               "deribit": deribit, "coinbase": coinbase}  # fmt: skip
PUBLIC_PATH = {"binance": "/stream", "okx": "/ws/v5/public", "bybit": "/v5/public/linear",
               "kraken": "/v2", "deribit": "/ws/api/v2",
               "coinbase": "/"}  # fmt: skip
PRIVATE_PATH = {"binance": "/ws-api/v3", "okx": "/ws/v5/private", "bybit": "/v5/private"}


def sample_streams(dialect: str, count: int, start: int = 0) -> list[str]:
    """``count`` distinct valid public streams of ``dialect``."""
    if dialect == "binance":
        return [f"sym{i}usdt@trade" for i in range(start, start + count)]
    if dialect == "okx":
        return [f"trades:SYM{i}-USDT" for i in range(start, start + count)]
    if dialect == "kraken":
        return [f"trade:SYM{i}/USD" for i in range(start, start + count)]
    if dialect == "coinbase":
        return [f"market_trades:SYM{i}-USD" for i in range(start, start + count)]
    if dialect == "deribit":
        return [f"trades.SYM{i}-PERPETUAL.100ms" for i in range(start, start + count)]
    return [f"publicTrade.SYM{i}USDT" for i in range(start, start + count)]


@asynccontextmanager
async def client_from(ip: str, ssl: Any = None) -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session whose connections leave from ``ip`` (one TCP connection per request)."""
    connector = aiohttp.TCPConnector(local_addr=(ip, 0), force_close=True, ssl=ssl if ssl else True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def handshake(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str]]:
    """Try a WebSocket handshake and close at once: (HTTP status, response headers)."""
    try:
        ws = await session.ws_connect(
            url, autoping=False, timeout=aiohttp.ClientWSTimeout(ws_close=1)
        )
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status, dict(exc.headers or {})
    await ws.close()
    return 101, {}


async def raw_tcp_touch(
    host: str, port: int, local_ip: str, keep_open: bool = False
) -> asyncio.StreamWriter:
    """Open a TCP connection from ``local_ip`` and send nothing (closed unless ``keep_open``)."""
    _, writer = await asyncio.open_connection(host, port, local_addr=(local_ip, 0))
    if not keep_open:
        writer.close()
        await writer.wait_closed()
    return writer


async def receive_text(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 3.0) -> str:
    """The next text frame (pings are answered by aiohttp when autoping is on)."""
    deadline = time.monotonic() + timeout_s
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg.type == aiohttp.WSMsgType.TEXT:
            return msg.data
        if msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        ):
            raise ConnectionError(f"closed: {ws.close_code}")


async def receive_until(
    ws: aiohttp.ClientWebSocketResponse, predicate: Callable[[Any], bool], timeout_s: float = 3.0
) -> list[Any]:
    """Parsed frames received until one satisfies ``predicate`` (included)."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while True:
        text = await receive_text(ws, max(0.01, deadline - time.monotonic()))
        item = text if not text.startswith("{") else json.loads(text)
        seen.append(item)
        if predicate(item):
            return seen


async def wait_closed(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 5.0) -> int | None:
    """Read until the server closes the WebSocket; its close code."""
    deadline = time.monotonic() + timeout_s
    while not ws.closed:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            break
    return ws.close_code
