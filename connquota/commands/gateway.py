"""Run a gateway: one pod of a quota's fleet, or standalone with a plan file.

Standalone: `connquota gateway --plan plan.json --pod 0 --state-dir DIR` (the file holds a
QuotaPlan or a PodPlan and is watched for newer generations; an exclusive lock file in the
state dir fences the ordinal). In cluster (`--in-cluster`, as the operator's StatefulSet runs
it): identity from POD_NAME/POD_NAMESPACE, the plan from the ConfigMap `<quota>-plan-<ordinal>`,
the fence and report on the Lease `<quota>-gw-<ordinal>`. See docs/gateway.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "run a gateway (a pod of a quota's fleet, or standalone with a plan file)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The gateway's flags (environment variables give the in-cluster defaults)."""
    env = os.environ.get
    parser.add_argument("--plan", type=Path, help="plan file (QuotaPlan or PodPlan JSON)")
    parser.add_argument("--pod", type=int, default=None, help="ordinal of this gateway")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env("CONNQUOTA_STATE_DIR", "./connquota-state")),
        help="directory of the attempt log, lock and report (default $CONNQUOTA_STATE_DIR)",
    )
    parser.add_argument("--in-cluster", action="store_true", help="plan ConfigMap and Lease")
    parser.add_argument("--host", default=env("CONNQUOTA_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(env("CONNQUOTA_PORT", "8080")))
    parser.add_argument(
        "--consumer-token-file",
        type=Path,
        default=Path(token_file) if (token_file := env("CONNQUOTA_CONSUMER_TOKEN_FILE")) else None,
        help="require `Authorization: Bearer <token>` from consumers",
    )
    parser.add_argument(
        "--tls-cert-file",
        type=Path,
        default=Path(cert) if (cert := env("CONNQUOTA_TLS_CERT_FILE")) else None,
        help="serve the consumer endpoints over TLS too, with this certificate (tls.crt)",
    )
    parser.add_argument(
        "--tls-key-file",
        type=Path,
        default=Path(key) if (key := env("CONNQUOTA_TLS_KEY_FILE")) else None,
        help="the certificate's private key (tls.key)",
    )
    parser.add_argument("--tls-port", type=int, default=int(env("CONNQUOTA_TLS_PORT", "8443")))
    parser.add_argument(
        "--peer-token-file",
        type=Path,
        default=Path(tok) if (tok := env("CONNQUOTA_PEER_TOKEN_FILE")) else None,
        help="the quota's peer token: relay streams to and from the quota's other pods",
    )
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="URL",
        help="base URL of another gateway pod of the quota (repeatable)",
    )
    parser.add_argument(
        "--last-value-cache",
        action="store_true",
        default=env("CONNQUOTA_LAST_VALUE_CACHE", "") == "true",
        help="keep each stream's newest message for consumers that ask for it (lastValue)",
    )
    parser.add_argument("--lease-duration", type=int, default=15, help="seconds (in cluster)")
    parser.add_argument("--backoff-base", type=float, default=0.5, help="seconds")
    parser.add_argument("--backoff-cap", type=float, default=30.0, help="seconds")
    parser.add_argument("--linger", type=float, default=2.0, help="seconds before unsubscribe")
    parser.add_argument(
        "--stale-after", type=float, default=None, help="seconds (default: profile)"
    )
    parser.add_argument("--report-interval", type=float, default=2.0, help="seconds")
    parser.add_argument(
        "--consumer-queue",
        type=int,
        default=int(env("CONNQUOTA_CONSUMER_QUEUE", "10000")),
        help="frames queued per consumer (default $CONNQUOTA_CONSUMER_QUEUE, else 10000)",
    )
    parser.add_argument(
        "--slow-consumer",
        choices=["close", "drop"],
        default=env("CONNQUOTA_SLOW_CONSUMER", "close"),
        help="a consumer whose queue is full: closed with 1008, or loses its oldest frames "
        "(default $CONNQUOTA_SLOW_CONSUMER, else close)",
    )
    parser.add_argument(
        "--consumer-send-buffer",
        type=int,
        default=int(env("CONNQUOTA_CONSUMER_SEND_BUFFER", "0")),
        help="SO_SNDBUF in bytes of every accepted connection (0: the kernel's autotuning; "
        "default $CONNQUOTA_CONSUMER_SEND_BUFFER, else 0)",
    )
    parser.add_argument("--log-level", default=env("CONNQUOTA_LOG_LEVEL", "info"))
    parser.add_argument("--log-format", choices=["json", "text"], default="json")


def run(args: argparse.Namespace) -> int:
    """Start the gateway and run until SIGTERM."""
    import asyncio

    from connquota.gateway.app import Gateway, GatewaySettings, OrdinalLease
    from connquota.gateway.lease import FileLease, KubeLease
    from connquota.gateway.peer_source import watch_peer_pods
    from connquota.gateway.plan_source import watch_plan_configmap, watch_plan_file
    from connquota.gateway.podroot import pod_path
    from connquota.gateway.tls import TlsFiles
    from connquota.gateway.upstream import UpstreamSettings
    from connquota.logs import setup_logging

    pod = os.environ.get("POD_NAME", "")
    namespace = os.environ.get("POD_NAMESPACE", "")
    quota = os.environ.get("CONNQUOTA_QUOTA", "")
    ordinal = args.pod
    if ordinal is None and pod.rsplit("-", 1)[-1].isdigit():
        ordinal = int(pod.rsplit("-", 1)[-1])
    if ordinal is None:
        print("connquota gateway: --pod N is required (or POD_NAME ending in -N)")
        return 2
    if not args.in_cluster and args.plan is None:
        print("connquota gateway: give --plan FILE (standalone) or --in-cluster")
        return 2
    pod = pod or f"gateway-{ordinal}"
    # Under the test pod harness, mounted paths live below $CONNQUOTA_POD_ROOT.
    args.state_dir = pod_path(args.state_dir)
    if args.consumer_token_file is not None:
        args.consumer_token_file = pod_path(args.consumer_token_file)
    if (args.tls_cert_file is None) != (args.tls_key_file is None):
        print("connquota gateway: give both --tls-cert-file and --tls-key-file, or neither")
        return 2
    tls = None
    if args.tls_cert_file is not None:
        tls = TlsFiles(pod_path(args.tls_cert_file), pod_path(args.tls_key_file))
    setup_logging(args.log_level, args.log_format, {"quota": quota, "pod": pod})
    settings = GatewaySettings(
        ordinal=ordinal,
        state_dir=args.state_dir,
        pod=pod,
        quota=quota,
        namespace=namespace,
        host=args.host,
        port=args.port,
        consumer_token_file=args.consumer_token_file,
        tls=tls,
        tls_port=args.tls_port,
        peer_token_file=pod_path(args.peer_token_file) if args.peer_token_file else None,
        peers=list(args.peer),
        last_value_cache=args.last_value_cache,
        report_interval_s=args.report_interval,
        consumer_queue_frames=args.consumer_queue,
        slow_consumer_policy=args.slow_consumer,
        consumer_send_buffer_bytes=args.consumer_send_buffer,
        upstream=UpstreamSettings(
            backoff_base_s=args.backoff_base,
            backoff_cap_s=args.backoff_cap,
            linger_s=args.linger,
            stale_after_s=args.stale_after,
        ),
    )

    async def main() -> int:
        if args.in_cluster:
            if not (namespace and quota):
                print("connquota gateway --in-cluster needs POD_NAMESPACE and CONNQUOTA_QUOTA")
                return 2
            plans = watch_plan_configmap(namespace, f"{quota}-plan-{ordinal}", ordinal)
            lease: OrdinalLease = KubeLease(
                namespace, f"{quota}-gw-{ordinal}", f"{pod}/{os.getpid()}", args.lease_duration
            )
        else:
            plans = watch_plan_file(args.plan, ordinal)
            lease = FileLease(args.state_dir, ordinal)
        peers = None
        if args.in_cluster and settings.peer_token_file is not None:
            peers = watch_peer_pods(namespace, quota, os.environ.get("POD_IP", ""), args.port)
        gateway = Gateway(settings, plans, lease, peers)
        return await gateway.run()

    return asyncio.run(main())
