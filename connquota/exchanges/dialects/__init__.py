"""Exchange wire formats: pure functions that build and parse each exchange's frames.

``formats[Dialect.BINANCE]`` (and okx, bybit, kraken, coinbase, deribit) is the module
implementing the ``base.WireFormat`` shape. The gateway uses the client half, the mock exchange
the server half.
"""

from __future__ import annotations

from types import ModuleType

from connquota.api.limits import Dialect
from connquota.exchanges.dialects import binance, bybit, coinbase, deribit, kraken, okx

formats: dict[Dialect, ModuleType] = {
    Dialect.BINANCE: binance,
    Dialect.OKX: okx,
    Dialect.BYBIT: bybit,
    Dialect.KRAKEN: kraken,
    Dialect.COINBASE: coinbase,
    Dialect.DERIBIT: deribit,
}


def wire_format(dialect: Dialect | str) -> ModuleType:
    """The wire-format module for ``dialect``; KeyError when it has none yet."""
    return formats[Dialect(dialect)]


__all__ = ["binance", "bybit", "coinbase", "deribit", "formats", "kraken", "okx", "wire_format"]
