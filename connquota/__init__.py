"""connquota: keeps fleets of exchange WebSocket gateways inside every exchange limit."""

__version__ = "0.1.0"
