"""Where the quota's other gateway pods are, in cluster: the quota's gateway Pods (selected by
the labels the operator puts on them, connquota/api/labels.py), watched, by Pod IP.

Yields the peers' base URLs (`http://<pod IP>:<port>`, this pod's own address left out) now
and whenever the fleet changes. Never the exchange: peers are found inside the cluster only.
Pods are read rather than the EndpointSlices of the headless Service: the same addresses
(the Service publishes not-ready addresses too), one object kind fewer for the gateways'
Role, and a pod is known as soon as it has an IP, before any EndpointSlice controller has
caught up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from connquota.api.labels import gateway_pod_selector

log = logging.getLogger(__name__)


def pod_address(pod: Any) -> str | None:
    """The Pod IP of one Pod, None while it has none (pending) or once it has finished."""
    status = pod.status
    if status is None or not status.pod_ip or status.phase in ("Succeeded", "Failed"):
        return None
    return str(status.pod_ip)


def _name(obj: Any) -> str:
    return str(obj.metadata.name) if obj.metadata is not None else ""


def peer_urls(addresses: dict[str, str | None], own_address: str, port: int) -> list[str]:
    """Base URLs of every pod address known but this pod's own (pod name -> address)."""
    known = sorted({a for a in addresses.values() if a} - {own_address})
    return [f"http://[{a}]:{port}" if ":" in a else f"http://{a}:{port}" for a in known]


async def watch_peer_pods(
    namespace: str, quota: str, own_address: str, port: int
) -> AsyncIterator[list[str]]:
    """Yield the peers' base URLs now and after every change (a watch in a thread)."""
    from kubernetes import client

    from connquota.gateway.kube_watch import watch_events
    from connquota.gateway.podroot import load_cluster_config

    load_cluster_config()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    stop = threading.Event()
    selector = gateway_pod_selector(quota)

    def run() -> None:
        api = client.CoreV1Api()
        while not stop.is_set():
            try:
                listed = api.list_namespaced_pod(
                    namespace, label_selector=selector, _request_timeout=10
                )
                addresses = {_name(p): pod_address(p) for p in listed.items}
                urls = peer_urls(addresses, own_address, port)
                loop.call_soon_threadsafe(queue.put_nowait, urls)
                for kind, obj in watch_events(
                    api.list_namespaced_pod,
                    namespace,
                    listed.metadata.resource_version if listed.metadata else None,
                    stop,
                    label_selector=selector,
                ):
                    if kind == "DELETED":
                        addresses.pop(_name(obj), None)
                    else:
                        addresses[_name(obj)] = pod_address(obj)
                    new = peer_urls(addresses, own_address, port)
                    if new != urls:
                        urls = new
                        loop.call_soon_threadsafe(queue.put_nowait, urls)
            except Exception as exc:  # the API may be away: keep the peers known so far
                log.warning("peer pods %s/%s: %s", namespace, selector, exc)
                stop.wait(1.0)

    thread = threading.Thread(target=run, name="peer-watch", daemon=True)
    thread.start()
    try:
        while True:
            yield await queue.get()
    finally:
        stop.set()
