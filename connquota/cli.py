"""The `connquota` command: one entry point, one module per subcommand.

Each subcommand lives in `connquota.commands.<name>` and exposes `HELP` (one line),
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their
subcommand runs, so `connquota profiles` does not pay for aiohttp or kopf.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, str] = {
    "demo": "a mock exchange, gateways on loopback egress addresses, consumers and a live view",
    "profiles": "print the built-in exchange profiles and their limits",
    "crd": "print (or write) the CustomResourceDefinitions rendered from the API models",
    "plan": "plan a quota against a pool and print the plan",
    "mock-exchange": "run the limit-enforcing mock exchange",
    "gateway": "run a gateway (a pod of a quota's fleet, or standalone with a plan file)",
    "operator": "run the operator",
}


def _module_name(command: str) -> str:
    return "connquota.commands." + command.replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand whose module is installed."""
    parser = argparse.ArgumentParser(
        prog="connquota",
        description="Keep fleets of exchange WebSocket gateways inside every exchange limit.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, help_text in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(_module_name(command))
        except ModuleNotFoundError as exc:
            if exc.name != _module_name(command):
                raise
            continue
        sp = sub.add_parser(command, help=help_text, description=module.__doc__)
        module.add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `connquota` with `argv` (default: the process arguments); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(_module_name(args.command))
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
