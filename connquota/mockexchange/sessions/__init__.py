"""Dialect sessions: how the mock exchange speaks each exchange's language on a connection."""

from __future__ import annotations

from connquota.api.limits import Dialect
from connquota.mockexchange.sessions.base import DialectSession
from connquota.mockexchange.sessions.binance import BinanceSession
from connquota.mockexchange.sessions.bybit import BybitSession
from connquota.mockexchange.sessions.coinbase import CoinbaseSession
from connquota.mockexchange.sessions.deribit import DeribitSession
from connquota.mockexchange.sessions.kraken import KrakenSession
from connquota.mockexchange.sessions.okx import OkxSession

SESSIONS: dict[Dialect, type[DialectSession]] = {
    Dialect.BINANCE: BinanceSession,
    Dialect.OKX: OkxSession,
    Dialect.BYBIT: BybitSession,
    Dialect.KRAKEN: KrakenSession,
    Dialect.COINBASE: CoinbaseSession,
    Dialect.DERIBIT: DeribitSession,
}
"""The session class of every dialect the mock exchange speaks."""

__all__ = ["SESSIONS", "DialectSession"]
