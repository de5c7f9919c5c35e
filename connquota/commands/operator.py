"""Run the connquota operator: divide pool budgets among quotas, publish plans, run gateways.

One active operator at a time: run one replica with the Recreate strategy (standalone, the
default) or pass --peering to let kopf's peering objects elect one. See docs/operator.md.
"""

from __future__ import annotations

import argparse

HELP = "run the operator"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `connquota operator`."""
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)")
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch quotas in this namespace (repeatable, globs allowed); default: cluster-wide",
    )
    parser.add_argument("--peering", action="store_true", help="use kopf peering (needs its CRDs)")
    parser.add_argument("--liveness-port", type=int, default=8081, help="0 disables")
    parser.add_argument("--metrics-port", type=int, default=9090, help="0 disables")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    """Start kopf with the operator's handlers until SIGINT/SIGTERM."""
    import asyncio
    import logging
    import os

    if args.kubeconfig:
        # Before kubernetes is imported: it reads KUBECONFIG once, at import time.
        os.environ["KUBECONFIG"] = args.kubeconfig
    import kopf

    from connquota.operator import handlers  # noqa: F401  (registers the handlers)
    from connquota.operator.settings import OperatorConfig

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    config = OperatorConfig(
        namespaces=list(args.namespace),
        peering="peering" if args.peering else "standalone",
        livenessPort=args.liveness_port,
        metricsPort=args.metrics_port,
    )
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
