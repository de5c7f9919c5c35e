"""Run the limit-enforcing mock exchange for one profile.

It speaks the profile's dialect (binance, okx, bybit, coinbase, kraken, deribit) on ws:// (or
wss:// with --tls), counts every TCP connection at accept against the per-IP limits, enforces
every limit of the profile, assumed ones too (override any with --limit; --no-enforce-assumed
to try a client library whose bursts the real exchange tolerates), punishes as the exchange documents (HTTP 429 / 418 with
Retry-After, error messages, close codes), and records violations and peak use. Like a real exchange it serves no "what is my IP"
path (--whoami adds GET /whoami as a test convenience); /admin/ is the JSON admin API (stats, violations, peaks, reset,
faults); /metrics is Prometheus. --time-scale 60 makes a 5-minute window last 5 s (every
duration of the profile is divided by it; data rates are per wall-clock second).

Examples:
  connquota mock-exchange --profile binance-spot --listen 127.0.0.1:9443
  connquota mock-exchange --profile okx --listen 127.0.0.1:8443 --time-scale 60 \\
      --limit connectionAttempts:ip=10/5 --limit concurrentConnections:ip=4 --rate 50
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `connquota mock-exchange` options."""
    parser.add_argument(
        "--profile", required=True, metavar="NAME", help="built-in profile, e.g. binance-spot"
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="address to serve on (port 0: any)",
    )
    parser.add_argument("--tls", action="store_true", help="serve wss:// (needs --cert and --key)")
    parser.add_argument("--cert", metavar="PEM", help="server certificate chain (PEM)")
    parser.add_argument("--key", metavar="PEM", help="server private key (PEM)")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="profile seconds per wall-clock second",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1.0,
        metavar="N",
        help="data messages per second per subscribed stream",
    )
    parser.add_argument(
        "--private-rate",
        type=float,
        default=None,
        metavar="N",
        help="events per second of every account's private feed (default: --rate)",
    )
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME[:SCOPE]=VALUE[/WINDOW_S]",
        help="override a limit, e.g. connectionAttempts:ip=10/5 or maxConnectionAge=30 (repeatable)",
    )
    parser.add_argument(
        "--limits-file", metavar="JSON", help="a JSON list of Limit objects to override"
    )
    parser.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="KEY:SECRET[:PASSPHRASE[:ACCOUNT]]",
        help="an API key the mock accepts (default: test-key-1..4 / test-secret-1..4)",
    )
    parser.add_argument(
        "--public-key-account",
        action="append",
        default=[],
        metavar="KEY=PEM_FILE[:ACCOUNT]",
        help="an RSA or Ed25519 API key (Binance) the mock verifies with the public key in "
        "PEM_FILE (repeatable; added to the --account keys)",
    )
    parser.add_argument(
        "--ban-seconds", type=float, default=120.0, help="IP ban length (profile seconds)"
    )
    parser.add_argument(
        "--ban-after",
        type=int,
        default=3,
        help="penalised violations within 5 minutes that ban an IP",
    )
    parser.add_argument(
        "--no-enforce-assumed",
        action="store_true",
        help="do not enforce limits whose confidence is 'assumed'",
    )
    parser.add_argument(
        "--port-file", metavar="PATH", help="write the bound port here once listening"
    )
    parser.add_argument(
        "--whoami",
        action="store_true",
        help="also serve GET /whoami (the caller's address; real exchanges do not, so off)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep:
        raise SystemExit(f"--listen {listen!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    import asyncio
    import logging
    import signal
    import ssl
    from pathlib import Path

    from connquota.exchanges import get_profile
    from connquota.mockexchange import MockExchange, MockSettings, TestAccount, parse_limit_spec
    from connquota.mockexchange.settings import load_limits_file

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    profile = get_profile(args.profile)
    limits = [parse_limit_spec(spec) for spec in args.limit]
    if args.limits_file:
        limits += load_limits_file(Path(args.limits_file))
    settings = MockSettings(
        time_scale=args.time_scale,
        rate_per_stream_hz=args.rate,
        private_rate_hz=args.private_rate,
        ban_s=args.ban_seconds,
        ban_after_violations=args.ban_after,
        enforce_assumed=not args.no_enforce_assumed,
        serve_whoami=args.whoami,
    )
    if args.account:
        accounts = []
        for spec in args.account:
            parts = spec.split(":")
            if len(parts) < 2:
                raise SystemExit(f"--account {spec!r}: expected KEY:SECRET[:PASSPHRASE[:ACCOUNT]]")
            accounts.append(TestAccount(parts[0], parts[1], *(parts[2:4])))
        settings.accounts = tuple(accounts)
    for spec in args.public_key_account:
        key, sep, rest = spec.partition("=")
        if not sep or not rest:
            raise SystemExit(f"--public-key-account {spec!r}: expected KEY=PEM_FILE[:ACCOUNT]")
        pem_file, _, account_id = rest.partition(":")
        public_key = Path(pem_file).read_text()
        settings.accounts = (
            *settings.accounts,
            TestAccount(key, "", account_id=account_id, public_key=public_key),
        )
    context = None
    if args.tls:
        if not (args.cert and args.key):
            raise SystemExit("--tls needs --cert and --key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    host, port = _split_listen(args.listen)

    async def serve() -> None:
        mx = MockExchange(
            profile, host, port, limits=limits, settings=settings, ssl_context=context
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with mx:
            if args.port_file:
                Path(args.port_file).write_text(str(mx.port))
            print(f"mock exchange {profile.name} ({profile.dialect}) on {mx.url}", flush=True)
            await stop.wait()

    asyncio.run(serve())
    return 0
