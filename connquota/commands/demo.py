"""Run the demo: a limit-enforcing mock exchange, gateways on loopback egress addresses,
consumers, a live view, a mass disconnect and a gateway crash, all within the limits.

Uses only the installed package: the mock exchange runs in this process, the gateways as
separate `connquota gateway` processes (standalone mode), planned by `connquota.planner`.
Exits 0 when the exchange recorded no violation, 1 otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "a mock exchange, gateways on loopback egress addresses, consumers and a live view"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options."""
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument(
        "--profile",
        default="binance-spot",
        help="binance-spot, binance-usdm, okx, bybit, kraken, deribit or coinbase",
    )
    parser.add_argument("--streams", type=int, default=3000, help="streams in the quota")
    parser.add_argument("--gateways", type=int, default=3, help="gateway processes")
    parser.add_argument("--addresses", type=int, default=3, help="loopback egress addresses")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help="profile seconds per second (default: a 5 s window)",
    )
    parser.add_argument("--rate", type=float, default=0.2, help="messages/s per stream")
    parser.add_argument(
        "--attempts", type=int, default=20, help="connection attempts per window per address"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep plan, state, logs here")
    parser.add_argument(
        "--egress",
        choices=["bind", "proxy"],
        default="bind",
        help="bind: gateways bind the loopback addresses; proxy: through real tinyproxy "
        "(HTTP CONNECT) and microsocks (SOCKS5) processes, one per address, installed by "
        "hack/install-proxies.sh",
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its closing summary."""
    import asyncio
    import logging

    from connquota.demo.run import DemoOptions, run_demo

    logging.basicConfig(level=logging.ERROR)
    options = DemoOptions(
        profile=args.profile,
        streams=args.streams,
        gateways=args.gateways,
        addresses=args.addresses,
        duration_s=args.duration,
        time_scale=args.time_scale,
        rate_hz=args.rate,
        attempts=args.attempts,
        workdir=args.workdir,
        egress=args.egress,
    )
    try:
        return asyncio.run(run_demo(options))
    except KeyboardInterrupt:
        return 130
