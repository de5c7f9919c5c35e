"""Print the built-in exchange profiles, their limits and their endpoints.

Every limit shows its value, window, scope (ip, account, apiKey, connection, message), shape
(slidingWindow, tokenBucket, minSpacing, concurrent, duration, size) and confidence
(published, secondary, assumed). A second table lists every endpoint (primary, alternates the
gateway fails over to, private) with the limit domain it counts against. `-o json` and `-o yaml` print whole profiles, sources and notes
included.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from connquota.api.limits import ExchangeProfile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `connquota profiles` options."""
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "json", "yaml"),
        default="table",
        help="output format (default: table)",
    )
    parser.add_argument("--profile", metavar="NAME", help="show only this profile")


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _window(limit: object) -> str:
    window_s = getattr(limit, "windowSeconds", None)
    if window_s is None:
        return "-"
    text = _format_number(window_s) + "s"
    burst = getattr(limit, "burst", None)
    return f"{text} burst {burst}" if burst else text


def render_table(profiles: list[ExchangeProfile]) -> str:
    """The profiles as an aligned text table, one row per limit."""
    header = ("PROFILE", "LIMIT", "VALUE", "WINDOW", "SCOPE", "SHAPE", "CONFIDENCE")
    rows: list[tuple[str, ...]] = [header]
    for profile in profiles:
        for limit in profile.limits:
            rows.append(
                (
                    profile.name,
                    str(limit.name),
                    _format_number(limit.value),
                    _window(limit),
                    str(limit.scope),
                    str(limit.shape),
                    str(limit.confidence),
                )
            )
    return _aligned(rows)


def render_endpoints(profiles: list[ExchangeProfile]) -> str:
    """Each profile's endpoints (primary, alternates, private) and their limit domain."""
    header = ("PROFILE", "ENDPOINT", "ROLE", "LIMIT DOMAIN")
    rows: list[tuple[str, ...]] = [header]
    for profile in profiles:
        rows.append((profile.name, profile.endpoint, "primary", profile.domain))
        for alt in profile.alternateEndpoints:
            domain = {
                "separate": f"{alt.domain or urlsplit(alt.url).hostname} (separate, published)",
                "shared": profile.domain,
            }.get(str(alt.limitDomain), f"{profile.domain} (assumed: not published)")
            rows.append((profile.name, alt.url, "alternate", domain))
        if profile.privateEndpoint:
            rows.append((profile.name, profile.privateEndpoint, "private", profile.domain))
    return _aligned(rows)


def _aligned(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def run(args: argparse.Namespace) -> int:
    """Print the profiles in the chosen format; 2 when --profile names no profile."""
    from connquota.exchanges import PROFILES, UnknownProfileError, get_profile

    try:
        profiles = [get_profile(args.profile)] if args.profile else list(PROFILES.values())
    except UnknownProfileError as exc:
        print(f"connquota profiles: {exc}", file=sys.stderr)
        return 2
    if args.output == "table":
        print(render_table(profiles))
        print()
        print(render_endpoints(profiles))
        return 0
    data = [profile.to_wire() for profile in profiles]
    if args.output == "json":
        print(json.dumps(data, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0
