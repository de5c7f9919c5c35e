"""Where the quota's other gateway pods are, in cluster: the EndpointSlices of the quota's
headless Service (`<quota>-gw-peers`, which lists pods that are not ready yet too), watched.

Yields the peers' base URLs (`http://<pod IP>:<port>`, this pod's own address left out) now
and whenever the fleet changes. Never the exchange: peers are found inside the cluster only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def slice_addresses(endpoint_slice: Any) -> set[str]:
    """The pod addresses one EndpointSlice lists (every endpoint, ready or not)."""
    out: set[str] = set()
    for endpoint in endpoint_slice.endpoints or []:
        out.update(endpoint.addresses or [])
    return out


def _name(obj: Any) -> str:
    return str(obj.metadata.name) if obj.metadata is not None else ""


def peer_urls(slices: dict[str, set[str]], own_address: str, port: int) -> list[str]:
    """Base URLs of every address the slices list but this pod's own."""
    addresses = sorted({a for addrs in slices.values() for a in addrs} - {own_address})
    return [f"http://[{a}]:{port}" if ":" in a else f"http://{a}:{port}" for a in addresses]


async def watch_peer_endpoints(
    namespace: str, service: str, own_address: str, port: int
) -> AsyncIterator[list[str]]:
    """Yield the peers' base URLs now and after every change (a watch in a thread)."""
    from kubernetes import client

    from connquota.gateway.kube_watch import watch_events
    from connquota.gateway.podroot import load_cluster_config

    load_cluster_config()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    stop = threading.Event()
    selector = f"{SERVICE_NAME_LABEL}={service}"

    def run() -> None:
        api = client.DiscoveryV1Api()
        while not stop.is_set():
            try:
                listed = api.list_namespaced_endpoint_slice(
                    namespace, label_selector=selector, _request_timeout=10
                )
                slices = {_name(s): slice_addresses(s) for s in listed.items}
                urls = peer_urls(slices, own_address, port)
                loop.call_soon_threadsafe(queue.put_nowait, urls)
                for kind, obj in watch_events(
                    api.list_namespaced_endpoint_slice,
                    namespace,
                    listed.metadata.resource_version if listed.metadata else None,
                    stop,
                    label_selector=selector,
                ):
                    if kind == "DELETED":
                        slices.pop(_name(obj), None)
                    else:
                        slices[_name(obj)] = slice_addresses(obj)
                    new = peer_urls(slices, own_address, port)
                    if new != urls:
                        urls = new
                        loop.call_soon_threadsafe(queue.put_nowait, urls)
            except Exception as exc:  # the API may be away: keep the peers known so far
                log.warning("peer EndpointSlices %s/%s: %s", namespace, service, exc)
                stop.wait(1.0)

    thread = threading.Thread(target=run, name="peer-watch", daemon=True)
    thread.start()
    try:
        while True:
            yield await queue.get()
    finally:
        stop.set()
