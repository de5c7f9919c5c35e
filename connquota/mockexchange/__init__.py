"""A limit-enforcing exchange simulator: the referee every test and the demo play against.

It speaks each exchange's dialect (connquota.exchanges.dialects), counts connection attempts at
TCP accept, enforces the profile's limits with the exchange's own penalties, and records every
violation and the peak use of every limit. It shares no code with the gateway's limiter.
"""

from __future__ import annotations

from connquota.mockexchange.ledger import Violation
from connquota.mockexchange.server import MockExchange
from connquota.mockexchange.settings import MockSettings, TestAccount, parse_limit_spec

__all__ = ["MockExchange", "MockSettings", "TestAccount", "Violation", "parse_limit_spec"]
