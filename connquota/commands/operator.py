"""Run the connquota operator: divide pool budgets among quotas, publish plans, run gateways.

One active operator at a time: run one replica with the Recreate strategy (standalone, the
default) or pass --peering to let kopf's peering objects elect one. Every setting of
`OperatorConfig` (connquota/operator/settings.py) is a flag and an environment variable
(CONNQUOTA_OPERATOR_<NAME>); a flag wins over the environment. See docs/operator.md.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "run the operator"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `connquota operator`: one per setting, plus kubeconfig and logging."""
    from connquota.operator.settings import LIST_FIELDS, OperatorConfig, env_of, flag_of

    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)")
    for name, field in OperatorConfig.model_fields.items():
        help_text = f"{field.description} (env {env_of(name)}; default {field.get_default(call_default_factory=True)!r})"
        flag = flag_of(name)
        if name == "namespaces":
            parser.add_argument(
                "-n", flag, dest=name, action="append", default=None, help=help_text
            )
        elif name == "peering":
            parser.add_argument(
                "--peering",
                dest=name,
                action="store_const",
                const="peering",
                default=None,
                help="use kopf peering (needs its CRDs): " + help_text,
            )
        elif name in LIST_FIELDS:
            parser.add_argument(flag, dest=name, action="append", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=help_text)
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log level (env CONNQUOTA_OPERATOR_LOG_LEVEL; default info)",
    )
    parser.add_argument(
        "--log-format",
        default=None,
        choices=["json", "text"],
        help="json: one object per line with quota and pool fields (env "
        "CONNQUOTA_OPERATOR_LOG_FORMAT; default json)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging (--log-level debug)")


def settings_from_args(args: argparse.Namespace, environ: Any) -> Any:
    """The OperatorConfig from the parsed flags and `environ`."""
    from connquota.operator.settings import OperatorConfig, config_from

    flags = {name: getattr(args, name, None) for name in OperatorConfig.model_fields}
    return config_from(flags, environ)


def run(args: argparse.Namespace) -> int:
    """Start kopf with the operator's handlers until SIGINT/SIGTERM."""
    import asyncio
    import os
    import sys

    from pydantic import ValidationError

    if args.kubeconfig:
        # Before kubernetes is imported: it reads KUBECONFIG once, at import time.
        os.environ["KUBECONFIG"] = args.kubeconfig
    import kopf

    from connquota.logs import setup_logging
    from connquota.operator import handlers  # noqa: F401  (registers the handlers)

    level = (
        "debug"
        if args.verbose
        else (args.log_level or os.environ.get("CONNQUOTA_OPERATOR_LOG_LEVEL") or "info")
    )
    fmt = args.log_format or os.environ.get("CONNQUOTA_OPERATOR_LOG_FORMAT") or "json"
    setup_logging(level, fmt, {"component": "operator"}, text_tag="component")
    try:
        config = settings_from_args(args, os.environ)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        print(f"connquota operator: setting {where}: {first['msg']}", file=sys.stderr)
        return 2
    memo = kopf.Memo(config=config, kubeconfig=args.kubeconfig)
    asyncio.run(
        kopf.operator(
            clusterwide=config.clusterwide,
            namespaces=config.namespaces,
            standalone=config.peering == "standalone",
            peering_name=config.peeringName if config.peering == "peering" else None,
            liveness_endpoint=config.liveness_endpoint(),
            memo=memo,
        )
    )
    return 0
